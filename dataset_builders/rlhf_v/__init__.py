"""RLHF-V dataset builder (``openbmb/RLHF-V-Dataset`` → TRL vision preference format), its writer and fixture rows."""

from .fixtures import make_rlhf_v_rows
from .rlhf_v import RLHFV, RLHFVConfig, convert_row, load_rlhf_v, rlhf_v_features, write_rlhf_v_parquet

__all__ = [
    "RLHFV",
    "RLHFVConfig",
    "convert_row",
    "load_rlhf_v",
    "make_rlhf_v_rows",
    "rlhf_v_features",
    "write_rlhf_v_parquet",
]

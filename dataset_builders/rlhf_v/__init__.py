"""RLHF-V dataset builder (``openbmb/RLHF-V-Dataset`` → TRL vision preference format) and fixture writer."""

from .fixtures import make_rlhf_v_rows, write_rlhf_v_parquet
from .rlhf_v import RLHFV, RLHFVConfig, convert_row, load_rlhf_v

__all__ = ["RLHFV", "RLHFVConfig", "convert_row", "load_rlhf_v", "make_rlhf_v_rows", "write_rlhf_v_parquet"]

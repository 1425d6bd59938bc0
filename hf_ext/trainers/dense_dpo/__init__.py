"""Dense (token-weighted) DPO of RLHF-V (arXiv 2312.00849) on top of TRL's DPOTrainer."""

from . import weights
from .collators import DataCollatorForDensePreference, DataCollatorForDenseVisionPreference
from .dense_dpo_config import DenseDPOConfig
from .dense_dpo_trainer import DenseDPOTrainer
from .weights import *  # noqa: F403 (the token-weighting API, listed once in `weights.__all__`)

__all__ = [
    "DataCollatorForDensePreference",
    "DataCollatorForDenseVisionPreference",
    "DenseDPOConfig",
    "DenseDPOTrainer",
]
__all__ += weights.__all__

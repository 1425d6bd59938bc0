"""Dense (token-weighted) DPO of RLHF-V (arXiv 2312.00849) on top of TRL's DPOTrainer."""

from .collators import DataCollatorForDensePreference, DataCollatorForDenseVisionPreference
from .dense_dpo_config import DenseDPOConfig
from .dense_dpo_trainer import DenseDPOTrainer
from .weights import (
    corrected_token_masks,
    correction_weights,
    dense_sequence_scores,
    dense_token_coefficients,
    segment_token_mask,
    sequence_corrected_masks,
    sequence_correction_weights,
    span_token_mask,
)

__all__ = [
    "DataCollatorForDensePreference",
    "DataCollatorForDenseVisionPreference",
    "DenseDPOConfig",
    "DenseDPOTrainer",
    "corrected_token_masks",
    "correction_weights",
    "dense_sequence_scores",
    "dense_token_coefficients",
    "segment_token_mask",
    "sequence_corrected_masks",
    "sequence_correction_weights",
    "span_token_mask",
]

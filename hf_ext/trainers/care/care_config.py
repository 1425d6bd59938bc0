"""``CAREConfig``: the training arguments of [`CARETrainer`] (`TrainingArguments` plus the CARE regulariser)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .care_attention import ATTENTION_TYPES, PENALTIES, CARERegularizer

__all__ = ["CAREConfig"]


@dataclass
class CAREConfig(TrainingArguments):
    r"""Configuration of [`CARETrainer`]: `TrainingArguments` plus the CARE regulariser.

    The regulariser is reconstructed from the paper's abstract (see [`hf_ext.trainers.care.care_attention`]); every choice is a
    parameter.

    Parameters:
        > Parameters of the regulariser

        care_coef (`float`, *optional*, defaults to `0.1`):
            λ, the weight of the attention penalty added to the language-modelling loss. Positive values sharpen
            attention; negative values flatten it.
        care_penalty (`str`, *optional*, defaults to `"entropy"`):
            `"entropy"` (Shannon entropy of each attention row) or `"renyi"` (Rényi entropy of order `care_alpha`).
        care_alpha (`float`, *optional*, defaults to `2.0`):
            Order α of the Rényi entropy (used with `care_penalty="renyi"`; α = 1 is Shannon).
        care_layers (`list[int]`, *optional*):
            Layer indices to regularise (the attention module's `layer_idx`, counted separately in encoder and
            decoder). All layers when `None`.
        care_heads (`list[int]`, *optional*):
            Head indices to regularise. All heads when `None`.
        care_attention_types (`list[str]`, *optional*, defaults to `["self", "encoder", "cross"]`):
            Which attention modules: decoder (or decoder-only) `"self"`-attention, `"encoder"` self-attention and
            `"cross"`-attention.
        care_target_modules (`str`, *optional*):
            Regular expression on qualified module names; only matching attention modules are regularised.
        care_target_entropy (`float`, *optional*):
            If set, a row contributes `max(H - care_target_entropy, 0)` (hinge towards a target sharpness).
        care_normalize (`bool`, *optional*, defaults to `False`):
            Divide each row's entropy by `log(#attendable keys)`.
        care_warmup_steps (`int`, *optional*, defaults to `0`):
            Ramp λ linearly from 0 to `care_coef` over this many optimizer steps.
    """

    care_coef: float = field(
        default=0.1, metadata={"help": "λ, the weight of the attention penalty added to the LM loss."}
    )
    care_penalty: str = field(
        default="entropy",
        metadata={"help": "Penalty on each attention row: Shannon entropy or Rényi entropy.", "choices": PENALTIES},
    )
    care_alpha: float = field(default=2.0, metadata={"help": "Order α of the Rényi entropy (care_penalty='renyi')."})
    care_layers: list[int] | None = field(
        default=None, metadata={"help": "Layer indices to regularise (default: all)."}
    )
    care_heads: list[int] | None = field(default=None, metadata={"help": "Head indices to regularise (default: all)."})
    care_attention_types: list[str] = field(
        default_factory=lambda: list(ATTENTION_TYPES),
        metadata={"help": "Attention modules to regularise: any of 'self', 'encoder', 'cross'."},
    )
    care_target_modules: str | None = field(
        default=None, metadata={"help": "Regex on module names; only matching attention modules are regularised."}
    )
    care_target_entropy: float | None = field(
        default=None, metadata={"help": "If set, penalise only the entropy above this value (hinge)."}
    )
    care_normalize: bool = field(
        default=False, metadata={"help": "Divide each row's entropy by log(number of attendable keys)."}
    )
    care_warmup_steps: int = field(default=0, metadata={"help": "Ramp λ linearly from 0 over this many steps."})

    def __post_init__(self):
        super().__post_init__()
        if self.care_warmup_steps < 0:
            raise ValueError(f"`care_warmup_steps` must be >= 0, got {self.care_warmup_steps}.")
        if not math.isfinite(self.care_coef):
            raise ValueError(f"`care_coef` must be a finite number, got {self.care_coef}.")
        try:
            self.to_regularizer()
        except ValueError as e:  # name the config fields, not the regulariser's
            raise ValueError(f"Invalid CARE setting in CAREConfig (fields `care_*`): {e}") from e

    def to_regularizer(self) -> CARERegularizer:
        """The [`CARERegularizer`] described by the `care_*` fields."""
        return CARERegularizer(
            penalty=self.care_penalty,
            alpha=self.care_alpha,
            layers=self.care_layers,
            heads=self.care_heads,
            attention_types=self.care_attention_types,
            target_modules=self.care_target_modules,
            target_entropy=self.care_target_entropy,
            normalize=self.care_normalize,
        )

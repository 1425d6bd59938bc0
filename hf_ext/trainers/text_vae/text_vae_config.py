"""``TextVAEConfig``: the training arguments of [`TextVAETrainer`] (KL-weight schedule and free bits)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

__all__ = ["TextVAEConfig"]


@dataclass
class TextVAEConfig(TrainingArguments):
    r"""`TrainingArguments` plus the KL schedule and free bits of text-VAE training.

    > Parameters that control the KL term

    Args:
        beta_schedule (`str`, *optional*, defaults to `"cyclical"`): ``"cyclical"`` (Fu et al.'s shape over optimizer
            steps: ``num_cycles`` cycles over training), ``"della_original"`` (the official DELLA rule, cycles of
            ``cycle_epochs`` epochs, beta carried into each new cycle's first step; see
            :func:`della_original_beta_schedule`) or ``"constant"``.
        num_cycles (`int`, *optional*, defaults to 4): number of beta cycles over training (ignored when
            ``cycle_steps`` is set). DELLA uses one cycle per 2 epochs (``beta_schedule="della_original"``).
        cycle_epochs (`int`, *optional*, defaults to 2): epochs per cycle of ``"della_original"`` (``--cycle_iters``).
        cycle_steps (`int`, *optional*): steps per cycle.
        beta_min (`float`, *optional*, defaults to 1e-5), beta_max (`float`, *optional*, defaults to 1.0): the range.
        ratio_zero (`float`, *optional*, defaults to 0.5), ratio_increase (`float`, *optional*, defaults to 0.25):
            the cycle's shape.
        free_bits (`float`, *optional*): if set, overrides ``model.config.free_bits`` (nats per latent group).
    """

    beta_schedule: str = field(
        default="cyclical",
        metadata={"help": "KL weight schedule.", "choices": ["cyclical", "della_original", "constant"]},
    )
    cycle_epochs: int = field(default=2, metadata={"help": "Epochs per cycle of beta_schedule='della_original'."})
    num_cycles: int = field(default=4, metadata={"help": "Beta cycles over training (if cycle_steps is unset)."})
    cycle_steps: int | None = field(default=None, metadata={"help": "Steps per beta cycle."})
    beta_min: float = field(default=1e-5, metadata={"help": "Lowest KL weight of a cycle."})
    beta_max: float = field(default=1.0, metadata={"help": "Highest KL weight (the constant weight if constant)."})
    ratio_zero: float = field(default=0.5, metadata={"help": "Share of a cycle at beta_min."})
    ratio_increase: float = field(default=0.25, metadata={"help": "Share of a cycle rising linearly to beta_max."})
    free_bits: float | None = field(
        default=None, metadata={"help": "Free-bits threshold per latent group (overrides the model config)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.beta_schedule not in ("cyclical", "della_original", "constant"):
            raise ValueError(
                f"`beta_schedule` must be 'cyclical', 'della_original' or 'constant', got {self.beta_schedule!r}."
            )
        if self.free_bits is not None and self.free_bits < 0:
            raise ValueError(f"`free_bits` must be >= 0, got {self.free_bits}.")

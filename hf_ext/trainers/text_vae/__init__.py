"""Training text VAEs (DELLA, TRACE): :class:`TextVAEConfig` (:mod:`.text_vae_config`), :class:`TextVAETrainer`, the
KL-weight schedules and callbacks and :class:`DataCollatorForTextVAE` (:mod:`.text_vae_trainer`).

Not to be confused with :mod:`hf_ext.metrics.text_vae`, the evaluation metrics (ELBO, KL, mutual information, active units, IW-PPL) of
the same models. See ``docs/text_vae.md``.
"""

from .text_vae_config import TextVAEConfig
from .text_vae_trainer import (
    CyclicalBetaCallback,
    DataCollatorForTextVAE,
    DellaOriginalBetaCallback,
    TextVAETrainer,
    cyclical_beta,
    della_original_beta_schedule,
)

__all__ = [
    "CyclicalBetaCallback",
    "DataCollatorForTextVAE",
    "DellaOriginalBetaCallback",
    "TextVAEConfig",
    "TextVAETrainer",
    "cyclical_beta",
    "della_original_beta_schedule",
]

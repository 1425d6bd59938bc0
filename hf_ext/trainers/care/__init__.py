"""CARE: concentrating attention to escape the "Trap of Mediocrity" (Li et al., EMNLP 2022, arXiv:2211.07164).

* :mod:`.care_attention`: the attention function registered as ``"care"`` in transformers' ``AttentionInterface``
  (SDPA without a collector), the fused softmax/entropy autograd, :class:`CARERegularizer` and the per-forward
  :class:`CARECollector`. Importing this package registers the attention function.
* :mod:`.care_config`: :class:`CAREConfig` (``TrainingArguments`` plus the ``care_*`` fields).
* :mod:`.care_trainer`: :class:`CARETrainer` (``Trainer`` adding ``λ · penalty`` to the model's loss).

The regulariser is reconstructed from the paper's abstract; see ``docs/care_jiuge.md``.
"""

from .care_attention import (
    CARE_ATTENTION,
    COLLECTOR_KWARG,
    AttentionSite,
    CARECollector,
    CAREPenaltyOutput,
    CARERegularizer,
    care_attention_forward,
    enable_care_attention,
    softmax_with_entropy,
)
from .care_config import CAREConfig
from .care_trainer import CARETrainer

__all__ = [
    "CARE_ATTENTION",
    "COLLECTOR_KWARG",
    "AttentionSite",
    "CAREConfig",
    "CARECollector",
    "CAREPenaltyOutput",
    "CARERegularizer",
    "CARETrainer",
    "care_attention_forward",
    "enable_care_attention",
    "softmax_with_entropy",
]

"""The TRL internals DenseDPOTrainer relies on, checked once at import (TRL is pinned to `>=1.16,<1.17`).

DenseDPOTrainer does not copy TRL's `_compute_loss`. It relies on four behaviours of trl 1.16's `DPOTrainer`:

1. the policy and the reference are called as `model(**batch, labels=..., fused_lm_head=True)` and return an output
   whose `log_probs` (batch, seq_len - 1) are summed per row to get the sequence score (a forward hook rescales them);
2. every batch key except `completion_mask`, `ref_chosen_logps`, `ref_rejected_logps` is forwarded to the model (so
   the dense keys are popped first);
3. with `self.precompute_ref_logps` true, `_compute_loss` reads `inputs["ref_chosen_logps"]` /
   `inputs["ref_rejected_logps"]` instead of running a reference forward;
4. metrics are appended to `self._metrics[mode][name]` and averaged by `log()`;
5. LD-DPO's split is skipped when `self.ld_alpha is None` (the trainer folds `ld_alpha` into its own coefficients),
   and WPO's weight reads `per_token_logps - outputs.log_sum_sq_probs` (the hook shifts both by the same amount).

If a future TRL changes one of them, the import fails here with a clear message instead of training silently wrong.
"""

from __future__ import annotations

import inspect

import trl
from packaging.version import Version

__all__ = ["check_trl_compat"]

_SUPPORTED = (Version("1.16.0"), Version("1.17.0"))


def check_trl_compat() -> None:
    version = Version(trl.__version__)
    if not _SUPPORTED[0] <= version < _SUPPORTED[1]:
        raise ImportError(
            f"hf_ext's DenseDPOTrainer supports trl>=1.16,<1.17 (it hooks DPOTrainer internals), found trl "
            f"{trl.__version__}. Install `trl>=1.16,<1.17`."
        )
    from trl.trainer import dpo_trainer, utils

    source = inspect.getsource(dpo_trainer.DPOTrainer._compute_loss)
    required = (
        "fused_lm_head=True",
        "outputs.log_probs",
        'inputs["ref_chosen_logps"]',
        "self.precompute_ref_logps",
        "if self.ld_alpha is None:",
        "per_token_logps - outputs.log_sum_sq_probs",
    )
    missing = [needle for needle in required if needle not in source]
    if missing or not hasattr(utils, "add_fused_lm_head"):
        raise ImportError(
            f"trl {trl.__version__}: DPOTrainer._compute_loss no longer matches what DenseDPOTrainer hooks into "
            f"(missing: {missing or ['add_fused_lm_head']}). Pin `trl>=1.16,<1.17`."
        )

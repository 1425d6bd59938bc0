"""Configuration of the dense (token-weighted) DPO trainer of RLHF-V."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from trl import DPOConfig

from .weights import check_gamma

__all__ = ["DenseDPOConfig", "bf16_available"]


def bf16_available(use_cpu: bool = False) -> bool:
    """Whether ``TrainingArguments(bf16=True)`` is accepted here: a bf16-capable GPU (or XLA device) that is used."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return not use_cpu and (is_torch_bf16_gpu_available() or is_torch_xla_available())


@dataclass
class DenseDPOConfig(DPOConfig):
    r"""
    Configuration class for [`DenseDPOTrainer`]: TRL's [`~trl.DPOConfig`] plus the dense-DPO (DDPO) options of
    RLHF-V ([arXiv 2312.00849](https://huggingface.co/papers/2312.00849)).

    Every completion token gets a weight: `dense_gamma` (γ) on the tokens of corrected segments, 1 elsewhere. A
    sequence is scored by `Σ_t w_t·log p_t` (official code, `dense_normalize=False`) or by `Σ_t w_t·log p_t / Σ_t w_t`
    (paper Eq. 5, `dense_normalize=True`); the same weights apply to the policy and the reference. The DPO loss then
    uses these scores unchanged. The defaults (γ 1.1, β 0.1, weighted sum, official token diff) are the released
    RLHF-V recipe; the paper uses γ 5 and β 0.5.

    Unlike TRL, `bf16` left unset defaults to `True` only where a bf16-capable accelerator is used (fp32 on a CPU).

    Parameters:
        > Parameters that control the token weights

        dense_gamma (`float`, *optional*, defaults to `1.1`):
            Weight γ of the tokens in corrected segments. `1.1` is the maintainers' current recipe (RLHF-V README,
            Feb 2024, "trains more stably"); the paper uses `5.0`. With `1.0` and `dense_normalize=False` the trainer
            is exactly TRL's DPO.
        dense_normalize (`bool`, *optional*, defaults to `False`):
            Divide each sequence score by `N = Σ_t w_t = |y_u| + γ|y_c|` (paper Eq. 5). `False` is the released code
            (`dpo_use_average=False`).
        dense_min_match (`int`, *optional*, defaults to `3`):
            Token diff (used when the data has no `chosen_segments` / `rejected_segments`; it runs over the whole
            sequences, prompt included, first token dropped, as the official collator): matching blocks shorter than
            this many tokens are ignored, as in the official `get_diff_ids(min_match_size=3)`.
        dense_weight_insertions (`bool`, *optional*, defaults to `False`):
            Token diff: also weight pure insertions (tokens only in the chosen answer) and pure deletions (tokens only
            in the rejected answer). The official code weights replacements only.

        > Parameters that control the data

        chat_template (`str`, *optional*):
            Chat template used to render conversational rows: the name of one of the processing class's templates
            (e.g. `"muffin_v0"`) or a Jinja template. It is passed per row through TRL's `chat_template_kwargs`
            (a row that names its own `chat_template` keeps it); the processing class is not modified. Defaults to
            the processing class's `training_chat_template` when it has one (a [`~hf_ext.models.muffin.MuffinProcessor`]
            with the original formats names `"muffin_v0"`, the v0 training format RLHF-V trained with), else to its
            default template. The trainer checks the first row of each dataset and raises a `ValueError` if the
            template does not render the prompt as a prefix of prompt + completion (TRL would mis-split it).

        > Parameters that control the training

        sft_weight (`float`, *optional*, defaults to `0.0`):
            Weight of an SFT term on the chosen answer: the loss becomes `dpo_loss − sft_weight · mean(score(chosen))`
            with the same (weighted, optionally normalised) score as the DPO term, as the official code's
            `SFT_weight`.
        ref_logps_cache_dir (`str`, *optional*):
            Where `precompute_ref_log_probs=True` stores the per-token reference log-probabilities (one safetensors
            file per dataset, written atomically, keyed by the reference weights, the dataset fingerprint and the
            tokenization settings, **not** by γ or the segments). Defaults to `$HF_HOME/hf_ext/dense_dpo_ref_logps` (not
            under `output_dir`, which `push_to_hub` uploads).
            Unlike TRL, precomputation also works for vision datasets.

    > [!NOTE]
    > `use_weighting` (WPO) and `ld_alpha` (LD-DPO) combine with the dense weights. WPO multiplies each pair's loss by
    > the WPO weight of TRL computed from the **unweighted** per-token log-probs (the pair's probability under the
    > policy does not depend on which tokens DDPO emphasises); the loss itself uses the dense scores. LD-DPO multiplies
    > the dense coefficient of every tail token (past the shorter completion's length) by `ld_alpha`; with
    > `dense_normalize=True` the divisor stays `N = Σ_t w_t`. With `dense_gamma=1` both reduce to TRL's.
    """

    dense_gamma: float = field(
        default=1.1,
        metadata={"help": "Weight γ of corrected-segment tokens (1.1 = current official recipe, 5.0 = paper)."},
    )
    dense_normalize: bool = field(
        default=False,
        metadata={
            "help": "Divide sequence scores by N = Σ weights (paper Eq. 5). False = official code (weighted sum)."
        },
    )
    dense_min_match: int = field(
        default=3, metadata={"help": "Token diff: ignore matching blocks shorter than this many tokens."}
    )
    dense_weight_insertions: bool = field(
        default=False, metadata={"help": "Token diff: also weight pure insertions and deletions (official: False)."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template for conversational rows: a template name of the processor (e.g. muffin_v0) or a "
            "Jinja template. Default: the processor's training_chat_template, else its default template."
        },
    )
    sft_weight: float = field(
        default=0.0, metadata={"help": "Weight of the SFT term on the chosen answer (official SFT_weight)."}
    )
    ref_logps_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the per-token reference log-prob cache (default: $HF_HOME/hf_ext/dense_dpo_ref_logps)."
        },
    )

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            # TRL defaults to bf16, which TrainingArguments rejects without a bf16-capable accelerator: train in fp32
            # there so quick starts run on a CPU as written.
            self.bf16 = bf16_available(self.use_cpu)
        super().__post_init__()
        check_gamma(self.dense_gamma, "dense_gamma")
        if isinstance(self.dense_min_match, bool) or not isinstance(self.dense_min_match, numbers.Integral):
            raise TypeError(f"`dense_min_match` must be an integer, got {self.dense_min_match!r}.")
        if self.dense_min_match < 1:
            raise ValueError(f"`dense_min_match` must be >= 1, got {self.dense_min_match}.")
        if isinstance(self.sft_weight, bool) or not isinstance(self.sft_weight, numbers.Real):
            raise TypeError(f"`sft_weight` must be a real number, got {self.sft_weight!r}.")
        if not math.isfinite(self.sft_weight) or self.sft_weight < 0:
            raise ValueError(f"`sft_weight` must be a finite number >= 0, got {self.sft_weight}.")
        if self.sync_ref_model and self.precompute_ref_log_probs:
            raise ValueError("`sync_ref_model=True` cannot be combined with `precompute_ref_log_probs=True`.")

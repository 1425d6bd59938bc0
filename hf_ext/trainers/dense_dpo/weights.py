"""Which tokens are corrected, and how a sequence is scored, in dense DPO (RLHF-V, arXiv 2312.00849).

Everything about the token weighting lives here:

* **which tokens are corrected** — the official RLHF-V token diff over the whole tokenised sequence
  (:func:`sequence_corrected_masks`, exactly `DataCollatorForDPODataset` + `get_diff_ids` of thunlp/Muffin), its
  building block on two arbitrary id lists (:func:`corrected_token_masks`, :func:`correction_weights`), or explicit
  character spans of the completion text (:func:`segment_token_mask`, the single span → token function, defined in
  :mod:`hf_ext.utils.spans` and re-exported here);
* **how a sequence is scored** — :func:`dense_token_coefficients` is the single place where γ, the normalisation
  (paper Eq. 5) and LD-DPO's tail factor are applied: the score of a sequence is ``Σ_t c_t · log p_t`` with those
  coefficients, for the policy and the reference alike (:func:`dense_sequence_scores`).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from ...utils.spans import segment_token_mask, span_token_mask, validate_spans

__all__ = [
    "check_gamma",
    "corrected_token_masks",
    "correction_weights",
    "dense_sequence_scores",
    "dense_token_coefficients",
    "segment_token_mask",
    "sequence_corrected_masks",
    "sequence_correction_weights",
    "span_token_mask",
    "validate_spans",
]


def check_gamma(gamma: Any, name: str = "dense_gamma") -> float:
    """Return ``gamma`` as a float, or raise: it must be a finite real number > 0 (not a bool, not a string)."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(
            f"`{name}` must be a real number (RLHF-V: 1.1 = released recipe, 5.0 = paper), got "
            f"{type(gamma).__name__} {gamma!r}."
        )
    value = float(gamma)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"`{name}` must be a finite number > 0 (RLHF-V: 1.1 = released recipe, 5.0 = paper), got {gamma!r}: "
            "an infinite or NaN weight turns every dense score into NaN."
        )
    return value


# ----------------------------------------------------------------------------------------------- the token diff


def corrected_token_masks(
    rejected_ids: Sequence[int],
    chosen_ids: Sequence[int],
    min_match: int = 3,
    weight_insertions: bool = False,
) -> tuple[list[bool], list[bool]]:
    """Which tokens of two id lists belong to a corrected segment (the rule of the official `get_diff_ids`).

    ``difflib.SequenceMatcher(None, rejected_ids, chosen_ids)`` (default ``autojunk=True``, as the official code) gives
    the matching blocks; blocks shorter than ``min_match`` tokens are dropped (so short coincidental matches inside an
    edit are absorbed into it), except the zero-length end sentinel. The gaps between the kept blocks, including the
    leading gap before the first block and the trailing gap before the sentinel, are paired in order. A gap pair is a
    correction only when it is non-empty on both sides (a replacement); with ``weight_insertions=True`` pure insertions
    (chosen side only) and pure deletions (rejected side only) count too.

    This is the diff alone, on whatever ids it is given. The trainer diffs the **whole sequences** (prompt included,
    first token dropped) as the official training code does: see :func:`sequence_corrected_masks`.

    Args:
        rejected_ids (`Sequence[int]`): ids of the rejected (original, hallucinated) side.
        chosen_ids (`Sequence[int]`): ids of the chosen (corrected) side.
        min_match (`int`, *optional*, defaults to `3`): matching blocks shorter than this are ignored.
        weight_insertions (`bool`, *optional*, defaults to `False`): also flag pure insertions / deletions.

    Returns:
        `tuple[list[bool], list[bool]]`: ``(rejected_mask, chosen_mask)``, one flag per id.
    """
    if isinstance(min_match, bool) or not isinstance(min_match, numbers.Integral) or min_match < 1:
        raise ValueError(f"`min_match` must be an integer >= 1, got {min_match!r}.")
    rejected_ids, chosen_ids = list(rejected_ids), list(chosen_ids)
    rejected_mask = [False] * len(rejected_ids)
    chosen_mask = [False] * len(chosen_ids)
    blocks = difflib.SequenceMatcher(None, rejected_ids, chosen_ids).get_matching_blocks()
    kept = [b for b in blocks[:-1] if b.size >= min_match] + [blocks[-1]]  # the last block is the end sentinel
    prev_a = prev_b = 0
    for block in kept:
        gap_a, gap_b = range(prev_a, block.a), range(prev_b, block.b)
        if (len(gap_a) > 0 and len(gap_b) > 0) or (weight_insertions and (len(gap_a) > 0 or len(gap_b) > 0)):
            for i in gap_a:
                rejected_mask[i] = True
            for j in gap_b:
                chosen_mask[j] = True
        prev_a, prev_b = block.a + block.size, block.b + block.size
    return rejected_mask, chosen_mask


def correction_weights(
    rejected_ids: Sequence[int],
    chosen_ids: Sequence[int],
    gamma: float,
    min_match: int = 3,
    weight_insertions: bool = False,
) -> tuple[list[float], list[float]]:
    """Weights ``gamma`` on the tokens :func:`corrected_token_masks` flags, ``1.0`` elsewhere, for two id lists.

    Args:
        rejected_ids (`Sequence[int]`): ids of the rejected (original, hallucinated) side.
        chosen_ids (`Sequence[int]`): ids of the chosen (corrected) side.
        gamma (`float`): weight of the tokens in corrected segments (RLHF-V's γ).
        min_match (`int`, *optional*, defaults to `3`): matching blocks shorter than this are ignored.
        weight_insertions (`bool`, *optional*, defaults to `False`): also weight pure insertions / deletions.

    Returns:
        `tuple[list[float], list[float]]`: ``(rejected_weights, chosen_weights)``, one float per id.

    Example:
    ```python
    >>> correction_weights([1, 2, 3, 9, 4, 5, 6], [1, 2, 3, 7, 8, 4, 5, 6], gamma=5.0)
    ([1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 5.0, 5.0, 1.0, 1.0, 1.0])
    ```
    """
    gamma = check_gamma(gamma, "gamma")
    rejected_mask, chosen_mask = corrected_token_masks(rejected_ids, chosen_ids, min_match, weight_insertions)
    return [gamma if m else 1.0 for m in rejected_mask], [gamma if m else 1.0 for m in chosen_mask]


def sequence_corrected_masks(
    rejected_ids: Sequence[int],
    chosen_ids: Sequence[int],
    min_match: int = 3,
    weight_insertions: bool = False,
) -> tuple[list[bool], list[bool]]:
    """Corrected tokens of a preference pair exactly as RLHF-V's training code finds them.

    The official collator (thunlp/Muffin `DataCollatorForDPODataset`) diffs the **whole tokenised sequences** — prompt
    (image placeholder tokens included) followed by the answer — minus their first token:
    ``get_diff_ids(rejected_ids[1:], chosen_ids[1:], min_match_size=3)``. The shared prompt therefore forms one
    matching block together with the start of the answer, which an answer-only diff would not see, and `difflib`'s
    ``autojunk`` heuristic counts the prompt's tokens too (a sequence of ≥ 200 ids).

    Args:
        rejected_ids (`Sequence[int]`): the full rejected sequence (prompt + rejected answer), as the model sees it.
        chosen_ids (`Sequence[int]`): the full chosen sequence (prompt + chosen answer).
        min_match (`int`, *optional*, defaults to `3`): matching blocks shorter than this are ignored.
        weight_insertions (`bool`, *optional*, defaults to `False`): also flag pure insertions / deletions (not
            official).

    Returns:
        `tuple[list[bool], list[bool]]`: ``(rejected_mask, chosen_mask)`` of lengths ``len(ids) - 1``: entry ``j``
        belongs to token ``ids[j + 1]``, i.e. to the label-shifted position ``j`` of the per-token log-probs (the
        official layout). Flags on prompt positions are possible (an answer repeating the prompt) and are masked out
        by the loss.
    """
    return corrected_token_masks(*_without_first_token(rejected_ids, chosen_ids), min_match, weight_insertions)


def sequence_correction_weights(
    rejected_ids: Sequence[int],
    chosen_ids: Sequence[int],
    gamma: float,
    min_match: int = 3,
    weight_insertions: bool = False,
) -> tuple[list[float], list[float]]:
    """The official RLHF-V token weights of a pair: γ on :func:`sequence_corrected_masks`' tokens, 1 elsewhere.

    Same arguments and layout (length ``len(ids) - 1``, entry ``j`` = token ``ids[j + 1]``) as
    :func:`sequence_corrected_masks`, plus ``gamma`` (`float`), RLHF-V's `dpo_token_weight`.

    Example:
    ```python
    >>> prompt = [1, 20, 21, 22]  # BOS + prompt
    >>> sequence_correction_weights(prompt + [5, 6, 7, 8, 9, 10], prompt + [5, 6, 17, 8, 9, 10], gamma=5.0)
    ([1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0])
    ```
    """
    return correction_weights(*_without_first_token(rejected_ids, chosen_ids), gamma, min_match, weight_insertions)


def _without_first_token(rejected_ids: Sequence[int], chosen_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Both whole sequences minus their first token, as the official collator diffs them."""
    if len(rejected_ids) < 1 or len(chosen_ids) < 1:
        raise ValueError("The whole sequences (prompt + answer) of a pair must be non-empty.")
    return list(rejected_ids)[1:], list(chosen_ids)[1:]


# ------------------------------------------------------------------------------------------ the scoring rule


def dense_token_coefficients(
    corrected: torch.Tensor,
    loss_mask: torch.Tensor,
    gamma: float,
    normalize: bool = False,
    ld_alpha: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    r"""The coefficient `c_t` of every per-token log-prob: **how a sequence is scored** in dense DPO.

    The score of a sequence is `s = Σ_t c_t · log p_t` (see :func:`dense_sequence_scores`), for the policy and the
    reference alike, with

    * `w_t = γ` on corrected tokens, `1` on the other scored tokens, `0` elsewhere (prompt, padding);
    * `c_t = w_t` (`normalize=False`, the released code: `compute_weighted_logp` with `dpo_use_average=False`), or
      `c_t = w_t / Σ_u w_u` (`normalize=True`, paper Eq. 5 / the official `dpo_use_average=True`:
      `N = |y_u| + γ|y_c|`);
    * with LD-DPO (`ld_alpha`, TRL's "shared / tail" split), `c_t` is further multiplied by `ld_alpha` on the tail
      tokens of the longer completion of each pair (positions past the length of the shorter one). The normalising
      `N` stays `Σ_u w_u` (the dense weights alone).

    Args:
        corrected (`torch.Tensor`): `(2B, T)` bool, the corrected tokens; rows are `[chosen_0..B-1, rejected_0..B-1]`.
        loss_mask (`torch.Tensor`): `(2B, T)`, 1 on the scored (completion) positions.
        gamma (`float`): RLHF-V's γ.
        normalize (`bool`, *optional*, defaults to `False`): divide by `N = Σ_t w_t` (paper Eq. 5).
        ld_alpha (`float`, *optional*): LD-DPO's weight of the tail tokens.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float64`): dtype of the result.

    Returns:
        `torch.Tensor`: `(2B, T)` coefficients.
    """
    gamma = check_gamma(gamma)
    mask = loss_mask.to(dtype)
    weights = torch.where(corrected.bool(), torch.tensor(gamma, dtype=dtype), torch.tensor(1.0, dtype=dtype)) * mask
    if normalize:
        # Rows without a scored token stay at 0 (the official code stops on the NaN of 0/0).
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
    if ld_alpha is not None:
        position = mask.cumsum(dim=1)
        lengths = mask.sum(dim=1)
        chosen_len, rejected_len = lengths.chunk(2, dim=0)
        shared = torch.minimum(chosen_len, rejected_len).repeat(2)
        tail = (position > shared.unsqueeze(1)) & (mask > 0)
        weights = torch.where(tail, weights * float(ld_alpha), weights)
    return weights


def dense_sequence_scores(token_logps: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Sequence scores ``Σ_t c_t · log p_t`` from per-token log-probs and :func:`dense_token_coefficients`."""
    return (token_logps * coefficients.to(token_logps.dtype)).sum(dim=-1)

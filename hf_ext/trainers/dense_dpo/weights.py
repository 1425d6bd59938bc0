"""Per-token correction weights for dense DPO (RLHF-V, arXiv 2312.00849).

Two sources of "corrected segments":

* the official RLHF-V token diff (:func:`correction_weights`, :func:`corrected_token_masks`), used when the data has
  no segment annotation (the released RLHF-V dataset has none);
* explicit character spans of the completion text (:func:`span_token_mask`), mapped to tokens through the fast
  tokenizer's offsets.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = ["corrected_token_masks", "correction_weights", "span_token_mask", "validate_spans"]


def corrected_token_masks(
    rejected_ids: Sequence[int],
    chosen_ids: Sequence[int],
    min_match: int = 3,
    weight_insertions: bool = False,
) -> tuple[list[bool], list[bool]]:
    """Which tokens of the rejected and chosen completions belong to a corrected segment (official RLHF-V rule).

    ``difflib.SequenceMatcher(None, rejected_ids, chosen_ids)`` (default ``autojunk=True``, as the official code) gives
    the matching blocks; blocks shorter than ``min_match`` tokens are dropped (so short coincidental matches inside an
    edit are absorbed into it), except the zero-length end sentinel. The gaps between the kept blocks, including the
    leading gap before the first block and the trailing gap before the sentinel, are paired in order. A gap pair is a
    correction only when it is non-empty on both sides (a replacement); with ``weight_insertions=True`` pure insertions
    (chosen side only) and pure deletions (rejected side only) count too.

    Returns:
        `tuple[list[bool], list[bool]]`: ``(rejected_mask, chosen_mask)``, one flag per token.
    """
    if min_match < 1:
        raise ValueError(f"`min_match` must be >= 1, got {min_match}.")
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
    """Dense-DPO token weights of a preference pair: ``gamma`` on corrected tokens, ``1.0`` elsewhere.

    The corrected tokens come from the official RLHF-V token diff of the rejected vs the chosen completion, see
    :func:`corrected_token_masks`.

    Args:
        rejected_ids (`Sequence[int]`): token ids of the rejected (original, hallucinated) completion.
        chosen_ids (`Sequence[int]`): token ids of the chosen (corrected) completion.
        gamma (`float`): weight of the tokens in corrected segments (RLHF-V's γ).
        min_match (`int`, *optional*, defaults to `3`): matching blocks shorter than this are ignored.
        weight_insertions (`bool`, *optional*, defaults to `False`): also weight pure insertions / deletions.

    Returns:
        `tuple[list[float], list[float]]`: ``(rejected_weights, chosen_weights)``, one float per token.

    Example:
    ```python
    >>> correction_weights([1, 2, 3, 9, 4, 5, 6], [1, 2, 3, 7, 8, 4, 5, 6], gamma=5.0)
    ([1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 5.0, 5.0, 1.0, 1.0, 1.0])
    ```
    """
    rejected_mask, chosen_mask = corrected_token_masks(rejected_ids, chosen_ids, min_match, weight_insertions)
    gamma = float(gamma)
    return [gamma if m else 1.0 for m in rejected_mask], [gamma if m else 1.0 for m in chosen_mask]


def validate_spans(spans, text_length: int, where: str) -> list[tuple[int, int]]:
    """Check character spans ``[[start, end], ...]`` (end exclusive) against a completion of ``text_length`` chars."""
    if spans is None:
        return []
    out = []
    for span in spans:
        if not isinstance(span, (list, tuple)) or len(span) != 2:
            raise ValueError(f"{where}: each segment must be a [start, end] pair of character offsets, got {span!r}.")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= text_length:
            raise ValueError(
                f"{where}: segment {[start, end]} is outside the completion text of {text_length} characters "
                "(need 0 <= start < end <= len(text); offsets are relative to the completion text, end exclusive)."
            )
        out.append((start, end))
    return out


def span_token_mask(
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int]],
    char_shift: int = 0,
) -> list[bool]:
    """Flag every token whose character range ``offsets[i]`` overlaps one of ``spans`` (shifted by ``char_shift``).

    ``offsets`` are a fast tokenizer's ``offset_mapping`` over the rendered text; ``spans`` are relative to the
    completion text, which starts at ``char_shift`` in the rendered text. Zero-width tokens (special tokens) are never
    flagged.
    """
    shifted = [(s + char_shift, e + char_shift) for s, e in spans]
    return [tok_e > tok_s and any(tok_s < e and s < tok_e for s, e in shifted) for tok_s, tok_e in offsets]

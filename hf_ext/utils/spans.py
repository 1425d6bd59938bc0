"""Character spans of a text and the tokens they cover: the one span → token mapping of hf_ext.

Spans are ``[start, end]`` character offsets (end exclusive) of a completion text, as RLHF-V-style corrections give
them (``chosen_segments`` / ``rejected_segments``). :func:`validate_spans` checks them (the RLHF-V builder, the
annotation app and dense DPO all use it), :func:`span_token_mask` flags the tokens a fast tokenizer's
``offset_mapping`` places over them, and :func:`segment_token_mask` does both.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["segment_token_mask", "span_token_mask", "validate_spans"]


def validate_spans(spans: Any, text_length: int, where: str) -> list[tuple[int, int]]:
    """Check character spans ``[[start, end], ...]`` (end exclusive) against a text of ``text_length`` characters.

    Args:
        spans (`list[list[int]]` or `None`): the spans. ``None`` means "no spans" (dense DPO then uses its token diff);
            an empty list means "nothing corrected on this side".
        text_length (`int`): length of the text in characters.
        where (`str`): names the row and column in error messages.

    Returns:
        `list[tuple[int, int]]`: the spans as ``(start, end)`` integer pairs.

    Raises:
        `TypeError` / `ValueError`: naming ``where``, for anything but a list of non-empty ``[start, end]`` integer
        pairs with ``0 <= start < end <= text_length``.
    """
    if spans is None:
        return []
    if isinstance(spans, (str, bytes)):
        raise TypeError(
            f"{where}: segments must be a list of [start, end] character offsets, got a string {spans[:60]!r}. "
            "Parse it first (e.g. `json.loads`)."
        )
    if not isinstance(spans, (list, tuple)):
        raise TypeError(
            f"{where}: segments must be a list of [start, end] character offsets, got {type(spans).__name__}."
        )
    out = []
    for span in spans:
        if isinstance(span, (str, bytes)) or not isinstance(span, (list, tuple)) or len(span) != 2:
            raise ValueError(f"{where}: each segment must be a [start, end] pair of character offsets, got {span!r}.")
        if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in span):
            raise TypeError(f"{where}: segment offsets must be integers, got {span!r}.")
        start, end = int(span[0]), int(span[1])
        if start == end:
            raise ValueError(
                f"{where}: segment {[start, end]} is empty (start == end); a segment covers the characters "
                "text[start:end] with start < end. Drop it, or give [] for a side with no corrected segment."
            )
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
    flagged. Spans are not validated: use :func:`segment_token_mask`.
    """
    shifted = [(s + char_shift, e + char_shift) for s, e in spans]
    return [tok_e > tok_s and any(tok_s < e and s < tok_e for s, e in shifted) for tok_s, tok_e in offsets]


def segment_token_mask(
    offsets: Sequence[tuple[int, int]],
    spans: Any,
    text_length: int,
    char_shift: int,
    where: str,
) -> list[bool]:
    """The single span → token function: validate ``spans`` of a completion text and flag the tokens they overlap.

    Args:
        offsets (`Sequence[tuple[int, int]]`): ``offset_mapping`` of the tokens over the rendered text.
        spans (`list[list[int]]`): ``[start, end)`` character offsets relative to the completion text.
        text_length (`int`): length of the completion text in characters.
        char_shift (`int`): where the completion text starts in the rendered text.
        where (`str`): names the row and column in error messages.

    Returns:
        `list[bool]`: one flag per entry of ``offsets``.
    """
    return span_token_mask(offsets, validate_spans(spans, text_length, where), char_shift)

"""Segment-level corrections of a model answer, as RLHF-V's annotators made them.

A :class:`SegmentCorrection` starts from the model's answer (the *rejected* text) and applies span rewrites: "replace
characters ``[start, end)`` of the current text by ``new``". It keeps track of which characters of the final
(*chosen*) text were written by the annotator and which characters of the original answer they replace, so the
explicit character spans that ``DenseDPOTrainer`` weights with γ come out exactly, without a diff:

    >>> c = SegmentCorrection("there are two red circles on the left .")
    >>> c.replace(10, 13, "three")          # "two" -> "three"
    >>> c.replace(20, 27, "squares")        # "circles" (current text coordinates) -> "squares"
    >>> c.text
    'there are three red squares on the left .'
    >>> c.spans()
    ([[10, 15], [20, 27]], [[10, 13], [18, 25]])

Spans are ``[start, end]`` with ``end`` exclusive, the form ``load_rlhf_v(..., with_segments=True)`` returns. A pure
insertion marks chosen characters only, a pure deletion rejected characters only. Written characters that end up
next to each other form one chosen segment, removed original characters next to each other one rejected segment
(so edits that touch or overlap merge); everything typed counts as corrected, even a character retyped unchanged.
"""

from __future__ import annotations

__all__ = ["SegmentCorrection"]


def _runs(flags: list[bool]) -> list[list[int]]:
    """``[start, end]`` of the maximal runs of ``True`` in ``flags``."""
    spans, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append([start, i])
            start = None
    return spans


class SegmentCorrection:
    """Span rewrites of ``original`` with undo and exact chosen/rejected character spans.

    Every character of the current text remembers where it comes from: an index of ``original`` (kept) or ``-1``
    (written by the annotator). The chosen segments are the runs of written characters, the rejected segments the runs
    of original characters no longer kept.

    Args:
        original (`str`): the model's answer; must not be empty or whitespace only.
    """

    def __init__(self, original: str):
        if not isinstance(original, str) or not original.strip():
            raise ValueError("The model's answer is empty: there is nothing to correct (skip this item).")
        self.original = original
        self._text = original
        self._source: list[int] = list(range(len(original)))
        self._history: list[tuple[str, list[int]]] = []

    @property
    def text(self) -> str:
        """The corrected (chosen) text so far."""
        return self._text

    @property
    def num_edits(self) -> int:
        """How many edits can be undone."""
        return len(self._history)

    @property
    def changed(self) -> bool:
        """Whether the current text differs from the original in any corrected segment."""
        return self._source != list(range(len(self.original)))

    def replace(self, start: int, end: int, new: str) -> None:
        """Replace characters ``[start, end)`` of the current text by ``new``.

        Raises:
            ValueError: a span outside the text (``0 <= start <= end <= len(text)`` is required), an empty edit
                (empty span and empty replacement), or a replacement equal to the selected text.
        """
        text = self._text
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (start, end)):
            raise ValueError(f"The span must be two integers, got start={start!r}, end={end!r}.")
        if not 0 <= start <= end <= len(text):
            raise ValueError(
                f"The span [{start}, {end}) is outside the answer (0 <= start <= end <= {len(text)} is required): "
                "select the words to correct in the current answer."
            )
        if not isinstance(new, str):
            raise ValueError(f"The replacement must be a string, got {type(new).__name__}.")
        if start == end and not new:
            raise ValueError("Nothing to do: select a span to replace or delete, or type text to insert.")
        if text[start:end] == new:
            raise ValueError(f"The replacement is identical to the selected text {new!r}.")
        self._history.append((self._text, self._source))
        self._text = text[:start] + new + text[end:]
        self._source = self._source[:start] + [-1] * len(new) + self._source[end:]

    def undo(self) -> bool:
        """Revert the last edit; ``False`` if there is none."""
        if not self._history:
            return False
        self._text, self._source = self._history.pop()
        return True

    def spans(self) -> tuple[list[list[int]], list[list[int]]]:
        """``(chosen_segments, rejected_segments)``: the corrected character spans of :attr:`text` and the
        character spans of :attr:`original` that are no longer kept (``[start, end]``, end exclusive)."""
        kept = set(self._source)
        chosen = _runs([s < 0 for s in self._source])
        rejected = _runs([i not in kept for i in range(len(self.original))])
        return chosen, rejected

    def highlights(self) -> list[tuple[str, str | None]]:
        """The current text as ``(text, label)`` pieces for ``gr.HighlightedText`` (``"corrected"`` or ``None``)."""
        out: list[tuple[str, str | None]] = []
        for i, ch in enumerate(self._text):
            label = "corrected" if self._source[i] < 0 else None
            if out and out[-1][1] == label:
                out[-1] = (out[-1][0] + ch, label)
            else:
                out.append((ch, label))
        return out

    def to_dict(self) -> dict:
        """The state as plain data (for a session store); :meth:`from_dict` restores it."""
        return {"original": self.original, "text": self._text, "source": self._source, "history": self._history}

    @classmethod
    def from_dict(cls, data: dict) -> SegmentCorrection:
        obj = cls(data["original"])
        obj._text, obj._source = data["text"], list(data["source"])
        obj._history = [(t, list(s)) for t, s in data["history"]]
        return obj

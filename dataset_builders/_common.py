"""Shared machinery for hf_ext's dataset builders: bad-row policy and reporting.

Every builder takes ``on_bad_row="raise" | "skip"``. With ``"raise"`` the first bad row raises a
:class:`BadRowError` that names the file, the row number, the row's ``idx`` and the reason. With ``"skip"``
bad rows are skipped, never silently: they are collected in a :class:`BadRowReport`, logged as a warning
(how many and which) and attached to the returned dataset's ``info.description`` as well as returned by the
loader functions that accept ``return_report=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

OnBadRow = Literal["raise", "skip"]


class BadRowError(ValueError):
    """A row of an input file cannot be converted. The message names file, row, ``idx`` and the reason."""

    def __init__(self, source: str, row: int, idx: Any, reason: str):
        self.source, self.row, self.idx, self.reason = source, row, idx, reason
        super().__init__(
            f"{source}: row {row} (idx={idx!r}) is invalid: {reason}. "
            "Fix or remove the row, or pass on_bad_row='skip' to skip bad rows (they are reported)."
        )


@dataclass
class BadRow:
    source: str
    row: int
    idx: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: row {self.row} (idx={self.idx!r}): {self.reason}"


@dataclass
class BadRowReport:
    """Collects the rows a builder skipped (``on_bad_row="skip"``) or raises on the first (``"raise"``)."""

    on_bad_row: OnBadRow = "raise"
    rows: list[BadRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad_row not in ("raise", "skip"):
            raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {self.on_bad_row!r}.")

    def bad(self, source: str, row: int, idx: Any, reason: str) -> None:
        """Record a bad row: raise under ``"raise"``, remember it under ``"skip"``."""
        if self.on_bad_row == "raise":
            raise BadRowError(source, row, idx, reason)
        self.rows.append(BadRow(str(source), row, idx, reason))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def idxs(self) -> list[Any]:
        return [r.idx for r in self.rows]

    def summary(self, max_rows: int = 20) -> str:
        if not self.rows:
            return "no bad rows"
        lines = [f"skipped {len(self.rows)} bad row(s):"]
        lines += [f"  - {r}" for r in self.rows[:max_rows]]
        if len(self.rows) > max_rows:
            lines.append(f"  ... and {len(self.rows) - max_rows} more")
        return "\n".join(lines)

    def log(self, name: str) -> None:
        if self.rows:
            logger.warning("%s: %s", name, self.summary())

"""Poem forms for Jiuge: what a 绝句, 律诗, 词 (by 词牌) or 对联 looks like, and how to recognise one.

A form is described by its lines: how many characters each line has and which punctuation marks may end it. A
*line* here is a run of characters closed by one punctuation mark (``，。、；：？！``), which is how the
``chinese-poetry`` corpus writes bodies (``白日依山尽，黄河入海流。``).

The four regulated shi forms and the couplet are fixed. 词 forms are **learned from a corpus** with
:func:`learn_ci_forms`: for each 词牌 the most frequent line-length pattern (its mode) is taken as the tune's
pattern, and the punctuation allowed at each line end is what the corpus uses there. The Jiuge paper (Hu & Sun,
LREC 2020) does not describe how it obtained 词牌 patterns (only its abstract could be read); this is a
reconstruction.

This module imports only the standard library so that it can travel with a checkpoint as remote code.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "PUNCTUATION",
    "SENTENCE_END_PUNCTUATION",
    "PoemForm",
    "BUILTIN_FORMS",
    "couplet_form",
    "split_lines",
    "is_hanzi",
    "classify_shi",
    "learn_ci_forms",
]

FormKind = Literal["jueju", "lushi", "ci", "duilian"]

#: Punctuation marks that close a line. Every other character of a body must be a Chinese character.
PUNCTUATION = "，。、；：？！"
#: Marks that close a sentence (a couplet in shi); the others close a line inside a sentence.
SENTENCE_END_PUNCTUATION = "。？！"

_CN_DIGITS = "〇一二三四五六七八九十"
_LINE_RE = re.compile(f"([^{PUNCTUATION}]*)([{PUNCTUATION}])")


def is_hanzi(ch: str) -> bool:
    """Whether ``ch`` is a single CJK unified ideograph (basic block, extensions A–F or compatibility)."""
    if len(ch) != 1:
        return False
    cp = ord(ch)
    return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2FA1F or 0xF900 <= cp <= 0xFAFF


def split_lines(body: str) -> list[tuple[str, str]]:
    """Split a poem body into ``(characters, punctuation)`` lines.

    Whitespace is ignored. Raises a `ValueError` when the body is empty, when text follows the last punctuation
    mark, or when a line is empty (two marks in a row).

    Example: ``split_lines("白日依山尽，黄河入海流。")`` is ``[("白日依山尽", "，"), ("黄河入海流", "。")]``.
    """
    text = "".join(body.split())
    if not text:
        raise ValueError("the poem body is empty.")
    lines: list[tuple[str, str]] = []
    end = 0
    for m in _LINE_RE.finditer(text):
        if m.start() != end:  # pragma: no cover - the pattern matches contiguously
            break
        chars, punct = m.group(1), m.group(2)
        if not chars:
            raise ValueError(f"empty line before {punct!r} at character {m.start()} of {text!r}.")
        lines.append((chars, punct))
        end = m.end()
    if end != len(text):
        raise ValueError(
            f"text {text[end:]!r} after the last punctuation mark is not closed by one of {PUNCTUATION!r}."
        )
    return lines


@dataclass(frozen=True)
class PoemForm:
    """The shape of one poem form.

    Args:
        name (`str`):
            The form's name as written in the sample's form field, e.g. ``"五言绝句"`` or a 词牌 like ``"浣溪沙"``.
        kind (`str`):
            One of ``"jueju"`` (绝句), ``"lushi"`` (律诗), ``"ci"`` (词) and ``"duilian"`` (对联).
        line_lengths (`tuple[int, ...]`):
            Number of characters of each line, punctuation excluded.
        punctuation (`tuple[str, ...]`):
            For each line, the punctuation marks allowed at its end; the first one is the canonical mark.
        rhyme_lines (`tuple[int, ...]`, *optional*, defaults to `()`):
            0-based indices of the lines whose last characters must rhyme (the even lines of shi).
        regulated (`bool`, *optional*, defaults to `False`):
            Whether the tonal (平仄) rules of regulated verse apply.
        support (`float`, *optional*):
            For learned 词 forms: the share of the tune's poems in the corpus that follow this pattern.
    """

    name: str
    kind: FormKind
    line_lengths: tuple[int, ...]
    punctuation: tuple[str, ...]
    rhyme_lines: tuple[int, ...] = ()
    regulated: bool = False
    support: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("jueju", "lushi", "ci", "duilian"):
            raise ValueError(f"PoemForm {self.name!r}: kind must be jueju, lushi, ci or duilian, got {self.kind!r}.")
        if not self.line_lengths:
            raise ValueError(f"PoemForm {self.name!r}: line_lengths is empty; a form needs at least one line.")
        if len(self.line_lengths) != len(self.punctuation):
            raise ValueError(
                f"PoemForm {self.name!r}: {len(self.line_lengths)} line_lengths but {len(self.punctuation)} "
                "punctuation entries; give one entry (a string of allowed marks) per line."
            )
        if any(n < 1 for n in self.line_lengths):
            raise ValueError(f"PoemForm {self.name!r}: every line length must be >= 1, got {self.line_lengths}.")
        for i, marks in enumerate(self.punctuation):
            if not marks or any(m not in PUNCTUATION for m in marks):
                raise ValueError(
                    f"PoemForm {self.name!r}: punctuation[{i}]={marks!r} must be a non-empty string of marks "
                    f"from {PUNCTUATION!r}."
                )
        if any(not 0 <= i < len(self.line_lengths) for i in self.rhyme_lines):
            raise ValueError(f"PoemForm {self.name!r}: rhyme_lines {self.rhyme_lines} out of range.")

    @property
    def num_lines(self) -> int:
        return len(self.line_lengths)

    @property
    def num_characters(self) -> int:
        """Characters of the body, punctuation excluded."""
        return sum(self.line_lengths)

    @property
    def body_length(self) -> int:
        """Tokens of the body with one character per token: characters plus one mark per line."""
        return self.num_characters + self.num_lines

    def template(self) -> str:
        """The body pattern with ``X`` for a character, e.g. ``"XXXXX，XXXXX。XXXXX，XXXXX。"``."""
        return "".join("X" * n + p[0] for n, p in zip(self.line_lengths, self.punctuation))

    def check(self, body: str, check_punctuation: bool = True) -> list[str]:
        """Why ``body`` does not follow this form; an empty list means it does.

        Args:
            body (`str`): the poem body.
            check_punctuation (`bool`, *optional*, defaults to `True`): also require each line's mark to be one
                of the allowed marks.
        """
        try:
            lines = split_lines(body)
        except ValueError as e:
            return [str(e)]
        problems = []
        if len(lines) != self.num_lines:
            problems.append(f"{len(lines)} lines, expected {self.num_lines}")
        for i, ((chars, punct), n, marks) in enumerate(zip(lines, self.line_lengths, self.punctuation)):
            if len(chars) != n:
                problems.append(f"line {i + 1} has {len(chars)} characters, expected {n}")
            if check_punctuation and punct not in marks:
                problems.append(f"line {i + 1} ends with {punct!r}, expected one of {marks!r}")
            bad = [c for c in chars if not is_hanzi(c)]
            if bad:
                problems.append(f"line {i + 1} contains non-Chinese characters {''.join(bad)!r}")
        return problems

    def matches(self, body: str, check_punctuation: bool = True) -> bool:
        """Whether ``body`` follows this form (see :meth:`check`)."""
        return not self.check(body, check_punctuation=check_punctuation)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (stored in :class:`JiugeConfig.ci_forms`)."""
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "line_lengths": list(self.line_lengths),
            "punctuation": list(self.punctuation),
            "rhyme_lines": list(self.rhyme_lines),
            "regulated": self.regulated,
        }
        if self.support is not None:
            d["support"] = self.support
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PoemForm:
        return cls(
            name=d["name"],
            kind=d["kind"],
            line_lengths=tuple(int(n) for n in d["line_lengths"]),
            punctuation=tuple(d["punctuation"]),
            rhyme_lines=tuple(int(i) for i in d.get("rhyme_lines", ())),
            regulated=bool(d.get("regulated", False)),
            support=d.get("support"),
        )


def _shi_form(name: str, kind: FormKind, chars: int, lines: int) -> PoemForm:
    # Lines alternate: the first line of a couplet ends with a comma, the second closes the sentence.
    punct = tuple("，" if i % 2 == 0 else SENTENCE_END_PUNCTUATION for i in range(lines))
    return PoemForm(
        name=name,
        kind=kind,
        line_lengths=(chars,) * lines,
        punctuation=punct,
        rhyme_lines=tuple(range(1, lines, 2)),
        regulated=True,
    )


def couplet_form(chars_per_line: int) -> PoemForm:
    """A 对联 (couplet) of two lines of ``chars_per_line`` characters, named e.g. ``"七言对联"``."""
    if not 1 <= chars_per_line <= 10:
        raise ValueError(f"chars_per_line must be between 1 and 10 for a named couplet form, got {chars_per_line}.")
    name = f"{_CN_DIGITS[chars_per_line]}言对联"
    return PoemForm(name=name, kind="duilian", line_lengths=(chars_per_line,) * 2, punctuation=("，；", "。"))


#: The fixed forms, by name. 词 forms come from :func:`learn_ci_forms` (or a model config's ``ci_forms``).
BUILTIN_FORMS: dict[str, PoemForm] = {
    f.name: f
    for f in (
        _shi_form("五言绝句", "jueju", 5, 4),
        _shi_form("七言绝句", "jueju", 7, 4),
        _shi_form("五言律诗", "lushi", 5, 8),
        _shi_form("七言律诗", "lushi", 7, 8),
        couplet_form(5),
        couplet_form(7),
    )
}


def classify_shi(body: str) -> PoemForm | None:
    """The regulated shi form whose line count and line lengths ``body`` has, or ``None``.

    Only line count and line lengths decide (4 or 8 lines, all of 5 or all of 7 characters); punctuation is not
    required to be canonical because the corpus sometimes ends a line with ``？`` or ``！``. Raises a
    `ValueError` (from :func:`split_lines`) when the body is malformed.
    """
    lines = split_lines(body)
    lengths = {len(chars) for chars, _ in lines}
    if len(lengths) != 1 or len(lines) not in (4, 8):
        return None
    n = lengths.pop()
    if n not in (5, 7):
        return None
    return BUILTIN_FORMS[f"{_CN_DIGITS[n]}言{'绝句' if len(lines) == 4 else '律诗'}"]


def learn_ci_forms(
    samples: Iterable[tuple[str, str]],
    min_count: int = 5,
    min_punctuation_share: float = 0.1,
    exclude: Iterable[str] = ("失调名",),
) -> dict[str, PoemForm]:
    """Learn one :class:`PoemForm` per 词牌 from ``(cipai, body)`` pairs.

    For each tune the most frequent tuple of line lengths is its pattern (ties go to the pattern seen first). At
    each line end the allowed marks are those used by at least ``min_punctuation_share`` of the poems that follow
    the pattern, most frequent first. Bodies that cannot be split into lines are ignored here (the dataset builder
    reports them).

    Args:
        samples (`Iterable[tuple[str, str]]`): ``(词牌, body)`` pairs.
        min_count (`int`, *optional*, defaults to 5): tunes whose pattern is followed by fewer poems are left out.
        min_punctuation_share (`float`, *optional*, defaults to 0.1): see above.
        exclude (`Iterable[str]`, *optional*, defaults to `("失调名",)`): names that are not tunes ("tune name lost").

    Returns:
        `dict[str, PoemForm]`: 词牌 -> form, with ``support`` = share of the tune's poems that follow the pattern.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}.")
    excluded = set(exclude)
    by_tune: dict[str, list[list[tuple[str, str]]]] = defaultdict(list)
    for cipai, body in samples:
        if not cipai or cipai in excluded:
            continue
        try:
            by_tune[cipai].append(split_lines(body))
        except ValueError:
            continue
    forms: dict[str, PoemForm] = {}
    for cipai, poems in by_tune.items():
        patterns = Counter(tuple(len(chars) for chars, _ in lines) for lines in poems)
        pattern, count = patterns.most_common(1)[0]
        if count < min_count:
            continue
        marks: list[Counter] = [Counter() for _ in pattern]
        for lines in poems:
            if tuple(len(chars) for chars, _ in lines) == pattern:
                for i, (_, punct) in enumerate(lines):
                    marks[i][punct] += 1
        punctuation = tuple(
            "".join(m for m, c in counter.most_common() if c >= min_punctuation_share * count)
            or counter.most_common(1)[0][0]
            for counter in marks
        )
        forms[cipai] = PoemForm(
            name=cipai,
            kind="ci",
            line_lengths=pattern,
            punctuation=punctuation,
            support=count / len(poems),
        )
    return forms

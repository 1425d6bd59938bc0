"""Form, rhyme and tone metrics for classical Chinese poetry (Jiuge), plus Dist-n over characters.

Plain functions and an ``evaluate`` wrapper: ``from hf_ext.metrics.poetry import poetry_metrics`` or
``evaluate.load("path/to/hf_ext/metrics/poetry.py")``.

* **Form accuracy**: the share of poems whose number of lines, characters per line and (optionally) line-end
  punctuation follow their requested form (:class:`~hf_ext.models.jiuge.PoemForm`).
* **Rhyme consistency**: for each poem, the share of its rhyme positions (the even lines of shi) whose last
  characters fall into the most common rhyme group; a poem is *consistent* when that share is 1.
* **Tonal (平仄) conformance** for regulated verse (4 or 8 lines of 5 or 7 characters): the share of satisfied
  checks among the rules of 近体诗 that do not depend on a template ("一三五不论，二四六分明"):
  alternation of the 2nd/4th(/6th) characters in a line, 对 (the 2nd character opposes the couplet's first line),
  粘 (the 2nd character of a couplet's first line repeats the previous line's), even lines end 平, odd lines after
  the first end 仄.

Pronunciation comes from ``pypinyin`` and is **modern Mandarin**: tones 1–2 are 平, 3–4 are 仄, neutral tones are
ignored, and rhyme groups are those of 中华新韵 (14 groups, the default) or the finer 十八韵. Classical 入声
characters read with a modern 1st/2nd tone (白, 国, ...) therefore count as 平, and 平水韵 distinctions are lost; the
numbers are a consistent approximation, not a philologist's judgement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Literal

import datasets
import evaluate

from hf_ext.metrics.diversity import distinct_n
from hf_ext.utils.poetry_forms import BUILTIN_FORMS, PUNCTUATION, PoemForm, is_hanzi, split_lines

__all__ = [
    "RHYME_GROUPS",
    "rhyme_group",
    "tone_class",
    "form_accuracy",
    "rhyme_score",
    "rhyme_consistency",
    "tonal_conformance",
    "tonal_conformance_score",
    "poetry_metrics",
    "Poetry",
]

RhymeScheme = Literal["xinyun14", "shiba18"]

# 十八韵: pypinyin strict finals ("v" is ü) -> group. "-i" is the apical vowel of zhi/chi/shi/ri/zi/ci/si.
_SHIBA18 = {
    **dict.fromkeys(["a", "ia", "ua"], "麻"),
    **dict.fromkeys(["o", "uo"], "波"),
    "e": "歌",
    **dict.fromkeys(["ie", "ve"], "皆"),
    "-i": "支",
    "er": "儿",
    "i": "齐",
    **dict.fromkeys(["ei", "uei"], "微"),
    **dict.fromkeys(["ai", "uai"], "开"),
    "u": "姑",
    "v": "鱼",
    **dict.fromkeys(["ou", "iou"], "侯"),
    **dict.fromkeys(["ao", "iao"], "豪"),
    **dict.fromkeys(["an", "ian", "uan", "van"], "寒"),
    **dict.fromkeys(["en", "in", "uen", "vn"], "痕"),
    **dict.fromkeys(["ang", "iang", "uang"], "唐"),
    **dict.fromkeys(["eng", "ing", "ueng"], "庚"),
    **dict.fromkeys(["ong", "iong"], "东"),
}
# 中华新韵 (14 groups) merges 波/歌, 齐/儿/鱼 and 庚/东 of the 十八韵.
_XINYUN14 = {f: {"歌": "波", "儿": "齐", "鱼": "齐", "东": "庚"}.get(g, g) for f, g in _SHIBA18.items()}

#: Final -> rhyme group, per scheme.
RHYME_GROUPS: dict[str, dict[str, str]] = {"xinyun14": _XINYUN14, "shiba18": _SHIBA18}

_APICAL_INITIALS = {"zh", "ch", "sh", "r", "z", "c", "s"}


@lru_cache(maxsize=65536)
def _final_and_tone(ch: str) -> tuple[str | None, int | None]:
    from pypinyin import Style, pinyin

    if not is_hanzi(ch):
        return None, None
    final = pinyin(ch, style=Style.FINALS, strict=True, errors="ignore")
    initial = pinyin(ch, style=Style.INITIALS, strict=True, errors="ignore")
    tone3 = pinyin(ch, style=Style.TONE3, neutral_tone_with_five=True, errors="ignore")
    if not final or not tone3:
        return None, None
    f = final[0][0]
    if f == "i" and initial and initial[0][0] in _APICAL_INITIALS:
        f = "-i"
    digits = [c for c in tone3[0][0] if c.isdigit()]
    return f, int(digits[-1]) if digits else None


def rhyme_group(ch: str, scheme: RhymeScheme = "xinyun14") -> str | None:
    """The rhyme group of character ``ch`` (e.g. ``"侯"`` for 楼), or ``None`` if pypinyin does not know it."""
    if scheme not in RHYME_GROUPS:
        raise ValueError(f"scheme must be one of {sorted(RHYME_GROUPS)}, got {scheme!r}.")
    final, _ = _final_and_tone(ch)
    if final is None:
        return None
    return RHYME_GROUPS[scheme].get(final, final)


def tone_class(ch: str) -> Literal["平", "仄"] | None:
    """``"平"`` for modern tones 1–2, ``"仄"`` for tones 3–4, ``None`` for a neutral tone or an unknown character."""
    _, tone = _final_and_tone(ch)
    if tone in (1, 2):
        return "平"
    if tone in (3, 4):
        return "仄"
    return None


def _resolve(form: str | PoemForm, forms: Mapping[str, PoemForm] | None) -> PoemForm:
    if isinstance(form, PoemForm):
        return form
    table = {**BUILTIN_FORMS, **(forms or {})}
    if form not in table:
        raise ValueError(f"unknown form {form!r}; pass a PoemForm or add it to `forms` (e.g. learned 词 forms).")
    return table[form]


def _check_lengths(poems: Sequence[str], targets: Sequence, name: str) -> None:
    if isinstance(poems, str):
        raise ValueError("`poems` must be a list of poem bodies, got a single string; wrap it in a list.")
    if len(poems) != len(targets):
        raise ValueError(f"`poems` has {len(poems)} entries but `{name}` has {len(targets)}; give one per poem.")


def form_accuracy(
    poems: Sequence[str],
    forms: Sequence[str | PoemForm],
    check_punctuation: bool = True,
    known_forms: Mapping[str, PoemForm] | None = None,
) -> float:
    """The share of ``poems`` that follow their form (line count, line lengths, optionally punctuation).

    Args:
        poems (`list[str]`): poem bodies.
        forms (`list[str | PoemForm]`): the requested form of each poem, by name or as a `PoemForm`.
        check_punctuation (`bool`, *optional*, defaults to `True`): require each line's mark to be allowed.
        known_forms (`Mapping[str, PoemForm]`, *optional*): extra forms by name (learned 词 forms).
    """
    _check_lengths(poems, forms, "forms")
    if not poems:
        return 0.0
    ok = sum(_resolve(f, known_forms).matches(p, check_punctuation) for p, f in zip(poems, forms))
    return ok / len(poems)


def rhyme_score(body: str, form: PoemForm | None = None, scheme: RhymeScheme = "xinyun14") -> float | None:
    """The share of rhyme positions whose last characters share the most common rhyme group.

    The rhyme positions are ``form.rhyme_lines`` when the form has any, else the even lines (2nd, 4th, ...).
    Returns ``None`` when fewer than two positions have a known rhyme group, and 0.0 for a body that cannot be
    split into lines.
    """
    try:
        lines = split_lines(body)
    except ValueError:
        return 0.0
    positions = form.rhyme_lines if form is not None and form.rhyme_lines else range(1, len(lines), 2)
    groups = [rhyme_group(lines[i][0][-1], scheme) for i in positions if i < len(lines)]
    groups = [g for g in groups if g is not None]
    if len(groups) < 2:
        return None
    return Counter(groups).most_common(1)[0][1] / len(groups)


def rhyme_consistency(
    poems: Sequence[str],
    forms: Sequence[str | PoemForm] | None = None,
    scheme: RhymeScheme = "xinyun14",
    known_forms: Mapping[str, PoemForm] | None = None,
) -> dict[str, float]:
    """Mean :func:`rhyme_score` and the share of fully consistent poems, over poems with a score.

    Returns:
        `dict`: ``{"rhyme_consistency": mean score, "rhyme_all_consistent": share with score 1,
        "rhyme_evaluated": number of poems scored}`` (0.0 for both rates when none was scored).
    """
    if forms is not None:
        _check_lengths(poems, forms, "forms")
    resolved = [None] * len(poems) if forms is None else [_resolve(f, known_forms) for f in forms]
    scores = [rhyme_score(p, f, scheme) for p, f in zip(poems, resolved)]
    scores = [s for s in scores if s is not None]
    if not scores:
        return {"rhyme_consistency": 0.0, "rhyme_all_consistent": 0.0, "rhyme_evaluated": 0}
    return {
        "rhyme_consistency": sum(scores) / len(scores),
        "rhyme_all_consistent": sum(s == 1.0 for s in scores) / len(scores),
        "rhyme_evaluated": len(scores),
    }


def tonal_conformance_score(body: str) -> float | None:
    """The share of satisfied 平仄 checks of one regulated poem, ``None`` if it is not 4/8 lines of 5/7 characters.

    Checks (each skipped when a character's tone is unknown): in each line the 2nd and 4th characters differ in
    tone class, and so do the 4th and 6th of a 7-character line; the 2nd character of a couplet's second line
    differs from the first line's (对); the 2nd character of each couplet's first line, from the second couplet on,
    equals the previous line's (粘); even lines end 平; odd lines other than the first end 仄 (the first line may
    rhyme).
    """
    try:
        lines = [chars for chars, _ in split_lines(body)]
    except ValueError:
        return None
    if len(lines) not in (4, 8) or {len(x) for x in lines} not in ({5}, {7}):
        return None
    tones = [[tone_class(c) for c in line] for line in lines]
    checks: list[bool] = []

    def check(a, b, equal: bool) -> None:
        if a is not None and b is not None:
            checks.append((a == b) == equal)

    for t in tones:
        check(t[1], t[3], equal=False)
        if len(t) == 7:
            check(t[3], t[5], equal=False)
    for i in range(1, len(tones)):
        # 对 within a couplet (i odd), 粘 between couplets (i even).
        check(tones[i][1], tones[i - 1][1], equal=i % 2 == 0)
    for i, t in enumerate(tones):
        if i % 2 == 1:
            check(t[-1], "平", equal=True)
        elif i > 0:
            check(t[-1], "仄", equal=True)
    return sum(checks) / len(checks) if checks else None


def tonal_conformance(poems: Sequence[str]) -> dict[str, float]:
    """Mean :func:`tonal_conformance_score` over the regulated-shaped poems, and the share with a perfect score.

    Returns:
        `dict`: ``{"tonal_conformance": ..., "tonal_perfect": ..., "tonal_evaluated": n}`` (rates 0.0 if n = 0).
    """
    if isinstance(poems, str):
        raise ValueError("`poems` must be a list of poem bodies, got a single string; wrap it in a list.")
    scores = [s for s in (tonal_conformance_score(p) for p in poems) if s is not None]
    if not scores:
        return {"tonal_conformance": 0.0, "tonal_perfect": 0.0, "tonal_evaluated": 0}
    return {
        "tonal_conformance": sum(scores) / len(scores),
        "tonal_perfect": sum(s == 1.0 for s in scores) / len(scores),
        "tonal_evaluated": len(scores),
    }


def poetry_metrics(
    poems: Sequence[str],
    forms: Sequence[str | PoemForm],
    scheme: RhymeScheme = "xinyun14",
    check_punctuation: bool = True,
    known_forms: Mapping[str, PoemForm] | None = None,
    dist_orders: Sequence[int] = (1, 2),
) -> dict[str, float]:
    """All poetry metrics at once: form accuracy, rhyme and tone (on shi forms only) and character Dist-n.

    Rhyme and tone are computed on the poems whose requested form is a regulated shi (绝句/律诗); Dist-n on all
    bodies, over characters with punctuation removed (``hf_ext.metrics.diversity.distinct_n``).
    """
    _check_lengths(poems, forms, "forms")
    resolved = [_resolve(f, known_forms) for f in forms]
    shi = [(p, f) for p, f in zip(poems, resolved) if f.regulated]
    result: dict[str, float] = {"form_accuracy": form_accuracy(poems, resolved, check_punctuation)}
    result.update(rhyme_consistency([p for p, _ in shi], [f for _, f in shi], scheme))
    result.update(tonal_conformance([p for p, _ in shi]))
    chars = [[c for c in p if c not in PUNCTUATION and not c.isspace()] for p in poems]
    result.update(distinct_n(chars, n=list(dist_orders)))
    return result


_DESCRIPTION = __doc__
_KWARGS = """
Args:
    predictions (`list[str]`): poem bodies.
    references (`list[str]`): the requested form name of each poem (``"五言绝句"``, ...).
    scheme (`str`, *optional*, defaults to `"xinyun14"`): rhyme groups, ``"xinyun14"`` or ``"shiba18"``.
    check_punctuation (`bool`, *optional*, defaults to `True`).
Returns:
    form_accuracy, rhyme_consistency, rhyme_all_consistent, rhyme_evaluated, tonal_conformance, tonal_perfect,
    tonal_evaluated, dist-1, dist-2.
"""


class Poetry(evaluate.Metric):
    """``evaluate`` wrapper around :func:`poetry_metrics` (forms given by name as references)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, scheme="xinyun14", check_punctuation=True):
        return poetry_metrics(predictions, references, scheme=scheme, check_punctuation=check_punctuation)

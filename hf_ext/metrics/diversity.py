"""Diversity metrics for generated text: Dist-n (Li et al., 2016) and Self-BLEU (Zhu et al., 2018, Texygen).

Plain functions (``distinct_n``, ``self_bleu``, ``sentence_bleu``) plus an ``evaluate`` module wrapper, so the file
works both as ``from hf_ext.metrics.diversity import self_bleu`` and as
``evaluate.load("path/to/hf_ext/metrics/diversity.py")``.

Conventions (documented because published numbers depend on them):

* Texts are tokenised by whitespace unless ``tokenizer`` is given or the texts are already lists of tokens.
* Dist-n is corpus-level: number of distinct n-grams divided by the number of n-grams over all texts.
* Self-BLEU of a set is the mean, over texts, of the sentence BLEU of a text against *all other* texts as references
  (uniform weights over 1..``max_order``-grams, closest-reference brevity penalty). Smoothing defaults to
  ``"epsilon"`` (NLTK's ``SmoothingFunction().method1`` with epsilon 0.1, as Texygen uses); ``"add1"`` is Lin & Och
  (2004) add-one for orders >= 2 (torchmetrics' ``smooth=True``) and ``"none"`` gives plain BLEU.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import datasets
import evaluate

__all__ = ["distinct_n", "self_bleu", "sentence_bleu", "Diversity"]

Text = str | Sequence[str]

_SMOOTHING = ("epsilon", "add1", "none")


def _tokenize(texts: Sequence[Text], tokenizer: Callable[[str], list[str]] | None, name: str) -> list[list[str]]:
    if isinstance(texts, str):
        raise ValueError(f"`{name}` must be a list of texts, got a single string; wrap it in a list.")
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            out.append(tokenizer(t) if tokenizer is not None else t.split())
        elif isinstance(t, Sequence):
            out.append([str(w) for w in t])
        else:
            raise ValueError(f"`{name}[{i}]` must be a string or a list of tokens, got {type(t).__name__}.")
    return out


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def distinct_n(
    texts: Sequence[Text], n: int | Sequence[int] = (1, 2, 3, 4), tokenizer: Callable[[str], list[str]] | None = None
) -> dict[str, float]:
    """Dist-n: the share of distinct n-grams among all n-grams of ``texts`` (corpus level).

    Args:
        texts (`list[str]` or `list[list[str]]`): generated texts (strings, whitespace-tokenised) or token lists.
        n (`int` or `list[int]`, *optional*, defaults to `(1, 2, 3, 4)`): the n-gram orders.
        tokenizer (`Callable[[str], list[str]]`, *optional*): splits a string into tokens (default: ``str.split``).

    Returns:
        `dict[str, float]`: ``{"dist-1": ..., "dist-2": ...}``; 0.0 for an order with no n-gram at all.
    """
    orders = [n] if isinstance(n, int) else list(n)
    for o in orders:
        if not isinstance(o, int) or o < 1:
            raise ValueError(f"`n` must contain positive integers, got {o!r}.")
    toks = _tokenize(texts, tokenizer, "texts")
    result = {}
    for o in orders:
        counts: Counter = Counter()
        for t in toks:
            counts.update(_ngrams(t, o))
        total = sum(counts.values())
        result[f"dist-{o}"] = len(counts) / total if total else 0.0
    return result


def _bleu_from_stats(
    matches: Sequence[int],
    totals: Sequence[int],
    hyp_len: int,
    ref_len: int,
    max_order: int,
    smoothing: str,
    epsilon: float = 0.1,
) -> float:
    if hyp_len == 0:
        return 0.0
    log_p = 0.0
    for k in range(max_order):
        m, t = matches[k], totals[k]
        if m == 0 and (smoothing == "none" or (smoothing == "add1" and k == 0)):
            return 0.0
        if smoothing == "add1" and k > 0:
            p = (m + 1.0) / (t + 1.0)
        elif m == 0:
            # NLTK method1: epsilon over the number of hypothesis n-grams (at least 1)
            p = epsilon / max(t, 1)
        else:
            p = m / t
        log_p += math.log(p) / max_order
    bp = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def _closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    # NLTK / torchmetrics rule: the closest reference length, the shorter one on ties
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def sentence_bleu(
    hypothesis: Text,
    references: Sequence[Text],
    max_order: int = 4,
    smoothing: str = "epsilon",
    tokenizer: Callable[[str], list[str]] | None = None,
) -> float:
    """Sentence BLEU of one hypothesis against several references (clipped n-gram precision, uniform weights).

    Args:
        hypothesis (`str` or `list[str]`): the candidate text.
        references (`list[str]` or `list[list[str]]`): one or more reference texts.
        max_order (`int`, *optional*, defaults to 4): the highest n-gram order.
        smoothing (`str`, *optional*, defaults to `"epsilon"`): ``"epsilon"``, ``"add1"`` or ``"none"`` (see the
            module docstring).
        tokenizer (`Callable`, *optional*): splits strings into tokens (default ``str.split``).
    """
    if smoothing not in _SMOOTHING:
        raise ValueError(f"`smoothing` must be one of {_SMOOTHING}, got {smoothing!r}.")
    if not references:
        raise ValueError("`references` is empty: BLEU needs at least one reference.")
    hyp = _tokenize([hypothesis], tokenizer, "hypothesis")[0]
    refs = _tokenize(references, tokenizer, "references")
    matches, totals = [], []
    for n in range(1, max_order + 1):
        h = _ngrams(hyp, n)
        max_ref: Counter = Counter()
        for r in refs:
            for g, c in _ngrams(r, n).items():
                if c > max_ref[g]:
                    max_ref[g] = c
        matches.append(sum(min(c, max_ref[g]) for g, c in h.items()))
        totals.append(max(len(hyp) - n + 1, 0))
    ref_len = _closest_ref_len(len(hyp), [len(r) for r in refs])
    return _bleu_from_stats(matches, totals, len(hyp), ref_len, max_order, smoothing)


def self_bleu(
    texts: Sequence[Text],
    max_order: int = 4,
    smoothing: str = "epsilon",
    tokenizer: Callable[[str], list[str]] | None = None,
) -> float:
    """Self-BLEU: mean sentence BLEU of each text against all the other texts (lower means more diverse).

    Runs in time linear in the total number of n-grams: for each n-gram it keeps the two largest per-text counts, so
    the clipping count "max over all other texts" is exact without an O(N^2) loop.

    Args:
        texts (`list[str]` or `list[list[str]]`): at least two generated texts.
        max_order (`int`, *optional*, defaults to 4): the highest n-gram order.
        smoothing (`str`, *optional*, defaults to `"epsilon"`): ``"epsilon"``, ``"add1"`` or ``"none"``.
        tokenizer (`Callable`, *optional*): splits strings into tokens (default ``str.split``).

    Returns:
        `float`: Self-BLEU in [0, 1].
    """
    if smoothing not in _SMOOTHING:
        raise ValueError(f"`smoothing` must be one of {_SMOOTHING}, got {smoothing!r}.")
    toks = _tokenize(texts, tokenizer, "texts")
    if len(toks) < 2:
        raise ValueError(f"Self-BLEU needs at least two texts, got {len(toks)}.")
    per_order = []
    for n in range(1, max_order + 1):
        counts = [_ngrams(t, n) for t in toks]
        # ngram -> (best count, index of the text holding it, second-best count)
        best: dict[tuple, list] = {}
        for i, c in enumerate(counts):
            for g, v in c.items():
                b = best.get(g)
                if b is None:
                    best[g] = [v, i, 0]
                elif v > b[0]:
                    best[g] = [v, i, b[0]]
                elif v > b[2]:
                    b[2] = v
        per_order.append((counts, best))
    lens = [len(t) for t in toks]
    scores = []
    for i, t in enumerate(toks):
        matches, totals = [], []
        for n, (counts, best) in enumerate(per_order, start=1):
            m = 0
            for g, v in counts[i].items():
                b = best[g]
                other_max = b[2] if b[1] == i else b[0]
                m += min(v, other_max)
            matches.append(m)
            totals.append(max(len(t) - n + 1, 0))
        ref_len = _closest_ref_len(len(t), lens[:i] + lens[i + 1 :])
        scores.append(_bleu_from_stats(matches, totals, len(t), ref_len, max_order, smoothing))
    return sum(scores) / len(scores)


_DESCRIPTION = "Dist-n (distinct n-gram ratio) and Self-BLEU of a set of generated texts."
_KWARGS = """
Args:
    predictions (`list[str]`): generated texts (whitespace-tokenised).
    dist_orders (`list[int]`, *optional*, defaults to `[1, 2, 3, 4]`): Dist-n orders.
    max_order (`int`, *optional*, defaults to 4): Self-BLEU's highest n-gram order.
    smoothing (`str`, *optional*, defaults to `"epsilon"`): Self-BLEU smoothing.
Returns:
    `dist-1` ... `dist-n` and `self-bleu`, all in [0, 1].
"""


class Diversity(evaluate.Metric):
    """``evaluate`` wrapper around :func:`distinct_n` and :func:`self_bleu`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, dist_orders=(1, 2, 3, 4), max_order=4, smoothing="epsilon"):
        result = distinct_n(predictions, n=dist_orders)
        result["self-bleu"] = self_bleu(predictions, max_order=max_order, smoothing=smoothing)
        return result

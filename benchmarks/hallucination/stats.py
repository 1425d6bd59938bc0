"""Paired statistics for the hallucination study: every arm against a baseline arm within the same seed.

All arms of one seed start from the same SFT model, train on the same pairs and answer the same test images, so the
seed-to-seed spread (which is large at this size) cancels in the within-seed difference. The mean difference over
seeds gets a two-sided Student-t confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["paired_differences", "t_interval"]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean of ``values``.

    Returns:
        `dict`: ``mean``, ``sd``, ``low``, ``high`` and ``n``; with one value the interval is ``(nan, nan)``.
    """
    from scipy import stats

    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("t_interval needs at least one value.")
    mean = sum(vals) / n
    if n == 1:
        return {"mean": mean, "sd": float("nan"), "low": float("nan"), "high": float("nan"), "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": n}


def paired_differences(
    runs: Sequence[dict[str, Any]], metric: str, baseline: str = "dpo", confidence: float = 0.95
) -> list[dict[str, Any]]:
    """For every method, ``metric(method) − metric(baseline)`` within each seed, and its t-interval over seeds.

    Args:
        runs (`Sequence[dict]`): rows with ``seed``, ``method`` and ``metric`` (one row per seed and method).
        metric (`str`): the key to compare.
        baseline (`str`, *optional*, defaults to `"dpo"`): the method subtracted.
        confidence (`float`, *optional*, defaults to 0.95): interval level.

    Returns:
        `list[dict]`: per method (first-seen order, the baseline excluded) ``method``, ``seeds`` (those where both
        ran) and the fields of [`t_interval`].
    """
    by = {}
    for r in runs:
        key = (r["method"], r["seed"])
        if key in by:
            raise ValueError(f"paired_differences: two runs for method {r['method']!r} and seed {r['seed']}.")
        by[key] = float(r[metric])
    out = []
    for method in dict.fromkeys(r["method"] for r in runs):
        if method == baseline:
            continue
        seeds = sorted(s for (m, s) in by if m == method and (baseline, s) in by)
        if not seeds:
            continue
        diffs = [by[(method, s)] - by[(baseline, s)] for s in seeds]
        out.append({"method": method, "seeds": seeds, **t_interval(diffs, confidence)})
    return out

"""Statistics over seeds: a mean with its Student-t interval, a paired comparison of two methods,
and intervals cut to a metric's range. Pure numpy/scipy on arrays of fractions."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

from .arrays import MetricInputError, _array, _number, _same_length

__all__ = ["mean_ci", "paired_test", "metric_range", "mean_ci_row", "WILCOXON_MIN_N"]


def _confidence(confidence: Any) -> float:
    c = _number("confidence", confidence)
    if not 0.0 < c < 1.0:
        hint = " (a fraction such as 0.95, not a percentage)" if 1.0 < c <= 100.0 else ""
        raise MetricInputError(f"confidence must be in (0, 1){hint}, got {confidence!r}")
    return c


def mean_ci(values: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its two-sided Student-t interval at `confidence`.

    One value gives a `nan` interval; values that are all equal give a zero-width interval.
    """
    c = _confidence(confidence)
    v = _array("values", values).astype(np.float64)
    m = float(v.mean())
    n = len(v)
    if n < 2:
        return m, float("nan"), float("nan")
    sem = float(v.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + c / 2.0, n - 1)) * sem
    return m, m - half, m + half


WILCOXON_MIN_N = 6  # below 6 pairs the exact two-sided Wilcoxon p can never go under 0.05


def paired_test(a: Any, b: Any, *, confidence: float = 0.95) -> dict[str, float]:
    """Paired comparison of two methods over the same seeds (a[i] and b[i] share seed i).

    Returns `n`, `mean_diff` (mean of a - b) with its Student-t interval `ci_low`/`ci_high`, the
    paired t statistic `t` and two-sided p-value `p` (scipy.stats.ttest_rel), and `wilcoxon_p`
    (signed-rank test; `nan` for fewer than 6 pairs, where it cannot reach 0.05). With one pair the
    statistics are `nan`; identical differences give t = +-inf and p = 0 (or t = nan and p = 1 when
    all differences are zero).
    """
    a = _array("a", a).astype(np.float64)
    b = _array("b", b).astype(np.float64)
    _same_length("a", a, "b", b)
    d = a - b
    n = len(d)
    mean_diff, lo, hi = mean_ci(d, confidence)
    out = {"n": float(n), "mean_diff": mean_diff, "ci_low": lo, "ci_high": hi,
           "t": float("nan"), "p": float("nan"), "wilcoxon_p": float("nan")}
    if n < 2:
        return out
    if np.all(d == d[0]):  # zero spread: scipy would divide by zero
        if d[0] == 0:
            out.update(t=float("nan"), p=1.0, wilcoxon_p=1.0 if n >= WILCOXON_MIN_N else float("nan"))
        else:
            out.update(t=math.copysign(math.inf, d[0]), p=0.0)
    else:
        res = stats.ttest_rel(a, b)
        out.update(t=float(res.statistic), p=float(res.pvalue))
    if n >= WILCOXON_MIN_N and not np.all(d == 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return out


def metric_range(key: str) -> tuple[float, float]:
    """The values a reported metric can take: scores, accuracies and MIA numbers lie in [0, 1],
    costs and times are >= 0; anything else (a plugin's key) is unbounded."""
    if key.startswith(("cost/", "time/")):
        return 0.0, math.inf
    if key.startswith(("tow", "mia/", "tier/", "gap/")) or key.endswith("acc"):
        return 0.0, 1.0
    return -math.inf, math.inf


def mean_ci_row(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% Student-t interval, cut to `bounds` (the metric's range: with 3
    seeds a t-interval around a ToW of 0.99 reaches past 1, which no method can score); a single
    value has no interval (NaN bounds)."""

    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan"), float("nan"), float("nan")
    if len(vals) == 1:
        return vals[0], float("nan"), float("nan")
    mean, lo, hi = mean_ci(vals)
    return mean, max(lo, bounds[0]), min(hi, bounds[1])

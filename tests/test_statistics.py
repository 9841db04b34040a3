"""Statistics over seeds (statistics.py): intervals that match scipy, paired comparisons, intervals
cut to a metric's range, and errors that quote the bad value."""
import math
import re

import numpy as np
import pytest
from scipy import stats

from mlflow_unlearn.arrays import MetricInputError
from mlflow_unlearn.statistics import mean_ci, mean_ci_row, metric_range, paired_test


def test_mean_ci_matches_scipy():
    v = np.array([0.81, 0.84, 0.79, 0.9, 0.86])
    for conf in (0.95, 0.9, 0.5):
        mean, lo, hi = mean_ci(v, conf)
        exp_lo, exp_hi = stats.t.interval(conf, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
        assert mean == pytest.approx(v.mean())
        assert (lo, hi) == pytest.approx((exp_lo, exp_hi))
    mean, lo, hi = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_paired_test_detects_consistent_difference():
    rng = np.random.default_rng(2)
    b = rng.uniform(0.6, 0.9, 8)
    a = b + 0.05 + rng.normal(0, 0.005, 8)
    res = paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert res["n"] == 8
    assert res["mean_diff"] == pytest.approx(np.mean(a - b))
    assert res["t"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
    assert res["p"] < 1e-6 and res["t"] > 0
    assert res["wilcoxon_p"] < 0.01
    assert res["ci_low"] < 0.05 < res["ci_high"]
    noise = paired_test(b + rng.normal(0, 0.01, 8), b)
    assert noise["p"] > res["p"]
    # too few pairs for Wilcoxon; constant and zero differences need no division by zero
    assert math.isnan(paired_test([1, 2, 3], [0, 1, 1])["wilcoxon_p"])
    const = paired_test([1, 2, 3], [0, 1, 2])
    assert const["t"] == math.inf and const["p"] == 0.0
    same = paired_test([1, 2, 3], [1, 2, 3])
    assert same["p"] == 1.0 and same["mean_diff"] == 0.0
    single = paired_test([1.0], [0.5])
    assert single["mean_diff"] == 0.5 and math.isnan(single["p"])


# ---------------------------------------------------------------- MIA behaviour


@pytest.mark.parametrize("call, needle", [
    (lambda: mean_ci([0.1, 0.2], confidence=95), "95"),
    (lambda: mean_ci([0.1, 0.2], confidence=1.0), "1.0"),
    (lambda: mean_ci([0.1, float("inf")]), "inf"),
    (lambda: mean_ci([]), "empty"),
    (lambda: paired_test([1, 2, 3], [1, 2]), "2"),
])
def test_bad_input_names_the_value(call, needle):
    with pytest.raises(MetricInputError, match=re.escape(needle)):
        call()


def test_reported_intervals_stay_inside_each_metrics_range():
    """Three seeds around a ToW of 0.99 give a t-interval past 1, which no method can score: cut."""
    assert metric_range("tow") == metric_range("mia/gap") == metric_range("forget/acc") == (0.0, 1.0)
    assert metric_range("cost/train_fraction")[0] == 0.0 and metric_range("cost/train_fraction")[1] == float("inf")
    assert metric_range("my_plugin/score") == (float("-inf"), float("inf"))
    mean, lo, hi = mean_ci_row([0.97, 0.99, 1.0], metric_range("tow"))
    assert hi == 1.0 and 0 < lo < mean < 1.0
    unbounded = mean_ci_row([0.97, 0.99, 1.0])
    assert unbounded[2] > 1.0 and unbounded[1] == lo  # only the side past the range moves
    assert mean_ci_row([0.0, 0.001, 0.02], metric_range("cost/x"))[1] == 0.0

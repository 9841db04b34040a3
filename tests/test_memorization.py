
import numpy as np
import pytest

from mlflow_unlearn.memorization import DEFAULT_TIERS, MemorizationError, assign_tiers, tier_histogram, tiers_from_c_proxy

# ---------------------------------------------------------------- tiers


def test_assign_tiers_equal_sizes_order_and_names():
    rng = np.random.default_rng(0)
    ids = rng.permutation(1000)[:30]  # arbitrary, unsorted forget ids
    mem = rng.permutation(30).astype(float)  # distinct memorisation scores
    tiers = assign_tiers(mem, ids=ids, higher_is_more_memorised=True)
    assert list(tiers) == list(DEFAULT_TIERS)
    assert [len(v) for v in tiers.values()] == [10, 10, 10]
    assert all(v.dtype == np.int64 and np.all(np.diff(v) > 0) for v in tiers.values())
    score_of = dict(zip(ids.tolist(), mem))
    lo, mid, hi = ([score_of[i] for i in tiers[n]] for n in DEFAULT_TIERS)
    assert max(lo) < min(mid) and max(mid) < min(hi)
    assert sorted(lo) == list(range(10)) and sorted(hi) == list(range(20, 30))
    # confidences: the same ranking reversed
    flipped = assign_tiers(-mem, ids=ids, higher_is_more_memorised=False)
    assert all(np.array_equal(flipped[n], tiers[n]) for n in DEFAULT_TIERS)

def test_assign_tiers_remainder_custom_names_and_tie_break_by_id():
    tiers = assign_tiers(np.arange(10.0), names=("a", "b", "c", "d"), higher_is_more_memorised=True)
    assert list(tiers) == ["a", "b", "c", "d"]
    assert [len(v) for v in tiers.values()] == [3, 3, 2, 2]  # remainder to the first tiers
    assert tiers["a"].tolist() == [0, 1, 2] and tiers["d"].tolist() == [8, 9]
    ties = assign_tiers(np.zeros(6), ids=[50, 10, 40, 20, 60, 30], higher_is_more_memorised=True)
    assert [v.tolist() for v in ties.values()] == [[10, 20], [30, 40], [50, 60]]

def test_tiers_from_c_proxy_puts_lowest_confidence_in_high():
    c = np.linspace(0.05, 0.99, 100)  # indexed by train id; id 0 has the lowest C-proxy
    forget = np.array([0, 1, 2, 50, 51, 52, 97, 98, 99])
    tiers = tiers_from_c_proxy(forget, c)
    assert tiers["high"].tolist() == [0, 1, 2]
    assert tiers["mid"].tolist() == [50, 51, 52]
    assert tiers["low"].tolist() == [97, 98, 99]

@pytest.mark.parametrize("names,needle", [((), "()"), (("low", "low", "high"), "'low'"), (("low", "a/b"), "'a/b'"),
                                          ("lowhigh", "'lowhigh'"), (("x", ""), "''")])
def test_bad_tier_names_are_named(names, needle):
    with pytest.raises(MemorizationError) as e:
        assign_tiers(np.arange(9.0), names=names, higher_is_more_memorised=True)
    assert needle in str(e.value)

def test_too_few_examples_for_tiers_and_bad_ids():
    with pytest.raises(MemorizationError, match=r"2 example\(s\) into 3 tiers"):
        assign_tiers(np.arange(2.0), higher_is_more_memorised=True)
    with pytest.raises(MemorizationError, match="1000"):
        tiers_from_c_proxy([1, 2, 1000], np.linspace(0, 1, 50))
    with pytest.raises(MemorizationError, match="non-finite"):
        tiers_from_c_proxy([0, 1, 2], np.array([0.1, np.nan, 0.3, 0.4]))

def test_tier_histogram_uses_train_set_quantiles():
    rng = np.random.default_rng(1)
    c = rng.permutation(90) / 90.0  # distinct C-proxies; train bins of 30 by rank
    order = np.argsort(-c)  # least memorised (highest C-proxy) first
    low_bin, mid_bin, high_bin = order[:30], order[30:60], order[60:]
    forget = np.concatenate([low_bin[:5], mid_bin[:7], high_bin[:2]])
    assert tier_histogram(forget, c) == {"low": 5, "mid": 7, "high": 2}
    # a forget set entirely in the most memorised bin: per-forget-set tiers would still be 1/3 each
    assert tier_histogram(high_bin[:12], c) == {"low": 0, "mid": 0, "high": 12}
    assert tier_histogram(order[:40], c, names=("a", "b")) == {"a": 40, "b": 0}
    assert tier_histogram(order[44:46], c, names=("a", "b")) == {"a": 1, "b": 1}

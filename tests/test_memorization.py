import dataclasses

import numpy as np
import pytest
import torch

from mlflow_unlearn.confidences import ConfidenceRecorder
from mlflow_unlearn.data import DatasetSpec, Split, load_dataset
from mlflow_unlearn.memorization import (
    DEFAULT_TIERS,
    MemorizationError,
    assign_tiers,
    combine_memorization,
    estimate_memorization,
    mix_forget_set,
    proxy_correlations,
    subset_mask,
    tier_histogram,
    tiered_forget_set,
    tiers_from_c_proxy,
)
from mlflow_unlearn.models import build_model
from mlflow_unlearn.progress import ListLogger
from mlflow_unlearn.training import TrainConfig, train_model

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


# ---------------------------------------------------------------- forget-set selection


def test_mix_takes_extremes_and_median_ranks():
    rng = np.random.default_rng(2)
    c = rng.permutation(100) / 100.0
    rank = np.empty(100, int)
    rank[np.argsort(-c)] = np.arange(100)  # 0 = highest C-proxy = least memorised
    ids = mix_forget_set(c, 9)
    assert ids.dtype == np.int64 and len(ids) == 9 and np.all(np.diff(ids) > 0)
    r = sorted(rank[ids].tolist())
    assert r[:3] == [0, 1, 2]  # the 3 highest C-proxy
    assert r[-3:] == [97, 98, 99]  # the 3 lowest C-proxy
    assert r[3:6] == [49, 50, 51]  # around the median (ranks 49.5 +- 1)
    # remainder to the first tiers: 10 = 4 + 3 + 3
    r = sorted(rank[mix_forget_set(c, 10)].tolist())
    assert r[:4] == [0, 1, 2, 3] and r[-3:] == [97, 98, 99] and all(47 <= x <= 52 for x in r[4:7])
    assert tier_histogram(mix_forget_set(c, 30), c) == {"low": 10, "mid": 10, "high": 10}
    # four tiers: windows centred on ranks 0, 33, 66, 99
    r = sorted(rank[mix_forget_set(c, 8, names=("a", "b", "c", "d"))].tolist())
    assert r == [0, 1, 33, 34, 66, 67, 98, 99]


def test_mix_near_whole_train_set_and_limits():
    c = np.linspace(1, 0, 10)  # id 0 least memorised
    assert len(np.unique(mix_forget_set(c, 9))) == 9  # windows never overlap
    for bad in (0, -3, 10, 11, 2.5):
        with pytest.raises(MemorizationError) as e:
            mix_forget_set(c, bad)
        assert repr(bad) in str(e.value) or str(bad) in str(e.value)


def test_mix_seed_only_breaks_ties():
    c = np.linspace(0, 1, 60)
    assert np.array_equal(mix_forget_set(c, 9, seed=0), mix_forget_set(c, 9, seed=5))
    flat = np.full(60, 0.5)
    a, b = mix_forget_set(flat, 9, seed=0), mix_forget_set(flat, 9, seed=1)
    assert np.array_equal(a, mix_forget_set(flat, 9, seed=0)) and not np.array_equal(a, b)


def test_tiered_forget_set_counts_per_train_bin():
    rng = np.random.default_rng(3)
    c = rng.random(300)
    counts = {"low": 4, "mid": 0, "high": 11}
    ids = tiered_forget_set(c, counts, seed=7)
    assert ids.dtype == np.int64 and len(np.unique(ids)) == 15
    assert tier_histogram(ids, c) == {"low": 4, "mid": 0, "high": 11}
    assert np.array_equal(ids, tiered_forget_set(c, counts, seed=7))
    assert not np.array_equal(ids, tiered_forget_set(c, counts, seed=8))
    # omitted names count 0; key order does not matter
    assert tier_histogram(tiered_forget_set(c, {"high": 5, "low": 2}), c) == {"low": 2, "mid": 0, "high": 5}


@pytest.mark.parametrize("counts,needles", [
    ({"low": 101}, ["'low'", "101", "100"]),
    ({"low": -1}, ["'low'", "-1"]),
    ({"medium": 3}, ["'medium'", "low, mid, high"]),
    ({"low": 0, "high": 0}, ["total", "0"]),
    ({"low": 1.5}, ["'low'", "1.5"]),
])
def test_tiered_forget_set_errors_name_tier_and_sizes(counts, needles):
    with pytest.raises(MemorizationError) as e:
        tiered_forget_set(np.random.default_rng(0).random(300), counts)
    assert all(n in str(e.value) for n in needles), str(e.value)


# ---------------------------------------------------------------- Feldman-Zhang


def test_combine_memorization_by_hand():
    masks = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
    correct = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 1, 1]], bool)
    mem, n_in, n_out, in_acc, out_acc = combine_memorization(masks, correct)
    assert n_in.tolist() == [2, 2, 0] and n_out.tolist() == [2, 2, 4]
    assert mem[0] == 1.0  # always right when seen, never when not
    assert mem[1] == pytest.approx(1.0 - 0.5)
    assert np.isnan(mem[2]) and out_acc[2] == 0.75


def test_subset_masks_depend_only_on_seed_and_k():
    a = subset_mask(300, 0.7, 0, 3)
    assert a.sum() == 210 and np.array_equal(a, subset_mask(300, 0.7, 0, 3))
    assert not np.array_equal(a, subset_mask(300, 0.7, 0, 4)) and not np.array_equal(a, subset_mask(300, 0.7, 1, 3))


# 20 epochs let a width-8 CNN fit flipped labels it trains on; the resume/parallel checks only
# need deterministic models, so they train for 4.
MEM_CFG = TrainConfig(epochs=20, lr=0.05, batch_size=32, augment=False)
SMALL_MODEL = dict(model_name="small_cnn", model_kwargs={"width": 8}, train_config=MEM_CFG)
FAST_MODEL = dict(SMALL_MODEL, train_config=dataclasses.replace(MEM_CFG, epochs=4))


@pytest.fixture(scope="module")
def small():
    return load_dataset(DatasetSpec("digits", subset=300))


@pytest.fixture(scope="module")
def serial4(small):
    return estimate_memorization(small, n_models=4, seed=0, **FAST_MODEL)


@pytest.mark.parametrize("kw,needle", [({"n_models": 1}, "n_models"), ({"subset_fraction": 70}, "fraction"),
                                       ({"subset_fraction": 0.0}, "subset_fraction"), ({"subset_fraction": 1.0}, "subset_fraction"),
                                       ({"n_workers": 0}, "n_workers"), ({"seed": -1}, "seed")])
def test_estimator_validates_settings(small, kw, needle):
    args = {**SMALL_MODEL, "n_models": 4, **kw}
    with pytest.raises(MemorizationError) as e:
        estimate_memorization(small, **args)
    assert needle in str(e.value) and repr(list(kw.values())[0]) in str(e.value)


def test_mislabelled_examples_score_as_memorised(small):
    """On 300 digits with 30 flipped labels, the models that saw a flipped example fit its wrong
    label while those that did not predict the real digit: high memorisation. Clean digits are
    classified correctly either way: memorisation near 0. C-proxy should rank them the same way."""
    rng = np.random.default_rng(0)
    flipped = np.sort(rng.choice(len(small.train), 30, replace=False))
    y = small.train.y.clone()
    y[flipped] = (y[flipped] + 1 + torch.from_numpy(rng.integers(0, 9, 30))) % 10
    data = dataclasses.replace(small, train=Split(small.train.x, y, small.train.ids))
    est = estimate_memorization(data, n_models=8, seed=0, **SMALL_MODEL)
    assert est.n_models_done == 8 and est.n_trained == 8
    assert est.masks.shape == (8, 300) and np.all(est.masks.sum(1) == 210)
    assert np.all(est.in_counts + est.out_counts == 8)
    finite = np.isfinite(est.mem)
    assert finite.mean() > 0.85  # NaN only where all 8 models saw (or none saw) the example
    assert np.all(np.abs(est.mem[finite]) <= 1.0)
    clean = np.setdiff1d(np.arange(300), flipped)
    m_flip, m_clean = np.nanmean(est.mem[flipped]), np.nanmean(est.mem[clean])
    assert m_flip > 0.5, m_flip
    assert m_clean < 0.2, m_clean
    assert m_flip > m_clean + 0.4
    # in-models fit the wrong labels; out-models almost never agree with them
    assert np.nanmean(est.in_acc[flipped]) > 0.7 and np.nanmean(est.out_acc[flipped]) < 0.2

    # one ordinary training run's C-proxy ranks the same examples as memorised
    rec = ConfidenceRecorder(300)
    model = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=0, width=8)
    train_model(model, data, MEM_CFG, recorder=rec, progress=False, eval_test=False)
    corr = proxy_correlations(est.mem, rec.proxies())
    assert corr["c_proxy"] < -0.4, corr  # about -0.6 over seeds 0-2
    assert corr["entropy"] > 0, corr


def test_resume_trains_only_missing_models(small, serial4, tmp_path):
    first = estimate_memorization(small, n_models=3, seed=0, workdir=tmp_path, **FAST_MODEL)
    assert first.n_trained == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_0000.npz", "model_0001.npz", "model_0002.npz"]
    (tmp_path / "model_0001.npz").unlink()
    log = ListLogger()
    again = estimate_memorization(small, n_models=4, seed=0, workdir=tmp_path, log=log, **FAST_MODEL)
    assert again.n_trained == 2 and again.n_models_done == 4
    assert [step for step, _ in log.records] == [1, 3]
    assert [r["memorization/models_done"] for _, r in log.records] == [3.0, 4.0]
    assert np.array_equal(again.correct[:3], first.correct)
    assert np.array_equal(again.correct, serial4.correct) and np.array_equal(again.masks, serial4.masks)
    np.testing.assert_array_equal(again.mem, serial4.mem)
    # everything loaded: nothing trained
    assert estimate_memorization(small, n_models=4, seed=0, workdir=tmp_path, **FAST_MODEL).n_trained == 0
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    # other settings refuse the files rather than mixing them in
    with pytest.raises(MemorizationError, match="different settings"):
        estimate_memorization(small, n_models=2, seed=1, workdir=tmp_path, **FAST_MODEL)


@pytest.mark.integration
def test_parallel_workers_match_serial(small, serial4, tmp_path):
    par = estimate_memorization(small, n_models=2, seed=0, n_workers=2, workdir=tmp_path, **FAST_MODEL)
    assert par.n_trained == 2
    assert np.array_equal(par.masks, serial4.masks[:2])
    assert np.array_equal(par.correct, serial4.correct[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_0000.npz", "model_0001.npz"]


# ---------------------------------------------------------------- proxies


def test_proxy_correlations_sign_and_nans():
    rng = np.random.default_rng(4)
    mem = rng.random(200)
    mem[:10] = np.nan
    proxies = {"c_proxy": 1 - mem + 0.01 * rng.standard_normal(200), "entropy": mem ** 2, "noise": rng.random(200),
               "const": np.ones(200)}
    proxies["noise"][50] = np.nan
    corr = proxy_correlations(mem, proxies)
    assert corr["c_proxy"] < -0.95 and corr["entropy"] == pytest.approx(1.0)
    assert abs(corr["noise"]) < 0.3 and np.isnan(corr["const"])
    with pytest.raises(MemorizationError, match="'bad'"):
        proxy_correlations(mem, {"bad": np.ones(3)})


# ---------------------------------------------------------------------------------------------
# Calibration forget sets


def _c_proxy(n=600, seed=0):
    return np.random.default_rng(seed).random(n)


def test_calibration_sets_mirror_the_request_and_are_disjoint():
    from mlflow_unlearn.memorization import calibration_forget_sets

    c = _c_proxy()
    forget = mix_forget_set(c, 60)
    sets = calibration_forget_sets(c, forget, 2)
    assert [len(s) for s in sets] == [60, 60]
    assert not set(sets[0]) & set(sets[1]) and not (set(sets[0]) | set(sets[1])) & set(forget)
    for s in sets:
        assert tier_histogram(s, c) == tier_histogram(forget, c)  # the same composition by train-set bin
        # tier by tier, the stand-ins sit next to the request's examples in C-proxy
        for name, ids in tiers_from_c_proxy(s, c).items():
            target = tiers_from_c_proxy(forget, c)[name]
            assert abs(c[ids].mean() - c[target].mean()) < 0.1


def test_calibration_sets_are_deterministic_and_work_for_random_requests():
    from mlflow_unlearn.memorization import calibration_forget_sets

    c = _c_proxy()
    forget = np.sort(np.random.default_rng(1).choice(600, 45, replace=False))
    a, b = calibration_forget_sets(c, forget, 3), calibration_forget_sets(c, forget, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(tier_histogram(x, c) == tier_histogram(forget, c) for x in a)


def test_calibration_request_too_large_names_sizes_and_fix():
    from mlflow_unlearn.memorization import calibration_forget_sets

    c = _c_proxy()
    with pytest.raises(MemorizationError) as e:
        calibration_forget_sets(c, mix_forget_set(c, 240), 2)  # 80 per bin of 200: 3 x 80 > 200
    msg = str(e.value)
    assert "200" in msg and "80" in msg and "--calibration-sets 1" in msg
    with pytest.raises(MemorizationError, match="smaller forget set"):
        calibration_forget_sets(c, mix_forget_set(c, 360), 1)  # 120 per bin: not even one set fits
    with pytest.raises(MemorizationError, match="calibration sets"):
        calibration_forget_sets(c, mix_forget_set(c, 30), 0)

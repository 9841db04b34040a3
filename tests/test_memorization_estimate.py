"""The Feldman-Zhang estimator (memorization_estimate.py): combining by hand, seeded subsets, a
mislabelled example scores as memorised, resume and parallel workers."""
import dataclasses

import numpy as np
import pytest
import torch

from mlflow_unlearn.confidences import ConfidenceRecorder
from mlflow_unlearn.data import DatasetSpec, Split, load_dataset
from mlflow_unlearn.memorization import MemorizationError
from mlflow_unlearn.memorization_estimate import combine_memorization, estimate_memorization, proxy_correlations, subset_mask
from mlflow_unlearn.models import build_model
from mlflow_unlearn.progress import ListLogger
from mlflow_unlearn.training import TrainConfig, train_model

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

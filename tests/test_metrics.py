"""Metrics: hand-computed values, scikit-learn / scipy as oracles, and the model-level glue on digits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mlflow_unlearn import metrics as M
from mlflow_unlearn._registry import UnknownComponentError
from mlflow_unlearn.data import load_dataset
from mlflow_unlearn.models import build_model
from mlflow_unlearn.training import TrainConfig, predict_logits, train_model

ALWAYS = {"forget/acc", "retain/acc", "test/acc", "mia/efficacy", "mia/auc"}
WITH_REFERENCE = ALWAYS | {"tow", "tow_mia", "tow_pe", "mia/gap", "disagree/forget", "disagree/retain",
                           "disagree/test", "gap/forget", "gap/retain", "gap/test"}


# ---------------------------------------------------------------- hand-computed values


def test_accuracy_and_gap_by_hand():
    assert M.accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    assert M.accuracy(torch.tensor([3, 3]), [3, 4]) == 0.5
    assert M.accuracy_gap(0.75, 0.5) == 0.25
    assert M.accuracy_gap(0.5, 0.75) == 0.25


def test_tow_family_by_hand():
    assert M.tow(0.1, 0.2, 0.5) == pytest.approx(0.9 * 0.8 * 0.5)
    assert M.tow(0, 0, 0) == 1.0
    assert M.tow_mia(0.5, 0.0, 0.2) == pytest.approx(0.4)
    assert M.disagreement([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    assert M.tow_pe(0.5, 0.0, 0.25) == pytest.approx(0.375)
    assert M.mia_gap(0.3, 0.8) == pytest.approx(0.5)


def test_mia_auc_by_hand():
    assert M.mia_auc([3, 4], [1, 2]) == 1.0
    assert M.mia_auc([1, 2], [3, 4]) == 0.0
    assert M.mia_auc([1.0], [1.0]) == 0.5  # a tie counts half
    assert M.mia_auc([1, 3], [2, 2]) == 0.5


def test_entanglement_by_hand():
    f = np.array([[0.0], [2.0]])  # mean 1, squared distances 1 + 1 = 2
    r = np.array([[10.0], [12.0], [14.0]])  # mean 12, squared distances 4 + 0 + 4 = 8
    assert M.entanglement_score(f, r) == pytest.approx((2 + 8) / 5 / 121)  # pooled over 5 examples
    assert M.entanglement_score(f, r, weighting="equal") == pytest.approx(0.5 * (2 / 2 + 8 / 3) / 121)
    assert math.isinf(M.entanglement_score(f, f))


# ---------------------------------------------------------------- oracles


def test_mia_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for trial in range(5):
        forget = np.round(rng.normal(0.3, 1, 40 + trial), 1)  # rounding makes many ties
        test = np.round(rng.normal(0, 1, 70), 1)
        y = np.r_[np.ones(len(forget)), np.zeros(len(test))]
        expected = roc_auc_score(y, np.r_[forget, test])
        assert M.mia_auc(forget, test) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("separable", [False, True])
def test_logistic_attack_matches_sklearn(separable):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    if separable:
        x = np.r_[rng.uniform(2, 3, 30), rng.uniform(0, 1, 20)]
    else:
        x = np.r_[rng.normal(1, 1, 300), rng.normal(0, 1, 200)]
    y = np.r_[np.ones(30 if separable else 300), np.zeros(20 if separable else 200)]
    attack = M.fit_logistic_1d(x, y)
    z = ((x - x.mean()) / x.std())[:, None]
    lr = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(z, y)
    assert attack.coef == pytest.approx(lr.coef_[0, 0], rel=1e-5)
    assert attack.intercept == pytest.approx(lr.intercept_[0], abs=1e-5)
    assert np.allclose(attack.member_probability(x), lr.predict_proba(z)[:, 1], atol=1e-6)


def test_logistic_attack_constant_feature_falls_back_to_prior():
    attack = M.fit_logistic_1d(np.ones(4), [1, 1, 1, 0])
    assert attack.coef == 0.0
    assert attack.member_probability([0.3])[0] == pytest.approx(0.75)


def _clip(x):
    return np.clip(x, 0.0, 1.0)


def test_mia_efficacy_separates_test_like_from_retain_like_forget_sets():
    rng = np.random.default_rng(3)
    retain = _clip(rng.normal(0.95, 0.03, 2000))
    test = _clip(rng.normal(0.55, 0.15, 500))
    forget_like_test = _clip(rng.normal(0.55, 0.15, 300))
    forget_like_retain = _clip(rng.normal(0.95, 0.03, 300))
    assert M.mia_efficacy(retain, test, forget_like_test) > 0.85
    assert M.mia_efficacy(retain, test, forget_like_retain) < 0.1
    assert M.mia_auc(forget_like_test, test) == pytest.approx(0.5, abs=0.1)
    assert M.mia_auc(forget_like_retain, test) > 0.95


def test_mia_sampling_is_seeded_and_sized():
    rng = np.random.default_rng(4)
    retain, test, forget = rng.uniform(0, 1, 1000), rng.uniform(0, 1, 100), rng.uniform(0, 1, 50)
    r0 = M.mia(retain, test, forget, seed=0)
    assert r0 == M.mia(retain, test, forget, seed=0)
    assert (r0.n_members, r0.n_nonmembers) == (100, 100)
    small = M.mia(retain[:40], test, forget)
    assert (small.n_members, small.n_nonmembers) == (40, 100)  # retain smaller than test: all of it
    assert r0.as_dict() == {"mia/efficacy": r0.efficacy, "mia/auc": r0.auc}


def test_entanglement_higher_for_overlapping_clouds():
    rng = np.random.default_rng(5)
    retain = rng.normal(0, 1, (400, 16))
    overlapping = rng.normal(0.2, 1, (50, 16))
    separated = rng.normal(0, 1, (50, 16)) + 5.0
    es_overlap = M.entanglement_score(overlapping, retain)
    es_sep = M.entanglement_score(separated, retain)
    assert es_overlap > 10 * es_sep
    assert M.entanglement_score(overlapping, retain, weighting="equal") > M.entanglement_score(separated, retain, weighting="equal")


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("call, needle", [
    (lambda: M.accuracy([0, 1, 2], [0, 1]), "3"),
    (lambda: M.accuracy([], []), "empty"),
    (lambda: M.accuracy([0.0, float("nan")], [0, 1]), "nan"),
    (lambda: M.accuracy([0.5, 1], [0, 1]), "0.5"),
    (lambda: M.disagreement([0, 1], [0, 1, 1]), "3"),
    (lambda: M.accuracy_gap(75.0, 0.5), "75.0"),
    (lambda: M.tow(0.1, 1.5, 0.0), "1.5"),
    (lambda: M.tow_pe(-0.25, 0.0, 0.0), "-0.25"),
    (lambda: M.tow_mia(float("nan"), 0.0, 0.0), "nan"),
    (lambda: M.mia_auc([0.1, float("nan")], [0.2]), "nan"),
    (lambda: M.mia_auc([], [0.2]), "empty"),
    (lambda: M.mia_efficacy([0.9], [0.1, 0.2], [0.5], seed="zero"), "zero"),
    (lambda: M.mia_efficacy([0.9, float("nan")], [0.1], [0.5]), "nan"),
    (lambda: M.entanglement_score(np.zeros((3, 4)), np.ones((5, 3))), "3"),
    (lambda: M.entanglement_score(np.zeros((3, 4)), np.ones((5, 4)), weighting="pooled"), "pooled"),
    (lambda: M.fit_logistic_1d([1, 2], [1, 2]), "2.0"),
    (lambda: M.SplitOutputs(np.array([[0.0, float("nan")]]), np.array([0])), "nan"),
    (lambda: M.SplitOutputs(np.zeros((2, 3)), np.array([0, 7])), "7"),
    (lambda: M.SplitOutputs(np.zeros((2, 3)), np.array([0])), "2"),
    (lambda: M.SplitOutputs(None, [0], pred=[0], true_conf=[1.5]), "1.5"),
])
def test_bad_inputs_raise_value_error_quoting_the_value(call, needle):
    with pytest.raises(ValueError) as info:
        call()
    assert needle in str(info.value)


# ---------------------------------------------------------------- outputs and evaluation on a real model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def models(digits):
    def make(seed, epochs):
        torch.manual_seed(seed)
        model = build_model("small_cnn", num_classes=digits.num_classes, input_shape=digits.input_shape, seed=seed, width=8)
        if epochs:
            train_model(model, digits, TrainConfig(epochs=epochs, lr=0.05, batch_size=128, seed=seed),
                        progress=False, eval_test=False)
        return model

    return make(0, 2), make(1, 1)


FORGET = np.arange(0, 300, 3)  # 100 forget ids


def test_split_outputs_derive_pred_and_true_confidence():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([1, 2])
    o = M.SplitOutputs(logits, labels)
    probs = torch.softmax(logits, 1)
    assert o.pred.tolist() == [0, 2]
    assert np.allclose(o.true_conf, [probs[0, 1].item(), probs[1, 2].item()])
    assert o.correct.tolist() == [False, True]
    assert len(o) == 2 and len(o.select([1])) == 1
    assert np.allclose(o.signal("max_confidence"), probs.max(1).values.numpy())
    entropy = -(probs * probs.log()).sum(1).numpy()
    assert np.allclose(o.signal("neg_entropy"), -entropy)
    stored = M.SplitOutputs(None, [1, 2], pred=o.pred, true_conf=o.true_conf)
    assert np.array_equal(stored.true_conf, o.true_conf)
    with pytest.raises(ValueError, match="needs logits"):
        stored.signal("max_confidence")
    with pytest.raises(ValueError, match="'loss'"):
        o.signal("loss")


def test_outputs_for_uses_predict_logits(digits, models):
    model = models[0]
    out = M.outputs_for(model, digits, FORGET)
    assert set(out) == {"forget", "retain", "test"}
    assert len(out["forget"]) == len(FORGET)
    assert len(out["retain"]) == len(digits.train) - len(FORGET)
    assert len(out["test"]) == len(digits.test)
    expected = predict_logits(model, digits, digits.train.subset(torch.as_tensor(FORGET))).numpy()
    assert np.allclose(out["forget"].logits, expected)
    assert np.array_equal(out["forget"].labels, digits.train.y[FORGET].numpy())
    explicit = M.outputs_for(model, digits, FORGET, retain_ids=[1, 2, 4])
    assert len(explicit["retain"]) == 3
    with pytest.raises(ValueError, match=str(len(digits.train))):
        M.outputs_for(model, digits, [0, len(digits.train)])
    with pytest.raises(ValueError, match="5"):
        M.outputs_for(model, digits, [5, 5])
    with pytest.raises(ValueError, match="empty"):
        M.outputs_for(model, digits, [])


def test_identical_outputs_are_retrain_equivalent(digits, models):
    out = M.outputs_for(models[0], digits, FORGET)
    res = M.evaluate_unlearning(out, out)
    assert set(res) == WITH_REFERENCE
    assert res["tow"] == 1.0 and res["tow_pe"] == 1.0 and res["tow_mia"] == 1.0
    for key in ("gap/forget", "gap/retain", "gap/test", "disagree/forget", "disagree/retain", "disagree/test", "mia/gap"):
        assert res[key] == 0.0, key
    for key, value in res.items():
        assert 0.0 <= value <= 1.0, (key, value)
    assert res["test/acc"] == pytest.approx(M.accuracy(out["test"].pred, digits.test.y.numpy()))


def test_keys_without_reference_and_against_another_model(digits, models):
    unlearned = M.outputs_for(models[0], digits, FORGET)
    reference = M.outputs_for(models[1], digits, FORGET)
    alone = M.evaluate_unlearning(unlearned)
    assert set(alone) == ALWAYS
    res = M.evaluate_unlearning(unlearned, reference, seed=1)
    assert set(res) == WITH_REFERENCE
    gaps = {s: abs(res[f"{s}/acc"] - M.accuracy(reference[s].pred, reference[s].labels)) for s in M.SPLITS}
    assert res["tow"] == pytest.approx((1 - gaps["forget"]) * (1 - gaps["retain"]) * (1 - gaps["test"]))
    dis = {s: M.disagreement(unlearned[s].pred, reference[s].pred) for s in M.SPLITS}
    assert res["tow_pe"] == pytest.approx((1 - dis["forget"]) * (1 - dis["retain"]) * (1 - dis["test"]))
    assert res["disagree/test"] > 0  # two different models disagree somewhere
    mismatched = dict(reference, forget=reference["forget"].select(np.arange(10)))
    with pytest.raises(ValueError, match="10"):
        M.evaluate_unlearning(unlearned, mismatched)
    with pytest.raises(ValueError, match="'retain'"):
        M.evaluate_unlearning({"forget": unlearned["forget"], "test": unlearned["test"]})


def test_per_tier_keys(digits, models):
    unlearned = M.outputs_for(models[0], digits, FORGET)
    reference = M.outputs_for(models[1], digits, FORGET)
    mask = np.zeros(len(FORGET), dtype=bool)
    mask[:40] = True
    tiers = {"low": mask, "mid": np.arange(40, 70), "high": torch.arange(70, 100), "empty": []}
    res = M.evaluate_unlearning(unlearned, reference, tiers=tiers)
    for name, n in (("low", 40), ("mid", 30), ("high", 30)):
        assert res[f"tier/{name}/n"] == n
        for key in ("forget_acc", "gap", "disagree"):
            assert f"tier/{name}/{key}" in res
    f = unlearned["forget"]
    assert res["tier/low/forget_acc"] == pytest.approx(np.mean(f.pred[:40] == f.labels[:40]))
    assert res["tier/empty/n"] == 0 and math.isnan(res["tier/empty/forget_acc"])
    alone = M.evaluate_unlearning(unlearned, tiers={"low": mask})
    assert set(alone) == ALWAYS | {"tier/low/n", "tier/low/forget_acc"}
    with pytest.raises(ValueError, match="100"):
        M.evaluate_unlearning(unlearned, tiers={"low": [100]})
    with pytest.raises(ValueError, match="99"):
        M.evaluate_unlearning(unlearned, tiers={"low": np.ones(99, dtype=bool)})
    with pytest.raises(ValueError, match="a/b"):
        M.evaluate_unlearning(unlearned, tiers={"a/b": [0]})


def test_registered_plugin_metrics(digits, models):
    unlearned = M.outputs_for(models[0], digits, FORGET)
    assert set(M.BUILTIN_METRICS) <= set(M.METRICS.names())

    def forget_loss(unlearned, reference, *, seed=0):
        return {"forget/loss": float(-np.log(unlearned["forget"].true_conf).mean())}

    def clash(unlearned, reference):
        return {"forget/acc": 0.0}

    M.METRICS.add("test_forget_loss", forget_loss)
    M.METRICS.add("test_clash", clash)
    try:
        assert "forget/loss" not in M.evaluate_unlearning(unlearned)
        res = M.evaluate_unlearning(unlearned, metrics=["test_forget_loss"])
        assert set(res) == ALWAYS | {"forget/loss"}
        assert res["forget/loss"] > 0
        with pytest.raises(ValueError, match="forget/acc"):
            M.evaluate_unlearning(unlearned, metrics=["test_clash"])
    finally:
        M.METRICS._items.pop("test_forget_loss", None)
        M.METRICS._items.pop("test_clash", None)
    with pytest.raises(UnknownComponentError) as info:
        M.evaluate_unlearning(unlearned, metrics=["no_such_metric"])
    assert "no_such_metric" in str(info.value) and "accuracy" in str(info.value)


def test_embeddings_feed_entanglement(digits, models):
    model = models[0]
    forget = digits.train.subset(torch.as_tensor(FORGET))
    emb_f = M.embeddings(model, digits, forget)
    emb_r = M.embeddings(model, digits, digits.train.subset(torch.arange(300, 600)))
    assert emb_f.shape == (len(FORGET), 32)  # small_cnn width 8 -> 4 * 8 features
    assert model.training  # mode restored after train_model left it training
    es = M.entanglement_score(emb_f, emb_r)
    assert es > 0 and math.isfinite(es)
    with pytest.raises(ValueError, match="embed"):
        M.embeddings(torch.nn.Linear(2, 2), digits, forget)


def test_a_metric_declares_where_its_keys_are_shown(monkeypatch):
    """Column order and the markdown table come from the declarations (metrics.Shown), not from lists
    kept elsewhere; a malformed declaration names the metric."""
    reg = M.METRICS
    monkeypatch.setattr(reg, "_items", dict(reg._items))  # a scratch copy: the registry stays as it was
    keys = M.shown_keys()
    assert list(keys)[:4] == ["tow", "tow_mia", "mia/gap", "tow_pe"]
    assert "retain/acc" in keys and "retain/acc" not in M.shown_keys(table_only=True)

    @M.declare_metric(shown={"x/early": M.Shown("early", rank=-1), "x/hidden": M.Shown("hidden", table=False)})
    def early(unlearned, reference=None):
        return {}

    reg.add("early", early)
    assert list(M.shown_keys())[0] == "x/early" and "x/hidden" not in M.shown_keys(table_only=True)
    reg.add("broken", M.declare_metric(shown={"y": "a label"})(lambda unlearned, reference=None: {}))
    with pytest.raises(TypeError, match="metric 'broken' declares shown"):
        M.shown_keys()
    assert M.floor_key("mia/gap") == "floor/mia_gap"

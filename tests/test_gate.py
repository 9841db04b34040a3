"""The acceptance gate (gate.py): each check moves the verdict the right way, tolerances follow tier
size, and bad thresholds are refused by name."""
from __future__ import annotations

import numpy as np
import pytest

from mlflow_unlearn.gate import (GateError, GateThresholds, NeverSeen, auc_standard_error, check_result, heldout_never_seen,
                                 tier_expectation)
from mlflow_unlearn.rum import Plan, stronger_plan

BEFORE = {"retain/acc": 0.99, "test/acc": 0.90, "mia/auc": 0.70, "forget/acc": 0.99}


def _never_seen():
    # calibration examples: C-proxy below 0.5 is never-seen wrong (memorised), above it right
    c = np.linspace(0, 1, 400)
    return NeverSeen(c, (c > 0.5).astype(float), auc=0.52)


def _tiers():
    c_proxy = np.linspace(0, 1, 1000)  # train id i has C-proxy i / 999
    return {"low": np.arange(900, 930), "high": np.arange(0, 30)}, c_proxy  # 30-example tiers


def test_a_result_that_forgot_like_never_seen_passes_and_one_that_kept_the_high_tier_fails():
    tiers, c = _tiers()
    good = {"retain/acc": 0.985, "test/acc": 0.89, "mia/auc": 0.55, "tier/low/forget_acc": 1.0, "tier/high/forget_acc": 0.05}
    report = check_result(BEFORE, good, tiers, c, n_heldout=500, never_seen=_never_seen())
    assert report.passed and [ch.name for ch in report.checks] == ["retain", "heldout", "forget/low", "forget/high", "mia"]
    kept = dict(good, **{"tier/high/forget_acc": 0.9})  # the memorised tier is still recognised
    report = check_result(BEFORE, kept, tiers, c, n_heldout=500, never_seen=_never_seen())
    assert not report.passed and [ch.name for ch in report.failed] == ["forget/high"]
    assert "forget/high 0.9000" in report.summary()


@pytest.mark.parametrize("change, failing", [
    ({"retain/acc": 0.90}, "retain"),  # unlearning broke what it should keep
    ({"test/acc": 0.80}, "heldout"),
    ({"mia/auc": 0.95}, "mia"),  # forget still separable from held-out
    ({"tier/low/forget_acc": 0.3}, "forget/low"),  # over-forgetting is visible too
])
def test_each_check_fails_on_its_own(change, failing):
    tiers, c = _tiers()
    good = {"retain/acc": 0.985, "test/acc": 0.89, "mia/auc": 0.55, "tier/low/forget_acc": 1.0, "tier/high/forget_acc": 0.05}
    report = check_result(BEFORE, {**good, **change}, tiers, c, n_heldout=500, never_seen=_never_seen())
    assert [ch.name for ch in report.failed] == [failing]


def test_without_calibration_references_the_tier_checks_are_skipped_and_said_so():
    tiers, c = _tiers()
    after = {"retain/acc": 0.985, "test/acc": 0.89, "mia/auc": 0.6, "tier/low/forget_acc": 1.0, "tier/high/forget_acc": 0.9}
    report = check_result(BEFORE, after, tiers, c, n_heldout=500)
    skipped = [ch for ch in report.checks if ch.passed is None]
    assert [ch.name for ch in skipped] == ["forget/low", "forget/high"] and "mlflow-unlearn search" in skipped[0].detail
    assert report.passed  # nothing it could check failed
    assert report.checks[-1].name == "mia" and report.checks[-1].limit.endswith("(never-seen 0.5000)")  # no estimate: 0.5


def test_small_tiers_get_a_wider_band():
    ns = _never_seen()
    c = np.linspace(0, 1, 1000)
    limits = {}
    for n in (5, 30, 300):
        ids = np.arange(700, 700 + n)
        r = check_result(BEFORE, {"retain/acc": 0.99, "test/acc": 0.9, "tier/t/forget_acc": 1.0}, {"t": ids}, c,
                         n_heldout=500, never_seen=ns)
        limits[n] = float(r.checks[2].limit.split("+-")[1])
    assert limits[5] > limits[30] > limits[300] >= 0.10
    assert auc_standard_error(0.7, 10, 500) > auc_standard_error(0.7, 300, 500)


def test_tier_expectation_is_what_check_result_applies():
    """The bench reports the gate's per-tier band through tier_expectation; it must be the band the
    gate checks: a value just inside passes, just outside fails."""
    ns, c = _never_seen(), np.linspace(0, 1, 1000)
    ids = np.arange(600, 630)
    expected, band = tier_expectation(ns, c[ids])
    assert expected == pytest.approx(1.0) and band > 0.10
    for value, ok in ((expected - band + 1e-6, True), (expected - band - 1e-3, False)):
        r = check_result(BEFORE, {"retain/acc": 0.99, "test/acc": 0.9, "tier/t/forget_acc": value}, {"t": ids}, c,
                         n_heldout=500, never_seen=ns)
        assert r.checks[2].passed is ok and r.checks[2].limit == f"{expected:.4f} +- {band:.4f}"
    assert all(np.isnan(tier_expectation(ns, [])))


def test_never_seen_accuracy_follows_the_c_proxy():
    ns = _never_seen()
    assert ns.accuracy_at([0.05], 20)[0] == 0.0 and ns.accuracy_at([0.95], 20)[0] == 1.0
    assert 0.3 < ns.accuracy_at([0.5], 100)[0] < 0.7


@pytest.mark.parametrize("bad, needle", [
    ({"retain_drop": 5}, r"retain_drop must be a fraction in \[0, 1\] .*not percent.*got 5"),
    ({"mia_tolerance": -0.1}, "mia_tolerance"),
    ({"neighbours": 0}, "neighbours must be a positive integer"),
    ({"retian_drop": 0.1}, r"unknown gate threshold\(s\) \['retian_drop'\]"),
])
def test_bad_thresholds_are_refused_by_name(bad, needle):
    with pytest.raises(GateError, match=needle):
        GateThresholds.from_dict(bad)


def test_a_stronger_plan_doubles_epochs_and_fills_none_steps():
    base = Plan.parse("low=none;mid=finetune(epochs=1);high=neggrad_plus(epochs=2)")
    stronger = stronger_plan(base)
    by_tier = {s.tier: s for s in stronger.steps}
    assert by_tier["low"].algorithm == "finetune" and by_tier["mid"].hyperparameters["epochs"] == 2
    assert by_tier["high"].hyperparameters["epochs"] == 4 and stronger.retain_mode == base.retain_mode


def test_the_expected_mia_auc_follows_the_requests_mix():
    """Never-seen confidence rises with the C-proxy (easy examples are recognised even unseen), so a
    request of easy examples has an expected AUC above 0.5 and one of memorised examples below it;
    the gate compares against that, not against 0.5."""
    c = np.linspace(0, 1, 400)
    conf = 0.05 + 0.9 * c  # never-seen confidence of each calibration example
    held = np.linspace(0.05, 0.95, 300)  # the references' held-out confidences
    ns = NeverSeen(c, (c > 0.5).astype(float), auc=0.5, conf=conf, heldout_conf=held)
    easy, hard = np.linspace(0.9, 1.0, 30), np.linspace(0.0, 0.1, 30)
    assert ns.expected_auc(easy, 20) > 0.85 and ns.expected_auc(hard, 20) < 0.15
    tiers, c_proxy = {"low": np.arange(900, 930)}, np.linspace(0, 1, 1000)  # an easy-only request
    after = {"retain/acc": 0.99, "test/acc": 0.9, "mia/auc": 0.9, "tier/low/forget_acc": 1.0}
    assert check_result(BEFORE, after, tiers, c_proxy, n_heldout=300, never_seen=ns).passed
    assert not check_result(BEFORE, after, tiers, c_proxy, n_heldout=300,
                            never_seen=NeverSeen(c, (c > 0.5).astype(float), auc=0.5)).passed  # 0.5 would misfire
    with pytest.raises(GateError, match="conf needs one finite value per example"):
        NeverSeen(c, (c > 0.5).astype(float), conf=conf[:10], heldout_conf=held)


def test_the_heldout_estimate_matches_by_rank_not_value():
    """Train examples gain confidence by being trained on, so held-out confidences sit on a lower
    scale: the estimate pairs quantiles. Here the held-out C-proxy is the train one squashed into
    [0, 0.3] with the lowest 30% wrong: a train example in the bottom 30% of C-proxy is expected
    wrong, one above right, although no held-out value is anywhere near the train values above 0.3."""
    rng = np.random.default_rng(0)
    train_c = rng.uniform(0, 1, 2000)
    held_c = rng.uniform(0, 0.3, 300)
    correct = (held_c > np.quantile(held_c, 0.3)).astype(float)
    ns = heldout_never_seen(train_c, held_c, correct)
    low, high = np.quantile(train_c, [0.1, 0.8])
    assert ns.accuracy_at([low], 20)[0] == 0.0 and ns.accuracy_at([high], 20)[0] == 1.0
    assert ns.c_proxy.min() >= train_c.min() and ns.c_proxy.max() <= train_c.max()  # on the train scale
    assert "rank" in ns.source

    # a request of easy examples is expected to score high on the attack even unseen
    conf = np.where(correct == 1, 0.9, 0.2)
    ns = heldout_never_seen(train_c, held_c, correct, heldout_conf=conf, test_conf=rng.uniform(0, 1, 500))
    assert ns.expected_auc([high] * 30, 20) > 0.75 > 0.25 > ns.expected_auc([low] * 30, 20)


@pytest.mark.parametrize("args, needle", [
    (([], [0.5], [1]), "train_c_proxy must be non-empty"),
    (([0.1, np.nan], [0.5], [1]), "train_c_proxy must be non-empty and finite"),
    (([0.1, 0.2], [0.5, 0.6], [1]), "match heldout_correct in length (got (2,) and (1,))"),
    (([0.1, 0.2], [], []), "heldout_c_proxy must be non-empty"),
])
def test_the_heldout_estimate_refuses_bad_input_by_name(args, needle):
    with pytest.raises(GateError) as e:
        heldout_never_seen(*args)
    assert needle in str(e.value)


def test_a_never_seen_estimate_takes_probabilities_of_being_right_and_refuses_values_outside_0_1():
    c = np.linspace(0, 1, 100)
    soft = np.where(c < 0.5, 0.2, 0.9)  # e.g. a source's true-class probabilities on held-out examples
    ns = NeverSeen(c, soft)
    assert ns.accuracy_at([0.1], 10)[0] == pytest.approx(0.2) and ns.accuracy_at([0.9], 10)[0] == pytest.approx(0.9)
    expected, band = tier_expectation(ns, c[80:95])  # its 50-neighbour windows all above 0.5
    assert expected == pytest.approx(0.9) and band > 0.1
    for bad in (1.5, -0.1, np.nan):
        with pytest.raises(GateError, match=r"correct in \[0, 1\]"):
            NeverSeen(c, np.full(100, bad))

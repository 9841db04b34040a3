"""mlflow_unlearn/hook/acceptance.py, the parts that need no server: when a request skips approximate
unlearning (`retrain_after_*`), a diverged attempt failing the gate's `finite` check instead of the
job, and the compact checks tag. The escalation end to end (gate fails -> exact retrain): test_hook_e2e."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mlflow_unlearn.gate import Check, GateReport, GateThresholds
from mlflow_unlearn.hook import acceptance, ledger
from mlflow_unlearn.hook.config import HookConfig


def request_on(n_train: int, forgotten: int, hows: list[str]):
    """A stand-in for a ForgetContext as retrain_policy reads it: the lineage this request would leave."""
    lineage = SimpleNamespace(forgotten=np.arange(forgotten), requests=[{"how": h} for h in hows])
    return SimpleNamespace(data=SimpleNamespace(train=range(n_train)), lineage_after=lambda run_id, how: lineage)


@pytest.mark.parametrize("config,hows,forgotten,why", [
    ({}, ["rum"] * 9, 900, None),  # no policy: always approximate first
    ({"retrain_after_fraction": 0.25}, ["rum"], 249, None),
    ({"retrain_after_fraction": 0.25}, ["rum"], 250, "250 of 1000 train examples forgotten"),
    # the lineage lists deletion requests only, oldest first, the one being answered last
    ({"retrain_after_requests": 3}, ["rum", "rum"], 10, None),
    ({"retrain_after_requests": 3}, ["rum", "rum", "rum"], 10, "request 3 since the last retrain (2 approximate"),
    ({"retrain_after_requests": 3}, ["rum", "rum", "retrain", "rum"], 10, None),  # a retrain resets the count
    ({"retrain_after_requests": 1}, ["rum"], 10, "request 1 since the last retrain"),  # every request exact
])
def test_retrain_policy(tmp_path, config, hows, forgotten, why):
    cfg = HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=f"sqlite:///{tmp_path}/m.db", **config)
    out = acceptance.retrain_policy(request_on(1000, forgotten, hows), cfg)
    assert out is None if why is None else why in out


def test_a_diverged_attempt_fails_the_finite_check_without_evaluating():
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    # ctx=None: a diverged model must be judged before anything evaluates it
    after, report = acceptance.evaluate_attempt(None, model, {}, None, None, GateThresholds())
    assert after == {} and not report.passed and [c.name for c in report.failed] == ["finite"]
    assert "diverged" in report.failed[0].detail


def test_the_checks_tag_is_compact_json_of_the_last_attempt():
    report = GateReport([Check("retain", 0.987654, ">= 0.9", True), Check("forget/high", None, "n/a", None, "not checked")])
    gated = acceptance.Gated(result=None, after={}, resolved=None, path="passed", thresholds={},
                             never_seen=None, attempts=[{"gate": {"checks": []}}, {"gate": report.to_dict()}])
    tag = gated.checks_tag()
    assert json.loads(tag) == {"retain": [0.9877, True], "forget/high": [None, None]}
    assert len(tag) <= ledger.MAX_TAG_VALUE and gated.algorithm == "rum"
    assert acceptance.Gated(None, {}, None, "retrained", [], {}, None).algorithm == "retrain"

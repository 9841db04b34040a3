"""mlflow_unlearn/hook/evidence.py: the evidence report and its per-tier chart."""
from __future__ import annotations

import json

import pytest

from mlflow_unlearn.hook import evidence


def _report():
    before = {"forget/acc": 1.0, "retain/acc": 1.0, "test/acc": 0.9, "mia/efficacy": 0.2, "mia/auc": 0.6, "tier/low/forget_acc": 1.0}
    after = {"forget/acc": 0.7, "retain/acc": 0.98, "test/acc": 0.88, "mia/efficacy": 0.5, "mia/auc": 0.52, "tier/low/forget_acc": float("nan")}
    return evidence.build_report(
        request={"model": "m", "version": "1", "forget_set": "runs:/r/f.json", "request_run": "r"},
        forget={"digest": "d" * 64, "count": 30, "tier_histogram": {"low": 10, "mid": 10, "high": 10}, "tiers": {"low": 10}},
        plan={"retain_mode": "exclude_all", "steps": [{"tier": "low", "algorithm": "none", "hyperparameters": {}}]},
        plan_source="default", before=before, after=after, against_source={"disagree/forget": 0.3}, reference=None,
        reference_run=None, times={"unlearn_s": 1.5, "original_train_s": 10.0, "fraction_of_original_training": 0.15},
        result={"version": "2", "run_id": "j"})


def test_evidence_report_has_every_part_and_renders():
    report = _report()
    assert report["schema"] == evidence.SCHEMA
    assert report["metrics"]["change"]["forget/acc"] == pytest.approx(-0.3)
    assert report["metrics"]["after"]["tier/low/forget_acc"] is None  # NaN is not valid JSON
    json.dumps(report, allow_nan=False)
    for key in ("python", "mlflow", "torch", "huey"):
        assert key in report["software"]
    md, page = evidence.to_markdown(report), evidence.to_html(report)
    for text in (md, page):
        for needle in ("version 1 -&gt; version 2" if text is page else "version 1 -> version 2", "d" * 64, "forget/acc",
                       "mia/efficacy", "exclude_all", "original_train_s", "mlflow", "no cached retrain"):
            assert needle in text, needle
    assert page.startswith("<!doctype html>")


def test_evidence_embeds_the_per_tier_chart():
    before = {"forget/acc": 1.0, "tier/low/forget_acc": 1.0, "tier/high/forget_acc": 1.0}
    after = {"forget/acc": 0.6, "tier/low/forget_acc": 0.95, "tier/high/forget_acc": 0.25}
    report = evidence.build_report(
        request={"model": "m", "version": "1", "forget_set": "runs:/r/f.json"}, forget={"digest": "d" * 64, "count": 20},
        plan={"retain_mode": "exclude_all", "steps": []}, plan_source="default", before=before, after=after,
        against_source={}, reference=None, reference_run=None, times={}, result={"version": "2", "run_id": "j"},
        reference_tier_acc={"low": 0.97, "high": 0.2})
    ax = evidence.tier_figure(report).axes[0]
    assert sorted(round(p.get_height(), 2) for p in ax.patches) == [0.2, 0.25, 0.95, 0.97, 1.0, 1.0]
    assert "<img alt='forget accuracy per tier'" in evidence.to_html(report)
    assert evidence.tier_figure(_report()) is None  # no finite per-tier value: no chart, no broken image

"""evaluation.py: an unlearned model scored against its retrained reference. The reference scores
perfectly against itself, the original does not, unlearning moves toward the reference; every
registered metric runs (plugins too); the per-tier accuracies partition the forget set; retain leaves
out what earlier requests forgot."""
import dataclasses

import numpy as np
import pytest

from mlflow_unlearn import evaluation, references, request, steps
from mlflow_unlearn.metrics import METRICS


def test_unlearning_lowers_forget_accuracy_and_the_reference_is_the_truth(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, "class:3")  # a whole class: the retrained reference cannot know it
    reference = references.retrain(ctx)
    original = evaluation.evaluation_metrics(ctx, ctx.source.model, reference.model)
    self_vs_self = evaluation.evaluation_metrics(ctx, reference.model, reference.model)
    assert self_vs_self["tow"] == 1.0 and self_vs_self["tow_pe"] == 1.0
    assert original["forget/acc"] > 0.9 and self_vs_self["forget/acc"] < 0.2
    result = steps.unlearn(ctx, "random_label", {"epochs": 3, "lr": 0.1})
    after = evaluation.evaluation_metrics(ctx, result.model, reference.model)
    assert after["forget/acc"] < 0.5 < original["forget/acc"]
    assert after["retain/acc"] > 0.9


def test_every_registered_metric_runs_unless_a_list_is_given(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, "mix:30")
    model = ctx.source.model

    def forget_loss(unlearned, reference, *, seed=0):
        return {"forget/loss": float(-np.log(np.clip(unlearned["forget"].true_conf, 1e-12, 1)).mean())}

    METRICS.add("test_forget_loss", forget_loss)
    try:
        every = evaluation.evaluation_metrics(ctx, model, None)
        builtin_only = evaluation.evaluation_metrics(ctx, model, None, metrics=[])
    finally:
        METRICS._items.pop("test_forget_loss", None)
    assert every["forget/loss"] >= 0 and "forget/loss" not in builtin_only
    assert {k: v for k, v in every.items() if k != "forget/loss"} == builtin_only


def test_tier_accuracies_partition_the_forget_set(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, "mix:30")
    per_tier = evaluation.forget_tier_accuracy(ctx, ctx.source.model)
    sizes = {t: len(ids) for t, ids in ctx.tiers.items()}
    assert set(per_tier) == set(sizes) | {"all"} and sum(sizes.values()) == 30
    assert per_tier["all"] == pytest.approx(sum(per_tier[t] * n for t, n in sizes.items()) / 30)


def test_retain_leaves_out_what_earlier_requests_forgot(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, [0, 1, 2])
    earlier = np.arange(10, 40)
    later = dataclasses.replace(ctx, task=dataclasses.replace(ctx.task, forgotten=earlier), cache={})
    n_train = len(ctx.data.train)
    assert len(evaluation.outputs_of(ctx, ctx.source.model)["retain"].labels) == n_train - 3
    assert len(evaluation.outputs_of(later, ctx.source.model)["retain"].labels) == n_train - 3 - len(earlier)


def test_format_metrics_shows_the_headline_keys_in_order():
    line = evaluation.format_metrics({"tow": 0.91234, "forget/acc": 0.5, "custom": 1.0, "cost/train_fraction": 0.25})
    assert line == "tow=0.9123  forget/acc=0.5000  cost/train_fraction=0.2500"  # column order (metrics.Shown)

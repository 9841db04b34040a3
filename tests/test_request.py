"""A request resolved once (request.py): the source version, the forget set and its tiers, and the
plan, with the one plan-resolution function and its two policies (the CLI's `error`, the hook's
`default`)."""
import json

import pytest
from mlflow import MlflowClient

from mlflow_unlearn import request, steps
from mlflow_unlearn.rum import PlanError, default_plan
from mlflow_unlearn.tags import Tag

FORGET = "mix:30"


@pytest.fixture
def ctx(source_model):
    _, uri = source_model
    client = MlflowClient()
    yield request.prepare(uri, FORGET)
    client.delete_registered_model_tag("digits-src", Tag.SEARCHED_PLAN)


def test_prepare_resolves_the_forget_set_and_its_tiers_once(ctx):
    assert len(ctx.forget) == 30 and len(ctx.forget.digest) == 64
    assert list(ctx.tiers) == ["low", "mid", "high"] and sum(len(v) for v in ctx.tiers.values()) == 30
    assert sum(ctx.histogram.values()) == 30


def test_plan_resolution_without_a_registered_plan(ctx):
    resolved = request.resolve_plan(ctx, "auto")
    assert resolved.source == "default (no plan registered on the model)"
    assert resolved.plan.to_dict() == default_plan(tuple(ctx.tiers)).validate(ctx.tiers).to_dict()
    with pytest.raises(PlanError, match="has no searched plan"):
        request.resolve_plan(ctx, "registered")
    given = request.resolve_plan(ctx, "low=none;mid=none;high=finetune(epochs=1)")
    assert given.source == "given" and given.plan.steps[2].hyperparameters["epochs"] == 1


@pytest.mark.parametrize("tag, needle", [
    ('{"steps": [{"tier": "a", "algorithm": "none"}, {"tier": "b", "algorithm": "none"}]}', "'a'"),
    ("/etc/passwd", "not valid JSON"),  # a tag is data: never opened as a file
    ('{"steps": [{"tier": "all", "algorithm": "frob"}]}', "frob"),
])
def test_a_registered_plan_that_cannot_be_used_follows_the_policy(ctx, tag, needle):
    MlflowClient().set_registered_model_tag("digits-src", Tag.SEARCHED_PLAN, tag)
    with pytest.raises(PlanError, match=needle) as info:
        request.resolve_plan(ctx, "auto")  # the CLI's policy: say so, with the fix
    assert "--plan default" in str(info.value)
    fallback = request.resolve_plan(ctx, "auto", on_unfit="default")  # the hook's policy: fall back, say why
    assert fallback.source.startswith("default (the registered plan does not fit") and needle in fallback.source
    assert fallback.plan.tiers == ["low", "mid", "high"]
    with pytest.raises(ValueError, match="unknown plan policy on_unfit='ignore'"):
        request.resolve_plan(ctx, "auto", on_unfit="ignore")


def test_a_registered_plan_runs_at_the_budget_it_was_searched_at_within_the_requests(source_model):
    _, uri = source_model
    client = MlflowClient()
    plan = {"budget": 0.05, "steps": [{"tier": "all", "algorithm": "finetune", "hyperparameters": {"epochs": 2}}]}
    client.set_registered_model_tag("digits-src", Tag.SEARCHED_PLAN, json.dumps(plan))
    try:
        ctx = request.prepare(uri, FORGET, budget=0.1)
        resolved = request.resolve_plan(ctx, "auto")
        assert resolved.budget.fraction == 0.05 and resolved.budget.original_passes == ctx.budget.original_passes
        assert resolved.source.endswith("at its searched budget 0.05 (request budget 0.1)")
        result = steps.rum(ctx, resolved)  # runs under the plan's budget: what was scored, within the request's
        assert result.cost["cost/budget"] == pytest.approx(0.05)
        assert 0 < result.cost["cost/train_fraction"] <= 0.05
        same = request.resolve_plan(request.prepare(uri, FORGET, budget=0.05), "auto")
        assert same.budget is None and same.source.startswith("registered")  # the request's own budget

        tight = request.prepare(uri, FORGET, budget=0.02)  # below the plan's: cut short it is another run
        with pytest.raises(PlanError, match=r"chosen under budget 0\.05, above this request's 0\.02") as info:
            request.resolve_plan(tight, "registered")
        assert "pass --budget 0.05" in str(info.value) and "search again with --budget 0.02" in str(info.value)
        fallback = request.resolve_plan(tight, "auto", on_unfit="default")  # the hook: the default plan, and why
        assert fallback.source.startswith("default (the registered plan was chosen under budget 0.05")
        assert fallback.budget is None and fallback.plan.tiers == ["low", "mid", "high"]
        with pytest.raises(PlanError, match="drop the plan's budget key"):  # a given plan: the same rule
            request.resolve_plan(tight, json.dumps(plan))
        assert request.resolve_plan(tight, json.dumps(plan["steps"])).budget is None  # no budget: cut to the request's
    finally:
        client.delete_registered_model_tag("digits-src", Tag.SEARCHED_PLAN)

"""A request resolved once (request.py): the source version, the forget set and its tiers, and the
plan, with the one plan-resolution function and its two policies (the CLI's `error`, the hook's
`default`)."""
import pytest
from mlflow import MlflowClient

from mlflow_unlearn import request
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

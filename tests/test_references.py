"""references.py: the retrained reference, cached by (source, forget digest, seed, recipe), and the
acceptance gate's never-seen estimate read back from a search's calibration record, which is
registry content and so checked before it is trusted."""
import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from mlflow_unlearn import references, request
from mlflow_unlearn.evaluation import forget_tier_accuracy
from mlflow_unlearn.tags import Role, Tag


def retrain_runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`{Tag.ROLE}` = '{Role.RETRAIN}'")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


@pytest.mark.integration  # three retrains, two of them logged as MLflow models
def test_retrain_is_cached_by_seed_and_recipe_and_never_sees_the_forget_set(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, "class:3")  # a whole class: a model that never saw it cannot know it
    before = len(retrain_runs())
    assert references.cached_reference(ctx, epochs=2) is None  # the lookup alone never trains
    first = references.retrain(ctx, epochs=2)
    again = references.retrain(ctx, epochs=2)
    other_seed = references.retrain(ctx, epochs=2, seed=ctx.seed + 1)
    assert len(retrain_runs()) == before + 2
    assert again.cached and again.run_id == first.run_id and same_weights(again.model, first.model)
    assert not other_seed.cached and not same_weights(other_seed.model, first.model)

    # the seed is a key of its own, the epochs are part of the recipe
    assert references.retrain_recipe(ctx, 2) != references.retrain_recipe(ctx, 3)
    assert references.cached_reference(ctx, epochs=3) is None
    run = MlflowClient().get_run(other_seed.run_id)
    assert run.data.tags[Tag.SEED] == str(ctx.seed + 1) and run.data.tags[Tag.RECIPE] == references.retrain_recipe(ctx, 2)
    assert run.data.params["train.epochs"] == "2" and run.data.tags[Tag.FORGET_DIGEST] == ctx.forget.digest
    # its compute, counted by the meter: 2 epochs over retain, as a fraction of the original training
    n_retain = len(ctx.retain_ids)
    assert run.data.metrics["cost/train_passes"] == 2 * n_retain
    assert run.data.metrics["cost/train_fraction"] == pytest.approx(2 * n_retain / ctx.source.original_passes)

    # trained on retain only: the forgotten class is (almost) never predicted right; the original knew it
    assert forget_tier_accuracy(ctx, first.model)["all"] < 0.2 < 0.9 < forget_tier_accuracy(ctx, ctx.source.model)["all"]


def _calibration_record(ids, correct, **extra):
    return {"calibration_sets": [{"never_seen": {"ids": ids, "correct": correct, "auc": 0.5, **extra}}]}


@pytest.mark.parametrize("record,expected", [
    (_calibration_record([1, 2, 3, 4], [1, 0, 1, 1]), 4),
    (_calibration_record([1, 2, 3, 4], [1, 0, 1, 1], conf=[0.9, 0.1, 0.8, 0.7], heldout_conf=[0.5, 0.6]), 4),
    (_calibration_record([1, 2, 10**6], [1, 0, 1]), None),  # an id outside the source's train set
    (_calibration_record([1, 2, 3], [1, 0]), None),  # lengths disagree
    (_calibration_record([1, 2], [1, 7]), None),  # correctness must be 0/1
    ({"calibration_sets": "not a list"}, None),
    ("not json at all", None),
])
def test_never_seen_estimate_is_read_from_the_search_run_and_checked(source_model, tmp_path, record, expected):
    _, uri = source_model
    ctx = request.prepare(uri, [5, 6, 7])
    client = MlflowClient()
    assert Tag.SEARCHED_PLAN_RUN not in (client.get_registered_model(ctx.source.name).tags or {})
    assert references.calibration_never_seen(ctx) is None  # no search: nothing to estimate from

    search_run = client.create_run(experiment_id="0", run_name="search")
    path = tmp_path / "calibration.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    client.log_artifact(search_run.info.run_id, str(path))
    client.set_registered_model_tag(ctx.source.name, Tag.SEARCHED_PLAN_RUN, search_run.info.run_id)
    try:
        never_seen = references.calibration_never_seen(ctx)
    finally:
        client.delete_registered_model_tag(ctx.source.name, Tag.SEARCHED_PLAN_RUN)
    if expected is None:
        assert never_seen is None
    else:
        assert len(never_seen.correct) == expected and never_seen.auc == 0.5
        np.testing.assert_allclose(never_seen.c_proxy, np.sort(np.asarray(ctx.source.proxies["c_proxy"])[[1, 2, 3, 4]]))
        assert search_run.info.run_id in never_seen.source


def test_without_a_search_the_estimate_comes_from_the_validation_split(source_model):
    """The train step records the validation split's confidences after every epoch; without a
    search the gate's never-seen estimate pairs them with the train C-proxy by rank, with the source
    version's own correctness on those never-trained examples. Without the record: no estimate."""
    import dataclasses

    from mlflow_unlearn.training import accuracy, predict_logits

    _, uri = source_model
    ctx = request.prepare(uri, [5, 6, 7])
    assert references.calibration_never_seen(ctx) is None
    held = ctx.source.heldout_true_class_prob
    epochs = ctx.source.model_spec["train_config"]["epochs"]
    assert held is not None and held.shape == (epochs, len(ctx.data.val))
    final = torch.softmax(predict_logits(ctx.source.model, ctx.data, ctx.data.val), 1)
    final = final.gather(1, ctx.data.val.y[:, None]).squeeze(1).numpy()
    np.testing.assert_allclose(held[-1].astype(np.float64), final, atol=2e-3)  # the last row: the trained model, float16

    estimate = references.never_seen_estimate(ctx)
    assert estimate is not None and f"{len(ctx.data.val)} validation examples" in estimate.source
    assert estimate.correct.mean() == pytest.approx(accuracy(ctx.source.model, ctx.data, ctx.data.val))
    c_proxy = np.asarray(ctx.source.proxies["c_proxy"])
    assert c_proxy.min() <= estimate.c_proxy.min() and estimate.c_proxy.max() <= c_proxy.max()

    older = dataclasses.replace(ctx, source=dataclasses.replace(ctx.source, heldout_true_class_prob=None))
    assert references.never_seen_estimate(older) is None  # trained before the record existed: not checked
    shorter = dataclasses.replace(ctx, source=dataclasses.replace(ctx.source, heldout_true_class_prob=held[:, :5]))
    assert references.never_seen_estimate(shorter) is None  # a record that does not fit the split is not trusted


@pytest.mark.integration  # one training and its calibration reference
def test_train_builds_the_calibration_reference_that_search_and_gate_reuse(tracking, monkeypatch):
    """`train --calibration-reference true` pays the calibration retrain right after training: a
    later search's calibration is a cache hit (no retrain), and the hook's gate estimates
    never-seen accuracy from it over the whole pool, least to most memorised."""
    from mlflow_unlearn import search, steps

    trained = steps.train_step(subset=300, width=4, epochs=2, registered_model_name="calref", progress=False,
                               calibration_reference=True)
    runs = [r for r in retrain_runs() if r.data.tags.get(Tag.CALIBRATION_POOL)]
    assert len(runs) == 1 and runs[0].data.tags[Tag.SOURCE_MODEL] == f"calref/{trained.version}"
    ctx = request.prepare(trained.model_uri, "mix:9")
    trained_again = []
    monkeypatch.setattr(references, "retrain_from_scratch", lambda *a, **kw: trained_again.append(a))
    calibration = search.prepare_calibration(ctx, 2)
    assert trained_again == [] and calibration.runs[0].run_id == runs[0].info.run_id and calibration.runs[0].cached
    estimate = references.never_seen_estimate(ctx)
    assert estimate is not None and "calibration reference" in estimate.source
    assert len(estimate.c_proxy) == len(calibration.union_ids)
    c = np.asarray(ctx.source.proxies["c_proxy"])
    assert estimate.c_proxy.min() == c[calibration.union_ids].min()  # the extreme tail is in the estimate


def test_a_pool_tag_is_parsed_strictly():
    assert references.PoolSpec.parse("k=2;size=99;tiers=3") == references.PoolSpec(2, 99, 3)
    for bad in (None, "", "k=2;size=99", "k=0;size=9;tiers=3", "k=2;size=99;tiers=3;x", "k=2;size=1e9;tiers=3",
                "../etc/passwd"):
        assert references.PoolSpec.parse(bad) is None

"""The step functions end to end on digits through the real MLflow API: retrain / unlearn /
evaluate / rum (nested tier runs, registration, served predictions) / memorization, and bad input."""
import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from mlflow_unlearn import request, steps, tracking
from mlflow_unlearn._registry import UnknownComponentError
from mlflow_unlearn.algorithms import HyperparameterError
from mlflow_unlearn.forget_sets import ForgetSetError
from mlflow_unlearn.rum import PlanError
from mlflow_unlearn.tracking import MissingArtifactError

FORGET = "mix:30"


def runs_with_role(role):
    return mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`mlflow_unlearn.role` = '{role}'",
                              output_format="list")


@pytest.mark.integration  # a chain of steps through MLflow: two retrains, unlearn + register, two evaluations
def test_retrain_unlearn_evaluate_with_cache_hit(source_model, monkeypatch):
    _, uri = source_model
    first = steps.retrain_step(uri, FORGET)
    assert not first.cached
    again = steps.retrain_step(uri, FORGET)
    assert again.cached and again.run_id == first.run_id  # no second training
    assert len(runs_with_role("retrain")) == 1

    result = steps.unlearn_step(uri, FORGET, "neggrad_plus", "epochs=3,lr=0.01", register=True)
    mv = MlflowClient().get_model_version("digits-src", result.version)
    assert str(mv.version) == "2"
    assert mv.tags["mlflow_unlearn.source_model"] == "digits-src/1"
    assert mv.tags["mlflow_unlearn.algorithm"] == "neggrad_plus"
    assert len(mv.tags["mlflow_unlearn.forget_digest"]) == 64
    # native lineage and registry: dataset and source-model inputs, a description, the aliases
    client = MlflowClient()
    inputs = client.get_run(result.run_id).inputs
    assert {d.dataset.name for d in inputs.dataset_inputs} == {"digits-train", "forget-set"}
    assert [m.model_id for m in inputs.model_inputs] == [tracking.version_model_id(client.get_model_version("digits-src", "1"))]
    assert "30 training examples unlearned" in mv.description and "neggrad_plus" in mv.description
    assert str(client.get_model_version_by_alias("digits-src", "unlearned").version) == "2"
    assert str(client.get_model_version_by_alias("digits-src", "original").version) == "1"

    from mlflow_unlearn.metrics import METRICS

    # a plugin metric is computed and logged by evaluate without being named anywhere
    monkeypatch.setitem(METRICS._items, "forget_confidence",
                        lambda unlearned, reference=None: {"forget_confidence": float(unlearned["forget"].signal().mean())})
    metrics = steps.evaluate_step(uri, FORGET, result.run_id)
    assert 0 < metrics["forget_confidence"] <= 1
    for key in ["forget/acc", "retain/acc", "test/acc", "tow", "tow_mia", "tow_pe", "mia/efficacy", "mia/auc", "mia/gap",
                "disagree/forget", "disagree/retain", "disagree/test", "tier/low/forget_acc", "tier/high/forget_acc",
                "time/unlearn_s", "time/retrain_s", "cost/train_fraction", "entanglement"]:
        assert key in metrics, key
    assert 0 <= metrics["tow"] <= 1
    # the noise floor: a second reference (seed + 1) scored against the first, logged beside the result
    assert 0 < metrics["floor/tow"] <= 1 and 0 < metrics["floor/tow_pe"] < 1 and 0 <= metrics["floor/mia_gap"] <= 1
    retrains = runs_with_role("retrain")
    assert sorted(r.data.tags["mlflow_unlearn.seed"] for r in retrains) == ["0", "1"]  # evaluate reused the reference
    assert steps.evaluate_step(uri, FORGET, result.run_id)["floor/tow"] == metrics["floor/tow"]
    assert len(runs_with_role("retrain")) == 2  # and the second reference is cached too
    ev = runs_with_role("evaluate")
    assert len(ev) == 2 and all(r.data.metrics["tow"] == pytest.approx(metrics["tow"]) for r in ev)
    assert ev[0].data.metrics["forget_confidence"] == pytest.approx(metrics["forget_confidence"])
    # metrics were copied onto the unlearned run, so the UI compares runs on the same keys
    assert MlflowClient().get_run(result.run_id).data.metrics["tow"] == pytest.approx(metrics["tow"])
    # evaluate runs carry what they evaluated, so the compare page lines them up by method
    assert ev[0].data.params["algorithm"] == "neggrad_plus" and ev[0].data.params["hp.epochs"] == "3"
    # the per-tier chart (original, unlearned, reference) on the evaluate run and on the unlearned run
    for run_id in (ev[0].info.run_id, result.run_id):
        assert "plots/tiers.png" in [a.path for a in MlflowClient().list_artifacts(run_id, "plots")]


@pytest.mark.parametrize("forget,error,needle", [
    ([1, 2, 5000], ForgetSetError, "5000"),
    ([1, 1, 2], ForgetSetError, "repeats ids [1]"),
    ([], ForgetSetError, "empty"),
    (list(range(360)), ForgetSetError, "all 360"),  # 400 digits minus the 10% validation split
    ("runs:/0123456789abcdef/forget.txt", ForgetSetError, "runs:/0123456789abcdef"),
])
def test_bad_forget_sets_create_nothing(source_model, forget, error, needle):
    _, uri = source_model
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    with pytest.raises(error) as e:
        steps.unlearn_step(uri, forget, "finetune", register=True)
    assert needle in str(e.value)
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before
    assert {str(v.version) for v in MlflowClient().search_model_versions("name='digits-src'")} <= {"1", "2"}


@pytest.mark.parametrize("algorithm,hp,error,needle", [
    ("frobnicate", None, UnknownComponentError, "neggrad_plus"),
    ("neggrad_plus", {"alpha": 1.5}, HyperparameterError, "1.5"),
    ("finetune", {"lr": -0.1}, HyperparameterError, "-0.1"),
    ("finetune", {"momentun": 0.9}, HyperparameterError, "momentum"),
])
def test_bad_algorithm_input_creates_nothing(source_model, algorithm, hp, error, needle):
    _, uri = source_model
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    with pytest.raises(error) as e:
        steps.unlearn_step(uri, FORGET, algorithm, hp, register=True)
    assert needle in str(e.value)
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def test_version_without_confidences_is_named(source_model):
    _, uri = source_model
    client = MlflowClient()
    mv = client.get_model_version("digits-src", "1")
    # a version pointing at a run that lacks the confidence artifacts (logged by hand, as a team might)
    with mlflow.start_run() as run:
        mlflow.log_dict({"ids": []}, "unrelated.json")
        mlflow.log_dict(mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/manifest/train_manifest.json"), "manifest/train_manifest.json")
        mlflow.log_dict(mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/model_spec.json"), "model_spec.json")
    bare = client.create_model_version("digits-bare", mv.source, run.info.run_id) if client.search_registered_models("name='digits-bare'") else None
    if bare is None:
        client.create_registered_model("digits-bare")
        bare = client.create_model_version("digits-bare", mv.source, run.info.run_id)
    with pytest.raises(MissingArtifactError, match="confidences"):
        request.prepare(f"models:/digits-bare/{bare.version}", "random:5")


def test_hyperparameter_text_forms():
    assert steps.parse_hyperparameters("lr=0.01, epochs=3") == {"lr": "0.01", "epochs": "3"}
    assert steps.parse_hyperparameters('{"lr": 0.01}') == {"lr": 0.01}
    with pytest.raises(ValueError, match="'lr'"):
        steps.parse_hyperparameters("lr")


def runs(filter_string=""):
    return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")


def test_rum_step_logs_nested_tier_runs_and_registers(source_model):
    _, uri = source_model
    result = steps.rum_step(uri, FORGET, "low=none;mid=finetune(epochs=1);high=neggrad_plus(epochs=1,alpha=0.9)", register=True)
    parent = MlflowClient().get_run(result.run_id)
    assert parent.data.tags["mlflow_unlearn.role"] == "rum"
    children = runs(f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    assert sorted(c.data.tags["mlflow_unlearn.tier"] for c in children) == ["high", "low", "mid"]
    assert all("time/unlearn_s" in c.data.metrics for c in children)
    plan = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/plan.json")
    assert [s["tier"] for s in plan["steps"]] == ["low", "mid", "high"]
    mv = MlflowClient().get_model_version("digits-src", result.version)
    assert json.loads(mv.tags["mlflow_unlearn.applied_plan"])["steps"][2]["algorithm"] == "neggrad_plus"
    # the registered RUM version predicts on raw images exactly as the package's own model does
    from mlflow_unlearn.tracking import load_source, raw_images
    from mlflow_unlearn.training import predict_logits

    data = load_source(uri, with_confidences=False).load_data()
    served = mlflow.pyfunc.load_model(f"models:/digits-src/{result.version}").predict(raw_images(data, data.test))
    np.testing.assert_array_equal(served, predict_logits(result.model.cpu(), data, data.test).argmax(1).numpy())
    assert mv.tags["mlflow_unlearn.role"] == "unlearn" and "RUM, plan" in mv.description


def test_rum_plan_of_none_returns_the_original_weights(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    result = steps.rum(ctx, "low=none;mid=none;high=none")
    for k, v in ctx.source.model.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k].to(v.device)), k


@pytest.mark.parametrize("plan,needle", [("low=none;mid=none;top=none", "top"), ("low=none;mid=none;high=frob", "frob"),
                                         ("low=none;mid=none", "high")])
def test_bad_plans_create_no_run(source_model, plan, needle):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    before = len(runs())
    with pytest.raises((PlanError, KeyError)) as e:
        steps.rum(ctx, plan)
    assert needle in str(e.value)
    assert len(runs()) == before


@pytest.mark.integration  # six trainings through the memorization step, twice (resume)
def test_memorization_step_logs_estimate_and_correlations(source_model, tmp_path):
    _, uri = source_model
    metrics = steps.memorization_step(uri, n_models=3, epochs=2, workdir=str(tmp_path / "mem"))
    assert metrics["memorization/n_models"] == 3
    assert -1 <= metrics["spearman/c_proxy"] <= 1
    run = runs("tags.`mlflow_unlearn.role` = 'memorization'")[0]
    assert "spearman/c_proxy" in run.data.metrics
    est = np.load(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/memorization/memorization.npz"))
    assert est["mem"].shape == (360,)  # 400 minus the 10% validation split
    # resumable: the same workdir trains nothing again
    again = steps.memorization_step(uri, n_models=3, epochs=2, workdir=str(tmp_path / "mem"))
    assert again["spearman/c_proxy"] == pytest.approx(metrics["spearman/c_proxy"])


@pytest.mark.integration  # two RUM runs registered through MLflow, one on the other's result
def test_requests_accumulate_on_an_unlearned_version(source_model):
    """v1 -> v2 (request A) -> v3 (request B, partly A again): v3 forgets A and B, its retain set never
    holds an id of A, the ids of B already forgotten are reported, and a request of only forgotten
    ids is answered by the version that lacks them."""
    _, uri = source_model
    client = MlflowClient()
    src = tracking.load_source(uri)
    n_train = len(src.manifest["labels"])
    a = [0, 4, 8, 12, 16, 20, 24, 28]
    b = [0, 4, 8, 1, 2, 3, 5]  # three of A again, four new
    plan = "all=finetune(epochs=1)"
    first = steps.rum_step(uri, a, plan, register=True, device="cpu")
    v2 = f"models:/digits-src/{first.version}"
    ctx = request.prepare(v2, b, device="cpu")
    assert ctx.forgotten_before.tolist() == a and ctx.already_forgotten.tolist() == [0, 4, 8]
    assert ctx.new_ids.tolist() == [1, 2, 3, 5] and sorted(np.concatenate(list(ctx.tiers.values())).tolist()) == [1, 2, 3, 5]
    assert not set(ctx.retain_ids.tolist()) & set(a) and len(ctx.retain_ids) == n_train - len(set(a) | set(b))
    assert ctx.source.proxies is not None and np.array_equal(ctx.source.proxies["c_proxy"], src.proxies["c_proxy"])
    second = steps.rum(ctx, plan, register=True)
    mv3 = client.get_model_version("digits-src", second.version)
    lineage, manifest = tracking.read_lineage(client, mv3)
    assert lineage.forgotten.tolist() == sorted(set(a) | set(b)) and lineage.original_run == src.run_id
    assert [(r["source"], r["n_forget"], r["n_new"]) for r in lineage.requests] == [
        ("digits-src/1", 8, 8), (f"digits-src/{first.version}", 7, 4)]
    assert manifest["labels"] == src.manifest["labels"]
    tier_run = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string=(
        f"tags.`mlflow_unlearn.source_model` = 'digits-src/{first.version}' and tags.`mlflow_unlearn.tier` = 'all'"))[0]
    assert int(tier_run.data.params["n_retain"]) == n_train - len(set(a) | set(b))  # A never retained again
    with pytest.raises(request.AlreadyForgotten, match=rf"all 5 ids .* already forgotten .* models:/digits-src/{second.version}"):
        request.prepare(f"models:/digits-src/{second.version}", [0, 1, 2, 4, 28], device="cpu")

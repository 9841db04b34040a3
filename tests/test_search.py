"""RUM as an MLflow step, the Optuna search, shared studies, and the main pipeline."""
import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

from mlflow_unlearn import request

from mlflow_unlearn import pipeline, search, steps
from mlflow_unlearn.algorithms import ALGORITHMS
from mlflow_unlearn.rum import PlanError
from mlflow_unlearn.tracking import Tag

FORGET = "mix:30"


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


@pytest.fixture
def oracle_algorithm():
    """A test-only algorithm that is the *only* way to unlearn a calibration set's `high` tier: given
    exactly that tier and a model still untouched, it copies that set's retrained reference; anywhere
    else it damages the model. So the one plan with mean calibration ToW 1 is
    low=none;mid=none;high=test_oracle."""
    state = {"references": {}}

    def untouched(model):
        return all(torch.equal(v.cpu(), state["original"][k]) for k, v in model.state_dict().items())

    def oracle(model, data, *, seed=0, log=None):
        ids = frozenset(data.forget_ids.tolist())
        if ids in state["references"] and untouched(model):
            model.load_state_dict(state["references"][ids])
        else:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
        return model

    ALGORITHMS.add("test_oracle", oracle)
    yield state
    ALGORITHMS._items.pop("test_oracle", None)


@pytest.fixture
def diverging_algorithm():
    """A test-only algorithm whose output has NaN weights (a diverged trial)."""

    def diverge(model, data, *, seed=0, log=None):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return model

    ALGORITHMS.add("test_diverge", diverge)
    yield
    ALGORITHMS._items.pop("test_diverge", None)


def test_search_selects_on_calibration_sets_and_attaches_the_plan(source_model, oracle_algorithm, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 2)
    for c, ref in zip(calibration.contexts, calibration.runs):
        oracle_algorithm["references"][frozenset(c.tiers["high"].tolist())] = {k: v.clone() for k, v in ref.model.state_dict().items()}
    oracle_algorithm["original"] = {k: v.detach().cpu().clone() for k, v in ctx.source.model.state_dict().items()}
    found = search.search(ctx, calibration, n_trials=16, algorithms=("none", "test_oracle"), storage=f"sqlite:///{tmp_path}/o.db")
    assert found.best_plan.to_compact() == "low=none;mid=none;high=test_oracle"
    assert found.best_value == pytest.approx(1.0)
    tags = MlflowClient().get_registered_model("digits-src").tags
    assert json.loads(tags[Tag.SEARCHED_PLAN]) == found.best_plan.to_dict()
    assert request.resolve_plan(ctx, "registered").plan.to_dict() == found.best_plan.validate(ctx.tiers).to_dict()
    trials = runs(f"tags.`mlflow_unlearn.role` = 'trial' and tags.`mlflow_unlearn.study` = '{found.study_name}'")
    assert len(trials) == 16  # every trial is a nested run, pruned ones included
    assert not [t for t in trials if t.info.status == "FAILED"], "pruned trials must not look like crashes"
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    assert len(study.trials) == 16
    # the known-good points ran first: none everywhere, then the oracle whole-set and per tier
    first = [t.user_attrs["plan"] for t in study.trials[:3]]
    assert [s["algorithm"] for s in first[0]["steps"]] == ["none"] * 3
    assert first[1]["steps"][0]["tier"] == "all"


@pytest.mark.integration
def test_calibration_sets_are_disjoint_from_the_request_and_logged(source_model, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    before = {r.info.run_id for r in runs("tags.`mlflow_unlearn.role` = 'retrain'")}
    found = search.search_step(uri, FORGET, n_trials=3, algorithms=("none", "finetune"), max_epochs=1,
                               storage=f"sqlite:///{tmp_path}/c.db")
    assert len(found.calibration_digests) == 2 and ctx.forget.digest not in found.calibration_digests
    assert len(set(found.calibration_digests)) == 2
    run = MlflowClient().get_run(found.run_id)
    assert run.data.tags[search.CALIBRATION_TAG].split(",") == found.calibration_digests
    cal = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/calibration.json")
    sets = [set(c["ids"]) for c in cal["calibration_sets"]]
    assert not (sets[0] & sets[1]) and not (sets[0] & set(ctx.forget.ids.tolist()))
    assert all(len(x) == len(ctx.forget) for x in sets)
    # the request's own reference was never trained by the search: only the calibration sets' were
    new = [r for r in runs("tags.`mlflow_unlearn.role` = 'retrain'") if r.info.run_id not in before]
    assert ctx.forget.digest not in {r.data.tags["mlflow_unlearn.forget_digest"] for r in new}


def test_a_diverged_trial_fails_and_the_study_goes_on(source_model, diverging_algorithm, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 1)
    found = search.search(ctx, calibration, n_trials=4, algorithms=("none", "test_diverge"), attach=False,
                          storage=f"sqlite:///{tmp_path}/d.db")
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    states = [t.state for t in study.trials]
    assert len(states) == 4 and optuna.trial.TrialState.FAIL in states
    assert optuna.trial.TrialState.COMPLETE in states
    assert "test_diverge" not in found.best_plan.to_compact()
    failed = [r for r in runs(f"tags.`mlflow_unlearn.study` = '{found.study_name}'") if r.info.status == "FAILED"]
    assert failed and all("mlflow_unlearn.diverged" in r.data.tags for r in failed)


def test_search_refuses_a_source_without_a_validation_split(tracking):
    trained = steps.train_step(subset=200, width=4, epochs=1, val_fraction=0.0, registered_model_name="noval", progress=False)
    with pytest.raises(search.SearchError, match="--val-fraction"):
        search.search_step(trained.model_uri, "mix:30", n_trials=3, algorithms=("none", "finetune"))


def test_a_request_too_large_for_calibration_names_sizes_and_fix(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, "mix:150")
    with pytest.raises(search.SearchError) as e:
        search.prepare_calibration(ctx, 2)
    assert "bin" in str(e.value) and "--calibration-sets 1" in str(e.value)


@pytest.mark.parametrize("kw,needle", [({"n_trials": 0}, "n_trials"), ({"objective": "accuracy"}, "accuracy"),
                                       ({"algorithms": ("none", "frob")}, "frob"), ({"n_trials": 2}, "known-good"),
                                       ({"storage": "notadb://x"}, "notadb://x")])
def test_bad_search_settings(source_model, kw, needle):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.Calibration([], [], [])
    before = len(runs())
    kw = {"algorithms": ("none", "finetune"), **kw}
    with pytest.raises(search.SearchError) as e:
        search.search(ctx, calibration, **kw)
    assert needle in str(e.value)
    assert len(runs()) == before


def _worker(uri, tracking_uri, storage, study):
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlflow_unlearn.cli", "search", "--model-uri", uri, "--forget", FORGET,
                             "--n-trials", "4", "--calibration-sets", "1", "--max-epochs", "1", "--storage", storage,
                             "--study-name", study, "--algorithms", "none,neggrad"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_workers_share(uri, tracking_uri, storage):
    search.prepare_calibration(request.prepare(uri, FORGET), 1)  # both workers then hit the cached reference
    procs = [_worker(uri, tracking_uri, storage, "shared") for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5  # the budget is the study's; two racing workers may each start the last one
    assert len({t.user_attrs["worker"] for t in finished}) == 2, "both workers ran trials"


@pytest.mark.integration
def test_two_workers_share_one_study_on_sqlite(source_model, tmp_path):
    tracking_uri, uri = source_model
    _two_workers_share(uri, tracking_uri, f"sqlite:///{tmp_path}/shared.db")


@pytest.mark.postgres
def test_two_workers_share_one_study_on_postgres(source_model, postgres_db):
    tracking_uri, uri = source_model
    _two_workers_share(uri, tracking_uri, postgres_db())


@pytest.mark.integration
def test_main_pipeline_selects_on_calibration_and_reports_on_the_request(tracking):
    out = pipeline.main_step(subset=300, width=8, epochs=6, forget="mix:30", n_trials=5, max_epochs=1, unlearn_seeds=2,
                             baselines=("finetune", "neggrad"), registered_model_name="main-digits")
    table = out["table"]
    for row in ("RUM (searched plan)", "none (no unlearning)", "finetune (defaults)", "finetune (tuned)",
                "neggrad (defaults)", "neggrad (tuned)", "retrain vs retrain (noise floor)"):
        assert row in table
    assert "none (no unlearning) (unchanged)" in table  # doing nothing is flagged as such
    assert "does NOT beat" in out["verdict"] or "beats doing nothing" in out["verdict"]
    assert str(out["rum"].version) == "2"
    mv = MlflowClient().get_model_version("main-digits", out["rum"].version)
    assert mv.tags["mlflow_unlearn.algorithm"] == "rum"
    rum = next(r for r in out["reports"] if r.name == "RUM (searched plan)")
    assert len(rum.per_seed) == 2 and all(0 < m["tow"] <= 1 for m in rum.per_seed)
    # selection and reporting saw different forget sets
    search_runs = runs("tags.`mlflow_unlearn.role` = 'search'")
    assert len(search_runs) == 3  # RUM and one per baseline, with the same budget
    target = out["ctx"].forget.digest
    for r in search_runs:
        assert int(r.data.params["n_trials"]) == 5
        assert target not in r.data.tags[search.CALIBRATION_TAG]
    assert 0 < out["floor"]["floor/tow"] <= 1
    parent = runs("tags.`mlflow_unlearn.role` = 'pipeline'")[0]
    assert parent.data.metrics["time/pipeline_s"] > 0 and "floor/tow" in parent.data.metrics
    assert "entanglement" in parent.data.metrics
    method = runs("attributes.run_name = 'finetune (tuned)'")[0]
    assert method.data.params["algorithm"] == "finetune" and "tow" in method.data.metrics
    client = MlflowClient()
    assert "plots/methods.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    table = mlflow.load_table("summary_table.json", run_ids=[parent.info.run_id])
    assert "RUM (searched plan)" in set(table["method"]) and "tow ci95_low" in table.columns
    assert "RUM (searched plan)" in parent.data.tags["mlflow.note.content"]  # the description on the run page
    rum_search = next(r for r in search_runs if r.data.tags["mlflow_unlearn.search_space"] == "rum")
    plots = [a.path for a in client.list_artifacts(rum_search.info.run_id, "plots")]
    assert "plots/optimization_history.png" in plots and "plots/param_importances.png" in plots
    for run in (method, runs("tags.`mlflow_unlearn.role` = 'rum'")[0]):  # per-tier charts on every method and on RUM
        assert "plots/tiers.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    original = runs("tags.`mlflow_unlearn.role` = 'original'")[0]
    assert "plots/c_proxy.png" in [a.path for a in client.list_artifacts(original.info.run_id, "plots")]


def test_multi_objective_search_returns_a_pareto_plan(source_model, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 1)
    found = search.search(ctx, calibration, n_trials=4, objective="tow+time", algorithms=("none", "neggrad"), max_epochs=1,
                          storage=f"sqlite:///{tmp_path}/mo.db", attach=False)
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert found.best_value == max(t.values[0] for t in study.best_trials)


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

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

from mlflow_unlearn import pipeline, search, steps
from mlflow_unlearn.algorithms import ALGORITHMS
from mlflow_unlearn.rum import PlanError

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
    assert json.loads(mv.tags["mlflow_unlearn.plan"])["steps"][2]["algorithm"] == "neggrad_plus"


def test_rum_plan_of_none_returns_the_original_weights(source_model):
    _, uri = source_model
    ctx = steps.prepare(uri, FORGET)
    result = steps.rum(ctx, "low=none;mid=none;high=none")
    for k, v in ctx.source.model.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k].to(v.device)), k


@pytest.mark.parametrize("plan,needle", [("low=none;mid=none;top=none", "top"), ("low=none;mid=none;high=frob", "frob"),
                                         ("low=none;mid=none", "high")])
def test_bad_plans_create_no_run(source_model, plan, needle):
    _, uri = source_model
    ctx = steps.prepare(uri, FORGET)
    before = len(runs())
    with pytest.raises((PlanError, KeyError)) as e:
        steps.rum(ctx, plan)
    assert needle in str(e.value)
    assert len(runs()) == before


@pytest.fixture
def oracle_algorithm():
    """A test-only algorithm that is the *only* way to unlearn the `high` tier: given exactly that tier
    and a model still untouched, it copies the retrained reference's weights; anywhere else it damages
    the model. So the one plan with ToW 1 is low=none;mid=none;high=test_oracle."""
    state = {}

    def untouched(model):
        return all(torch.equal(v.cpu(), state["original"][k]) for k, v in model.state_dict().items())

    def oracle(model, data, *, seed=0, log=None):
        if set(data.forget_ids.tolist()) == state["high"] and untouched(model):
            model.load_state_dict(state["reference"])
        else:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
        return model

    ALGORITHMS.add("test_oracle", oracle)
    yield state
    ALGORITHMS._items.pop("test_oracle", None)


def test_search_finds_the_known_best_plan_and_attaches_it(source_model, oracle_algorithm, tmp_path):
    _, uri = source_model
    ctx = steps.prepare(uri, FORGET)
    reference = steps.retrain(ctx)
    oracle_algorithm["high"] = set(ctx.tiers["high"].tolist())
    oracle_algorithm["reference"] = {k: v.clone() for k, v in reference.model.state_dict().items()}
    oracle_algorithm["original"] = {k: v.detach().cpu().clone() for k, v in ctx.source.model.state_dict().items()}
    found = search.search(ctx, reference, n_trials=12, algorithms=("none", "test_oracle"), storage=f"sqlite:///{tmp_path}/o.db",
                          single_trials=2)
    assert found.best_plan.to_compact() == "low=none;mid=none;high=test_oracle"
    assert found.best_value == pytest.approx(1.0)
    assert found.best_single is not None and found.best_single["value"] < found.best_value
    tags = MlflowClient().get_registered_model("digits-src").tags
    assert json.loads(tags[steps.PLAN_TAG]) == found.best_plan.to_dict()
    assert steps.resolve_plan(ctx, "registered").to_dict() == found.best_plan.to_dict()
    trials = runs(f"tags.`mlflow_unlearn.role` = 'trial' and tags.`mlflow_unlearn.study` = '{found.study_name}'")
    assert len(trials) >= 6  # every non-pruned and pruned trial is a nested run
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    assert len(study.trials) == 12


@pytest.mark.parametrize("kw,needle", [({"n_trials": 0}, "n_trials"), ({"objective": "accuracy"}, "accuracy"),
                                       ({"algorithms": ("none", "frob")}, "frob"),
                                       ({"storage": "notadb://x"}, "notadb://x")])
def test_bad_search_settings(source_model, kw, needle):
    _, uri = source_model
    ctx = steps.prepare(uri, FORGET)
    before = len(runs())
    with pytest.raises(search.SearchError) as e:
        search.search(ctx, steps.StepResult("x", ctx.source.model, 1.0), **kw)
    assert needle in str(e.value)
    assert len(runs()) == before


def _worker(uri, tracking_uri, storage, study):
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlflow_unlearn.cli", "search", "--model-uri", uri, "--forget", FORGET,
                             "--n-trials", "4", "--single-trials", "0", "--max-epochs", "1", "--storage", storage,
                             "--study-name", study, "--algorithms", "none,finetune,neggrad"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_workers_share(uri, tracking_uri, storage):
    steps.retrain_step(uri, FORGET)  # both workers then hit the cached reference
    procs = [_worker(uri, tracking_uri, storage, "shared") for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5  # the budget is the study's; two racing workers may each start the last one
    assert len({t.user_attrs["worker"] for t in finished}) == 2, "both workers ran trials"


def test_two_workers_share_one_study_on_sqlite(source_model, tmp_path):
    tracking_uri, uri = source_model
    _two_workers_share(uri, tracking_uri, f"sqlite:///{tmp_path}/shared.db")


@pytest.mark.postgres
def test_two_workers_share_one_study_on_postgres(source_model, postgres_db):
    tracking_uri, uri = source_model
    _two_workers_share(uri, tracking_uri, postgres_db())


def test_main_pipeline_end_to_end(tracking):
    out = pipeline.main_step(subset=300, width=8, epochs=6, forget="mix:30", n_trials=3, single_trials=2, max_epochs=1,
                             baselines=("finetune", "neggrad_plus"), registered_model_name="main-digits")
    table = out["table"]
    assert "(searched, single)" in table
    for row in ("RUM (searched plan)", "finetune (vanilla)", "neggrad_plus (vanilla)", "retrain (reference)"):
        assert row in table
    assert str(out["rum"].version) == "2"
    mv = MlflowClient().get_model_version("main-digits", out["rum"].version)
    assert mv.tags["mlflow_unlearn.algorithm"] == "rum"
    rum_metrics = dict(out["rows"])["RUM (searched plan)"]
    assert 0 < rum_metrics["tow"] <= 1
    assert runs("tags.`mlflow_unlearn.role` = 'pipeline'")[0].data.metrics["time/pipeline_s"] > 0


def test_multi_objective_search_returns_a_pareto_plan(source_model, tmp_path):
    _, uri = source_model
    ctx = steps.prepare(uri, FORGET)
    reference = steps.retrain(ctx)
    found = search.search(ctx, reference, n_trials=3, objective="tow+time", algorithms=("none", "neggrad"), max_epochs=1,
                          storage=f"sqlite:///{tmp_path}/mo.db", single_trials=0, attach=False)
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
    assert est["mem"].shape == (400,)
    # resumable: the same workdir trains nothing again
    again = steps.memorization_step(uri, n_models=3, epochs=2, workdir=str(tmp_path / "mem"))
    assert again["spearman/c_proxy"] == pytest.approx(metrics["spearman/c_proxy"])

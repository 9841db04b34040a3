"""Every MLproject entry point through `mlflow run . -e <name> --env-manager local`, as a user runs
them (issue 9): tiny digits scale, one shared tracking store, each run checked by its role tag."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import use_tracking

pytestmark = pytest.mark.integration  # real servers / subprocesses: `pytest -m "not integration"` skips them

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("train", "retrain", "unlearn", "evaluate", "rum", "search", "memorization", "main", "attach", "algorithms")


def mlflow_run(cwd: Path, entry: str, *params: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local",
            "--experiment-name", "mlflow-unlearn"]
    for p in params:
        args += ["-P", p]
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if expect_ok:
        assert out.returncode == 0, f"mlflow run -e {entry} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


def entry_run(entry: str):
    """The newest run `mlflow run` made for this entry point: top level (MLflow tags every run of the
    process with the entry point, nested ones included)."""
    runs = mlflow.search_runs(experiment_names=["mlflow-unlearn"], output_format="list",
                              filter_string=f"tags.`mlflow.project.entryPoint` = '{entry}'", order_by=["start_time DESC"])
    runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert runs, f"no top-level run for entry point {entry}"
    return runs[0]


def test_the_project_declares_every_entry_point():
    import yaml

    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert set(spec["entry_points"]) == set(ENTRY_POINTS)
    assert (REPO / spec["python_env"]).exists()


@pytest.mark.slow
def test_every_entry_point_through_mlflow_run(tmp_path, sqlite_template, monkeypatch):
    shutil.copy(sqlite_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    use_tracking(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    src = "model_uri=models:/mp/1"
    forget = "forget=mix:30"

    mlflow_run(tmp_path, "train", "epochs=4", "subset=300", "width=8", "registered_model_name=mp")
    assert entry_run("train").data.tags["mlflow_unlearn.role"] == "original"

    out = mlflow_run(tmp_path, "algorithms")
    assert "neggrad_plus:" in out.stdout and "scrub:" in out.stdout

    mlflow_run(tmp_path, "retrain", src, forget)
    assert entry_run("retrain").data.tags["mlflow_unlearn.role"] == "retrain"

    # A JSON object with spaces: MLflow quotes it for the shell, the MLproject must not quote again.
    mlflow_run(tmp_path, "unlearn", src, forget, "algorithm=finetune", 'hyperparameters={"lr": 0.01, "epochs": 1}',
               "register=true")
    unlearn = entry_run("unlearn")
    assert unlearn.data.tags["mlflow_unlearn.role"] == "unlearn"
    assert unlearn.data.params["hp.lr"] == "0.01" and unlearn.data.params["hp.epochs"] == "1"
    assert client.get_model_version("mp", "2").tags["mlflow_unlearn.role"] == "unlearn"

    mlflow_run(tmp_path, "evaluate", src, forget, f"run_id={unlearn.info.run_id}")
    evaluate = entry_run("evaluate")
    assert evaluate.data.tags["mlflow_unlearn.role"] == "evaluate" and "tow" in evaluate.data.metrics

    mlflow_run(tmp_path, "rum", src, forget)  # plan=auto: none registered yet, so the default plan
    rum = entry_run("rum")
    assert rum.data.tags["mlflow_unlearn.role"] == "rum"
    assert rum.data.params["plan"] == "auto" and "plan.resolved" in rum.data.params

    mlflow_run(tmp_path, "search", src, forget, "algorithms=none,finetune", "n_trials=3", "max_epochs=1",
               "calibration_sets=1")
    assert entry_run("search").data.tags["mlflow_unlearn.role"] == "search"
    assert json.loads(client.get_registered_model("mp").tags["mlflow_unlearn.searched_plan"])  # the searched plan, attached

    # `mlflow run` runs the command in the project folder: the resume folder goes to tmp, not the checkout
    mlflow_run(tmp_path, "memorization", "model_uri=models:/mp/1", "n_models=2", f"workdir={tmp_path / 'mem'}")
    assert entry_run("memorization").data.tags["mlflow_unlearn.role"] == "memorization"

    mlflow_run(tmp_path, "attach", "model=mp", "version=1", "forget=random:5")
    assert entry_run("attach").data.tags["mlflow_unlearn.role"] == "request"

    mlflow_run(tmp_path, "main", "subset=300", "width=8", "epochs=4", "forget=mix:30", "n_trials=3",
               "baselines=finetune", "unlearn_seeds=1", "max_epochs=1", "calibration_sets=1",
               "registered_model_name=mp-main")
    main = entry_run("main")
    assert main.data.tags["mlflow_unlearn.role"] == "pipeline" and main.info.status == "FINISHED"


@pytest.mark.parametrize("entry, params, needle", [
    ("train", ["epochs=two"], "epochs"),  # MLflow's own type check on a float parameter
    ("train", ["device=tpu"], "tpu"),
    ("search", ["model_uri=models:/x/1", "algorithms=finetune,forget_all"], "forget_all"),
    ("main", ["baselines=finetune,sgd"], "sgd"),
    ("main", ["budget=1.5"], "argument --budget: the budget must be a number in (0, 1]"),
    ("unlearn", ["model_uri=models:/x/1", "budget=0"], "argument --budget"),
])
def test_bad_entry_point_parameters_fail_before_any_work(tracking, tmp_path, entry, params, needle):
    out = mlflow_run(tmp_path, entry, *params, expect_ok=False)
    assert out.returncode != 0
    assert needle in out.stderr, out.stderr[-3000:]
    # nothing trained, logged or registered: only the failed run `mlflow run` itself opened, with no step role
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.data.tags.get("mlflow_unlearn.role") for r in runs] == [None] * len(runs)
    assert all(r.info.status == "FAILED" for r in runs)
    assert MlflowClient().search_registered_models() == []


@pytest.mark.integration
def test_mlflow_run_train_entry_point_at_its_defaults(tracking, tmp_path):
    """`mlflow run . -e train` at its defaults (one epoch to keep it short): MLflow has already logged
    the entry point's parameters in its own spelling (`subset=none`), and the step must not trip
    MLflow's no-change rule on them."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
                          "-P", "epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow_unlearn.role"] == "original"
    assert run.data.params["subset"] == "none" and run.data.params["width"] == "none"
    assert run.data.params["epochs"] == "1" and run.data.params["dataset"] == "digits"
    # registered_model_name=none: registered under the default name <dataset>-<model>
    (mv,) = MlflowClient().search_model_versions("name='digits-small_cnn'")
    assert mv.run_id == run.info.run_id

"""runs.py: where a step's run lands. Under `mlflow run` (MLFLOW_RUN_ID set) the step writes into the
project's run and nests its sub-work under it; outside it, each step is a run of its own."""
import mlflow
from mlflow import MlflowClient

from mlflow_unlearn import runs
from mlflow_unlearn.tags import Role, Tag


def test_outside_mlflow_run_each_step_is_its_own_run_nested_under_an_active_one(tracking):
    with runs.project_run():
        assert mlflow.active_run() is None  # nothing opened when MLFLOW_RUN_ID is unset
        with runs.step_run("outer") as outer:
            with runs.step_run("inner") as inner:
                pass
    assert inner.info.run_id != outer.info.run_id
    assert MlflowClient().get_run(inner.info.run_id).data.tags["mlflow.parentRunId"] == outer.info.run_id


def test_under_mlflow_run_the_step_writes_into_the_project_run_and_nests_the_rest(tracking, monkeypatch):
    project = MlflowClient().create_run(experiment_id="0", run_name="project")
    monkeypatch.setenv("MLFLOW_RUN_ID", project.info.run_id)
    with runs.project_run():
        with runs.step_run("retrain") as first:  # the project run has no role yet: this is it
            mlflow.set_tag(Tag.ROLE, Role.RETRAIN)
            with runs.step_run("evaluate") as nested:  # it has a role now: a child run
                pass
    assert first.info.run_id == project.info.run_id
    assert nested.info.run_id != project.info.run_id
    assert MlflowClient().get_run(nested.info.run_id).data.tags["mlflow.parentRunId"] == project.info.run_id
    assert mlflow.active_run() is None and runs._project_run_id is None


def test_ui_hint_names_the_store_to_open(tracking, monkeypatch):
    assert f"mlflow ui --backend-store-uri {tracking}" in runs.ui_hint()
    monkeypatch.setattr(runs.tracking, "tracking_uri", lambda: "http://127.0.0.1:5000")
    assert runs.ui_hint() == "Open the runs in the MLflow UI: http://127.0.0.1:5000"

"""The runs a step logs into: `project_run` / `step_run` (so `mlflow run` entry points and nested
work land where they should), `StepResult` (what a step returns: its run, its model, its seconds)
and loading a step run's model back."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import mlflow
import torch

from . import tracking
from .tags import Role, Tag


@contextlib.contextmanager
def project_run():
    """Under `mlflow run` the step's run exists before the step starts (MLFLOW_RUN_ID). Open it
    first, so the work a step nests (reference retrains) lands under it instead of taking it over;
    `step_run` then writes the step's own results into it. Outside `mlflow run`: nothing."""
    global _project_run_id
    if os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None:
        with mlflow.start_run() as run:  # MLflow removes MLFLOW_RUN_ID from the environment here
            _project_run_id = run.info.run_id
            try:
                yield
            finally:
                _project_run_id = None
    else:
        yield


_project_run_id: str | None = None  # the `mlflow run` run opened by project_run, while it is open


def step_run(run_name: str):
    """The run a step logs into: the `mlflow run` project run while it has no role yet (see
    `project_run`), else a new run, nested under any active one."""
    active = mlflow.active_run()
    if (active is not None and active.info.run_id == _project_run_id
            and Tag.ROLE not in mlflow.MlflowClient().get_run(active.info.run_id).data.tags):
        return contextlib.nullcontext(active)
    return mlflow.start_run(run_name=run_name, nested=active is not None)


def ui_hint(view: str | None = None) -> str:
    """How to open what a step logged in the MLflow UI; `view`: a page route (methods_view's)."""
    uri = tracking.tracking_uri()
    page = f"/{view}" if view else ""
    if uri.startswith(("http://", "https://")):
        return f"Open the runs in the MLflow UI: {uri.rstrip('/')}{page}"
    return (f"Open the runs in the MLflow UI: mlflow ui --backend-store-uri {uri}  (then "
            f"http://127.0.0.1:5000{page})")


# The MLflow UI keeps saved and shared views of an experiment's run table as experiment tags under
# this prefix: a saved view is {"name", "createdAt", "state"} (listed under "Views"); a shared link
# `?viewStateShareKey=<key>` opens the state stored directly under <prefix><key>. Both carry the
# run filter, the sort and the selected columns (MLflow's own format: `metrics.`<key>``).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
LATEST_METHODS_VIEW = "mlflow-unlearn-methods"
METHOD_COLUMNS = ("tow", "mia/gap", "forget/acc", "cost/train_fraction")


def methods_view_state(pipeline_run_id: str) -> dict:
    """The run table of one `main` run's methods: one row per method (the nested evaluate runs,
    shown flat by the filter), best ToW first, with ToW, MIA gap, forget accuracy and cost."""
    return {"searchFilter": f"tags.`mlflow.parentRunId` = '{pipeline_run_id}' and "
                            f"tags.`{Tag.ROLE}` = '{Role.EVALUATE}'",
            "orderByKey": "metrics.`tow`", "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active",
            "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": [f"metrics.`{k}`" for k in METHOD_COLUMNS],
            "viewMaximized": False, "runListHidden": False, "groupBy": None}


def publish_methods_view(experiment_id: str, pipeline_run_id: str) -> str:
    """Store the methods view of `pipeline_run_id` as this run's shared link and as the experiment's
    saved view "mlflow-unlearn: methods of the latest main" (the newest main replaces it); returns
    the UI route that opens it. The MLflow run table shows no metric columns by default, and the
    method runs nest under the collapsed `main` row: without this, comparing them took clicks."""
    import json
    import time

    client = mlflow.MlflowClient()
    state = json.dumps(methods_view_state(pipeline_run_id))
    now = int(time.time() * 1000)
    link = f"methods-{pipeline_run_id}"
    tracking.retry_transient(lambda: client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + link, state))
    tracking.retry_transient(lambda: client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + LATEST_METHODS_VIEW, json.dumps(
        {"name": "mlflow-unlearn: methods of the latest main", "createdAt": now, "updatedAt": now, "state": state})))
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={link}"


def load_run_model(run_id: str, map_location="cpu") -> torch.nn.Module:
    """The network a step's run logged, rebuilt from weights + spec (tracking.load_logged_classifier)."""
    return tracking.load_logged_classifier(tracking.run_model_id(run_id), map_location=map_location)


@dataclass
class StepResult:
    run_id: str
    model: torch.nn.Module
    seconds: float
    cached: bool = False
    version: str | None = None  # registered version, when registered
    cost: dict = field(default_factory=dict)  # the `cost/*` metrics of the step (compute.py), when it counted them

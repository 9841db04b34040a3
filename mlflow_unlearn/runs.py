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
from .tracking import Tag


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


def ui_hint() -> str:
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"Open the runs in the MLflow UI: {uri}"
    return f"Open the runs in the MLflow UI: mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000)"


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

"""`mlflow-unlearn hook demo`: the whole registry-hook loop on one machine, in one command.

Starts `mlflow server` (SQLite, webhooks enabled) and `mlflow-unlearn hook serve`, installs the
webhook, trains and registers a digits model, attaches a forget set, waits for the unlearned
version and prints its evidence report. Everything lands in --workdir; both servers stop at the end.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from . import local
from ..steps import train_step
from .attach import attach, wait_for
from .webhooks import install_webhook

MODEL = "digits-hook-demo"  # the one registered model the demo's hook watches (--models)


def run_demo(*, workdir: str = "hook-demo", forget: str = "mix:30", epochs: int = 10, subset: int | None = 600,
             timeout_s: float = 600.0) -> dict:
    import mlflow


    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(16)
    server = hook = None
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        print(f"1/6 starting mlflow server (SQLite in {workdir}, webhooks enabled) ...", flush=True)
        server, url = local.start_mlflow_server(workdir)
        os.environ["MLFLOW_TRACKING_URI"] = url
        print(f"2/6 starting the hook service and installing the webhook on {url} ...", flush=True)
        hook, hook_url = local.start_hook_service(workdir, url, secret, workers=1, reconcile_interval_s=10, models=[MODEL])
        install_webhook(hook_url + "/webhook", secret, tracking_uri=url)  # before any event: servers cache the list 60 s
        print("3/6 training and registering a digits model ...", flush=True)
        trained = train_step(dataset="digits", model="small_cnn", epochs=epochs, subset=subset,
                             registered_model_name=MODEL, progress=False)
        print(f"4/6 attaching forget set {forget!r} to {trained.model_uri} ...", flush=True)
        res = attach(trained.model_name, trained.version, forget, tracking_uri=url)
        print(f"    tag mlflow_unlearn.forget_set = {res.uri}", flush=True)
        print("5/6 waiting for the unlearned version ...", flush=True)
        state = wait_for(trained.model_name, trained.version, timeout_s=timeout_s, tracking_uri=url)
        if state.get("status") != "done":
            raise RuntimeError(f"request {state.get('status')}: {state.get('error')}")
        new_version = state["result_version"]
        mv = mlflow.MlflowClient().get_model_version(trained.model_name, new_version)
        evidence_uri = mv.tags["mlflow_unlearn.evidence"]
        print(f"6/6 models:/{trained.model_name}/{new_version} registered; its evidence ({evidence_uri}):\n", flush=True)
        md = Path(mlflow.artifacts.download_artifacts(evidence_uri.rsplit("/", 1)[0] + "/report.md")).read_text()
        print(md)
        print(f"\nBrowse it all: mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'} "
              f"--artifacts-destination {workdir / 'mlartifacts'}")
        return {"source": trained.model_uri, "result": f"models:/{trained.model_name}/{new_version}", "state": state}
    finally:
        local.stop(hook)
        local.stop(server)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri

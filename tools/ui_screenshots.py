"""Screenshots of the MLflow UI in headless Chromium: look at what a user sees without a desktop.

    .venv/bin/python tools/ui_screenshots.py --backend-store-uri sqlite:///mlflow.db --out ui-shots/

Starts `mlflow server` on 127.0.0.1 over the given store, finds the newest `main` pipeline run (or
the newest runs of each role), and saves PNGs of: the experiment's run list, the methods view the
pipeline published (one row per method), the pipeline run, its `plots/methods.png`, an evaluate
run's `plots/tiers.png`, the train run's `plots/c_proxy.png`, the RUM search's
`plots/optimization_history.png`, the registered model's page and its newest version's. The MLflow 3 UI
opens in its GenAI view in a fresh browser; the "Model training" switch (top left) shows the runs.
Needs Debian's
`chromium` (apt-get install chromium). The pages are single-page-app routes; Chromium is given a
virtual-time budget (`--wait-ms`) for the app to fetch and draw.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlflow_unlearn.hook.local import free_port, wait_http  # noqa: E402


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("no chromium on PATH: apt-get install chromium")


def shoot(browser: str, url: str, out: Path, *, wait_ms: int, size=(1500, 1000)) -> None:
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"{out}  <- {url}")


def newest(client: MlflowClient, role: str, extra: str = "", artifact: str | None = None):
    """The newest run of `role` (holding `artifact`, when given)."""
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`mlflow_unlearn.role` = '{role}'{extra}", order_by=["attributes.start_time DESC"],
                              max_results=20)
    for run in runs:
        if artifact is None or artifact in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]:
            return run
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend-store-uri", default="sqlite:///mlflow.db")
    p.add_argument("--out", default="ui-shots")
    p.add_argument("--wait-ms", type=int, default=12000, help="virtual time Chromium gives the page to load")
    args = p.parse_args(argv)
    browser = chromium()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(out / "mlflow-server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", args.backend_store_uri, "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", proc=server, timeout_s=90)
        client = MlflowClient(base)
        pages = []
        pipeline = newest(client, "pipeline")
        if pipeline:
            eid, rid = pipeline.info.experiment_id, pipeline.info.run_id
            # workflowType: the "Model training" switch (a fresh browser opens in the GenAI view)
            ml = "workflowType=machine_learning"
            pages += [("experiment", f"#/experiments/{eid}/runs?{ml}"),
                      ("methods-view", f"#/experiments/{eid}/runs?viewStateShareKey=methods-{rid}&{ml}"),
                      ("pipeline-run", f"#/experiments/{eid}/runs/{rid}?{ml}"),
                      ("pipeline-methods-plot", f"#/experiments/{eid}/runs/{rid}/artifacts/plots/methods.png")]
        for role, name, extra in (("evaluate", "tiers", ""), ("original", "c_proxy", ""),
                                  ("search", "optimization_history", " and tags.`mlflow_unlearn.search_space` LIKE 'rum%'"),
                                  ("search", "pareto", " and tags.`mlflow_unlearn.search_space` LIKE 'rum%'")):
            run = newest(client, role, extra, artifact=f"plots/{name}.png")
            if run:
                pages.append((f"{role}-{name}-plot",
                              f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/plots/{name}.png"))
        models = client.search_registered_models(max_results=1)
        if models:
            pages.append(("registered-model", f"#/models/{models[0].name}"))
            newest_version = max(int(v.version) for v in client.search_model_versions(f"name = '{models[0].name}'"))
            pages.append(("model-version", f"#/models/{models[0].name}/versions/{newest_version}"))
        if not pages:
            raise SystemExit(f"no mlflow-unlearn runs in {args.backend_store_uri}")
        for name, route in pages:
            shoot(browser, f"{base}/{route}", out / f"{name}.png", wait_ms=args.wait_ms)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

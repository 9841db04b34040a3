"""mlflow_unlearn/hook/demo.py: the README's one-command registry loop, run exactly as documented
(`mlflow-unlearn hook demo --workdir hook-demo`): both servers start, a digits model is registered,
its forget set is answered with a new version whose evidence is printed, and both servers stop."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow  # two servers, a training and a hook job (about two minutes on 2 cores)


def test_hook_demo_as_documented(tmp_path):
    cli = Path(sys.executable).parent / "mlflow-unlearn"  # the console script `pip install` put beside python
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # the user's shell: no tracking URI
    env.update(OMP_NUM_THREADS="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    out = subprocess.run([str(cli), "hook", "demo", "--workdir", "hook-demo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"hook demo failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert step in out.stdout
    workdir = tmp_path / "hook-demo"
    assert f"mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}" in out.stdout
    assert "gate" in out.stdout  # the evidence report it prints says how the version was accepted

    # what it left behind is a registry a user can browse: v1 trained, v2 its answer
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    versions = {str(v.version): v for v in client.search_model_versions("name = 'digits-hook-demo'")}
    assert set(versions) == {"1", "2"}
    assert versions["1"].tags["mlflow_unlearn.status"] == "done" and versions["1"].tags["mlflow_unlearn.result_version"] == "2"
    assert versions["2"].tags["mlflow_unlearn.source_version"] == "1" and "mlflow_unlearn.evidence" in versions["2"].tags

    # both servers stopped: nothing listens on the ports the demo's processes used
    assert (workdir / "mlflow-server.log").exists() and (workdir / "hook-service.log").exists()  # logs stay in --workdir
    ports = [int(word.rsplit(":", 1)[1].split("/")[0]) for word in out.stdout.split() if word.startswith("http://127.0.0.1:")]
    assert ports, "the demo prints the tracking server's URL"
    for port in set(ports):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after the demo"

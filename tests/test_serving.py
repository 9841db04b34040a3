"""The README's "Serving a version" commands, run as written (the port aside) against a registered
`digits-noisy-small_cnn` version 2 in ./mlflow.db: `mlflow models serve` answers the documented
request with the digits' labels, and refuses wrong input with a 400 that names the fix and does not
echo the request."""
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.datasets import load_digits

from mlflow_unlearn.hook.local import free_port, wait_http
from mlflow_unlearn.steps import train_step

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def readme_serving_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Serving a version"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_documented_serving_commands_answer_and_refuse_wrong_input(tracking, tmp_path):
    for seed in (0, 1):  # version 2, as after `make demo`
        result = train_step(dataset="digits-noisy", model="small_cnn", width=16, epochs=10, seed=seed,
                            registered_model_name="digits-noisy-small_cnn", progress=False)
    assert result.version == "2"
    # the commands run from the repository root: ./.venv is the interpreter's environment
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    serve, make_request, curl = readme_serving_commands()
    port = free_port()
    serve = serve.replace("5001", str(port)).rstrip().removesuffix("&")
    curl = curl.replace("5001", str(port))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the command sets its own
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(["bash", "-c", serve], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=server, log=tmp_path / "serve.log")
        subprocess.run(["bash", "-c", make_request], cwd=tmp_path, env=env, check=True, timeout=120)
        answer = subprocess.run(["bash", "-c", curl], cwd=tmp_path, env=env, check=True, timeout=120,
                                capture_output=True, text=True).stdout
        expected = mlflow.pyfunc.load_model("models:/digits-noisy-small_cnn/2").predict(
            np.rint(load_digits().images[:3] * 255 / 16).astype(np.uint8))
        assert json.loads(answer) == {"predictions": expected.tolist()} == {"predictions": [0, 1, 2]}

        url = f"http://127.0.0.1:{port}/invocations"
        digits = load_digits().images[:3]  # float64, 0..16: scikit-learn's native range
        status, body = post(url, {"inputs": digits[..., None].tolist()})
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "float images must be intensities in [0, 1]" in body["message"] and "x / 16" in body["message"]
        assert "Failed to predict data" not in json.dumps(body) and "16.0" not in json.dumps(body)
        status, body = post(url, {"inputs": (digits / 16).tolist()})  # floats in [0, 1]: answered
        assert status == 200 and body["predictions"] == expected.tolist()
        status, body = post(url, {"inputs": digits.reshape(3, 64).astype(int).tolist()})  # flattened
        assert status == 400 and "x.reshape(-1, 8, 8, 1)" in body["message"]
        status, body = post(url, {"inputs": digits.astype(int).tolist()})  # integers 0-16: answered, logged
        assert status == 200 and len(body["predictions"]) == 3
        status, body = post(url, {"inputs": digits[..., None].tolist(), "params": {"output": "probabilities"}})
        assert status == 400
        status, body = post(url, {"inputs": (digits / 16).tolist(), "params": {"output": "probabilities"}})
        assert status == 200 and np.allclose(np.sum(body["predictions"], axis=1), 1, atol=1e-4)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert "np.rint(x * 255 / 16).astype(np.uint8)" in (tmp_path / "serve.log").read_text()

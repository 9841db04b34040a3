"""Starting the moving parts on one machine: an `mlflow server` with webhooks enabled (SQLite backend)
and the hook service, as subprocesses. Used by `mlflow-unlearn hook demo` and bench/bench_hook.py.

MLflow's webhook settings for a receiver on localhost (docs/design.md section 5):

    MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https     the default allows https only
    MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true         the default refuses 127.0.0.1 and private networks
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=<Fernet key>   fixed, or webhook secrets stored by one server
                                                  start cannot be decrypted by the next
    MLFLOW_WEBHOOK_CACHE_TTL (default 60)         seconds each server worker caches the webhook list
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

KEY_FILE = "webhook-encryption.key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"the process serving {url} exited with {proc.returncode}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def webhook_server_env(workdir: str | Path, *, cache_ttl_s: int | None = None) -> dict[str, str]:
    """The environment an `mlflow server` needs to deliver webhooks to a receiver on this machine;
    the encryption key is kept in `workdir` so restarts can read the stored webhook secret."""
    from cryptography.fernet import Fernet

    key_file = Path(workdir) / KEY_FILE
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_bytes(Fernet.generate_key())
    env = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": key_file.read_text().strip()}
    if cache_ttl_s is not None:
        env["MLFLOW_WEBHOOK_CACHE_TTL"] = str(int(cache_ttl_s))
    return env


def start_mlflow_server(workdir: str | Path, *, port: int | None = None, env: dict | None = None,
                        backend_store_uri: str | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` with webhooks enabled; backend: SQLite in `workdir` unless `backend_store_uri`."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "mlflow-server.log"
    backend = backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend, "--artifacts-destination", str(workdir / "mlartifacts"),
           "--workers", "1"]
    return _serve(cmd, workdir, port, log, {**os.environ, **webhook_server_env(workdir), **(env or {})})


def _serve(cmd: list[str], workdir: Path, port: int, log: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """Start a server process logging to `log` and wait until its /health answers (killed if it never does)."""
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout_s=180, proc=proc, log=log)
    except Exception:
        proc.kill()
        raise
    return proc, url


def start_hook_service(workdir: str | Path, tracking_uri: str, secret: str, *, port: int | None = None, workers: int = 1,
                       worker_type: str = "thread", queue: str | None = None, reconcile_interval_s: float = 30.0,
                       models: list[str] | None = None, extra_args: list[str] | None = None,
                       log_name: str = "hook-service.log") -> tuple[subprocess.Popen, str]:
    """`mlflow-unlearn hook serve` as a subprocess; returns (process, base URL)."""
    workdir = Path(workdir).resolve()
    port = port or free_port()
    log = workdir / log_name
    cmd = [sys.executable, "-m", "mlflow_unlearn.cli", "hook", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--tracking-uri", tracking_uri, "--workers", str(workers), "--worker-type", worker_type,
           "--queue", queue or str(workdir / "hook-queue.db"), "--reconcile-interval", str(reconcile_interval_s),
           "--log-level", "warning", *(["--models", ",".join(models)] if models else []), *(extra_args or [])]
    env = {**os.environ, "MLFLOW_UNLEARN_HOOK_SECRET": secret, "MLFLOW_TRACKING_URI": tracking_uri,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    return _serve(cmd, workdir, port, log, env)


def stop(proc: subprocess.Popen | None, timeout_s: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)

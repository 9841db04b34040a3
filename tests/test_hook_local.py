"""mlflow_unlearn/hook/local.py, the helpers `hook demo` and bench/bench_hook.py start servers with:
the webhook environment (a key that survives restarts), waiting for a server that answers, dies or
never answers, and stopping a process. The servers themselves: test_hook_demo and test_hook_e2e."""
from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest

from mlflow_unlearn.hook import local


def test_webhook_env_allows_local_receivers_and_keeps_its_key_across_restarts(tmp_path):
    first = local.webhook_server_env(tmp_path, cache_ttl_s=2)
    second = local.webhook_server_env(tmp_path)
    assert first["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https" and first["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    assert first["MLFLOW_WEBHOOK_CACHE_TTL"] == "2" and "MLFLOW_WEBHOOK_CACHE_TTL" not in second
    # the next server start decrypts the secrets the last one stored only with the same key
    assert first["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == second["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]
    assert (tmp_path / local.KEY_FILE).read_text().strip() == second["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]


def test_wait_http_returns_once_it_answers_and_names_a_server_that_never_does(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local.wait_http(f"http://127.0.0.1:{server.server_port}/", timeout_s=10)
    finally:
        server.shutdown()
    port = local.free_port()
    with pytest.raises(TimeoutError, match=f"http://127.0.0.1:{port}/health did not answer within 1 s"):
        local.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=1)


def test_wait_http_reports_a_server_process_that_exited_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("Error: address already in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(RuntimeError, match="exited with 3") as info:
        local.wait_http(f"http://127.0.0.1:{local.free_port()}/health", timeout_s=30, proc=proc, log=log)
    assert "address already in use" in str(info.value)


def test_stop_terminates_and_tolerates_none_or_a_finished_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    local.stop(proc, timeout_s=10)
    assert proc.poll() is not None
    local.stop(proc)
    local.stop(None)

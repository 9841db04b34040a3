"""mlflow_unlearn/hook/service.py: the receiver (FastAPI in-process), which events start a job, what it exposes."""
from __future__ import annotations

import json

import pytest

from mlflow_unlearn.hook import ledger
from mlflow_unlearn.hook.config import HookConfig
from mlflow_unlearn.hook.service import target_of
from mlflow_unlearn.hook.signature import signed_headers


def test_only_forget_set_events_target_a_job():
    tag = {"entity": "model_version_tag", "action": "set", "data": {"name": "m", "version": 2, "key": ledger.FORGET_SET_TAG, "value": "x"}}
    assert target_of(tag) == ("m", "2")
    assert target_of({**tag, "data": {**tag["data"], "key": ledger.STATUS_TAG}}) is None  # our own status tags
    created = {"entity": "model_version", "action": "created", "data": {"name": "m", "version": "5", "tags": {ledger.FORGET_SET_TAG: "u"}}}
    assert target_of(created) == ("m", "5")
    assert target_of({**created, "data": {"name": "m", "version": "5", "tags": {}}}) is None
    assert target_of({"entity": "registered_model", "action": "created", "data": {"name": "m"}}) is None
    from mlflow.entities.webhook import WebhookEvent
    from mlflow.webhooks.types import get_example_payload_for_event

    example = get_example_payload_for_event(WebhookEvent("model_version_tag", "set"))  # what `hook install --test` sends
    assert target_of({"entity": "model_version_tag", "action": "set", "data": example}) is None


def test_short_secrets_are_refused_and_the_receiver_has_no_api_pages():
    from mlflow_unlearn.hook.config import HookConfig
    from mlflow_unlearn.hook.service import create_app
    from mlflow_unlearn.hook.webhooks import install_webhook

    for short in ("x", "15-bytes-secret"):
        with pytest.raises(ValueError, match=r"at least 16"):
            HookConfig(secret=short).validate(need_secret=True)
        with pytest.raises(ValueError, match=r"at least 16"):
            install_webhook("http://127.0.0.1:1/webhook", short)  # refused before any connection
    HookConfig(secret="sixteen-byte-key").validate(need_secret=True)
    app = create_app(HookConfig(secret="sixteen-byte-key"))
    paths = {getattr(r, "path", None) for r in app.routes}
    assert app.openapi_url is None and app.docs_url is None and app.redoc_url is None
    assert not paths & {"/docs", "/redoc", "/openapi.json"} and "/webhook" in paths


@pytest.fixture
def receiver(tmp_path, tracking):
    """The receiver app in-process (FastAPI's TestClient), on a SQLite queue, with no worker."""
    from fastapi.testclient import TestClient

    from mlflow_unlearn.hook import jobs
    from mlflow_unlearn.hook.service import create_app

    secret = "a-secret-of-32-bytes-for-the-tests"
    cfg = HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, secret=secret, models=["m"],
                     reconcile_interval_s=0)
    jobs.configure(cfg)
    with TestClient(create_app(cfg)) as client:
        yield client, secret


def _delivery(secret: str, delivery_id: str = "delivery-1", name: str = "m") -> tuple[bytes, dict]:
    body = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": name, "version": "3", "key": ledger.FORGET_SET_TAG,
                                "value": "runs:/r/x.json"}}).encode()
    return body, signed_headers(secret, body, delivery_id=delivery_id)


def test_a_delivery_is_seen_only_once_its_job_is_queued(receiver, monkeypatch):
    from mlflow_unlearn.hook import job_queue

    client, secret = receiver
    body, headers = _delivery(secret, "d-fails-first")
    real_enqueue = job_queue.enqueue

    def queue_down(*a, **k):
        raise ConnectionError("queue storage unreachable")

    monkeypatch.setattr(job_queue, "enqueue", queue_down)
    r = client.post("/webhook", content=body, headers=headers)
    assert r.status_code == 503 and "retry" in r.json()["error"] and job_queue.pending() == 0
    monkeypatch.setattr(job_queue, "enqueue", real_enqueue)
    r = client.post("/webhook", content=body, headers=headers)  # MLflow's retry of the same delivery
    assert r.status_code == 202 and r.json()["status"] == "accepted"
    assert job_queue.queued_targets() == {("m", "3")}  # queued before the answer, not after it
    r = client.post("/webhook", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "duplicate" and job_queue.pending() == 1


def test_status_needs_the_secret_and_health_names_no_model(receiver):
    client, secret = receiver
    health = client.get("/health")
    assert health.status_code == 200 and "models" not in health.json() and "m" not in json.dumps(health.json())
    assert client.get("/status/m/3").status_code == 401
    assert client.get("/status/m/3", headers={"Authorization": "Bearer wrong-secret-of-some-length"}).status_code == 401
    r = client.get("/status/m/3", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 404  # authorised; no such version in the empty registry
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404


def test_binding_beyond_loopback_warns():
    from mlflow_unlearn.hook.service import bind_warning

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        assert bind_warning(host) is None, host
    for host in ("0.0.0.0", "10.1.2.3", "::", "hook.example.com"):
        assert "beyond this machine" in bind_warning(host) and host in bind_warning(host)


@pytest.mark.parametrize("weak", [" " * 16, "a" * 32, "abcabcabcabcabcabc", " padded-secret-0123456789 "])
def test_weak_secrets_are_refused_without_quoting_them(weak):
    with pytest.raises(ValueError, match="too weak") as e:
        HookConfig(secret=weak).validate(need_secret=True)
    assert weak.strip() not in str(e.value) or not weak.strip()


def test_a_body_over_the_limit_gets_413_before_it_is_read(receiver):
    """Declared too large: refused before a byte is read; streamed without a length: dropped at the
    first chunk past the limit; a bad Content-Length: 400. Nothing is queued either way."""
    from mlflow_unlearn.hook import job_queue

    client, secret = receiver
    body, headers = _delivery(secret)
    big = body + b" " * (1 << 20)
    r = client.post("/webhook", content=big, headers=signed_headers(secret, big))
    assert r.status_code == 413 and "limit of 1048576 bytes" in r.json()["error"]

    def chunks():
        for _ in range(64):
            yield b"x" * 65536

    r = client.post("/webhook", content=chunks(), headers=headers)  # chunked: no Content-Length
    assert r.status_code == 413
    assert job_queue.pending() == 0
    r = client.post("/webhook", content=body, headers=headers)  # the same delivery within the limit goes in
    assert r.status_code == 202 and job_queue.pending() == 1


def test_the_body_limit_is_validated():
    with pytest.raises(ValueError, match="max-body-bytes"):
        HookConfig(max_body_bytes=10).validate()

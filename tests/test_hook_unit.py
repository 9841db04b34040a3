"""Registry hook, the parts that need no server: webhook signatures, which events start a job, the
ledger's naming, configuration defaults, the evidence report and the huey queue (SQLite and Redis)."""
from __future__ import annotations

import json
import os
import time

import pytest

from mlflow_unlearn.hook import evidence, ledger
from mlflow_unlearn.hook.config import HookConfig, default_queue
from mlflow_unlearn.hook.service import target_of
from mlflow_unlearn.hook.signature import (DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, sign,
                                           signed_headers, verify)

SECRET = "s3cret"
BODY = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00+00:00",
                   "data": {"name": "m", "version": "3", "key": ledger.FORGET_SET_TAG, "value": "runs:/r/x.json"}}).encode()


def test_signature_matches_mlflow_delivery_code():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    assert sign(SECRET, "d-1", "1700000000", BODY) == _generate_hmac_signature(SECRET, "d-1", "1700000000", BODY.decode())


def test_verify_accepts_a_signed_delivery_and_returns_its_id():
    headers = signed_headers(SECRET, BODY, delivery_id="abc")
    assert verify(headers, BODY, SECRET) == "abc"
    # header names are case-insensitive on the wire
    assert verify({k.lower(): v for k, v in headers.items()}, BODY, SECRET) == "abc"


@pytest.mark.parametrize("case", ["unsigned", "wrong_secret", "tampered_body", "stale", "future", "no_delivery_id", "bad_timestamp"])
def test_verify_rejects(case):
    headers = signed_headers(SECRET, BODY)
    body = BODY
    if case == "unsigned":
        headers.pop(SIGNATURE_HEADER)
    elif case == "wrong_secret":
        headers = signed_headers("other", BODY)
    elif case == "tampered_body":
        body = BODY.replace(b'"3"', b'"4"')
    elif case == "stale":
        headers = signed_headers(SECRET, BODY, timestamp=int(time.time()) - 3600)
    elif case == "future":
        headers = signed_headers(SECRET, BODY, timestamp=int(time.time()) + 3600)
    elif case == "no_delivery_id":
        headers.pop(DELIVERY_ID_HEADER)
    elif case == "bad_timestamp":
        headers[TIMESTAMP_HEADER] = "yesterday"
    with pytest.raises(SignatureError) as err:
        verify(headers, body, SECRET, tolerance_s=300)
    expected = {"unsigned": "unsigned", "wrong_secret": "wrong signature", "tampered_body": "wrong signature",
                "stale": "stale", "future": "stale", "no_delivery_id": "missing", "bad_timestamp": "unix seconds"}[case]
    assert expected in str(err.value)


def test_verify_needs_a_configured_secret():
    with pytest.raises(SignatureError, match="no webhook secret"):
        verify(signed_headers(SECRET, BODY), BODY, "")


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


def test_ledger_names_and_digest_in_uri():
    d = "a" * 64
    assert ledger.digest_from_uri(f"runs:/abc/forget_set/forget-{d}.json") == d
    assert ledger.digest_from_uri("runs:/abc/ids.txt") is None
    assert ledger.job_key("m", 3, d) == f"m/3/{d}"
    state = ledger.VersionState("m", "3", {ledger.FORGET_SET_TAG: "u", ledger.JOB_REQUEST_TAG: "u", ledger.STATUS_TAG: "done"})
    assert state.is_current and state.to_dict()["status"] == "done"
    assert not ledger.VersionState("m", "3", {ledger.FORGET_SET_TAG: "v", ledger.JOB_REQUEST_TAG: "u"}).is_current


def test_config_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_UNLEARN_HOOK_MODELS", "a, b")
    monkeypatch.delenv("MLFLOW_UNLEARN_HOOK_QUEUE", raising=False)
    cfg = HookConfig.from_env(workers=3)
    assert cfg.resolved_queue() == str(tmp_path / "mlflow-unlearn-hook.db")  # next to the tracking DB
    assert cfg.models == ["a", "b"] and cfg.watches("a") and not cfg.watches("c") and cfg.workers == 3
    assert default_queue("http://127.0.0.1:5000").endswith("mlflow-unlearn-hook.db")
    with pytest.raises(ValueError, match="secret"):
        HookConfig().validate(need_secret=True)
    with pytest.raises(ValueError, match="worker-type"):
        HookConfig(worker_type="fiber").validate()


def _report():
    before = {"forget/acc": 1.0, "retain/acc": 1.0, "test/acc": 0.9, "mia/efficacy": 0.2, "mia/auc": 0.6, "tier/low/forget_acc": 1.0}
    after = {"forget/acc": 0.7, "retain/acc": 0.98, "test/acc": 0.88, "mia/efficacy": 0.5, "mia/auc": 0.52, "tier/low/forget_acc": float("nan")}
    return evidence.build_report(
        request={"model": "m", "version": "1", "forget_set": "runs:/r/f.json", "request_run": "r"},
        forget={"digest": "d" * 64, "count": 30, "tier_histogram": {"low": 10, "mid": 10, "high": 10}, "tiers": {"low": 10}},
        plan={"retain_mode": "exclude_all", "steps": [{"tier": "low", "algorithm": "none", "hyperparameters": {}}]},
        plan_source="default", before=before, after=after, against_source={"disagree/forget": 0.3}, reference=None,
        reference_run=None, times={"unlearn_s": 1.5, "original_train_s": 10.0, "fraction_of_original_training": 0.15},
        result={"version": "2", "run_id": "j"})


def test_evidence_report_has_every_part_and_renders():
    report = _report()
    assert report["schema"] == evidence.SCHEMA
    assert report["metrics"]["change"]["forget/acc"] == pytest.approx(-0.3)
    assert report["metrics"]["after"]["tier/low/forget_acc"] is None  # NaN is not valid JSON
    json.dumps(report, allow_nan=False)
    for key in ("python", "mlflow", "torch", "huey"):
        assert key in report["software"]
    md, page = evidence.to_markdown(report), evidence.to_html(report)
    for text in (md, page):
        for needle in ("version 1 -&gt; version 2" if text is page else "version 1 -> version 2", "d" * 64, "forget/acc",
                       "mia/efficacy", "exclude_all", "original_train_s", "mlflow", "no cached retrain"):
            assert needle in text, needle
    assert page.startswith("<!doctype html>")


def test_sqlite_queue_locks_and_delivery_dedup(tmp_path):
    from huey.exceptions import TaskLockedException

    from mlflow_unlearn.hook.jobs import make_huey

    h = make_huey(str(tmp_path / "q.db"))
    assert h.put_if_empty("delivery.1", 1.0) and not h.put_if_empty("delivery.1", 2.0)
    with h.lock_task("m/1/d"):
        assert h.is_locked("m/1/d")
        with pytest.raises(TaskLockedException):
            with h.lock_task("m/1/d"):
                pass
    assert not h.is_locked("m/1/d")


def test_job_lock_names_its_owner_and_a_dead_owners_lock_is_cleared(tmp_path):
    import subprocess
    import sys

    from mlflow_unlearn.hook import jobs

    h = jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    lock = jobs.acquire_job_lock("m/1/d")
    assert h.is_locked("m/1/d") and jobs.lock_is_live("m/1/d")  # held by this (live) process
    with pytest.raises(jobs.JobLocked):
        jobs.acquire_job_lock("m/1/d")
    lock.clear()
    # a lock taken by a process that was then killed (here: one that exited) is stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    h.put_if_empty(jobs._lock("m/2/d")._key, {"host": jobs.HOST, "pid": dead.pid, "since": 0.0})
    assert h.is_locked("m/2/d") and not jobs.lock_is_live("m/2/d")
    assert not h.is_locked("m/2/d")
    jobs.acquire_job_lock("m/2/d").clear()
    # the queue knows what is waiting
    jobs.enqueue("m", 7)
    assert jobs.queued_targets() == {("m", "7")} and jobs.pending() == 1


def test_a_lock_whose_pid_was_reused_is_stale_and_the_job_can_be_taken(tmp_path):
    """Containers reuse pids: a lock names its owner by (host, boot id, pid, start time), so a live
    process that merely got the dead owner's pid does not keep the job `running` forever."""
    from mlflow_unlearn.hook import jobs

    h = jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    me = jobs.process_identity()
    if me["started"] is None:
        pytest.skip("no /proc here: pid start times are unknown, liveness falls back to a pid check")
    assert me["pid"] == os.getpid() and me["boot_id"]
    key = jobs._lock("m/3/d")._key
    # the same pid, alive, but started at another time: the owner is gone and its pid was reused (by us)
    h.put_if_empty(key, {**me, "started": me["started"] - 1, "since": 0.0})
    assert jobs.owner_is_alive(h.get(key, peek=True)) is False
    assert not jobs.lock_is_live("m/3/d") and not h.is_locked("m/3/d")
    lock = jobs.acquire_job_lock("m/3/d")  # the job resumes in a new worker
    assert h.get(key, peek=True)["started"] == me["started"]
    lock.clear()
    # the owner itself (same pid and start time) is live; a lock from an earlier boot is not
    h.put_if_empty(key, {**me, "since": 0.0})
    assert jobs.lock_is_live("m/3/d")
    with pytest.raises(jobs.JobLocked):
        jobs.acquire_job_lock("m/3/d")
    lock.clear()
    h.put_if_empty(key, {**me, "boot_id": "an-earlier-boot", "since": 0.0})
    assert not jobs.lock_is_live("m/3/d")
    # a lock of another host is left alone (Redis expires it after lock_ttl_s)
    h.put_if_empty(key, {**me, "host": "another-host", "since": 0.0})
    assert jobs.owner_is_alive(h.get(key, peek=True)) is None and jobs.lock_is_live("m/3/d")


def _redis_or_skip(url="redis://127.0.0.1:6379/15"):
    try:
        import redis
    except ImportError:
        pytest.skip("the redis Python package is not installed (pip install redis)")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
    except Exception as exc:
        pytest.skip(f"no Redis answers at {url}: {exc}")
    return url


@pytest.mark.integration  # a real Redis server
def test_redis_queue_lock_ttl_and_delivery_dedup():
    from huey.exceptions import TaskLockedException

    from mlflow_unlearn.hook.jobs import make_huey

    url = _redis_or_skip()
    h = make_huey(url, name=f"mlflow-unlearn-test-{time.time_ns()}")
    try:
        assert h.put_if_empty("delivery.1", 1.0, 5) and not h.put_if_empty("delivery.1", 2.0, 5)
        lock = h.lock_task("m/1/d", ttl=1)
        lock.acquire()
        with pytest.raises(TaskLockedException):
            h.lock_task("m/1/d", ttl=1).acquire()
        time.sleep(1.5)  # a dead worker's lock expires: another worker can resume the job
        assert not h.is_locked("m/1/d")
    finally:
        h.storage.flush_all()


def test_evidence_embeds_the_per_tier_chart():
    before = {"forget/acc": 1.0, "tier/low/forget_acc": 1.0, "tier/high/forget_acc": 1.0}
    after = {"forget/acc": 0.6, "tier/low/forget_acc": 0.95, "tier/high/forget_acc": 0.25}
    report = evidence.build_report(
        request={"model": "m", "version": "1", "forget_set": "runs:/r/f.json"}, forget={"digest": "d" * 64, "count": 20},
        plan={"retain_mode": "exclude_all", "steps": []}, plan_source="default", before=before, after=after,
        against_source={}, reference=None, reference_run=None, times={}, result={"version": "2", "run_id": "j"},
        reference_tier_acc={"low": 0.97, "high": 0.2})
    ax = evidence.tier_figure(report).axes[0]
    assert sorted(round(p.get_height(), 2) for p in ax.patches) == [0.2, 0.25, 0.95, 0.97, 1.0, 1.0]
    assert "<img alt='forget accuracy per tier'" in evidence.to_html(report)
    assert evidence.tier_figure(_report()) is None  # no finite per-tier value: no chart, no broken image


def test_a_request_is_read_once_and_a_tampered_artifact_is_rejected(tracking, tmp_path):
    """read_request downloads, parses and hashes the forget-set artifact once (the job passes the ids
    on); an artifact whose ids no longer match the digest recorded beside them is refused."""
    import mlflow

    from mlflow_unlearn.forget_sets import ForgetSetError, forget_digest
    from mlflow_unlearn.hook.attach import read_request

    good = {"ids": [5, 1, 3], "digest": forget_digest([1, 3, 5])}
    with mlflow.start_run() as run:
        mlflow.log_dict(good, "forget_set/good.json")
        mlflow.log_dict({**good, "ids": [5, 1, 4]}, "forget_set/changed.json")
    req = read_request(f"runs:/{run.info.run_id}/forget_set/good.json")
    assert req.ids.tolist() == [5, 1, 3] and req.digest == good["digest"]
    with pytest.raises(ForgetSetError, match="changed after logging"):
        read_request(f"runs:/{run.info.run_id}/forget_set/changed.json")
    with pytest.raises(ForgetSetError, match="is a spec"):
        read_request("mix:30")


@pytest.mark.parametrize("tag", ["/etc/passwd", "/proc/self/environ", "relative/ids.txt", "/usr", "file:///etc/passwd",
                                 "s3://bucket/ids.txt", "   ", ""])
def test_a_forget_set_tag_that_is_not_an_artifact_uri_is_refused_unread(tag, monkeypatch):
    """A tag is untrusted: anything but runs:/, models:/ or mlflow-artifacts:/ is refused before any
    download or file access, and the message does not quote a file."""
    import builtins

    import mlflow

    from mlflow_unlearn.forget_sets import ForgetSetError
    from mlflow_unlearn.hook.attach import read_request

    def forbidden(*a, **k):
        raise AssertionError(f"read_request touched {a[:1]} for tag {tag!r}")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", forbidden)
    monkeypatch.setattr(builtins, "open", forbidden)
    with pytest.raises(ForgetSetError) as info:
        read_request(tag)
    message = str(info.value)
    assert ("MLflow artifact URI" in message) if tag.strip() else ("empty" in message)
    assert "root:" not in message and "PATH=" not in message


def test_parse_errors_name_the_position_not_the_content(tmp_path):
    from mlflow_unlearn.forget_sets import ForgetSetError, read_ids_file

    secret = tmp_path / "leak.txt"
    secret.write_text("1\n2\nroot:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ForgetSetError, match="value 3 is not an integer train id") as info:
        read_ids_file(secret)
    assert "root" not in str(info.value).replace("leak.txt", "")
    table = tmp_path / "leak.csv"
    table.write_text("id\n1\nMLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=abc\n")
    with pytest.raises(ForgetSetError, match="row 2 is not an integer train id") as info:
        read_ids_file(table)
    assert "abc" not in str(info.value) and "SECRET" not in str(info.value)


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


def test_delivery_ids_expire_and_a_released_id_gets_in_again(tmp_path):
    from mlflow_unlearn.hook.deliveries import SqliteDeliveries, delivery_ttl, for_queue

    seen = for_queue(str(tmp_path / "q.db"), None, tolerance_s=300)
    assert isinstance(seen, SqliteDeliveries) and seen.ttl_s == delivery_ttl(300) == 660
    assert seen.claim("d1", now=1000.0) and not seen.claim("d1", now=1001.0)  # a retry or replay
    assert seen.claim("d2", now=1500.0) and seen.count() == 2
    # past the TTL an id is dropped (its call would fail the timestamp check by then anyway)
    assert seen.claim("d3", now=1000.0 + 661) and seen.count() == 2
    assert seen.claim("d1", now=1000.0 + 662)
    seen.release("d2")
    assert seen.claim("d2", now=1700.0)


@pytest.mark.integration  # a real Redis server
def test_redis_delivery_ids_expire_and_release():
    from mlflow_unlearn.hook.deliveries import RedisDeliveries
    from mlflow_unlearn.hook.jobs import make_huey

    h = make_huey(_redis_or_skip(), name=f"mlflow-unlearn-test-{time.time_ns()}")
    try:
        seen = RedisDeliveries(h, ttl_s=1)
        assert seen.claim("d1") and not seen.claim("d1")
        seen.release("d1")
        assert seen.claim("d1")
        time.sleep(1.5)
        assert seen.claim("d1")
    finally:
        h.storage.flush_all()


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
    from mlflow_unlearn.hook import jobs

    client, secret = receiver
    body, headers = _delivery(secret, "d-fails-first")
    real_enqueue = jobs.enqueue

    def queue_down(*a, **k):
        raise ConnectionError("queue storage unreachable")

    monkeypatch.setattr(jobs, "enqueue", queue_down)
    r = client.post("/webhook", content=body, headers=headers)
    assert r.status_code == 503 and "retry" in r.json()["error"] and jobs.pending() == 0
    monkeypatch.setattr(jobs, "enqueue", real_enqueue)
    r = client.post("/webhook", content=body, headers=headers)  # MLflow's retry of the same delivery
    assert r.status_code == 202 and r.json()["status"] == "accepted"
    assert jobs.queued_targets() == {("m", "3")}  # queued before the answer, not after it
    r = client.post("/webhook", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "duplicate" and jobs.pending() == 1


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


def test_only_named_or_opted_in_models_are_watched(tracking, tmp_path):
    from mlflow import MlflowClient

    from mlflow_unlearn.hook import jobs
    from mlflow_unlearn.tracking import Tag

    client = MlflowClient()
    for name in ("named", "opted-in", "other"):
        client.create_registered_model(name)
    client.set_registered_model_tag("opted-in", Tag.HOOK_WATCH, "true")
    client.set_registered_model_tag("other", Tag.HOOK_WATCH, "no")
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["named"]))
    assert [jobs.is_watched(client, n) for n in ("named", "opted-in", "other", "absent")] == [True, True, False, False]
    out = jobs.submit("other", 1, client=client)
    assert out.startswith("ignored (model not watched") and "hook_watch=true" in out and jobs.pending() == 0
    assert jobs.run_job("other", 1).startswith("skipped: model not watched")
    jobs.configure(HookConfig(queue=str(tmp_path / "q2.db"), tracking_uri=tracking))  # no --models: tags only
    assert [jobs.is_watched(client, n) for n in ("named", "opted-in")] == [False, True]
    jobs.configure(HookConfig(queue=str(tmp_path / "q3.db"), tracking_uri=tracking, models=["*"]))
    assert all(jobs.is_watched(client, n) for n in ("named", "other", "absent"))


def test_the_receivers_queued_status_never_clears_a_started_jobs_tags(tracking, tmp_path):
    """The receiver queues the job before answering and writes the `queued` status after: a worker may
    have started meanwhile (started_at written). That write must not erase it."""
    from mlflow import MlflowClient

    from mlflow_unlearn.hook import jobs

    client = MlflowClient()
    client.create_registered_model("m")
    v = client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model").version
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["m"]))
    uri = "runs:/0123456789abcdef0123456789abcdef/forget_set/ids.json"
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri, ledger.STARTED_AT_TAG: "123.000"})  # the job began
    assert jobs.submit("m", v, client=client, enqueued=True) == "queued" and jobs.pending() == 0  # not queued twice
    state = ledger.read_state(client, "m", v)
    assert state.tags[ledger.STARTED_AT_TAG] == "123.000" and state.is_current
    # the reconciler's path queues itself, so it clears the last answer before queueing
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri + "?2"})
    assert jobs.submit("m", v, client=client) == "queued" and jobs.pending() == 1
    assert ledger.STARTED_AT_TAG not in ledger.read_state(client, "m", v).tags


def test_requests_carried_into_the_next_job():
    """Which earlier requests a new one carries (ledger.carried_requests): waiting ones (queued,
    running, not yet seen) and the merged list, never an answered one; a list too long for a tag is
    an error that says what to do, not a silent drop."""
    def state(request, status=None, handled=None, merged=None):
        tags = {ledger.FORGET_SET_TAG: request}
        tags.update({k: v for k, v in ((ledger.STATUS_TAG, status), (ledger.JOB_REQUEST_TAG, handled),
                                         (ledger.MERGED_TAG, merged)) if v is not None})
        return ledger.VersionState("m", "1", tags)

    # attach, about to replace the request attached now
    assert ledger.carried_requests(state("A"), replacing=True) == ["A"]  # not seen by the hook yet
    assert ledger.carried_requests(state("A", "queued", "A"), replacing=True) == ["A"]
    assert ledger.carried_requests(state("A", "running", "A"), replacing=True) == ["A"]
    for answered in ("done", "failed", "rejected"):
        assert ledger.carried_requests(state("A", answered, "A"), replacing=True) == []
    assert ledger.carried_requests(state("B", "queued", "A", '["X"]'), replacing=True) == ["X", "A", "B"]
    # the receiver and the job: the request attached now is the job's own, never carried
    assert ledger.carried_requests(state("B", "queued", "A")) == ["A"]
    assert ledger.carried_requests(state("B", "done", "A")) == []
    assert ledger.carried_requests(state("B", "queued", "B", '["A", "B"]')) == ["A"]
    for forged in ('{"a": 1}', "not json", '[1, "", "  "]'):  # an untrusted tag: nothing usable, no crash
        assert ledger.carried_requests(state("B", "done", "A", forged)) == []
    assert ledger.merged_tag_value([]) is None
    many = [f"runs:/{i:032x}/forget_set/forget-{'0' * 64}.json" for i in range(60)]
    with pytest.raises(ValueError, match=r"60 requests are already waiting.*wait for the hook"):
        ledger.merged_tag_value(many)
    assert ledger.request_run_id(many[1]) == f"{1:032x}" and ledger.request_run_id("/etc/passwd") is None


def test_a_merged_job_reads_every_request_once_and_answers_each(tracking, tmp_path):
    """The job's side of merging (jobs._merge_carried, _Job.finish): the union of the request attached
    now and the carried ones, keyed by the union's digest; an unreadable carried request (a forged
    path) is refused unread without sinking the others; the request attached now being unreadable
    leaves the carried ones to be answered; each request's run gets its own answer."""
    import mlflow
    from mlflow import MlflowClient

    from mlflow_unlearn.forget_sets import ForgetSetError, forget_digest
    from mlflow_unlearn.hook import jobs

    client = MlflowClient()
    client.create_registered_model("m")
    v = client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model").version
    uris = {}
    for name, ids in (("a", [1, 2, 3]), ("b", [3, 4]), ("c", [9]), ("dup", [5, 5, 6])):
        with mlflow.start_run() as run:
            mlflow.log_dict({"ids": ids}, f"forget_set/{name}.json")
        uris[name] = f"runs:/{run.info.run_id}/forget_set/{name}.json"

    def job(uri):
        ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri})
        return jobs._Job(client, "m", v, uri, 0.0)

    j = job(uris["c"])
    req = jobs._merge_carried(j, [uris["a"], "/etc/passwd", uris["b"], uris["dup"]])
    assert req.ids.tolist() == [1, 2, 3, 4, 9] and req.digest == forget_digest([1, 2, 3, 4, 9]) and req.uri == uris["c"]
    assert j.all_requests() == [uris["c"], uris["a"], uris["b"]]
    reasons = dict(j.refused)
    assert "MLflow artifact URI" in reasons["/etc/passwd"] and "repeats ids [5]" in reasons[uris["dup"]]
    ledger.set_tags(client, "m", v, {ledger.MERGED_TAG: json.dumps([uris["a"], uris["b"]])})
    assert j.finish(ledger.DONE, result="7", digest=req.digest) == "done -> version 7 (answering 2 merged request(s) too)"
    state = ledger.read_state(client, "m", v)
    assert state.status == ledger.DONE and ledger.MERGED_TAG not in state.tags and state.is_current

    def answer(uri):
        return client.get_run(ledger.request_run_id(uri)).data.tags.get(ledger.ANSWER_TAG)

    assert [answer(uris[k]) for k in "cab"] == ["m/1: done -> version 7"] * 3
    assert answer(uris["dup"]).startswith("m/1: rejected: ") and "repeats ids" in answer(uris["dup"])
    # the request attached now is unreadable: the carried ones are still unlearned, and the note says why
    j = job(uris["dup"])
    assert jobs._merge_carried(j, [uris["c"]]).ids.tolist() == [9] and j.all_requests() == [uris["c"]]
    assert j.finish(ledger.DONE, result="8").startswith("done -> version 8")
    assert "the forget set attached now was refused" in ledger.read_state(client, "m", v).tags[ledger.NOTE_TAG]
    # nothing readable at all: the reason of the request attached now
    with pytest.raises(ForgetSetError, match="repeats ids"):
        jobs._merge_carried(job(uris["dup"]), [])
    with pytest.raises(ForgetSetError, match="repeats ids"):
        jobs._merge_carried(job(uris["dup"]), ["/etc/passwd"])

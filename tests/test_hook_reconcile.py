"""mlflow_unlearn/hook/reconcile.py, one scan at a time against a SQLite tracking store and a SQLite
queue (the reconciler beside a running service: test_hook_e2e.py). What it must queue: a request
no event announced, a `queued` job the queue lost, a `running` job whose worker died. What it must
leave alone: answered requests, waiting jobs, jobs just queued, jobs a live worker holds, models not
watched."""
from __future__ import annotations

import time

import pytest

from mlflow_unlearn.hook import job_locks, job_queue, jobs, ledger
from mlflow_unlearn.hook.config import HookConfig
from mlflow_unlearn.hook.reconcile import Reconciler

DIGEST = "ab" * 32
REQUEST = f"runs:/0123456789abcdef0123456789abcdef/forget_set/forget-{DIGEST}.json"  # as `attach` names it


@pytest.fixture
def registry(tracking, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient()
    for name in ("m", "unwatched"):
        client.create_registered_model(name)
        client.create_model_version(name, "runs:/0123456789abcdef0123456789abcdef/model")
    config = HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["m"], reconcile_interval_s=0)
    queue = jobs.configure(config)
    return client, config, queue


def attach(client, name, request=REQUEST, **tags):
    ledger.set_tags(client, name, "1", {ledger.FORGET_SET_TAG: request, **tags})


def drain(queue):
    while queue.pending_count():
        queue.dequeue()


def test_an_unannounced_request_is_queued_once_and_an_answered_one_never(registry):
    client, config, queue = registry
    attach(client, "m")
    attach(client, "unwatched")
    reconciler = Reconciler(config)
    assert reconciler.scan() == [("m", "1", "queued")]  # the unwatched model's request is not its business
    assert job_queue.queued_targets() == {("m", "1")}
    assert reconciler.scan() == []  # waiting in the queue: nothing more
    drain(queue)
    assert reconciler.scan() == []  # queued a moment ago: a worker may have it off the queue, unlocked
    # answered: the status is terminal for the request attached now
    ledger.set_tags(client, "m", "1", {ledger.STATUS_TAG: ledger.DONE})
    assert ledger.read_state(client, "m", "1").is_current
    assert Reconciler(config, queued_grace_s=0).scan() == []


def test_a_lost_queued_job_and_a_dead_workers_running_job_are_queued_again(registry):
    client, config, queue = registry
    attach(client, "m")
    assert jobs.submit("m", "1", client=client) == "queued"
    drain(queue)  # the queue lost it (a Redis flush, a deleted SQLite file)
    old = f"{time.time() - 3600:.3f}"
    ledger.set_tags(client, "m", "1", {ledger.QUEUED_AT_TAG: old})
    assert Reconciler(config).scan() == [("m", "1", "re-queued (queued)")]
    drain(queue)

    # running, and its lock held by this live process: left alone; lock released (worker gone): re-queued
    ledger.set_tags(client, "m", "1", {ledger.STATUS_TAG: ledger.RUNNING})
    key = ledger.job_key("m", "1", DIGEST)
    lock = job_locks.acquire_job_lock(key)
    assert Reconciler(config, queued_grace_s=0).scan() == []
    lock.clear()
    assert Reconciler(config, queued_grace_s=0).scan() == [("m", "1", "re-queued (running)")]


def test_a_new_request_replacing_an_answered_one_is_queued(registry):
    client, config, queue = registry
    attach(client, "m")
    jobs.submit("m", "1", client=client)
    drain(queue)  # the job ran (a queued job for the version would take the new request itself)
    ledger.set_tags(client, "m", "1", {ledger.STATUS_TAG: ledger.DONE})
    attach(client, "m", REQUEST.replace(DIGEST, "cd" * 32))  # set while the service was down: no event will come
    assert not ledger.read_state(client, "m", "1").is_current
    assert Reconciler(config).scan() == [("m", "1", "queued")]
    assert ledger.read_state(client, "m", "1").tags[ledger.JOB_REQUEST_TAG] == REQUEST.replace(DIGEST, "cd" * 32)


def test_start_with_interval_zero_starts_no_thread(registry):
    _, config, _ = registry
    reconciler = Reconciler(config).start()
    assert reconciler._thread is None
    reconciler.stop()


def test_a_tag_longer_than_a_tag_can_echo_is_answered_once_and_never_requeued(registry):
    """A 99,996-character forget-set tag is rejected by one job, and the answer refers to it (a hash
    of it: a truncated copy would never equal it), so no later scan queues it again."""
    client, config, queue = registry
    huge = "runs:/" + "x" * 99_990
    client.set_model_version_tag("m", "1", ledger.FORGET_SET_TAG, huge)
    assert Reconciler(config).scan() == [("m", "1", "queued")]
    drain(queue)
    outcome = jobs.run_job("m", "1")
    assert outcome.startswith("rejected"), outcome
    state = ledger.read_state(client, "m", "1")
    assert state.status == ledger.REJECTED and state.is_current and state.handled_request.startswith("sha256:")
    assert "x" * 200 not in state.tags[ledger.ERROR_TAG]
    for _ in range(3):
        assert Reconciler(config, queued_grace_s=0).scan() == []
    assert jobs.run_job("m", "1") == "skipped: already rejected"

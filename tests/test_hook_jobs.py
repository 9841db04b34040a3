"""mlflow_unlearn/hook/jobs.py, the parts that need no server: the queue, job locks and their liveness,
watched models, the receiver's status write, merged jobs (the job end to end: test_hook_e2e.py)."""
from __future__ import annotations

import json
import os
import time

import pytest

from conftest import redis_or_skip
from mlflow_unlearn.hook import ledger
from mlflow_unlearn.hook.config import HookConfig


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


@pytest.mark.integration  # a real Redis server
def test_redis_queue_lock_ttl_and_delivery_dedup():
    from huey.exceptions import TaskLockedException

    from mlflow_unlearn.hook.jobs import make_huey

    url = redis_or_skip()
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
    # (the first request was queued and never answered: the new one carries it, see ledger.carried_requests)
    assert jobs.submit("m", v, client=client) == "queued, with 1 earlier request(s) merged" and jobs.pending() == 1
    assert ledger.merged_requests(ledger.read_state(client, "m", v).tags) == [uri]
    assert ledger.STARTED_AT_TAG not in ledger.read_state(client, "m", v).tags


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


@pytest.mark.parametrize("worker_did", ["started", "finished"])
def test_a_job_that_started_during_the_receivers_queued_write_keeps_its_status(tracking, tmp_path, monkeypatch, worker_did):
    """MLflow tags have no compare-and-set: a worker may take the job off the queue and start it
    between the receiver's read and its `queued` write. The receiver re-reads: a started_at it did
    not read puts `running` back; a finished_at queues the job once more, whose re-run answers again."""
    from mlflow import MlflowClient

    from mlflow_unlearn.hook import jobs

    client = MlflowClient()
    client.create_registered_model("m")
    v = client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model").version
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["m"]))
    uri = "runs:/0123456789abcdef0123456789abcdef/forget_set/ids.json"
    # an earlier request's answer is still on the version: its timestamps must not look like this job's
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri, ledger.STARTED_AT_TAG: "100.000",
                                     ledger.FINISHED_AT_TAG: "101.000"})
    read_state = ledger.read_state
    calls = []

    def worker_between_read_and_write(c, name, version):
        state = read_state(c, name, version)
        if not calls:  # right after the receiver's first read, as _run_locked / finish would write them
            tags = {ledger.JOB_REQUEST_TAG: uri, ledger.STARTED_AT_TAG: "200.000", ledger.FINISHED_AT_TAG: None}
            if worker_did == "finished":
                tags.update({ledger.FINISHED_AT_TAG: "201.000"})
            ledger.set_tags(c, name, version, tags)
            ledger.set_tags(c, name, version, {ledger.STATUS_TAG: ledger.RUNNING if worker_did == "started" else ledger.DONE})
        calls.append(1)
        return state

    monkeypatch.setattr(ledger, "read_state", worker_between_read_and_write)
    assert jobs.submit("m", v, client=client, enqueued=True) == "queued"
    monkeypatch.setattr(ledger, "read_state", read_state)
    state = ledger.read_state(client, "m", v)
    if worker_did == "started":
        assert state.status == ledger.RUNNING and jobs.pending() == 0
    else:  # the overwritten `done` comes back when the re-queued job finds its answer
        assert state.status == ledger.QUEUED and jobs.queued_targets() == {("m", str(v))}

    # without a worker in between, the receiver's `queued` stands and nothing is queued twice
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri + "?2", ledger.STATUS_TAG: ledger.DONE})
    jobs.current_huey().flush()
    assert jobs.submit("m", v, client=client, enqueued=True).startswith("queued")
    assert ledger.read_state(client, "m", v).status == ledger.QUEUED and jobs.pending() == 0

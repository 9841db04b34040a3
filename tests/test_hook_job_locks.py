"""mlflow_unlearn/hook/job_locks.py: locks that name their owner, and a dead owner's lock is cleared."""
from __future__ import annotations

import os

import pytest

from mlflow_unlearn.hook.config import HookConfig


def test_job_lock_names_its_owner_and_a_dead_owners_lock_is_cleared(tmp_path):
    import subprocess
    import sys

    from mlflow_unlearn.hook import job_locks, jobs

    h = jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    lock = job_locks.acquire_job_lock("m/1/d")
    assert h.is_locked("m/1/d") and job_locks.lock_is_live("m/1/d")  # held by this (live) process
    with pytest.raises(job_locks.JobLocked):
        job_locks.acquire_job_lock("m/1/d")
    lock.clear()
    # a lock taken by a process that was then killed (here: one that exited) is stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    h.put_if_empty(job_locks.task_lock("m/2/d")._key, {"host": job_locks.HOST, "pid": dead.pid, "since": 0.0})
    assert h.is_locked("m/2/d") and not job_locks.lock_is_live("m/2/d")
    assert not h.is_locked("m/2/d")
    job_locks.acquire_job_lock("m/2/d").clear()


def test_a_lock_whose_pid_was_reused_is_stale_and_the_job_can_be_taken(tmp_path):
    """Containers reuse pids: a lock names its owner by (host, boot id, pid, start time), so a live
    process that merely got the dead owner's pid does not keep the job `running` forever."""
    from mlflow_unlearn.hook import job_locks, jobs

    h = jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    me = job_locks.process_identity()
    if me["started"] is None:
        pytest.skip("no /proc here: pid start times are unknown, liveness falls back to a pid check")
    assert me["pid"] == os.getpid() and me["boot_id"]
    key = job_locks.task_lock("m/3/d")._key
    # the same pid, alive, but started at another time: the owner is gone and its pid was reused (by us)
    h.put_if_empty(key, {**me, "started": me["started"] - 1, "since": 0.0})
    assert job_locks.owner_is_alive(h.get(key, peek=True)) is False
    assert not job_locks.lock_is_live("m/3/d") and not h.is_locked("m/3/d")
    lock = job_locks.acquire_job_lock("m/3/d")  # the job resumes in a new worker
    assert h.get(key, peek=True)["started"] == me["started"]
    lock.clear()
    # the owner itself (same pid and start time) is live; a lock from an earlier boot is not
    h.put_if_empty(key, {**me, "since": 0.0})
    assert job_locks.lock_is_live("m/3/d")
    with pytest.raises(job_locks.JobLocked):
        job_locks.acquire_job_lock("m/3/d")
    lock.clear()
    h.put_if_empty(key, {**me, "boot_id": "an-earlier-boot", "since": 0.0})
    assert not job_locks.lock_is_live("m/3/d")
    # a lock of another host is left alone (Redis expires it after lock_ttl_s)
    h.put_if_empty(key, {**me, "host": "another-host", "since": 0.0})
    assert job_locks.owner_is_alive(h.get(key, peek=True)) is None and job_locks.lock_is_live("m/3/d")

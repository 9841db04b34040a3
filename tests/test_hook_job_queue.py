"""mlflow_unlearn/hook/job_queue.py: huey on SQLite and on Redis, the configured queue and what waits in it."""
from __future__ import annotations

import time

import pytest

from conftest import redis_or_skip
from mlflow_unlearn.hook.config import HookConfig

def test_sqlite_queue_locks_and_delivery_dedup(tmp_path):
    from huey.exceptions import TaskLockedException

    from mlflow_unlearn.hook.job_queue import make_huey

    h = make_huey(str(tmp_path / "q.db"))
    assert h.put_if_empty("delivery.1", 1.0) and not h.put_if_empty("delivery.1", 2.0)
    with h.lock_task("m/1/d"):
        assert h.is_locked("m/1/d")
        with pytest.raises(TaskLockedException):
            with h.lock_task("m/1/d"):
                pass
    assert not h.is_locked("m/1/d")


@pytest.mark.integration  # a real Redis server
def test_redis_queue_lock_ttl_and_delivery_dedup():
    from huey.exceptions import TaskLockedException

    from mlflow_unlearn.hook.job_queue import make_huey

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


def test_the_configured_queue_knows_what_is_waiting(tmp_path, monkeypatch):
    from mlflow_unlearn.hook import job_queue, jobs

    monkeypatch.setitem(job_queue._STATE, "config", None)  # a process that never called configure
    with pytest.raises(RuntimeError, match=r"jobs\.configure\(HookConfig"):
        job_queue.enqueue("m", 1)
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert job_queue.pending() == 0 and job_queue.queued_targets() == set() and job_queue.lock_ttl() is None
    job_queue.enqueue("m", 7)
    job_queue.enqueue("m", "8")
    assert job_queue.queued_targets() == {("m", "7"), ("m", "8")} and job_queue.pending() == 2

"""mlflow_unlearn/hook/deliveries.py: webhook delivery ids, claimed, released and expired (SQLite and Redis)."""
from __future__ import annotations

import time

import pytest

from conftest import redis_or_skip


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
    from mlflow_unlearn.hook.job_queue import make_huey

    h = make_huey(redis_or_skip(), name=f"mlflow-unlearn-test-{time.time_ns()}")
    try:
        seen = RedisDeliveries(h, ttl_s=1)
        assert seen.claim("d1") and not seen.claim("d1")
        seen.release("d1")
        assert seen.claim("d1")
        time.sleep(1.5)
        assert seen.claim("d1")
    finally:
        h.storage.flush_all()

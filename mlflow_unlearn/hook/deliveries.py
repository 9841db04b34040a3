"""Webhook delivery ids seen by the receiver, so a delivery MLflow retries (or a replayed call) queues
one job, not two. Shared by every receiver replica on the same queue, and kept only as long as a
delivery can still pass the signature check: a call whose timestamp is older than the tolerance is
rejected as stale anyway, so an id is forgotten after `ttl_s` (2 x tolerance + 60 s by default).

A delivery is *claimed* before its job is queued and *released* if queueing fails (the receiver then
answers 503 and MLflow retries the same delivery), so an id is only ever left marked for a delivery
whose job is in the queue.

- SQLite queue: a table `mlflow_unlearn_delivery(id, seen_at)` in the queue's file; expired rows are
  deleted by the next claim.
- Redis queue: one key per id with the TTL (SET NX EX through huey's storage).
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .config import is_redis

_TABLE = "mlflow_unlearn_delivery"


class SqliteDeliveries:
    def __init__(self, path: str | Path, ttl_s: float):
        self.path, self.ttl_s = str(path), float(ttl_s)
        with self._connect() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (id TEXT PRIMARY KEY, seen_at REAL NOT NULL)")
            db.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_seen_at ON {_TABLE} (seen_at)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def claim(self, delivery_id: str, *, now: float | None = None) -> bool:
        """True for the first claim of `delivery_id` within its lifetime, False for a repeat."""
        now = time.time() if now is None else now
        db = self._connect()
        try:
            with db:
                db.execute(f"DELETE FROM {_TABLE} WHERE seen_at < ?", (now - self.ttl_s,))
                cur = db.execute(f"INSERT OR IGNORE INTO {_TABLE} (id, seen_at) VALUES (?, ?)", (delivery_id, now))
                return cur.rowcount == 1
        finally:
            db.close()

    def release(self, delivery_id: str) -> None:
        db = self._connect()
        try:
            with db:
                db.execute(f"DELETE FROM {_TABLE} WHERE id = ?", (delivery_id,))
        finally:
            db.close()

    def count(self) -> int:
        db = self._connect()
        try:
            return int(db.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])
        finally:
            db.close()


class RedisDeliveries:
    def __init__(self, huey, ttl_s: float):
        self.huey, self.ttl_s = huey, int(ttl_s)

    def claim(self, delivery_id: str, *, now: float | None = None) -> bool:
        return bool(self.huey.put_if_empty(f"delivery.{delivery_id}", time.time() if now is None else now, self.ttl_s))

    def release(self, delivery_id: str) -> None:
        self.huey.delete(f"delivery.{delivery_id}")  # (huey's get does not pop on Redis expire storage)


def delivery_ttl(tolerance_s: float) -> float:
    return 2 * float(tolerance_s) + 60


def for_queue(queue: str, huey, *, tolerance_s: float):
    """The delivery log that goes with a queue (a SQLite file path or sqlite:/// URI, or a Redis URL)."""
    ttl = delivery_ttl(tolerance_s)
    if is_redis(queue):
        return RedisDeliveries(huey, ttl)
    path = queue[len("sqlite:///"):] if queue.startswith("sqlite:///") else queue
    return SqliteDeliveries(path, ttl)

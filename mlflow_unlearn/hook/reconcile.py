"""The reconciler: webhook delivery is at most a few retries and can be lost, and nothing is delivered
while the hook service is down, so the registry is scanned (search_model_versions on the forget-set
tag) at startup and then every `reconcile_interval_s` seconds. For each version with a forget set:

- answered (status done/failed/rejected for the tag value now attached): nothing;
- waiting in the queue, queued less than a minute ago, or its job lock held by a live worker: nothing;
- anything else is queued: a new tag value (an event lost, a tag set while the service was down, an
  older tag), a `running` job whose worker died (its lock names a process that is gone, or a Redis
  lock expired; the job resumes, and a result registered before the crash is found and reused), a
  `queued` one the queue lost. A duplicate job is harmless: it stops at the lock or the done status.
"""
from __future__ import annotations

import logging
import threading
import time

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from . import job_locks, job_queue, jobs, ledger

log = logging.getLogger("mlflow_unlearn.hook")


def _age(state: ledger.VersionState) -> float:
    try:
        return time.time() - float(state.tags.get(ledger.QUEUED_AT_TAG, "0"))
    except ValueError:
        return float("inf")


class Reconciler:
    def __init__(self, config, *, queued_grace_s: float = 60.0):
        self.config = config
        self.queued_grace_s = queued_grace_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self) -> list[tuple[str, str, str]]:
        """One pass; returns (name, version, action) for each version it queued."""
        client = MlflowClient()
        waiting = job_queue.queued_targets()
        actions, watched = [], {}
        for state in ledger.attached_versions(client):
            if not jobs.is_watched(client, state.name, cache=watched):  # --models, or the opt-in tag
                continue
            if state.is_current and state.status in ledger.TERMINAL:
                continue
            if (state.name, state.version) in waiting:
                continue
            if state.is_current and state.status == ledger.QUEUED and _age(state) < self.queued_grace_s:
                continue  # just queued: a worker may have taken it off the queue and not yet locked it
            digest = state.tags.get(ledger.JOB_DIGEST_TAG) if state.is_current else ledger.digest_from_uri(state.request)
            if digest and job_locks.lock_is_live(ledger.job_key(state.name, state.version, digest)):
                continue  # a live worker has it
            try:
                action = jobs.submit(state.name, state.version, force_enqueue=True, client=client)
            except MlflowException as exc:
                log.warning("reconcile %s/%s: %s", state.name, state.version, exc)
                continue
            actions.append((state.name, state.version, action))
            log.info("reconcile: %s/%s %s", state.name, state.version, action)
        return actions

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception:  # the registry may be briefly unreachable; try again next time
                log.exception("reconcile scan failed")
            self._stop.wait(interval_s)

    def start(self, interval_s: float | None = None) -> "Reconciler":
        """Scan now and then every interval in a daemon thread (an interval of 0 starts nothing)."""
        interval = self.config.reconcile_interval_s if interval_s is None else interval_s
        if interval > 0:
            self._thread = threading.Thread(target=self._loop, args=(interval,), name="hook-reconcile", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

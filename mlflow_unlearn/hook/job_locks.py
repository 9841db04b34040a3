"""Job locks: huey's TaskLock keys (`<queue name>.lock.<job key>`, taken with put_if_empty, released
with TaskLock.clear), holding the owner's identity instead of huey's placeholder value, so a lock
whose process died (SIGKILL, power loss) is recognised and cleared; on Redis it also expires.

A pid alone is not an identity: containers reuse pids routinely (a restarted worker is often pid 7
again), so the owner is (host, boot id, pid, process start time): the lock is live only while a
process with that pid *and that start time* runs on the same boot of the same host.

Why /proc by hand and not psutil: psutil is not a dependency of MLflow or of this package, and its
`Process(pid).create_time()` reads the same field 22 of /proc/<pid>/stat on Linux; twelve lines of
parsing (tested in test_hook_job_locks) cost less than a compiled dependency on every worker.
"""
from __future__ import annotations

import logging
import os
import socket
import time

from .job_queue import current_huey, lock_ttl

log = logging.getLogger("mlflow_unlearn.hook")

HOST = socket.gethostname()


class JobLocked(Exception):
    """Another live worker holds the job lock."""


def boot_id() -> str | None:
    """This boot of this host (Linux: /proc/sys/kernel/random/boot_id), None where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat; the command
    name in field 2 may hold spaces and parentheses, so fields are counted after its last ')').
    None where the process does not exist or /proc is not available."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        return int(after_name[19])  # fields 3.. follow the name: field 22 is index 22 - 3
    except (OSError, IndexError, ValueError):
        return None


def process_identity(pid: int | None = None) -> dict:
    pid = os.getpid() if pid is None else int(pid)
    return {"host": HOST, "boot_id": boot_id(), "pid": pid, "started": process_start_ticks(pid)}


def owner_is_alive(owner: dict) -> bool | None:
    """Whether the process that took a lock still runs: True/False on this host, None for another host
    (its liveness cannot be checked from here; Redis locks of lost hosts expire after lock_ttl_s)."""
    if owner.get("host") != HOST:
        return None
    if owner.get("boot_id") and boot_id() and owner["boot_id"] != boot_id():
        return False  # the host rebooted since: every process of that boot is gone
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = process_start_ticks(pid)
    if started is not None:  # /proc: the pid runs; it is the owner only if it started when the owner did
        return owner.get("started") is None or int(owner["started"]) == started
    if os.path.isdir("/proc"):
        return False  # no such process
    try:  # no /proc (macOS): a pid check is all there is
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True


def task_lock(key: str):
    """huey's TaskLock for job `key` on this process's queue (its storage key: `._key`)."""
    return current_huey().lock_task(key, ttl=lock_ttl())


def acquire_job_lock(key: str):
    """Take the job lock (clearing it first if its owner is dead); raises JobLocked."""
    h = current_huey()
    lock = task_lock(key)
    owner = {**process_identity(), "since": time.time()}
    for _ in range(2):
        if h.put_if_empty(lock._key, owner, lock_ttl()):
            return lock
        if not clear_if_stale(key):
            break
    raise JobLocked(key)


def clear_if_stale(key: str) -> bool:
    """Clear the job lock if it was taken by a process on this host that no longer runs (a reused pid
    does not count as running: see process_identity)."""
    h = current_huey()
    lock = task_lock(key)
    owner = h.get(lock._key, peek=True)
    if not isinstance(owner, dict) or owner_is_alive(owner) is not False:
        return False  # a live lock, or one of another host (Redis locks of dead hosts expire after lock_ttl_s)
    lock.clear()
    log.warning("cleared the lock of job %s: its worker (pid %s, started at tick %s) is gone", key, owner.get("pid"),
                owner.get("started"))
    return True


def lock_is_live(key: str) -> bool:
    h = current_huey()
    return h.is_locked(key) and not clear_if_stale(key)

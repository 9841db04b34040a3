"""The job queue: huey on a SQLite file (one machine) or Redis (many machines), and the one hook
configuration a process (and its forked workers) runs with. `jobs.configure` binds the job task to it.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

from .. import tracking
from .config import HookConfig, is_redis

TASK_NAME = "mlflow_unlearn.hook.run_job"
HUEY_NAME = "mlflow-unlearn-hook"

# This process's hook: set once by `configure`, read by the webhook receiver, the reconciler and the
# jobs (a forked worker inherits it).
_STATE: dict = {"config": None, "huey": None, "task": None, "parent_pid": None}


def make_huey(queue: str, *, name: str = HUEY_NAME):
    """A huey instance on `queue`: a redis:// URL (RedisExpireHuey, so locks can carry a TTL) or a
    SQLite file path (`sqlite:///path` accepted)."""
    import huey

    if is_redis(queue):
        return huey.RedisExpireHuey(name, url=queue, results=False)
    path = queue[len("sqlite:///"):] if queue.startswith("sqlite:///") else queue
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return huey.SqliteHuey(name, filename=path, results=False)


def configure(config: HookConfig, job: Callable[[str, str], str]):
    """Create the huey instance for `config`, register `job(name, version)` as its task (TASK_NAME),
    and make `config` the one this process (and its forked worker processes) runs with. Returns the
    huey instance. Use `jobs.configure`, which passes the unlearning job."""
    config.validate()
    if config.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = config.tracking_uri
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    h = make_huey(config.resolved_queue())
    task = h.task(name=TASK_NAME, retries=0)(job)

    @h.on_startup()
    def _worker_startup():  # in every worker (thread, or forked process)
        import torch

        if os.getpid() != _STATE.get("parent_pid"):
            _die_with_parent()
        # N jobs at once share the cores instead of each starting one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, config.workers)))
        tracking.connect(config.tracking_uri)

    _STATE.update(config=config, huey=h, task=task, parent_pid=os.getpid())
    return h


def _die_with_parent() -> None:
    """A forked worker process exits when its consumer dies (even by SIGKILL), so a restarted
    consumer never races an orphan on the same job."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def current_config() -> HookConfig:
    if _STATE["config"] is None:
        raise RuntimeError("the hook is not configured: call mlflow_unlearn.hook.jobs.configure(HookConfig(...)) first")
    return _STATE["config"]


def current_huey():
    current_config()
    return _STATE["huey"]


def enqueue(name: str, version) -> None:
    current_config()
    _STATE["task"](name, str(version))


def pending() -> int:
    return current_huey().pending_count()


def lock_ttl() -> int | None:
    """Seconds a job lock lives on Redis (a lost host's locks expire); None on SQLite (no expiry:
    one machine, whose dead owners are recognised by process identity, see job_locks)."""
    cfg = current_config()
    return int(cfg.lock_ttl_s) if is_redis(cfg.resolved_queue()) else None


def queued_targets() -> set[tuple[str, str]]:
    """(name, version) of the jobs waiting in the queue."""
    out = set()
    for task in current_huey().pending():
        if getattr(task, "name", "") == TASK_NAME or TASK_NAME in str(type(task)):
            args = tuple(task.args or ())
            if len(args) == 2:
                out.add((str(args[0]), str(args[1])))
    return out


def make_consumer(huey, config: HookConfig):
    """A huey consumer with `config.workers` workers of `config.worker_type` (None with 0 workers)."""
    from huey.consumer import Consumer

    if config.workers <= 0:
        return None
    return Consumer(huey, workers=config.workers, worker_type=config.worker_type, periodic=False,
                    initial_delay=0.05, max_delay=1.0, backoff=1.15, check_worker_health=True)

"""Settings shared by `hook serve`, `hook worker`, `hook reconcile` and `hook install`. Every setting
is a command-line flag with an environment-variable default, so a service, its workers and a cron job
agree by sharing an environment.

    MLFLOW_TRACKING_URI             the registry (default sqlite:///mlflow.db)
    MLFLOW_UNLEARN_HOOK_SECRET      the webhook secret (HMAC key); required by `serve` and `install`
    MLFLOW_UNLEARN_HOOK_QUEUE       the job queue: a SQLite file path (or sqlite:///path) or a
                                    redis://host:port/db URL; default: mlflow-unlearn-hook.db next to
                                    a SQLite tracking database, else in the working directory
    MLFLOW_UNLEARN_HOOK_WORKERS     jobs run at once by `serve` (embedded consumer) or `worker` (default 1)
    MLFLOW_UNLEARN_HOOK_MODELS      comma-separated registered model names to watch, or * for every
                                    model; besides these, a registered model tagged
                                    mlflow_unlearn.hook_watch=true is watched (default: only those)
    MLFLOW_UNLEARN_HOOK_EXPERIMENT  experiment of the job runs (default mlflow-unlearn, beside the request runs)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import tracking
from ..compute import DEFAULT_BUDGET, parse_budget

DEFAULT_EXPERIMENT = "mlflow-unlearn"  # the same experiment as the request runs (attach), so both sit side by side
DEFAULT_QUEUE_FILE = "mlflow-unlearn-hook.db"
DEFAULT_WEBHOOK_NAME = "mlflow-unlearn"
EVENTS = ("model_version_tag.set", "model_version.created")


def default_queue(tracking_uri: str | None = None) -> str:
    uri = tracking_uri or tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).resolve().parent / DEFAULT_QUEUE_FILE)
    return str(Path.cwd() / DEFAULT_QUEUE_FILE)


def is_redis(queue: str) -> bool:
    return str(queue).startswith(("redis://", "rediss://", "unix://"))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


@dataclass
class HookConfig:
    tracking_uri: str | None = None
    queue: str | None = None
    secret: str | None = None
    workers: int = 1
    worker_type: str = "thread"  # huey: thread | process
    # Watched registered models: these names ("*": all), plus any tagged mlflow_unlearn.hook_watch=true.
    # Not "all" by default: a job loads and runs a registered model, so which models a hook acts on is
    # an explicit decision (issue 11), not whatever anyone with registry write access registers.
    models: list[str] = field(default_factory=list)
    experiment: str = DEFAULT_EXPERIMENT
    seed: int = 0
    device: str = "auto"
    # The most compute a job's attempt may use, as a fraction of the source's original training
    # (compute.py); the escalated ("stronger") attempt gets twice it, at most 1.
    budget: float = DEFAULT_BUDGET
    reconcile_interval_s: float = 30.0  # 0: no periodic scan
    tolerance_s: float = 300.0  # accepted webhook timestamp skew
    # The largest webhook body the receiver reads (bytes). MLflow's deliveries are a few KiB (a tag
    # event carries the tag value, 5,000 characters at most); anything larger is refused with 413
    # before it is read, so unsigned floods cannot grow the receiver's memory.
    max_body_bytes: int = 1 << 20
    # Folders a source model's training data may be read from. A manifest is registry content: without
    # this, a model registered with `imagefolder:<any path>` would make a worker open that path and
    # tell its requester whether it exists. Empty: only the embedded datasets (digits).
    data_roots: list[str] = field(default_factory=list)
    lock_ttl_s: int = 3600  # Redis only: the lock of a worker on a lost host expires after this
    # The acceptance gate (mlflow_unlearn/gate.py) and what a job does when a result fails it: each
    # stage in order until one passes; "retrain" (an exact retrain on retain with the source's
    # recipe) is always accepted. An empty tuple: a failed result ends `failed`, nothing registered.
    gate: dict = field(default_factory=dict)  # GateThresholds overrides, e.g. {"retain_drop": 0.03}
    escalation: tuple = ("stronger", "retrain")
    # Exact retrain instead of approximate unlearning once this fraction of the train set is forgotten
    # in total, or after this many approximate requests since the last retrain (None: never).
    retrain_after_fraction: float | None = None
    retrain_after_requests: int | None = None

    @classmethod
    def from_env(cls, **overrides) -> "HookConfig":
        models = [m.strip() for m in os.environ.get("MLFLOW_UNLEARN_HOOK_MODELS", "").split(",") if m.strip()]
        cfg = cls(
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None,
            queue=os.environ.get("MLFLOW_UNLEARN_HOOK_QUEUE") or None,
            secret=os.environ.get("MLFLOW_UNLEARN_HOOK_SECRET") or None,
            workers=_env_int("MLFLOW_UNLEARN_HOOK_WORKERS", 1),
            models=models,
            experiment=os.environ.get("MLFLOW_UNLEARN_HOOK_EXPERIMENT") or DEFAULT_EXPERIMENT,
            budget=parse_budget(os.environ.get("MLFLOW_UNLEARN_BUDGET") or DEFAULT_BUDGET, flag="MLFLOW_UNLEARN_BUDGET"),
            max_body_bytes=_env_int("MLFLOW_UNLEARN_HOOK_MAX_BODY_BYTES", 1 << 20),
            data_roots=[r for r in os.environ.get("MLFLOW_UNLEARN_HOOK_DATA_ROOTS", "").split(os.pathsep) if r.strip()],
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg

    def resolved_queue(self) -> str:
        return self.queue or default_queue(self.tracking_uri)

    @property
    def watches_all(self) -> bool:
        return "*" in self.models

    def watches(self, model_name: str) -> bool | None:
        """True for a model named by --models (or all with *), None when only the registered model's
        opt-in tag can tell (see jobs.is_watched)."""
        return True if (self.watches_all or model_name in self.models) else None

    def validate(self, *, need_secret: bool = False) -> "HookConfig":
        if need_secret and not self.secret:
            raise ValueError("no webhook secret: pass --secret or set MLFLOW_UNLEARN_HOOK_SECRET "
                             "(the same value `mlflow-unlearn hook install` gives the MLflow webhook)")
        if need_secret:
            check_secret(self.secret)
        self.budget = parse_budget(self.budget, flag="--budget")
        if self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")
        if self.worker_type not in ("thread", "process"):
            raise ValueError(f"--worker-type must be thread or process, got {self.worker_type!r}")
        from ..gate import GateThresholds

        GateThresholds.from_dict(self.gate)  # raises GateError naming the bad threshold
        self.escalation = tuple(self.escalation)
        bad = [e for e in self.escalation if e not in ESCALATIONS]
        if bad or len(set(self.escalation)) != len(self.escalation):
            raise ValueError(f"--escalate {','.join(self.escalation)!r}: give stages from {', '.join(ESCALATIONS)} at most "
                             f"once each, in order (or none)")
        if self.retrain_after_fraction is not None and not 0 < self.retrain_after_fraction <= 1:
            raise ValueError(f"--retrain-after-fraction must be a fraction in (0, 1] of the train set, got "
                             f"{self.retrain_after_fraction!r}")
        if self.retrain_after_requests is not None and self.retrain_after_requests < 1:
            raise ValueError(f"--retrain-after-requests must be 1 or more, got {self.retrain_after_requests!r}")
        if isinstance(self.max_body_bytes, bool) or not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 1024:
            raise ValueError(f"--max-body-bytes must be a whole number of bytes >= 1024 (MLflow's deliveries are a few "
                             f"KiB), got {self.max_body_bytes!r}")
        if self.reconcile_interval_s < 0:
            raise ValueError(f"--reconcile-interval must be 0 (off) or more seconds, got {self.reconcile_interval_s}")
        return self


ESCALATIONS = ("stronger", "retrain")

MIN_SECRET_BYTES = 16  # an HMAC key anyone can guess in a few tries is no key (issue 11)
MIN_SECRET_DISTINCT = 8  # 16 spaces or "aaaa..." are 16 bytes and no key either


def check_secret(secret: str | None) -> None:
    """A webhook secret must be at least MIN_SECRET_BYTES bytes of at least MIN_SECRET_DISTINCT
    distinct characters, with no whitespace at either end (a copy-paste slip that `hook install`
    and `hook serve` would not agree on); the message counts, never quotes, and says how to make one."""
    text = secret or ""
    n, distinct = len(text.encode()), len(set(text))
    if n < MIN_SECRET_BYTES or distinct < MIN_SECRET_DISTINCT or text != text.strip():
        why = (f"{n} byte(s)" if n < MIN_SECRET_BYTES else
               "whitespace at an end" if text != text.strip() else f"only {distinct} distinct character(s)")
        raise ValueError(f"the webhook secret is too weak ({why}); use at least {MIN_SECRET_BYTES} bytes of at least "
                         f"{MIN_SECRET_DISTINCT} distinct characters, no whitespace at the ends (for example "
                         f"`python -c \"import secrets; print(secrets.token_hex(16))\"`), the same value for "
                         f"`hook serve` and `hook install`")


"""Unlearning jobs: huey tasks on a SQLite file (one machine) or Redis (many machines), with the
registry as the ledger (see ledger.py), so any worker can resume any job.

A job for (model name, version):

1. reads the version's `mlflow_unlearn.forget_set` tag and downloads the forget set; an empty tag
   or a request already answered (status done/failed/rejected for this tag value) ends it; earlier
   requests still waiting on the version (`ledger.carried_requests`: the merged list, a queued or
   running one a newer tag replaced) are read too and the job unlearns the union (forget digest =
   the union's), answering each on its own request run;
2. takes huey's lock on the job key (name, version, forget digest); a lock held by a live worker
   ends it (that worker runs the job); a lock whose owner process is gone is cleared and taken;
3. looks for an existing result version (tags source_version + forget_digest): found, the request
   is done with it (a duplicate attach, a replayed event, a crash after registering);
4. sets status running, loads the source version, validates the ids against its training manifest
   (a bad request ends as status rejected with the reason in mlflow_unlearn.error), and picks the
   plan: `request.resolve_plan(ctx, "auto", on_unfit="default")`: the registered model's searched plan
   (tag mlflow_unlearn.searched_plan) when it fits the forget set's tiers, else `rum.default_plan`;
5. unlearns with RUM (one MLflow run, role rum), evaluates the source and the unlearned model
   without a retrain (forget/retain/test accuracy, MIA efficacy and AUC against test, their change,
   disagreement with the source) plus ToW etc. when a cached retrained reference exists;
6. logs the evidence report, registers the result version with all its tags in one call, keeps the
   lowest version if a racing worker registered one too, and marks the request done.
Any other exception ends as status failed with the error.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from . import acceptance, evidence, ledger
from .. import evaluation, references, request, tracking
from .attach import read_request
from .._registry import UnknownComponentError
from ..algorithms import HyperparameterError
from .config import HookConfig, is_redis
from ..data import DatasetError
from ..forget_sets import ForgetSetError
from ..memorization import MemorizationError
from ..models import ModelError
from ..rum import PlanError
from ..tracking import TAG, MissingArtifactError, ModelURIError, Role, Tag

log = logging.getLogger("mlflow_unlearn.hook")

TASK_NAME = "mlflow_unlearn.hook.run_job"
HUEY_NAME = "mlflow-unlearn-hook"
HEADLINE_TAG_KEYS = ("forget/acc", "retain/acc", "test/acc", "mia/efficacy", "mia/auc", "tow", "tow_mia")

_STATE: dict = {"config": None, "huey": None, "task": None}


def _rejections() -> tuple[type[BaseException], ...]:
    return (ForgetSetError, MissingArtifactError, ModelURIError, ModelError, PlanError, DatasetError, MemorizationError,
            HyperparameterError, UnknownComponentError)


# --------------------------------------------------------------------------------------------------
# The queue


def make_huey(queue: str, *, name: str = HUEY_NAME):
    """A huey instance on `queue`: a redis:// URL (RedisExpireHuey, so locks can carry a TTL) or a
    SQLite file path (`sqlite:///path` accepted)."""
    import huey

    if is_redis(queue):
        return huey.RedisExpireHuey(name, url=queue, results=False)
    path = queue[len("sqlite:///"):] if queue.startswith("sqlite:///") else queue
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return huey.SqliteHuey(name, filename=path, results=False)


def configure(config: HookConfig):
    """Create the huey instance for `config`, register the job task on it, and make `config` the one
    jobs in this process (and in forked worker processes) run with. Returns the huey instance."""
    config.validate()
    if config.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = config.tracking_uri
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    h = make_huey(config.resolved_queue())
    task = h.task(name=TASK_NAME, retries=0)(_job_task)

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
    cfg = current_config()
    return int(cfg.lock_ttl_s) if is_redis(cfg.resolved_queue()) else None


# Job locks: huey's TaskLock keys (`<queue name>.lock.<job key>`, taken with put_if_empty, released
# with TaskLock.clear), holding the owner's identity instead of huey's placeholder value, so a lock
# whose process died (SIGKILL, power loss) is recognised and cleared; on Redis it also expires.
# A pid alone is not an identity: containers reuse pids routinely (a restarted worker is often pid 7
# again), so the owner is (host, boot id, pid, process start time): the lock is live only while a
# process with that pid *and that start time* runs on the same boot of the same host.

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


def _lock(key: str):
    return current_huey().lock_task(key, ttl=lock_ttl())


def acquire_job_lock(key: str):
    """Take the job lock (clearing it first if its owner is dead); raises JobLocked."""
    h = current_huey()
    lock = _lock(key)
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
    lock = _lock(key)
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


def queued_targets() -> set[tuple[str, str]]:
    """(name, version) of the jobs waiting in the queue."""
    out = set()
    for task in current_huey().pending():
        if getattr(task, "name", "") == TASK_NAME or TASK_NAME in str(type(task)):
            args = tuple(task.args or ())
            if len(args) == 2:
                out.add((str(args[0]), str(args[1])))
    return out


def _job_task(name: str, version: str) -> str:
    outcome = run_job(name, version)
    log.info("job %s/%s: %s", name, version, outcome)
    return outcome


def make_consumer(huey, config: HookConfig):
    """A huey consumer with `config.workers` workers of `config.worker_type` (None with 0 workers)."""
    from huey.consumer import Consumer

    if config.workers <= 0:
        return None
    return Consumer(huey, workers=config.workers, worker_type=config.worker_type, periodic=False,
                    initial_delay=0.05, max_delay=1.0, backoff=1.15, check_worker_health=True)


# --------------------------------------------------------------------------------------------------
# Submitting a request (webhook, reconciler)


def is_watched(client: MlflowClient, name: str, *, cache: dict | None = None) -> bool:
    """Whether the hook acts on registered model `name`: named by --models (or --models '*'), or opted
    in by its tag mlflow_unlearn.hook_watch=true. `cache` (name -> bool) spares a scan repeated reads."""
    if current_config().watches(name):
        return True
    if cache is not None and name in cache:
        return cache[name]
    try:
        tags = client.get_registered_model(name).tags or {}
        watched = str(tags.get(Tag.HOOK_WATCH, "")).strip().lower() == "true"
    except MlflowException:
        watched = False
    if cache is not None:
        cache[name] = watched
    return watched


NOT_WATCHED = ("model not watched: name it with `hook serve --models` (or MLFLOW_UNLEARN_HOOK_MODELS) or tag the "
               f"registered model {Tag.HOOK_WATCH}=true")


def submit(name: str, version, *, force_enqueue: bool = False, client: MlflowClient | None = None,
           enqueued: bool = False) -> str:
    """Queue the request attached to name/version unless it is answered, queued or running already.
    `force_enqueue` (the reconciler) also re-queues a queued or running one (its worker died, or the
    queue lost it); a duplicate job is harmless: it stops at the lock or at the done status.
    `enqueued` (the webhook receiver, which queues the job before it answers): only write the status."""
    client = client or MlflowClient()
    if not is_watched(client, name):
        return f"ignored ({NOT_WATCHED})"

    def queue(outcome: str) -> str:
        if not enqueued:
            enqueue(name, state.version)
        return outcome

    try:
        state = ledger.read_state(client, name, version)
    except MlflowException as exc:
        return f"ignored ({exc.error_code}: no such version)"
    if ledger.FORGET_SET_TAG not in state.tags:
        return "ignored (no forget set attached)"
    if not state.request:  # a tag of only whitespace: the job answers it (rejected, with the reason)
        if state.status == ledger.REJECTED and state.handled_request == "":
            return "already rejected"
        return queue("queued (an empty tag, to be rejected)")
    if state.is_current:
        if state.status in ledger.TERMINAL:
            return f"already {state.status}"
        if state.status in (ledger.QUEUED, ledger.RUNNING) and not force_enqueue:
            return f"already {state.status}"
        return queue(f"re-queued ({state.status or 'no status'})")
    # A new request: status first, then the request it refers to (see ledger: a crash in between
    # leaves a state the reconciler re-queues, never one that looks answered).
    # Requests replaced before they were answered (set by hand, so `attach` did not merge them) are
    # carried into this one's job: one new version answers them all (see ledger.carried_requests).
    outcome = "queued"
    carried = ledger.carried_requests(state)
    try:
        merged = ledger.merged_tag_value(carried)
    except ValueError as exc:
        log.error("%s/%s: %s", name, state.version, exc)
        merged, outcome = state.tags.get(ledger.MERGED_TAG), f"queued (not merged: {exc})"
    ledger.set_tags(client, name, state.version, {ledger.STATUS_TAG: ledger.QUEUED})
    tags = {ledger.JOB_REQUEST_TAG: state.request, ledger.QUEUED_AT_TAG: ledger.now(),
            ledger.JOB_DIGEST_TAG: ledger.digest_from_uri(state.request), ledger.MERGED_TAG: merged}
    if not enqueued:  # the job is not in the queue yet, so it cannot have started: clear the last answer
        tags.update({ledger.RESULT_VERSION_TAG: None, ledger.ERROR_TAG: None, ledger.STARTED_AT_TAG: None,
                     ledger.FINISHED_AT_TAG: None})
    # With `enqueued` (the receiver queued the job before answering) a worker may already have started
    # it and written started_at: never clear that (the job clears the last answer itself when it starts).
    ledger.set_tags(client, name, state.version, tags)
    if enqueued:
        _keep_a_started_jobs_status(client, name, state)
    return queue(outcome + (f", with {len(carried)} earlier request(s) merged" if carried and outcome == "queued" else ""))


def _keep_a_started_jobs_status(client: MlflowClient, name: str, before: ledger.VersionState) -> None:
    """The receiver writes `queued` after the job is in the queue, so a worker may have started the
    job between the receiver's read and its write (MLflow tags have no compare-and-set). A
    `started_at` or `finished_at` that changed since that read is the job's: put its status back
    (`running`), or, if it already finished, queue it once more: the re-run finds its answer (the
    registered result, or the same rejection) and writes the terminal status again."""
    after = ledger.read_state(client, name, before.version)
    if after.status != ledger.QUEUED:
        return
    changed = lambda tag: after.tags.get(tag) is not None and after.tags.get(tag) != before.tags.get(tag)
    if changed(ledger.FINISHED_AT_TAG):
        enqueue(name, before.version)
    elif changed(ledger.STARTED_AT_TAG):
        ledger.set_tags(client, name, before.version, {ledger.STATUS_TAG: ledger.RUNNING})


# --------------------------------------------------------------------------------------------------
# The job


@dataclass
class _Job:
    client: MlflowClient
    name: str
    version: str
    uri: str
    t0: float
    merged: tuple[str, ...] = ()  # earlier requests on this version this job also answers (readable ones)
    refused: tuple[tuple[str, str], ...] = ()  # (uri, reason) of carried requests that could not be read

    def still_current(self) -> bool:
        try:
            return ledger.read_state(self.client, self.name, self.version).request == self.uri
        except MlflowException:
            return False

    def finish(self, status: str, *, result: str | None = None, error: str | None = None, digest: str | None = None,
               note: str | None = None) -> str:
        """Write a final status, unless a newer request replaced this one meanwhile (its own job answers it)."""
        if not self.still_current():
            return f"{status} (superseded by a newer request; tags left to its job)"
        own_refusal = dict(self.refused).get(self.uri)
        if own_refusal and status == ledger.DONE and note is None:
            note = f"the forget set attached now was refused ({own_refusal}); this answers the merged requests"
        tags = {ledger.JOB_DIGEST_TAG: digest, ledger.FINISHED_AT_TAG: ledger.now(),
                ledger.RESULT_VERSION_TAG: result, ledger.ERROR_TAG: error, ledger.NOTE_TAG: note}
        if digest is None:
            tags.pop(ledger.JOB_DIGEST_TAG)
        if self.merged or self.refused:  # every carried request is answered below, with this outcome
            tags[ledger.MERGED_TAG] = None
        ledger.set_tags(self.client, self.name, self.version, tags)
        ledger.set_tags(self.client, self.name, self.version, {ledger.STATUS_TAG: status, ledger.JOB_REQUEST_TAG: self.uri})
        outcome = status + (f" -> version {result}" if result else "") + (f": {error}" if error else "")
        self.answer_requests(outcome)
        return outcome + (f" (answering {len(self.merged)} merged request(s) too)" if self.merged else "")

    def answer_requests(self, outcome: str) -> None:
        """Tag each request's run with its answer: a merged request has no status tag of its own."""
        for uri in self.all_requests():
            ledger.answer_request_run(self.client, uri, f"{self.name}/{self.version}: {outcome}")
        for uri, reason in self.refused:
            ledger.answer_request_run(self.client, uri, f"{self.name}/{self.version}: rejected: {reason}")

    def all_requests(self) -> list[str]:
        """The requests this job unlearns (the one attached now unless it was refused, then the merged ones)."""
        refused = {u for u, _ in self.refused}
        return [u for u in (self.uri, *self.merged) if u not in refused]


def run_job(name: str, version) -> str:
    """Answer the request attached to name/version (see the module doc); returns what happened."""
    cfg = current_config()
    tracking.connect(cfg.tracking_uri)
    client = MlflowClient()
    if not is_watched(client, name):
        return f"skipped: {NOT_WATCHED}"
    try:
        state = ledger.read_state(client, name, version)
    except MlflowException as exc:
        return f"skipped: {exc.message}"
    if ledger.FORGET_SET_TAG not in state.tags:
        return "skipped: no forget set attached"
    if not state.request:  # a tag of only whitespace is a request too: answer it, or it never gets a status
        if state.status == ledger.REJECTED and state.handled_request == "":
            return "skipped: already rejected"
        blank = _Job(client, state.name, state.version, "", time.perf_counter())
        return blank.finish(ledger.REJECTED, error="the forget-set tag is empty (or only whitespace); attach a forget "
                                                   "set with `mlflow-unlearn attach --forget <file or spec>`")
    if state.is_current and state.status in ledger.TERMINAL:
        return f"skipped: already {state.status}"
    job = _Job(client, state.name, state.version, state.request, time.perf_counter())
    try:  # every artifact is downloaded, parsed and hashed once, here
        req = _merge_carried(job, ledger.carried_requests(state))
    except ForgetSetError as exc:
        return job.finish(ledger.REJECTED, error=_message(exc))
    digest = req.digest
    try:
        lock = acquire_job_lock(ledger.job_key(job.name, job.version, digest))
    except JobLocked:
        return "skipped: another worker holds the job lock"
    try:
        return _run_locked(job, cfg, req)
    finally:
        lock.clear()


def _read(uri: str):
    """read_request, with every way a tag's artifact can be unusable as a ForgetSetError (repeats
    checked here: a merged job's union would hide them)."""
    import numpy as np

    try:
        req = read_request(uri)
    except _rejections() as exc:
        raise ForgetSetError(_message(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ForgetSetError(f"the forget set {uri[:200]!r} does not hold integer ids: {_message(exc)}") from None
    if len(req.ids) == 0:
        raise ForgetSetError(f"the forget set {uri[:200]!r} is empty (no ids); attach at least one training-set id")
    uniq, counts = np.unique(req.ids, return_counts=True)
    if (counts > 1).any():
        raise ForgetSetError(f"the forget set {uri[:200]!r} repeats ids {uniq[counts > 1][:10].tolist()}; give each id once")
    return req


def _merge_carried(job: _Job, carried: list[str]):
    """The request attached now plus the earlier ones carried with it (ledger.carried_requests), read
    once: one job unlearns the union, keyed by the union's digest. A request that cannot be read is
    answered `rejected` on its own request run and left out; it does not sink the others. Raises
    ForgetSetError (the reason for the request attached now) when none can be read."""
    import numpy as np

    from ..forget_sets import forget_digest
    from .attach import RequestIds

    try:
        own = _read(job.uri)
    except ForgetSetError as exc:
        if not carried:
            raise
        own, job.refused = None, ((job.uri, _message(exc)),)
    merged, ids = [], [] if own is None else [np.asarray(own.ids)]
    for uri in carried:
        try:
            ids.append(np.asarray(_read(uri).ids))
            merged.append(uri)
        except ForgetSetError as exc:
            job.refused += ((uri, _message(exc)),)
    job.merged = tuple(merged)
    if own is not None and not carried:
        return own
    if not ids:
        raise ForgetSetError(job.refused[0][1])
    union = np.unique(np.concatenate(ids))
    return RequestIds(union, forget_digest(union), job.uri)


def _run_locked(job: _Job, cfg: HookConfig, req) -> str:
    digest = req.digest
    state = ledger.read_state(job.client, job.name, job.version)
    if state.request != job.uri:
        return "skipped: a newer request replaced this one"
    if state.is_current and state.status in ledger.TERMINAL:
        return f"skipped: already {state.status}"
    existing = ledger.find_results(job.client, job.name, job.version, digest)
    if existing:
        repair_result(job, existing[0], digest)
        promote(job, existing[0])
        return job.finish(ledger.DONE, result=existing[0], digest=digest)
    _end_orphan_runs(job, digest)
    # started_at before the status: a receiver's late `queued` write then always sees a started_at it
    # did not read, and puts `running` back (_keep_a_started_jobs_status)
    ledger.set_tags(job.client, job.name, job.version, {
        ledger.JOB_REQUEST_TAG: job.uri, ledger.JOB_DIGEST_TAG: digest, ledger.STARTED_AT_TAG: ledger.now(),
        ledger.ERROR_TAG: None, ledger.RESULT_VERSION_TAG: None, ledger.FINISHED_AT_TAG: None})
    ledger.set_tags(job.client, job.name, job.version, {ledger.STATUS_TAG: ledger.RUNNING})
    try:
        return _unlearn_and_register(job, cfg, req)
    except request.AlreadyForgotten as exc:  # the source already lacks every id: it is the answer
        return job.finish(ledger.DONE, result=exc.source_uri.rsplit("/", 1)[1], digest=digest, note=_message(exc))
    except _rejections() as exc:
        return job.finish(ledger.REJECTED, error=_message(exc), digest=digest)
    except Exception as exc:
        log.error("job %s/%s failed:\n%s", job.name, job.version, traceback.format_exc())
        return job.finish(ledger.FAILED, error=f"{type(exc).__name__}: {_message(exc)}", digest=digest)


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text[:ledger.MAX_TAG_VALUE]


def _end_orphan_runs(job: _Job, digest: str) -> None:
    """Runs of an earlier attempt killed mid-job stay RUNNING forever; mark them KILLED."""
    try:
        exp = job.client.get_experiment_by_name(current_config().experiment)
        if exp is None:
            return
        runs = job.client.search_runs([exp.experiment_id], filter_string=(  # the rum run and its tier runs
            f"tags.`{TAG}source_model` = '{job.name}/{job.version}' and "
            f"tags.`{TAG}forget_digest` = '{digest}' and attributes.status = 'RUNNING'"))
        for run in runs:
            job.client.set_terminated(run.info.run_id, "KILLED")
    except MlflowException:
        pass


def _unlearn_and_register(job: _Job, cfg: HookConfig, req) -> str:
    import json

    import numpy as np


    digest = req.digest
    source_version = follow_alias(job)  # the tagged version, or the one its alias names now
    # the ids read once by read_request, validated here against the source's training manifest
    ctx = request.prepare(f"models:/{job.name}/{source_version}", req.ids, seed=cfg.seed, device=cfg.device)
    ctx.forget.source = req.uri  # what was requested, not "ids"
    # The hook's policy: a registered plan that does not fit this request's tiers falls back to the
    # default plan (the reason goes into plan_source and the evidence) instead of failing the request.
    resolved = request.resolve_plan(ctx, "auto", on_unfit="default")
    plan, plan_source = resolved.plan, resolved.source
    source_model = ctx.source.model.to(ctx.data.device)
    before = evaluation.evaluation_metrics(ctx, source_model, None)

    tracking.use_experiment(cfg.experiment)
    request_run = ledger.read_state(job.client, job.name, job.version).tags.get(ledger.REQUEST_RUN_TAG)
    request_tags = {ledger.REQUEST_TAG: job.uri[:ledger.MAX_TAG_VALUE],
                    **({ledger.REQUEST_RUN_TAG: request_run} if request_run else {})}  # job run -> request run
    gated = acceptance.gated_unlearning(job, cfg, ctx, resolved, before, request_tags,
                                        run_name=f"hook-{job.name}-v{job.version}-{digest[:8]}")
    result, after, plan, plan_source = gated.result, gated.after, gated.resolved.plan, gated.resolved.source
    run_id = result.run_id
    against_source = {k: v for k, v in evaluation.evaluation_metrics(ctx, result.model, source_model).items()
                      if k.startswith("disagree/")}
    reference, reference_run, reference_tier_acc = None, None, None
    ref = references.cached_reference(ctx)
    if ref is not None:
        reference = evaluation.evaluation_metrics(ctx, result.model, ref.model)
        reference_run = ref.run_id
        reference_tier_acc = evaluation.forget_tier_accuracy(ctx, ref.model)
    train_s = ctx.source.model_spec.get("train_seconds")
    times = {"unlearn_s": result.seconds, "job_s": time.perf_counter() - job.t0, "original_train_s": train_s,
             "fraction_of_original_training": (result.seconds / train_s) if train_s else None}
    if ref is not None and np.isfinite(ref.seconds) and ref.seconds:
        times["retrain_s"] = ref.seconds
        times["fraction_of_retrain"] = result.seconds / ref.seconds

    state = ledger.read_state(job.client, job.name, job.version)
    report_args = dict(
        request={"model": job.name, "version": job.version, "forget_set": job.uri,
                 "request_run": state.tags.get(ledger.REQUEST_RUN_TAG), "queued_at": state.tags.get(ledger.QUEUED_AT_TAG),
                 "started_at": state.tags.get(ledger.STARTED_AT_TAG)},
        forget={"digest": digest, "count": len(ctx.forget), "tier_histogram": ctx.histogram,
                "tiers": {k: int(len(v)) for k, v in ctx.tiers.items()},
                "already_forgotten": int(len(ctx.already_forgotten)),
                "already_forgotten_ids": ctx.already_forgotten[:100].tolist(),
                # the requests this job answers: the one attached now and those merged into it
                "requests": job.all_requests(), "refused_requests": [{"uri": u, "reason": r} for u, r in job.refused]},
        lineage={k: v for k, v in ctx.lineage_after(run_id, "rum").to_dict().items() if k != "forgotten"},
        gate=gated.evidence(), plan=plan.to_dict(), plan_source=plan_source, before=before, after=after,
        against_source=against_source,
        reference=reference, reference_run=reference_run, times=times, reference_tier_acc=reference_tier_acc)
    report = evidence.build_report(**report_args, result={"version": None, "run_id": run_id})
    _log_report(job.client, run_id, report)
    _log_job_metrics(job.client, run_id, before, after, against_source, reference, times)

    # Register, exactly once per job key (see ledger.py).
    existing = ledger.find_results(job.client, job.name, job.version, digest)
    if existing:
        job.client.set_tag(run_id, Tag.SUPERSEDED_BY, f"{job.name}/{existing[0]}")
        return job.finish(ledger.DONE, result=existing[0], digest=digest)
    headline = {k: (reference or after).get(k) for k in HEADLINE_TAG_KEYS}
    metrics_json = json.dumps({"after": _finite(after), "before": _finite(before),
                               **({"against_reference": _finite(reference)} if reference else {})})
    tags = {**ctx.tags(Role.UNLEARN), Tag.ALGORITHM: gated.algorithm, ledger.SOURCE_VERSION_TAG: ctx.source.version,
            Tag.REQUEST_VERSION: job.version,
            Tag.GATE: gated.path, Tag.GATE_CHECKS: gated.checks_tag(),
            Tag.RUN_ID: run_id, Tag.N_FORGET: str(len(ctx.forget)),
            Tag.APPLIED_PLAN: tracking.plan_tag_value(plan.to_dict()), Tag.PLAN_SOURCE: plan_source[:500],
            ledger.METRICS_TAG: metrics_json[:ledger.MAX_TAG_VALUE], ledger.REQUEST_TAG: job.uri[:ledger.MAX_TAG_VALUE],
            ledger.EVIDENCE_TAG: f"runs:/{run_id}/evidence/report.json",
            **({ledger.MERGED_TAG: _merged_list_tag(job.all_requests())} if job.merged else {}),
            **{f"{TAG}metric.{k}": f"{v:.4f}" for k, v in headline.items() if v is not None and np.isfinite(v)}}
    logging.getLogger("mlflow.tracking._model_registry.fluent").setLevel(logging.ERROR)
    model_uri = f"models:/{tracking.run_model_id(run_id)}"
    mv = tracking.register_version(model_uri, job.name, tags)  # one call: created with its tags (described below)
    mine = str(mv.version)
    winners = ledger.find_results(job.client, job.name, job.version, digest)
    keep = winners[0] if winners else mine
    if keep != mine:  # a racing worker registered first: keep its version, drop ours
        job.client.delete_model_version(job.name, mine)
        job.client.set_tag(run_id, Tag.SUPERSEDED_BY, f"{job.name}/{keep}")
        return job.finish(ledger.DONE, result=keep, digest=digest)
    job.client.set_tag(run_id, Tag.REGISTERED_VERSION, f"{job.name}/{mine}")
    _describe(job, mine, ctx, plan, headline, run_id)
    promote(job, mine)
    report["result"]["version"] = mine
    _log_report(job.client, run_id, report)
    return job.finish(ledger.DONE, result=mine, digest=digest)


def _merged_list_tag(uris: list[str]) -> str:
    try:
        return ledger.merged_tag_value(uris)
    except ValueError:  # too many to list in a tag: the evidence (forget.requests) lists them all
        return f"{len(uris)} requests; see the evidence, forget.requests"


def follow_alias(job: _Job) -> str:
    """The version a request applies to: the tagged one, or (tag mlflow_unlearn.follow_alias) the one
    that alias names now, so a request attached to the serving alias accumulates on what is served
    when the job runs, not when it was attached."""
    alias = ledger.read_state(job.client, job.name, job.version).tags.get(Tag.FOLLOW_ALIAS)
    if not alias:
        return job.version
    try:
        return str(job.client.get_model_version_by_alias(job.name, alias).version)
    except MlflowException:
        raise ForgetSetError(f"the request follows alias {alias!r}, which registered model {job.name!r} no longer has; "
                             f"set the alias again, or attach to a version") from None


def promote(job: _Job, result: str) -> str | None:
    """With tags follow_alias + promote=true: move the alias to `result` and tag the version it leaves
    (which still contains the forgotten examples). Idempotent (a re-run finds the alias moved); an
    alias someone moved elsewhere meanwhile is left alone. Returns what was done."""
    tags = ledger.read_state(job.client, job.name, job.version).tags
    alias = tags.get(Tag.FOLLOW_ALIAS)
    if not alias or tags.get(Tag.PROMOTE) != "true":
        return None
    try:
        mv = job.client.get_model_version(job.name, result)
        source = (mv.tags or {}).get(Tag.SOURCE_VERSION)
        try:
            current = str(job.client.get_model_version_by_alias(job.name, alias).version)
        except MlflowException:
            current = None
        if current == str(result):
            return "already promoted"
        if current not in (None, source):
            log.warning("job %s/%s: alias %r moved to version %s meanwhile; not moving it to %s", job.name, job.version,
                        alias, current, result)
            return f"alias {alias} left on version {current}"
        job.client.set_registered_model_alias(job.name, alias, str(result))
        if source:
            job.client.set_model_version_tag(job.name, source, Tag.STILL_CONTAINS, (
                f"{(mv.tags or {}).get(Tag.N_FORGET, '?')} examples forgotten in version {result} (forget digest "
                f"{(mv.tags or {}).get(Tag.FORGET_DIGEST, '')[:12]}...): alias {alias} moved there"))
        return f"alias {alias} -> version {result}"
    except MlflowException as exc:
        log.warning("job %s/%s: could not promote alias %r to %s: %s", job.name, job.version, alias, result, exc)
        return None


def repair_result(job: _Job, version: str, digest: str) -> list[str]:
    """A worker killed between registering a result and finishing leaves the version registered (with
    its tags: it is created in one call) but the rest unwritten: the job run's registered_version tag,
    the evidence report (still `result.version: null`), the description and the `unlearned` alias.
    The re-run that finds the version writes what is missing; returns what it repaired. Only a version
    whose run is this job's (source model and forget digest match) is touched, and the report is JSON
    (never unpickled)."""
    import json

    repaired = []
    try:
        mv = job.client.get_model_version(job.name, version)
        run_id = (mv.tags or {}).get(Tag.RUN_ID)
        if not run_id:
            return repaired
        run_tags = job.client.get_run(run_id).data.tags
        made_from = (mv.tags or {}).get(Tag.SOURCE_VERSION, job.version)  # another version when an alias was followed
        if (run_tags.get(Tag.SOURCE_MODEL) != f"{job.name}/{made_from}" or run_tags.get(Tag.FORGET_DIGEST) != digest
                or run_tags.get(Tag.SUPERSEDED_BY)):
            return repaired
        if run_tags.get(Tag.REGISTERED_VERSION) != f"{job.name}/{version}":
            job.client.set_tag(run_id, Tag.REGISTERED_VERSION, f"{job.name}/{version}")
            repaired.append("run tag registered_version")
        try:
            import mlflow

            text = mlflow.artifacts.load_text(f"runs:/{run_id}/evidence/report.json")
            report = json.loads(text) if len(text) < 5_000_000 else None
        except (MlflowException, OSError, ValueError):
            report = None
        if isinstance(report, dict) and isinstance(report.get("result"), dict) and report["result"].get("version") is None:
            report["result"]["version"] = version
            _log_report(job.client, run_id, report)
            repaired.append("evidence result.version")
        if not mv.description:
            tags = mv.tags or {}
            metrics = ", ".join(f"{k[len(TAG + 'metric.'):]} {v}" for k, v in sorted(tags.items())
                                if k.startswith(TAG + "metric."))
            text = (f"Version {job.version} with {tags.get(Tag.N_FORGET, '?')} training examples unlearned (forget digest "
                    f"{digest[:12]}...) by the registry hook: RUM. {metrics}. Evidence: "
                    f"runs:/{run_id}/evidence/report.json (run {run_id}). Finished by a re-run after an interrupted job.")
            try:  # the alias goes to the newest result: leave it where a later request moved it
                newer = int(job.client.get_model_version_by_alias(job.name, "unlearned").version) > int(version)
            except MlflowException:
                newer = False
            tracking.describe_version(job.name, version, text, () if newer else ("unlearned",))
            repaired.append("description" if newer else "description and alias")
    except MlflowException as exc:  # cosmetic next to the ledger: the request is still answered
        log.warning("could not repair %s/%s: %s", job.name, version, exc)
    if repaired:
        log.warning("job %s/%s: result version %s was registered by an interrupted run; repaired %s", job.name,
                    job.version, version, ", ".join(repaired))
    return repaired


def _describe(job, version: str, ctx, plan, headline: dict, run_id: str) -> None:
    """The result version's description (what was forgotten, how, headline metrics, the evidence)
    and the `unlearned` alias. Cosmetic next to the tags the ledger relies on: a failure is logged,
    not raised, so a registered result is never lost over its description."""
    import numpy as np

    metrics = ", ".join(f"{k} {v:.4f}" for k, v in headline.items() if v is not None and np.isfinite(v))
    text = (f"Version {job.version} with {len(ctx.forget)} training examples unlearned (forget digest "
            f"{ctx.forget.digest[:12]}..., per memorisation tier {ctx.histogram}) by the registry hook: RUM, plan "
            f"{plan.to_compact()[:300]}. {metrics}. Evidence: runs:/{run_id}/evidence/report.json (run {run_id}).")
    try:
        tracking.describe_version(job.name, version, text, ("unlearned",))
    except MlflowException as exc:
        logging.getLogger(__name__).warning("could not describe %s/%s: %s", job.name, version, exc)


def _finite(d: dict | None) -> dict:
    import math

    return {k: round(float(v), 6) for k, v in (d or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _log_report(client: MlflowClient, run_id: str, report: dict) -> None:
    client.log_dict(run_id, report, "evidence/report.json")
    client.log_text(run_id, evidence.to_markdown(report), "evidence/report.md")
    client.log_text(run_id, evidence.to_html(report), "evidence/report.html")
    fig = evidence.tier_figure(report)
    if fig is not None:
        client.log_figure(run_id, fig, "evidence/tiers.png")


def _log_job_metrics(client, run_id, before, after, against_source, reference, times) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = {**after, **{f"before/{k}": v for k, v in before.items()},
               **{f"change/{k}": after[k] - before[k] for k in after if k in before and not k.startswith("tier/")},
               **{f"vs_source/{k}": v for k, v in against_source.items()},
               **({k: v for k, v in reference.items()} if reference else {}),
               **{f"time/{k}": v for k, v in times.items() if k != "unlearn_s"}}
    clean = _finite(metrics)
    items = [Metric(k, v, ts, 0) for k, v in clean.items()]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])

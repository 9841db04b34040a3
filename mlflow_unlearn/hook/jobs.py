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
   (tag mlflow_unlearn.searched_plan) when it fits the forget set's tiers, else `plans.default_plan`;
5. unlearns with RUM (one MLflow run, role rum), evaluates the source and the unlearned model
   without a retrain (forget/retain/test accuracy, MIA efficacy and AUC against test, their change,
   disagreement with the source) plus ToW etc. when a cached retrained reference exists;
6. logs the evidence report, registers the result version with all its tags in one call, keeps the
   lowest version if a racing worker registered one too, and marks the request done.
Any other exception ends as status failed with the error.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from . import acceptance, evidence, job_queue, ledger, promotion, repair, results
from .job_locks import JobLocked, acquire_job_lock
from .job_queue import current_config, enqueue
from .. import evaluation, references, request, steps, tracking
from .attach import read_request
from .._registry import UnknownComponentError
from ..algorithms import HyperparameterError
from .config import HookConfig
from ..data import DatasetError
from ..forget_sets import ForgetSetError
from ..memorization import MemorizationError
from ..ids import check_no_repeats
from ..models import ModelError
from ..metrics import shown_keys
from ..plans import PlanError
from ..tracking import MissingArtifactError, ModelURIError
from ..tags import TAG, Role, Tag, plan_tag_value

log = logging.getLogger("mlflow_unlearn.hook")



def _rejections() -> tuple[type[BaseException], ...]:
    return (ForgetSetError, MissingArtifactError, ModelURIError, ModelError, PlanError, DatasetError, MemorizationError,
            HyperparameterError, UnknownComponentError)


def configure(config: HookConfig):
    """Make `config` this process's hook (job_queue.configure) with `run_job` as the queue's task.
    Returns the huey instance."""
    return job_queue.configure(config, _job_task)


def _job_task(name: str, version: str) -> str:
    outcome = run_job(name, version)
    log.info("job %s/%s: %s", name, version, outcome)
    return outcome


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
    if not enqueued:
        # Clear the last answer BEFORE the status. This job is not queued yet, but the reconciler also
        # re-queues a request whose first job may be finishing right now (a rejection takes no lock):
        # cleared after `queued`, a `rejected` written in between would lose its error tag for good
        # (the re-queued job then sees a terminal status and skips). Cleared first, that job's answer
        # overwrites the clear, and `queued` below makes the re-queued job answer once more.
        ledger.set_tags(client, name, state.version, {ledger.RESULT_VERSION_TAG: None, ledger.ERROR_TAG: None,
                                                      ledger.STARTED_AT_TAG: None, ledger.FINISHED_AT_TAG: None})
    ledger.set_tags(client, name, state.version, {ledger.STATUS_TAG: ledger.QUEUED})
    # With `enqueued` (the receiver queued the job before answering) a worker may already have started
    # it and written started_at: never clear that (the job clears the last answer itself when it starts).
    ledger.set_tags(client, name, state.version, {
        ledger.JOB_REQUEST_TAG: ledger.request_key(state.request), ledger.QUEUED_AT_TAG: ledger.now(),
        ledger.JOB_DIGEST_TAG: ledger.digest_from_uri(state.request), ledger.MERGED_TAG: merged})
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
        # The job may have finished between that read and this write, and `running` then stands over
        # its answer (with reconciling off, for good). It writes finished_at before its status, so a
        # finished_at this re-read sees and `after` did not means exactly that: queue it once more.
        finished = ledger.read_state(client, name, before.version).tags.get(ledger.FINISHED_AT_TAG)
        if finished is not None and finished != after.tags.get(ledger.FINISHED_AT_TAG):
            enqueue(name, before.version)


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
        ledger.set_tags(self.client, self.name, self.version, {ledger.STATUS_TAG: status, ledger.JOB_REQUEST_TAG: ledger.request_key(self.uri)})
        outcome = status + (f" -> version {result}" if result else "") + (f": {error}" if error else "")
        self.answer_requests(outcome)
        return outcome + (f" (answering {len(self.merged)} merged request(s) too)" if self.merged else "")

    def answer_requests(self, outcome: str) -> None:
        """Tag each request's run with its answer: a merged request has no status tag of its own."""
        owner = f"{self.name}/{self.version}"
        for uri in self.all_requests():
            ledger.answer_request_run(self.client, uri, f"{owner}: {outcome}", owner=owner)
        for uri, reason in self.refused:
            ledger.answer_request_run(self.client, uri, f"{owner}: rejected: {reason}", owner=owner)

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
    # every request attached to this version and not answered yet, whatever the tag says now: each is
    # its own run, so concurrent attaches that overwrote each other's tag are all found here
    carried = ledger.carried_requests(state)
    carried += [u for u in ledger.pending_requests(client, state.name, state.version)
                if u != state.request and u not in carried]
    try:  # every artifact is downloaded, parsed and hashed once, here
        req = _merge_carried(job, carried)
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


def _read(uri: str, owner: str | None = None, client: MlflowClient | None = None):
    """read_request, with every way a tag's artifact can be unusable as a ForgetSetError (repeats
    checked here: a merged job's union would hide them). With `owner` (`name/version`): a URI naming
    a request run made for another registered model is refused before it is read (another version of
    the same model may hand its request on, as a version registered with the tag does)."""
    if owner is not None and client is not None:
        other = ledger.request_run_owner(client, uri)
        if other is not None and other.rsplit("/", 1)[0] != owner.rsplit("/", 1)[0]:
            raise ForgetSetError("the forget-set URI names a request made for another registered model; attach the "
                                 "ids to this model with `mlflow-unlearn attach`")

    try:
        req = read_request(uri)
    except _rejections() as exc:
        raise ForgetSetError(_message(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ForgetSetError(f"the forget set does not hold integer ids ({type(exc).__name__})") from None
    if len(req.ids) == 0:
        raise ForgetSetError("the forget set is empty (no ids); attach at least one training-set id")
    check_no_repeats(req.ids, what="the forget set", error=ForgetSetError)  # the range is checked on the union
    return req


def _merge_carried(job: _Job, carried: list[str]):
    """The request attached now plus the earlier ones carried with it (ledger.carried_requests), read
    once: one job unlearns the union, keyed by the union's digest. A request that cannot be read is
    answered `rejected` on its own request run and left out; it does not sink the others. Raises
    ForgetSetError (the reason for the request attached now) when none can be read."""
    import numpy as np

    from ..forget_sets import forget_digest
    from .attach import RequestIds

    owner = f"{job.name}/{job.version}"
    try:
        own = _read(job.uri, owner, job.client)
    except ForgetSetError as exc:
        if not carried:
            raise
        own, job.refused = None, ((job.uri, _message(exc)),)
    merged, ids = [], [] if own is None else [np.asarray(own.ids)]
    for uri in carried:
        try:
            ids.append(np.asarray(_read(uri, owner, job.client).ids))
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
        repair.repair_result(job, existing[0], digest)
        promotion.promote(job, existing[0])
        return job.finish(ledger.DONE, result=existing[0], digest=digest)
    _end_orphan_runs(job, digest)
    # started_at before the status: a receiver's late `queued` write then always sees a started_at it
    # did not read, and puts `running` back (_keep_a_started_jobs_status)
    ledger.set_tags(job.client, job.name, job.version, {
        ledger.JOB_REQUEST_TAG: ledger.request_key(job.uri), ledger.JOB_DIGEST_TAG: digest, ledger.STARTED_AT_TAG: ledger.now(),
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
    source_version = promotion.follow_alias(job)  # the tagged version, or the one its alias names now
    # the ids read once by read_request, validated here against the source's training manifest
    ctx = request.prepare(f"models:/{job.name}/{source_version}", req.ids, seed=cfg.seed, device=cfg.device,
                          data_roots=list(cfg.data_roots),
                          budget=cfg.budget)
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
    # Cost in trainings (example passes / the original's), the number that means the same on every
    # machine; seconds as measured, never divided by a timing taken in another process.
    times = {"unlearn_s": result.seconds, "job_s": time.perf_counter() - job.t0,
             "original_train_s": ctx.source.model_spec.get("train_seconds")}
    cost = {**result.cost, "attempts_train_fraction": gated.attempts_train_fraction}

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
        lineage={k: v for k, v in ctx.lineage_after(run_id, _how(plan, gated.path)).to_dict().items() if k != "forgotten"},
        gate=gated.evidence(), plan=plan.to_dict(), plan_source=plan_source, before=before, after=after,
        against_source=against_source,
        reference=reference, reference_run=reference_run, times=times, reference_tier_acc=reference_tier_acc,
        cost=cost)
    report = evidence.build_report(**report_args, result={"version": None, "run_id": run_id})
    results.log_report(job.client, run_id, report)
    results.log_job_metrics(job.client, run_id, before, after, against_source, reference, times,
                     {"cost/attempts_train_fraction": cost["attempts_train_fraction"]})

    # Register, exactly once per job key (see ledger.py).
    existing = ledger.find_results(job.client, job.name, job.version, digest)
    if existing:
        job.client.set_tag(run_id, Tag.SUPERSEDED_BY, f"{job.name}/{existing[0]}")
        return job.finish(ledger.DONE, result=existing[0], digest=digest)
    headline = {k: (reference or after).get(k) for k in shown_keys()}  # what each metric declares (metrics.Shown)
    metrics_json = json.dumps({"after": results.finite(after), "before": results.finite(before),
                               **({"against_reference": results.finite(reference)} if reference else {})})
    tags = {**ctx.tags(Role.UNLEARN), Tag.ALGORITHM: gated.algorithm, ledger.SOURCE_VERSION_TAG: ctx.source.version,
            Tag.REQUEST_VERSION: job.version,
            Tag.GATE: gated.path, Tag.GATE_CHECKS: gated.checks_tag(),
            Tag.RUN_ID: run_id, Tag.N_FORGET: str(len(ctx.forget)),
            Tag.APPLIED_PLAN: plan_tag_value(plan.to_dict()), Tag.PLAN_SOURCE: plan_source[:500],
            ledger.METRICS_TAG: metrics_json[:ledger.MAX_TAG_VALUE], ledger.REQUEST_TAG: job.uri[:ledger.MAX_TAG_VALUE],
            ledger.EVIDENCE_TAG: f"runs:/{run_id}/evidence/report.json", **steps.cost_tags(result.cost),
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
    results.describe(job, mine, ctx, plan, headline, run_id)
    promotion.promote(job, mine)
    report["result"]["version"] = mine
    results.log_report(job.client, run_id, report)
    return job.finish(ledger.DONE, result=mine, digest=digest)


def _merged_list_tag(uris: list[str]) -> str:
    try:
        return ledger.merged_tag_value(uris)
    except ValueError:  # too many to list in a tag: the evidence (forget.requests) lists them all
        return f"{len(uris)} requests; see the evidence, forget.requests"


def _how(plan, path: str) -> str:
    """What produced the version, as its lineage records it: an exact retrain, a stronger plan than
    the one resolved (the gate failed the first attempt), or the resolved RUM plan."""
    if all(s.algorithm == "retrain" for s in plan.steps):
        return "retrain"
    return "rum (stronger plan: the gate failed the first attempt)" if path == "escalated" else "rum"



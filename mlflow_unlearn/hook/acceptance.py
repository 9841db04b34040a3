"""The acceptance gate inside a hook job (gate.py has the checks): unlearn with the resolved plan,
check the result without a retrain, and on a failure escalate by the configured policy (a stronger
plan, then an exact retrain on retain with the source's recipe). `retrain_policy` says when a
request skips approximate unlearning altogether (`retrain_after_*`). Each attempt is its own run,
tagged with its verdict; `Gated` is what the job registers and what its evidence reports."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from . import ledger
from .. import evaluation, references, steps
from ..compute import Budget
from ..tags import Tag
from .config import HookConfig

log = logging.getLogger("mlflow_unlearn.hook")


class GateFailed(Exception):
    """Every stage of the escalation failed the acceptance gate (and none was a retrain)."""


@dataclass
class Gated:
    """The result a job registers, the gate's verdict on each attempt and which path produced it."""

    result: object  # runs.StepResult
    after: dict
    resolved: object  # request.ResolvedPlan
    path: str  # passed | escalated | retrained
    attempts: list
    thresholds: dict
    never_seen: str | None

    @property
    def attempts_train_fraction(self) -> float:
        """What the whole job spent, every attempt together, in trainings (cost/train_fraction)."""
        return float(sum(a.get("cost", {}).get("cost/train_fraction", 0.0) for a in self.attempts))

    @property
    def algorithm(self) -> str:
        return "retrain" if self.path == "retrained" else "rum"

    def evidence(self) -> dict:
        return {"path": self.path, "thresholds": self.thresholds, "never_seen": self.never_seen,
                "attempts": self.attempts}

    def checks_tag(self) -> str:
        import json

        last = self.attempts[-1]["gate"]["checks"]
        compact = {c["name"]: (None if c["value"] is None else round(c["value"], 4), c["passed"]) for c in last}
        return json.dumps(compact, separators=(",", ":"))[:ledger.MAX_TAG_VALUE]


def retrain_policy(ctx, cfg: HookConfig) -> str | None:
    """Why this request is answered by an exact retrain without trying approximate unlearning, or
    None: `retrain_after_fraction` F, once F of the train set is forgotten in total (this request
    included); `retrain_after_requests` N, for the N-th request since the last retrain (or since
    training), so at most N - 1 approximate requests run in a row."""
    lineage = ctx.lineage_after("pending", "rum")
    n_train = len(ctx.data.train)
    if cfg.retrain_after_fraction is not None and len(lineage.forgotten) >= cfg.retrain_after_fraction * n_train:
        return (f"retrain_after_fraction {cfg.retrain_after_fraction}: {len(lineage.forgotten)} of {n_train} train "
                f"examples forgotten in total")
    if cfg.retrain_after_requests is not None:
        since = 0  # requests since the last retrain, this one (the lineage's last entry) included
        for entry in lineage.requests:
            since = 0 if entry.get("how") == "retrain" else since + 1
        if since >= cfg.retrain_after_requests:
            return (f"retrain_after_requests {cfg.retrain_after_requests}: request {since} since the last retrain "
                    f"({since - 1} approximate before it)")
    return None


def gated_unlearning(job, cfg: HookConfig, ctx, resolved, before: dict, request_tags: dict, *,
                      run_name: str) -> Gated:
    """Unlearn with the resolved plan and check the result with the acceptance gate (gate.py); on a
    failure escalate by `cfg.escalation`: a stronger plan (rum.stronger_plan), then an exact retrain
    on retain with the source's recipe (plan `all=retrain`, always accepted). Each attempt is its own
    run (tagged mlflow_unlearn.gate); the last one's run is the job run."""
    from ..gate import GateThresholds
    from ..request import ResolvedPlan
    from ..plans import single_algorithm_plan, stronger_plan

    thresholds = GateThresholds.from_dict(cfg.gate)
    never_seen = references.never_seen_estimate(ctx)
    policy = retrain_policy(ctx, cfg)
    retrain_stage = ("retrained", ResolvedPlan(single_algorithm_plan("retrain").validate(ctx.tiers),
                                               f"retrain ({policy})" if policy else "retrain (escalated: the gate failed)"))
    if policy is not None:
        stages = [retrain_stage]
    else:
        stages = [("passed", resolved)]
        if "stronger" in cfg.escalation:
            stages.append(("escalated", ResolvedPlan(stronger_plan(resolved.plan).validate(ctx.tiers),
                                                     f"stronger ({resolved.source}; escalated: the gate failed)")))
        if "retrain" in cfg.escalation:
            stages.append(retrain_stage)
    c_proxy = ctx.source.proxies["c_proxy"] if ctx.source.proxies is not None else None
    attempts = []
    for position, (path, stage) in enumerate(stages):
        # The stronger attempt may spend twice the budget (at most one training): with a budget that
        # binds, doubling `epochs` alone would change nothing.
        attempt_ctx = ctx if path != "escalated" or ctx.budget is None else dataclasses.replace(
            ctx, budget=Budget(min(1.0, 2 * ctx.budget.fraction), ctx.budget.original_passes))
        result = steps.rum(attempt_ctx, stage, register=False, run_name=f"{run_name}-{path}", extra_tags=request_tags)
        ledger.set_tags(job.client, job.name, job.version, {ledger.JOB_RUN_TAG: result.run_id})
        after, report = evaluate_attempt(ctx, result.model, before, c_proxy, never_seen, thresholds)
        verdict = "passed" if report.passed else ("accepted (exact retrain)" if path == "retrained" else "failed")
        job.client.set_tag(result.run_id, Tag.GATE, verdict)
        attempts.append({"stage": path, "plan": stage.plan.to_compact()[:1000], "run_id": result.run_id,
                         "seconds": result.seconds, "cost": dict(result.cost), "verdict": verdict,
                         "gate": report.to_dict()})
        log.info("job %s/%s: %s attempt %s: gate %s", job.name, job.version, path, result.run_id, report.summary())
        if report.passed or path == "retrained":
            return Gated(result, after, stage, path, attempts, dict(vars(thresholds)),
                          never_seen.source if never_seen is not None else None)
        if position + 1 < len(stages):  # only when a later attempt runs: with --escalate none nothing supersedes it
            following = "an exact retrain" if stages[position + 1][0] == "retrained" else "a stronger attempt"
            job.client.set_tag(result.run_id, Tag.SUPERSEDED_BY, f"{following} (the acceptance gate failed)")
    raise GateFailed(f"the result failed the acceptance gate ({report.summary()}) and "
                     f"escalation {list(cfg.escalation) or 'none'} did not produce one that passes; nothing was "
                     f"registered (attempt runs: {', '.join(a['run_id'] for a in attempts)})")


def evaluate_attempt(ctx, model, before: dict, c_proxy, never_seen, thresholds):
    """(metrics, gate report) of one attempt. An attempt that diverged (non-finite weights or outputs,
    e.g. gradient ascent with too large a step) fails the gate's `finite` check instead of failing
    the job, so escalation can still answer the request."""
    import torch

    from ..gate import Check, GateReport, check_result
    from ..metrics import MetricInputError

    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return {}, GateReport([Check("finite", None, "every weight finite", False, "the attempt diverged (NaN/inf weights)")])
    try:
        after = evaluation.evaluation_metrics(ctx, model, None)
    except MetricInputError as exc:
        return {}, GateReport([Check("finite", None, "finite outputs", False, f"the attempt diverged: {exc}")])
    if c_proxy is None:
        return after, check_result(before, after, {}, [], n_heldout=len(ctx.data.test), thresholds=thresholds)
    return after, check_result(before, after, ctx.tiers, c_proxy, n_heldout=len(ctx.data.test), never_seen=never_seen,
                               thresholds=thresholds)

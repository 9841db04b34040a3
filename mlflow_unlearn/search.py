"""The `search` step: Optuna chooses the plan (per memorisation tier or whole-set) on calibration
forget sets, never on the request it will be reported on. The MLflow edge of `mlflow_unlearn.tuning`.

Protocol (docs/design.md section 2): `--calibration-sets K` (default 2) calibration forget sets are drawn
with the same tier composition as the request (neighbouring memorisation ranks, disjoint from the
request and from each other), each gets its own retrained reference (cached like every retrain),
and a candidate's score is the mean over them, with the validation split (the train step's
`--val-fraction`) standing in for the test split. The request's own reference and the test split
are not touched; their digests are logged on the search run so anyone can check.

One trial = one candidate plan. The study lives in an Optuna RDB storage (default: `optuna.db`
beside the SQLite tracking database), so several processes or machines can run `mlflow-unlearn
search` with the same `--study-name`; the search run carries every trial as a row of `trials.json`
(`mlflow.log_table`: plan, state, calibration score, cost), with the plots. Trials become nested
MLflow runs (role `trial`) only with `trial_runs=True` (`--trial-runs true`): a `main` searches
RUM and every tuned baseline, and a run per trial buried its dozen comparable runs under hundreds.
As runs, a pruned trial ends FINISHED with the tag `mlflow_unlearn.pruned`; a diverged one FAILED
with `mlflow_unlearn.diverged`.
"""
from __future__ import annotations

import dataclasses
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import mlflow
import numpy as np
import optuna

from . import references, request, runs, tracking
from .algorithms import ALGORITHMS, default_search_algorithms
from .compute import DEFAULT_BUDGET
from .forget_sets import calibration_forget_sets
from .memorization import DEFAULT_TIERS, MemorizationError
from .metrics import evaluate_unlearning, mia_auc, split_outputs
from .plots import cost_quality
from .plans import Plan
from .tags import TAG, Role, Tag, plan_tag_value
from .compose import KnownTrial, add_known_trials, compose_search
from .experiment import Study, select_plans, tuning_study
from .tuning import (
    COMPOSED,
    JOINT,
    TOW_COST,
    CalibrationScorer,
    Reference,
    SearchError,
    check_n_trials,
    check_strategy,
    cheapest_within,
    completed_with_plan,
    is_copied,
    is_enqueued,
    make_study,
    objective_directions,
    optimize,
    rum_default_trials,
    spent_train_passes,
    trial_counts,
)
from .candidates import AUTO_EPOCHS, FALLBACK_MAX_EPOCHS, budget_epochs, check_max_epochs

CALIBRATION_TAG = Tag.CALIBRATION_DIGESTS


def default_storage() -> str:
    """A SQLite file beside the SQLite tracking database (or in the working directory)."""
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return "sqlite:///optuna.db"


def open_storage(url: str, *, attempts: int = 5) -> optuna.storages.BaseStorage:
    """Open (and on first use create) an Optuna RDB storage. Two workers starting on a fresh
    database race to create Optuna's schema and one gets an IntegrityError (PostgreSQL) or an
    OperationalError "table ... already exists" (SQLite); it waits and opens the schema the other
    one made."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            # heartbeats let another worker fail a trial whose process died, instead of leaving it RUNNING
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            lost_race = not isinstance(exc, sqlalchemy.exc.OperationalError) or "already exists" in str(exc)
            if not lost_race:  # e.g. a folder that does not exist: not a race, say what to do
                raise SearchError(f"cannot open the Optuna storage {_redact(url)!r}: {type(exc).__name__}: {exc}; use "
                                  f"e.g. sqlite:///optuna.db or postgresql://user@127.0.0.1:5432/db") from None
            if attempt == attempts - 1:
                raise SearchError(f"cannot create the Optuna schema in {_redact(url)!r}: {exc}") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # sqlalchemy raises many types for a bad URL
            raise SearchError(f"cannot open the Optuna storage {_redact(url)!r}: {type(exc).__name__}: {exc}; use e.g. "
                              f"sqlite:///optuna.db or postgresql://user@127.0.0.1:5432/db") from None


def _redact(url: str) -> str:
    """Do not log passwords of storage URLs."""
    return re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)


# --------------------------------------------------------------------------------------------------
# Calibration forget sets and their references


@dataclass
class Calibration:
    """K calibration forget sets of one request: their contexts, the retrain run each is scored
    against (the source's calibration reference, retrained once without its calibration pool and
    shared by all K and by every later request), and core references (held-out term: the
    validation split)."""

    contexts: list
    runs: list  # runs.StepResult per set (the same calibration reference for every set)
    references: list[Reference]
    union_ids: np.ndarray | None = None  # the ids the calibration reference was retrained without (its pool)
    # The calibration noise per metric key: how far a second retrain (another seed, same pool) lands
    # from the first on the calibration sets, mean over sets; None when no second retrain was made.
    noise: dict | None = None
    pool: references.PoolSpec | None = None
    # How far the calibration sets sit from the request in memorisation: the mean |difference| of
    # their sorted train-rank quantiles (0 = the same ranks; 0.01 = one percentile apart), mean over sets.
    quantile_distance: float | None = None

    @property
    def digests(self) -> list[str]:
        return [c.forget.digest for c in self.contexts]


def calibration_context(ctx: request.ForgetContext, ids, source: str) -> request.ForgetContext:
    """A context for another forget set of the same source, cut into tiers like `ctx`."""
    return references.with_forget_set(ctx, ids, source)


def _rank_quantiles(c_proxy) -> np.ndarray:
    c = np.asarray(c_proxy, dtype=np.float64)
    q = np.empty(len(c))
    q[np.argsort(-c, kind="stable")] = np.arange(len(c)) / max(len(c) - 1, 1)
    return q


def prepare_calibration(ctx: request.ForgetContext, k: int = references.DEFAULT_CALIBRATION_SETS, *,
                        noise: bool = False, size: int | None = None) -> Calibration:
    """Draw `k` calibration forget sets for the request in `ctx` inside the source's calibration
    pool and score them against its calibration reference: one retrain per source version and
    recipe (`references.calibration_reference`), paid by `train --calibration-reference true` or by
    the first search, and reused by every later request it can match. The pool is the k calibration
    sets of the canonical request mix:`size`; every request example gets k stand-ins, the pool
    members nearest to it in memorisation rank within its bin (the extreme tail included). Without
    `size`: the smallest cached pool that matches the request, else a new default one (6% of train,
    or the request's size if larger). The reference never saw the pool, so retain is compared on
    train minus the pool; its own accuracies move by the examples it lacks, which docs/steps.md ("Compute
    and budget") measures against the retrain-vs-retrain noise.
    With `noise`, a second reference (another seed, same pool) gives the calibration noise: how far
    retraining itself lands from the first reference on every metric (the search then registers the
    cheapest plan within that noise of the best; one more retrain, cached like the first).
    Fails before any training when the source has no validation split or no pool can match."""

    if ctx.data.val is None or len(ctx.data.val) == 0:
        raise SearchError(f"{ctx.source.uri} was trained without a validation split, and selection must not look at "
                          f"the test split it is reported on; train the source with --val-fraction 0.1 (or more)")
    if ctx.source.proxies is None:
        raise SearchError(f"{ctx.source.uri} has no C-proxy (confidences/ artifact) to draw calibration sets from")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SearchError(f"calibration_sets must be a whole number >= 1, got {k!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise SearchError(f"calibration_size must be a whole number >= 1, got {size!r}")
    c_proxy = ctx.source.proxies["c_proxy"]
    names = tuple(ctx.tiers) if list(ctx.tiers) != ["all"] else ("all",)
    tiers = len(names) if names != ("all",) else len(DEFAULT_TIERS)
    n_train = len(ctx.data.train)
    if size is not None:
        candidates = [references.PoolSpec(k, size, tiers)]
    else:
        cached = [s for s in references.cached_pool_specs(ctx) if s.k == k and s.tiers == tiers]
        candidates = [*cached, references.PoolSpec.default(n_train, k=k, tiers=tiers, at_least=len(ctx.forget))]
    problem = None
    for spec in candidates:
        try:
            pool = references.calibration_pool_ids(ctx, spec)
            sets = calibration_forget_sets(c_proxy, ctx.forget.ids, k, names=names, seed=references.CALIBRATION_SEED,
                                           pool=pool)
            break
        except MemorizationError as exc:
            problem = (spec, str(exc))
    else:
        spec, why = problem
        bigger = 2 * spec.size if spec.size * 2 * (k + 1) <= n_train else None
        raise SearchError(f"{why} (calibration pool: {k} calibration set(s) of mix:{spec.size} on {n_train} train "
                          f"examples)" + (f"; or build a larger pool with --calibration-size {bigger}" if bigger else ""))
    contexts = [calibration_context(ctx, ids, f"calibration {j + 1}/{k} for {ctx.forget.digest[:12]}")
                for j, ids in enumerate(sets)]
    _, run = references.calibration_reference(ctx, spec, progress=True)  # cached per source, recipe and pool
    keep = np.ones(n_train, dtype=bool)
    keep[pool] = False
    keep[ctx.forgotten_before] = False
    retain = np.flatnonzero(keep)
    refs = [Reference.build(run.model, c.data, c.forget.ids, c.tiers, seconds=run.seconds, heldout=c.data.val,
                            name=f"calibration-{j + 1}", retain_ids=retain, task=c.task) for j, c in enumerate(contexts)]
    q = _rank_quantiles(c_proxy)
    distance = float(np.mean([np.mean(np.abs(np.sort(q[ids]) - np.sort(q[ctx.forget.ids]))) for ids in sets]))
    spread = None
    if noise:
        _, second = references.calibration_reference(ctx, spec, seed=references.CALIBRATION_SEED + 1, progress=True)
        per_set = []
        for ref in refs:
            again = split_outputs(second.model, ctx.data, ref.forget_ids, retain, heldout=ref.heldout)
            tier_pos = ref.tier_positions()
            other = evaluate_unlearning(again, ref.outputs, tiers=tier_pos, seed=ctx.seed)
            same = evaluate_unlearning(ref.outputs, ref.outputs, tiers=tier_pos, seed=ctx.seed)
            per_set.append({m: abs(other[m] - same[m]) for m in other if m in same and np.isfinite(other[m])})
        spread = {m: float(np.mean([s[m] for s in per_set])) for m in per_set[0] if all(m in s for s in per_set)}
    # whether the calibration sets show the request's regime: what their reference still gets right, per tier
    regime = "; ".join("/".join(f"{float(np.mean(ref.outputs['forget'].correct[pos])):.2f}" if len(pos) else "-"
                                for pos in ref.tier_positions().values()) for ref in refs)
    print(f"calibration: {k} set(s) inside the pool of {len(pool)} ({spec.tag()}), reference run {run.run_id}"
          f"{' (cached)' if run.cached else ''}; rank-quantile distance to the request {distance:.4f}; the "
          f"reference's accuracy per tier ({', '.join(names)}) on each set: {regime}")
    return Calibration(contexts, [run] * k, refs, pool, spread, spec, distance)


# --------------------------------------------------------------------------------------------------
# Trials: a line each, a table on the search run, nested MLflow runs on request


class _TrialLines:
    """A TrialObserver that prints one compact line per finished trial."""

    def __init__(self, ctx: request.ForgetContext, study_name: str, space: str):
        self.ctx, self.study_name, self.space = ctx, study_name, space

    def trial_started(self, trial, plan: Plan) -> None:
        pass

    def trial_finished(self, trial, plan: Plan, metrics: dict, state: str, reason: str = "") -> None:
        # one compact line per trial instead of Optuna's own log (silenced in _search_run)
        value = f"tow {metrics['tow']:.4f}" if "tow" in metrics else reason[:60]
        repeat = f" (repeat of {trial.user_attrs['repeat_of']})" if "repeat_of" in trial.user_attrs else ""
        print(f"  {self.space} trial {trial.number:>3}: {state:<8} {value + repeat:<40} {plan.to_compact(3)[:100]}",
              flush=True)


def trials_table(study) -> dict[str, list]:
    """Every trial of `study` as columns for `mlflow.log_table`: what it tried, how it ended, its
    calibration scores and cost (metrics copied from the trial it repeats are marked)."""
    keys = ("tow", "tow_mia", "mia/gap", "cost/train_fraction")
    cols: dict[str, list] = {"trial": [], "state": [], "plan": [], "enqueued": [], "repeat_of": [], "copied_from": [],
                             **{f"calibration {k}": [] for k in keys}}
    for t in study.trials:
        metrics = t.user_attrs.get("metrics", {}) if isinstance(t.user_attrs.get("metrics"), dict) else {}
        cols["trial"].append(t.number)
        state = t.state.name.lower()
        cols["state"].append("pruned" if state == "pruned" else state)
        cols["plan"].append(_plan_label(t))
        cols["enqueued"].append(bool(is_enqueued(t)))
        cols["repeat_of"].append(t.user_attrs.get("repeat_of"))
        cols["copied_from"].append(t.user_attrs.get("copied_from"))  # a tuned baseline's study, not scored here
        for k in keys:
            v = metrics.get(k)
            cols[f"calibration {k}"].append(round(float(v), 4) if isinstance(v, (int, float)) and np.isfinite(v) else None)
    return cols


class _TrialRuns(_TrialLines):
    """A TrialObserver that also logs each trial as a nested run under the active search run."""

    def trial_started(self, trial, plan: Plan) -> None:
        mlflow.start_run(run_name=f"trial-{self.space}-{trial.number}", nested=True)
        algorithm = plan.steps[0].algorithm if len(plan.steps) == 1 else "rum"
        mlflow.set_tags({**self.ctx.tags(Role.TRIAL), Tag.STUDY: self.study_name, Tag.TRIAL: str(trial.number),
                         Tag.SEARCH_SPACE: self.space, Tag.ALGORITHM: algorithm,
                         Tag.WORKER: f"{socket.gethostname()}:{os.getpid()}"})
        tracking.log_params({"plan": plan.to_compact()[:500], "algorithm": algorithm,
                           **{k: v for k, v in trial.params.items()}})

    def trial_finished(self, trial, plan: Plan, metrics: dict, state: str, reason: str = "") -> None:
        super().trial_finished(trial, plan, metrics, state, reason)
        if state == "complete":
            if "repeat_of" in trial.user_attrs:  # the same plan as an earlier trial: its metrics, not rescored
                mlflow.set_tag(TAG + "repeat_of", str(trial.user_attrs["repeat_of"]))
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
            mlflow.log_dict(plan.to_dict(), "plan.json")
            mlflow.end_run()
            return
        mlflow.set_tag(TAG + state, reason[:500] or "true")
        # pruned is a normal outcome of a search, not a crash: the run ends FINISHED; a duplicate (the
        # trial another worker finished first) was stopped, not broken: KILLED
        mlflow.end_run(status={"pruned": "FINISHED", "duplicate": "KILLED"}.get(state, "FAILED"))


# --------------------------------------------------------------------------------------------------
# The searches


@dataclass
class SearchResult:
    study_name: str
    storage: str
    best_plan: Plan
    best_value: float  # mean objective over the calibration sets (never a reported result)
    run_id: str
    n_trials: int
    calibration_digests: list[str]
    # what scoring the trials cost in this process, in trainings (every plan run on every calibration
    # set, pruned trials included; repeats are free); the calibration reference is not in it
    cost_train_fraction: float = float("nan")
    # the selected plan's mean calibration metrics (what a composed search copies instead of rescoring)
    metrics: dict | None = None
    # a composed RUM search: what the per-algorithm tunings it builds on cost, in trainings (0 when it
    # reused tunings already paid for, passed in as `tuned`)
    tuning_cost_train_fraction: float = 0.0
    # a RUM search: every tuning it ran or was given, by algorithm (its own and the baselines')
    tunings: dict = field(default_factory=dict)


def _check_algorithms(algorithms: Sequence[str]) -> None:
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise SearchError(f"{ALGORITHMS.unknown_message(unknown)} (in the search space)" if unknown
                          else f"the search space is empty; registered: {', '.join(ALGORITHMS.names())}")


def _arm_label(step) -> str:
    return Plan([step]).to_compact().split("=", 1)[1]


def _check_settings(n_trials: int, objective: str, max_epochs: int | str) -> None:
    check_n_trials(n_trials)
    objective_directions(objective)  # an unknown objective lists the valid ones
    check_max_epochs(max_epochs)


def resolve_max_epochs(ctx: request.ForgetContext, max_epochs: int | str) -> int:
    """The bound on searched `epochs` for this request: `auto` -> the epochs over its retain set its
    budget pays for (`candidates.budget_epochs`), a number as given."""
    if check_max_epochs(max_epochs) != AUTO_EPOCHS:
        return max_epochs
    if ctx.budget is None:
        return FALLBACK_MAX_EPOCHS
    return budget_epochs(ctx.budget.passes, len(ctx.retain_ids))


def check_trials(n_trials: int, strategy: str, tiers: Sequence[str], algorithms: Sequence[str]) -> None:
    """A joint search needs room for its known-good starting points (`rum_default_trials`); a
    composed one runs what fits (its first trials are `none` and the tuned arms, in that order)."""
    if strategy == JOINT:
        needed = len(rum_default_trials(list(tiers), algorithms))
        if n_trials < needed:
            raise SearchError(f"n_trials={n_trials} is smaller than the {needed} known-good starting points of the "
                              f"joint search (every algorithm at its defaults, whole-set and per tier, and `none`); "
                              f"use --n-trials >= {needed}, fewer --algorithms or --strategy {COMPOSED}")


def _search_run(ctx, calibration: Calibration, run_name: str, space: str, candidates, enqueue, *, n_trials: int,
                objective: str, max_epochs: int, storage: str | None, study_name: str | None,
                timeout_s: float | None, extra_params: dict, trial_runs: bool = False,
                known: Sequence[KnownTrial] = (), arms: Mapping | None = None,
                retain_mode: str = "exclude_all") -> tuple[Plan, float, str, str, float, dict]:
    # Every setting is checked before a run exists, so bad input leaves nothing behind.
    _check_settings(n_trials, objective, max_epochs)
    if n_trials < len(enqueue):
        raise SearchError(f"n_trials={n_trials} is smaller than the {len(enqueue)} known-good starting points of the "
                          f"{space} search; use --n-trials >= {len(enqueue)} or fewer --algorithms")
    storage = storage or default_storage()
    store = open_storage(storage)
    shared = study_name is not None
    study_name = study_name or (f"{space}-{ctx.source.name}-v{ctx.source.version}-{ctx.forget.digest[:8]}-"
                                f"{'-'.join(d[:6] for d in calibration.digests)}-{objective}")
    # Workers joining a named study must not replay each other's random start-up trials.
    sampler_seed = ctx.seed if not shared else ctx.seed * 1_000_003 + os.getpid()
    if ctx.budget is not None and not shared:  # scores under another budget are other scores: another study
        study_name += f"-b{ctx.budget.fraction:g}"
    with runs.step_run(run_name) as run:
        mlflow.set_tags({**ctx.tags(Role.SEARCH), Tag.STUDY: study_name, Tag.OBJECTIVE: objective,
                         Tag.SEARCH_SPACE: space, CALIBRATION_TAG: ",".join(calibration.digests)})
        request.log_forget_set(ctx)
        mlflow.log_dict({"calibration_sets": [{"digest": c.forget.digest, "ids": c.forget.ids.tolist(),
                                               "reference_run": r.run_id, "tiers": {k: v.tolist() for k, v in c.tiers.items()},
                                               "never_seen": never_seen_record(ref)}
                                              for c, r, ref in zip(calibration.contexts, calibration.runs,
                                                                   calibration.references)],
                         "heldout": "validation split",
                         # one reference for every set: retrained once without their union
                         "reference": {"run_id": calibration.runs[0].run_id if calibration.runs else None,
                                       "retrained_without": None if calibration.union_ids is None
                                       else int(len(calibration.union_ids)),
                                       "pool": None if calibration.pool is None else calibration.pool.tag(),
                                       "quantile_distance": calibration.quantile_distance}}, "calibration.json")
        tracking.log_params({"n_trials": n_trials, "objective": objective, "max_epochs": max_epochs,
                           "storage": _redact(storage), "study_name": study_name,
                           "calibration_sets": len(calibration.contexts),
                           "budget": None if ctx.budget is None else ctx.budget.fraction, **extra_params})
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = make_study(study_name, store, seed=sampler_seed, objective=objective)
        add_known_trials(study, known, objective)  # scored elsewhere on these sets: compete, cost nothing
        scorer = CalibrationScorer(ctx.source.model.to(ctx.data.device), ctx.data, calibration.references, seed=ctx.seed,
                                   recipe=ctx.recipe(), budget=ctx.budget, original_passes=ctx.source.original_passes)
        observer = (_TrialRuns if trial_runs else _TrialLines)(ctx, study_name, space)
        if arms is not None:  # a composed search: one arm per tier, coordinate by coordinate
            compose_search(study, list(ctx.tiers), arms, scorer, n_trials=n_trials, objective=objective,
                           observer=observer, timeout_s=timeout_s, retain_mode=retain_mode)
        else:
            optimize(study, candidates, scorer, n_trials=n_trials, objective=objective, enqueue=enqueue,
                     observer=observer, timeout_s=timeout_s)
        mlflow.log_table(trials_table(study), "trials.json")  # sortable in the run's artifact view
        key = "tow" if objective == TOW_COST else objective
        tolerance = (calibration.noise or {}).get(key, 0.0)
        plan, value, best = cheapest_within(study, tolerance)
        mlflow.log_dict(plan.to_dict(), "best_plan.json")
        chosen = completed_with_plan(study, plan.to_dict())
        chosen_metrics = dict(chosen.user_attrs.get("metrics", {})) if chosen is not None else {}
        # the study's record, not this process's counter: a resumed or shared study counts every trial
        spent = spent_train_passes(study) / ctx.source.original_passes
        mlflow.log_metrics({f"calibration/best_{key}": best, f"calibration/selected_{key}": value,
                            f"calibration/noise_{key}": tolerance, **trial_counts(study), "cost/train_fraction": spent,
                            **({} if calibration.quantile_distance is None else
                               {"calibration/quantile_distance": calibration.quantile_distance})})
        why = "the calibration noise: a second retrain against the first" if calibration.noise else "no noise estimate"
        mlflow.set_tag(Tag.SELECTION, f"the cheapest plan within {tolerance:.4f} ({why}) of the best calibration "
                                      f"{key} {best:.4f}")
        mlflow.set_tag(Tag.BEST_KIND, best_kind(study, plan))
        log_study_plots(study, objective, None if ctx.budget is None else ctx.budget.fraction)
    return plan, value, run.info.run_id, study_name, spent, chosen_metrics


def never_seen_record(ref: Reference) -> dict:
    """What a model that never saw a calibration set gets on it: per id (sorted), whether the
    reference classifies it correctly, and the forget-vs-held-out attack AUC. The registry hook's
    acceptance gate reads it back (`references.calibration_never_seen`) as its never-seen estimate."""
    return {"ids": ref.forget_ids.tolist(), "correct": ref.outputs["forget"].correct.astype(int).tolist(),
            "auc": mia_auc(ref.outputs["forget"].true_conf, ref.outputs["test"].true_conf),
            "conf": [round(float(x), 5) for x in ref.outputs["forget"].true_conf],
            "heldout_conf": [round(float(x), 5) for x in ref.outputs["test"].true_conf]}


def best_kind(study, plan: Plan) -> str:
    """What kind of plan won: whether the search itself bought anything. A joint search: `enqueued`
    (one of the known-good starting points, a default) or `sampled` (the sampler found it). A
    composed search: `tuned` (a tuned algorithm's whole-set setting, copied in), `uniform` (one
    arm on every tier) or `per-tier` (a mix the coordinate steps found)."""
    wanted = plan.to_dict()
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE and "plan" in t.user_attrs:
            try:
                if Plan.from_dict(t.user_attrs["plan"]).to_dict() == wanted:
                    if is_copied(t):
                        return "tuned"
                    arms = {v for k, v in t.params.items() if k.endswith(".arm")}  # a composed study's trial
                    if arms:
                        return "uniform" if len(arms) == 1 else "per-tier"
                    return "enqueued" if is_enqueued(t) else "sampled"
            except (KeyError, TypeError, ValueError):
                continue
    return "unknown"


def _plan_label(trial) -> str:
    try:
        return Plan.from_dict(trial.user_attrs["plan"]).to_compact(3)
    except (KeyError, TypeError, ValueError):  # a trial written by another version: its number is label enough
        return f"trial {trial.number}"


def log_study_plots(study, objective: str, budget: float | None = None) -> None:
    """Optuna's own matplotlib views on the active run: the optimisation history and, when the
    study has enough finished trials to tell, the parameter importances (fANOVA)."""
    import warnings

    import matplotlib.pyplot as plt  # optuna's views draw with pyplot; closed after logging
    import optuna.visualization.matplotlib as ov

    key = "tow" if objective == TOW_COST else objective
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
        ax = ov.plot_optimization_history(study, target=target, target_name=f"calibration {key}")
        ax.set_title(f"Optimisation history: calibration {key} per trial (selection only, not a result)", fontsize=10)
        ax.figure.set_size_inches(8.5, 4.5)  # optuna's default is too narrow for the title and legend
        ax.figure.tight_layout()
        mlflow.log_figure(ax.figure, "plots/optimization_history.png")
        plt.close(ax.figure)
        scored = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                  and "repeat_of" not in t.user_attrs and "cost/train_fraction" in t.user_attrs.get("metrics", {})]
        if scored:
            metrics = [t.user_attrs["metrics"] for t in scored]
            fig = cost_quality([m["cost/train_fraction"] for m in metrics], [m.get(key, float("nan")) for m in metrics],
                               [_plan_label(t) for t in scored],
                               budget=budget, score_name=f"calibration {key}",
                               title=f"Calibration {key} against cost, every scored plan (selection only, not a result)")
            mlflow.log_figure(fig, "plots/pareto.png")
        finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(finished) >= 3:
            try:
                ax = ov.plot_param_importances(study, target=target, target_name=f"calibration {key}")
            except (ValueError, RuntimeError) as exc:  # e.g. every trial sampled the same values
                print(f"parameter importances not plotted: {exc}")
            else:
                ax.set_title(f"Parameter importances for calibration {key} (fANOVA over finished trials)", fontsize=10)
                ax.figure.set_size_inches(9, max(3.0, 0.35 * len(ax.get_yticks()) + 1.5))
                ax.figure.tight_layout()
                mlflow.log_figure(ax.figure, "plots/param_importances.png")
                plt.close(ax.figure)


def search(ctx: request.ForgetContext, calibration: Calibration, *, n_trials: int = 20, objective: str = "tow",
           algorithms: Sequence[str] | None = None, max_epochs: int | str = AUTO_EPOCHS, storage: str | None = None,
           study_name: str | None = None, retain_mode: str = "exclude_all", attach: bool = True,
           timeout_s: float | None = None, trial_runs: bool = False, strategy: str = COMPOSED,
           baselines: Sequence[str] = (), tuned: Mapping[str, SearchResult] | None = None) -> SearchResult:
    """Search RUM plans on the calibration sets; attach the best to the registered model so later
    requests (and the registry hook) reuse it. `algorithms`: the search space (default: the
    registry's, `default_search_algorithms()`). The order of studies is `experiment.select_plans`'s,
    the one the CIFAR benchmark runs too; each study is its own search run.

    `strategy` `composed` (default): every algorithm but `none` is tuned on the whole calibration
    forget sets first (`search_algorithm`, `n_trials` each), then a study of `n_trials` picks one
    arm per tier (`none`, an algorithm at its defaults or at its tuned setting), with the tuned
    whole-set settings copied in as scored trials. The selected plan is never worse on calibration
    than the best tuned algorithm. `joint`: one study samples every tier's algorithm and
    hyperparameters together (fewer trials in all, but at 10-16 trials it found less than tuning
    one algorithm did). `baselines` are tuned as well, whatever the strategy (`main`'s tuned
    baselines: the result's `tunings` holds every tuning, by algorithm); `tuned` passes tunings
    already run on these calibration sets."""
    algorithms = tuple(algorithms or default_search_algorithms())
    _check_algorithms([*algorithms, *baselines])
    check_strategy(strategy)
    # a composed search runs its tunings first: everything its last study needs is checked before them
    _check_settings(n_trials, objective, max_epochs)
    check_trials(n_trials, strategy, ctx.tiers, algorithms)
    if storage:
        open_storage(storage)
    if not calibration.references:
        raise SearchError("the search needs at least one calibration reference")
    asked, max_epochs = max_epochs, resolve_max_epochs(ctx, max_epochs)
    if asked == AUTO_EPOCHS:
        why = ("auto without a budget: the fixed bound" if ctx.budget is None else
               f"auto: the passes over the {len(ctx.retain_ids)} retain examples a budget of {ctx.budget.fraction:g} "
               f"pays for")
        print(f"search space: epochs at most {max_epochs} ({why})")
    reused = set(tuned or {})

    def run(study: Study) -> SearchResult:
        if not study.is_rum:
            # workers sharing a named study share its tunings too (each with its own sampler seed)
            return search_algorithm(ctx, calibration, study.algorithm, n_trials=n_trials, objective=objective,
                                    max_epochs=max_epochs, storage=storage, timeout_s=timeout_s, trial_runs=trial_runs,
                                    study_name=None if study_name is None else f"{study_name}-tuned-{study.algorithm}")
        extra = {"algorithms": ",".join(algorithms), "strategy": strategy}
        if study.arms is not None:
            extra.update({"arms": "; ".join(f"{name}={_arm_label(step)}" for name, step in study.arms.items()),
                          "tuned_studies": ",".join(k.source for k in study.known)})
        plan, value, run_id, name, spent, metrics = _search_run(
            ctx, calibration, f"search-{ctx.source_tag}", study.space, study.candidates, study.enqueue,
            n_trials=n_trials, objective=objective, max_epochs=max_epochs, storage=storage, study_name=study_name,
            timeout_s=timeout_s, extra_params=extra, trial_runs=trial_runs, known=study.known, arms=study.arms,
            retain_mode=retain_mode)
        return SearchResult(name, storage or default_storage(), plan, value, run_id, n_trials, calibration.digests,
                            spent, metrics)

    selection = select_plans(list(ctx.tiers), algorithms, run, baselines=baselines, strategy=strategy,
                             max_epochs=max_epochs, retain_mode=retain_mode, tuned=tuned)
    found = selection.rum
    # what the tunings the RUM search built on cost (those paid here, not tunings passed in `tuned`)
    found.tuning_cost_train_fraction = sum(r.cost_train_fraction for a, r in selection.rum_tunings().items()
                                           if a not in reused)
    found.tunings = selection.tuned
    if strategy == COMPOSED:
        mlflow.MlflowClient().log_metric(found.run_id, "cost/tuning_train_fraction",
                                         round(found.tuning_cost_train_fraction, 6))
    if attach:
        client = mlflow.MlflowClient()
        # the budget travels with the plan (one tag, written at once): the steps it scored were cut to it
        attached = dataclasses.replace(found.best_plan, budget=None if ctx.budget is None else ctx.budget.fraction)
        client.set_registered_model_tag(ctx.source.name, Tag.SEARCHED_PLAN, plan_tag_value(attached.to_dict()))
        client.set_registered_model_tag(ctx.source.name, Tag.SEARCHED_PLAN_RUN, found.run_id)
        # the tags are for machines (the hook reads them); the description says the same for people
        readable = found.best_plan.to_compact(3).replace(";", "; ").replace(",", ", ")
        at_budget = "" if ctx.budget is None else f" at budget {ctx.budget.fraction:g}"
        client.update_registered_model(ctx.source.name, description=(
            f"RUM plan for deletion requests (searched for version {ctx.source.version} on {len(calibration.digests)} "
            f"calibration forget set(s){at_budget}, mean calibration {objective} {found.best_value:.3f}, search run "
            f"{found.run_id}): {readable}. Requests use it with `--plan registered` and through the registry hook."))
    return found


def search_algorithm(ctx: request.ForgetContext, calibration: Calibration, algorithm: str, *, n_trials: int = 20,
                     objective: str = "tow", max_epochs: int | str = AUTO_EPOCHS, storage: str | None = None,
                     timeout_s: float | None = None, trial_runs: bool = False,
                     study_name: str | None = None) -> SearchResult:
    """Tune one algorithm on the whole forget set with the same calibration sets, budget and space
    rules as the RUM search (its defaults are the first trial): the tuned baseline."""
    _check_algorithms([algorithm])
    max_epochs = resolve_max_epochs(ctx, max_epochs)
    study = tuning_study(algorithm, max_epochs=max_epochs)
    plan, value, run_id, name, spent, metrics = _search_run(
        ctx, calibration, f"search-{algorithm}", study.space, study.candidates, study.enqueue, n_trials=n_trials,
        objective=objective, max_epochs=max_epochs, storage=storage, study_name=study_name, timeout_s=timeout_s,
        extra_params={"algorithm": algorithm}, trial_runs=trial_runs)
    return SearchResult(name, storage or default_storage(), plan, value, run_id, n_trials, calibration.digests, spent,
                        metrics)


def search_step(model_uri: str, forget, *, n_trials: int = 20, objective: str = "tow", algorithms: Sequence[str] | None = None,
                max_epochs: int | str = AUTO_EPOCHS, storage: str | None = None, study_name: str | None = None,
                seed: int = 0, calibration_sets: int = 2, device: str | None = "auto", experiment: str | None = None,
                budget: float | None = DEFAULT_BUDGET, calibration_noise: bool = False,
                calibration_size: int | None = None, trial_runs: bool = False, strategy: str = COMPOSED) -> SearchResult:
    algorithms = tuple(algorithms or default_search_algorithms())
    check_strategy(strategy)
    _check_settings(n_trials, objective, max_epochs)  # before loading anything
    if not isinstance(calibration_sets, int) or calibration_sets < 1:
        raise SearchError(f"calibration_sets must be a whole number >= 1, got {calibration_sets!r}")
    _check_algorithms(algorithms)
    if storage:
        open_storage(storage)
    ctx = request.prepare(model_uri, forget, seed=seed, device=device, budget=budget)
    check_trials(n_trials, strategy, list(ctx.tiers), algorithms)
    tracking.use_experiment(experiment)
    with runs.project_run():  # under `mlflow run`, the calibration retrains nest under the search run
        calibration = prepare_calibration(ctx, calibration_sets, noise=calibration_noise, size=calibration_size)
        result = search(ctx, calibration, n_trials=n_trials, objective=objective, algorithms=algorithms,
                        max_epochs=max_epochs, storage=storage, study_name=study_name, trial_runs=trial_runs,
                        strategy=strategy)
    print(f"best plan (mean calibration {objective} {result.best_value:.4f} over {calibration_sets} set(s); a selection "
          f"score, not a result): {result.best_plan.to_compact(3)}")
    print(f"attached to registered model {ctx.source.name!r} as tag {Tag.SEARCHED_PLAN}")
    return result

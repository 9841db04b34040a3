"""Optuna studies over plans: the MLflow-free core of the search. Scoring (`Reference`,
`CalibrationScorer`) is in `scoring.py`, the spaces (`rum_candidates`, `algorithm_candidates`) in
`candidates.py`, held-out reports (`report_plan`) in `reporting.py`; their names are re-exported
here, where the search reads them.

docs/design.md section 2, "Selection is not reporting": anything chosen by looking at scores is chosen
on *calibration* forget sets (same tier composition as the request, disjoint from it and from each
other, each with its own retrained reference), and the accuracy term that stands for unseen data
comes from the validation split held out of training, never from the test split that is reported.

    refs = [Reference.build(model_c, data, ids_c, tiers_c, heldout=data.val) for ...]   # one per set
    scorer = CalibrationScorer(source_model, data, refs, seed=0)
    study = make_study("rum", storage, seed=0)
    optimize(study, rum_candidates(tiers, algorithms, max_epochs=3), scorer, n_trials=20,
             enqueue=rum_default_trials(tiers, algorithms))
    best = best_plan(study)

Candidates (what a trial can be):
- `rum_candidates`: a whole-set plan (one algorithm on the whole forget set, tier "all") or a
  per-tier plan (an algorithm per tier, `none` allowed); each step either at the algorithm's
  defaults or with searched hyperparameters. Its first trials (`rum_default_trials`, enqueued) are
  the known-good points: `none` everywhere, every algorithm at its defaults on the whole set, every
  algorithm at its defaults tier by tier. With `n_trials` at least that many, the returned plan is
  never worse on calibration than any default or than doing nothing.
- `algorithm_candidates`: one algorithm on the whole set, defaults first: the tuned baseline that
  gets the same trial budget and space rules as RUM.
- The default RUM search (strategy `composed`) is not a sampler's space: `mlflow_unlearn.compose`
  picks one tuned algorithm per tier by coordinate search. `rum_candidates` is strategy `joint`.

Hyperparameter spaces are declared by each algorithm when it is registered
(`mlflow_unlearn.algorithms.search_space`; built-ins in `algorithms/builtin.py`, plugins with
`declare_algorithm`): epochs at most `max_epochs`, plus the batch-size bound for the ascent-based
methods, so small tiers get enough optimiser steps. An algorithm that declares no space is tried at
its defaults. The default search space is `default_search_algorithms()`: `none` plus every
registered algorithm that declared `default_search=True`.

A trial whose model diverges (non-finite weights or outputs) is recorded as failed (`Diverged`)
and the study goes on. Pruning (single objective): after each calibration set the trial reports the
mean so far; Optuna's median pruner stops hopeless trials.

No mlflow here: the edge (`mlflow_unlearn.search`) watches trials through a `TrialObserver`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import warnings
from typing import Any, Callable, Mapping, Protocol, Sequence

import optuna

from .metrics import (
    BUILTIN_METRICS,
    MetricInputError,
    objective as metric_objective,
    objectives as metric_objectives,
)
from .plans import Plan
from .candidates import (  # noqa: F401 (re-exported)
    COMPOSED,
    DEFAULTS_KEY,
    JOINT,
    STRATEGIES,
    WHOLE,
    algorithm_candidates,
    algorithm_default_trials,
    check_n_trials,
    check_strategy,
    rum_candidates,
    rum_default_trials,
    suggest_step,
)
from .reporting import MethodReport, report_plan  # noqa: F401 (re-exported)
from .scoring import (  # noqa: F401 (re-exported)
    CalibrationScorer,
    Diverged,
    NoCompletedTrial,
    Reference,
    SearchError,
    noise_floor,
    train_reference,
)

TOW_COST = "tow+cost"  # two objectives: ToW up, compute (cost/train_fraction) down: a Pareto front


def objective_directions(objective: str) -> tuple[list[str], str | None]:
    """(Optuna directions, the registered metric that computes the objective) for an objective:
    any score key a registered metric declares (`metrics.objectives()`: tow, tow_mia, tow_pe,
    mia/gap and plugin keys), or `tow+cost`. An unknown key raises SearchError listing the valid ones."""
    if objective == TOW_COST:
        return ["maximize", "minimize"], "accuracy"
    try:
        metric, higher = metric_objective(objective)
    except MetricInputError as exc:
        raise SearchError(f"{exc}, or {TOW_COST}") from None
    return ["maximize" if higher else "minimize"], metric


def objective_names() -> list[str]:
    """The valid objectives, for help texts: declared metric keys and `tow+cost`."""
    return [*metric_objectives(), TOW_COST]

# --------------------------------------------------------------------------------------------------
# Studies


class TrialObserver(Protocol):
    """What the search reports per trial (the MLflow edge opens a nested run per trial). Any
    method may be left out."""

    def trial_started(self, trial: optuna.Trial, plan: Plan) -> None: ...

    def trial_finished(self, trial: optuna.Trial, plan: Plan, metrics: dict[str, float], state: str,
                       reason: str = "") -> None:
        """`state`: complete, pruned, diverged, failed, or duplicate (another worker of a shared
        SQLite study ran the same trial and finished first)."""


def _notify(observer, name: str, *args, **kwargs) -> None:
    fn = getattr(observer, name, None) if observer is not None else None
    if fn is not None:
        fn(*args, **kwargs)


def make_study(name: str | None, storage, *, seed: int = 0, objective: str = "tow",
               load_if_exists: bool = True, startup_trials: int = 10) -> optuna.Study:
    """A study with a seeded multivariate TPE sampler and the median pruner, in the direction the
    objective's metric declared (`tow+cost`: two directions, no pruning). `storage`: an Optuna
    storage object or URL, or None (in memory). `startup_trials`: trials drawn at random before TPE
    models the scores (Optuna's default, 10; at 10-16 trials a study is mostly random search:
    bench/bench_sampler.py measures what fewer buys)."""
    directions, _ = objective_directions(objective)
    with warnings.catch_warnings():  # multivariate/group TPE are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = ExploreAfterRepeat(optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                                                n_startup_trials=startup_trials), seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner, directions=directions,
                               load_if_exists=load_if_exists)


class ExploreAfterRepeat(optuna.samplers.BaseSampler):
    """`base` (the TPE sampler), except that a trial started right after a repeat (a trial whose
    plan an earlier one scored, `repeat_of`) is drawn at random with every `defaults` switch off.

    Why: a repeat copies the earlier score, so the model-based sampler learns nothing from it and
    draws the same point again. Seed 2 of the CPU benchmark's neggrad_plus study drew its defaults
    branch in 8 of its 11 sampled trials (the defaults scored best), and replaying that study with
    this Optuna version and stand-in scores, TPE drew the point 19 more times before leaving it. One random point with
    searched hyperparameters after each repeat keeps a study exploring at a cost of one free
    repeat per scored plan at most. Other trials are the base sampler's."""

    def __init__(self, base: optuna.samplers.BaseSampler, *, seed: int | None = None):
        self.base = base
        self._random = optuna.samplers.RandomSampler(seed=None if seed is None else seed + 7919)
        self._exploring: set[int] = set()  # trial ids drawn at random

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._random.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        earlier = [t for t in study.get_trials(deepcopy=False, states=_STARTED) if t.number < trial.number]
        if earlier and "repeat_of" in max(earlier, key=lambda t: t.number).user_attrs:
            self._exploring.add(trial._trial_id)
        self.base.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        if trial._trial_id in self._exploring:
            return {}
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if trial._trial_id in self._exploring:
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if trial._trial_id not in self._exploring:
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        if param_name.endswith(f".{DEFAULTS_KEY}"):  # the defaults point is the one already known
            return False
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._exploring.discard(trial._trial_id)
        self.base.after_trial(study, trial, state, values)


def optimize(study: optuna.Study, candidates: Callable[[optuna.Trial], Plan], scorer: CalibrationScorer, *,
             n_trials: int, objective: str = "tow", enqueue: Sequence[Mapping[str, Any]] = (),
             observer: TrialObserver | None = None, timeout_s: float | None = None, skip_existing: bool = True) -> None:
    """Run the study until `n_trials` of its trials scored a plan of their own (shared by every worker
    of a named study): the `enqueue`d known-good points first (skipped when a worker already enqueued
    them), then the sampler's. Each trial's plan is stored in its user attribute `plan` and its metrics
    in `metrics`; a plan scored before in the study is not scored again (`repeat_of`: the trial it
    copies) and does not count against `n_trials`: a sampler that keeps drawing one point (a space's
    `defaults` branch) would otherwise spend a study's budget on nothing, and studies compared with
    "the same number of trials" would explore different numbers of plans (`make_study`'s sampler
    draws at random after a repeat). A space with fewer distinct plans than `n_trials` stops after
    `REPEAT_ALLOWANCE` x `n_trials` repeats in a row (`budget_spent`)."""
    check_n_trials(n_trials)
    _, metric = objective_directions(objective)
    if metric is not None and metric not in BUILTIN_METRICS and metric not in (scorer.metrics or ()):
        scorer = dataclasses.replace(scorer, metrics=[*(scorer.metrics or ()), metric])  # a plugin metric's key
    if len(enqueue) > n_trials:
        raise SearchError(f"n_trials={n_trials} is smaller than the {len(enqueue)} known-good starting points "
                          f"(every algorithm at its defaults, whole-set and per tier, and `none`); use "
                          f"n_trials >= {len(enqueue)} or search fewer algorithms")
    multi = objective == TOW_COST
    for params in enqueue:
        # skip_existing=False: a coordinate step that must run exactly this point even where a pruned
        # trial holds its params (it then runs it again rather than letting the sampler draw)
        study.enqueue_trial(dict(params), skip_if_exists=skip_existing)

    def objective_fn(trial: optuna.Trial):
        plan = candidates(trial)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it, in a shared study
        _notify(observer, "trial_started", trial, plan)

        def report(j, mean_so_far):
            if multi:
                return
            trial.report(mean_so_far[objective], j)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{objective} {mean_so_far[objective]:.4f} after calibration set {j + 1}")

        earlier = completed_with_plan(trial.study, trial.user_attrs["plan"])
        passes_before = getattr(scorer, "spent_passes", 0)  # (a stand-in scorer that runs nothing spends nothing)
        try:
            if earlier is not None:  # the sampler drew a plan already scored: the score is deterministic
                trial.set_user_attr("repeat_of", earlier.number)
                metrics = dict(earlier.user_attrs["metrics"])
            else:
                metrics = scorer.run(plan, report=report)
                trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
        except optuna.TrialPruned as exc:
            _notify(observer, "trial_finished", trial, plan, {}, "pruned", str(exc))
            raise
        except Diverged as exc:
            trial.set_user_attr("diverged", str(exc)[:500])
            _notify(observer, "trial_finished", trial, plan, {}, "diverged", str(exc))
            raise
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker ran this trial and finished first
            _notify(observer, "trial_finished", trial, plan, {}, "duplicate", DUPLICATE_REASON)
            raise
        except BaseException as exc:  # an error in a plan or an interrupt: close what the observer opened
            _notify(observer, "trial_finished", trial, plan, {}, "failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:  # what scoring this trial cost, however it ended: the study is the record of a search's cost
            _record_spent(trial, getattr(scorer, "spent_passes", 0) - passes_before)
        _notify(observer, "trial_finished", trial, plan, metrics, "complete")
        if multi:
            return metrics["tow"], metrics.get("cost/train_fraction", metrics["cost/train_passes"])
        return metrics[objective]

    def spent() -> bool:
        return budget_spent(study, n_trials)

    def budget(study: optuna.Study, _trial) -> None:
        if spent():
            study.stop()

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    # Each pass ends at the budget (the callback; the pass's own trial cap is only a safety net), the
    # timeout or a trial another worker finished first; the last can only happen to an enqueued
    # trial (a sampled one is created for one worker), so there are at most as many extra passes as
    # enqueued points, counted generously over racing workers.
    cap = 2 * (1 + REPEAT_ALLOWANCE) * n_trials + len(enqueue)
    for _ in range(1 + 4 * (len(enqueue) + 1)):
        if spent():  # a resumed study that already holds its budget runs nothing
            return
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Optuna warns on enqueued values outside a range
                study.optimize(objective_fn, n_trials=cap, timeout=left,
                               callbacks=[budget], catch=(Diverged,))
            return
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            # SQLite cannot lock the row of an enqueued (WAITING) trial, so two workers that pop it
            # together both run it (PostgreSQL locks it: SELECT ... FOR UPDATE). Whoever finishes
            # second cannot record it (Optuna 5: ValueError "Cannot tell a COMPLETE trial."); the
            # first one's result stands and this worker goes on.
            if isinstance(exc, ValueError) and not str(exc).startswith("Cannot tell a "):
                raise
            continue


DUPLICATE_REASON = ("another worker ran this trial too and finished first (its result stands); only "
                    "a SQLite study lets two workers take the same enqueued trial")
# Repeats in a row, per trial of the budget, after which a study stops short of its budget: a space
# with fewer distinct plans than the budget (`none` and one algorithm without hyperparameters) would
# otherwise draw repeats forever. In a row, because after a repeat the sampler draws at random
# (`ExploreAfterRepeat`), so a space with plans left breaks the run at once. A repeat costs no
# unlearning, only its trial record (and in `mlflow-unlearn search` its nested run).
REPEAT_ALLOWANCE = 1
# The budget counts trials that ran or run, not enqueued ones still WAITING: two workers that join a
# fresh study together can both enqueue the starting points (skip_if_exists is not atomic), and
# counting those duplicates would stop both workers after one trial each.
_STARTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL,
            optuna.trial.TrialState.RUNNING)


# The trial user attribute holding the training-mode example passes scoring the trial spent, over
# every calibration set it ran (a pruned trial: the sets before it was cut; a repeat: 0).
SPENT_PASSES_ATTR = "spent_train_passes"


def _record_spent(trial: optuna.Trial, passes: int) -> None:
    try:
        trial.set_user_attr(SPENT_PASSES_ATTR, int(passes))
    except optuna.exceptions.UpdateFinishedTrialError:  # another worker finished it: its record stands
        pass


def spent_train_passes(study: optuna.Study) -> int:
    """What scoring the study's trials cost, in training-mode example passes: the sum of every
    trial's `spent_train_passes` (complete, pruned, diverged or failed; every worker's, every run's).
    Copied and repeated trials cost nothing. A search's cost read from its study, not from one
    process's counter, so a resumed or shared study counts all of it."""
    return sum(int(t.user_attrs.get(SPENT_PASSES_ATTR, 0)) for t in study.get_trials(deepcopy=False))


def counts_against_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a started trial spends the study's budget: it scored (or is scoring) a plan of its own.
    A repeat (`repeat_of`: a plan an earlier trial scored, its metrics copied) is free."""
    return trial.state in _STARTED and "repeat_of" not in trial.user_attrs and "copied_from" not in trial.user_attrs


def budget_spent(study: optuna.Study, n_trials: int) -> bool:
    """Whether `study` holds its budget: `n_trials` scored plans, or `REPEAT_ALLOWANCE` x `n_trials`
    repeats in a row at its end (a space with fewer plans than the budget)."""
    started = sorted(study.get_trials(deepcopy=False, states=_STARTED), key=lambda t: t.number)
    if sum(counts_against_budget(t) for t in started) >= n_trials:
        return True
    in_a_row = 0
    for t in reversed(started):
        if counts_against_budget(t):
            break
        in_a_row += not is_copied(t)  # a copied trial (a tuned setting) was not drawn by this study
    return in_a_row >= REPEAT_ALLOWANCE * n_trials


def completed_with_plan(study: optuna.Study, plan: dict) -> optuna.trial.FrozenTrial | None:
    """A complete trial of `study` that scored exactly this plan (its `plan` user attribute), or None.
    Scoring is deterministic (fixed seed, data and references), so a repeat (a search space whose
    `defaults` branch the sampler draws again, an enqueued point a worker already ran) costs nothing."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("plan") == plan and "metrics" in t.user_attrs:
            return t
    return None


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial (two objectives: the Pareto point with the best ToW), or None."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    if len(study.directions) > 1:
        return max(study.best_trials, key=lambda t: t.values[0])
    return study.best_trial


def best_plan(study: optuna.Study) -> tuple[Plan, float]:
    t = best_trial(study)
    if t is None:
        raise NoCompletedTrial(f"study {study.study_name!r} has no completed trial (all pruned or diverged); raise n_trials")
    return Plan.from_dict(t.user_attrs["plan"]), t.values[0]


def cheapest_within(study: optuna.Study, tolerance: float = 0.0) -> tuple[Plan, float, float]:
    """The plan a search registers: of the scored plans (complete, not repeats) whose objective is
    within `tolerance` of the best one's, the cheapest (`cost/train_fraction`; ties: the better
    objective, then the earlier trial). With `tolerance` the calibration noise (what a second
    retrain scores against the first on the calibration sets), more compute for a difference no
    retrain could tell apart is not bought; with 0 it is the best plan, the cheapest among equals.
    Returns (plan, its objective, the best objective). Two objectives (tow+cost): on ToW."""
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise SearchError(f"the selection tolerance must be a finite number >= 0, got {tolerance!r}")
    scored = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "plan" in t.user_attrs
              and "repeat_of" not in t.user_attrs]
    if not scored:
        raise NoCompletedTrial(f"study {study.study_name!r} has no completed trial (all pruned or diverged); raise n_trials")
    higher = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    sign = 1.0 if higher else -1.0
    best = max(sign * t.values[0] for t in scored)
    close = [t for t in scored if sign * t.values[0] >= best - tolerance - 1e-12]
    cost = lambda t: t.user_attrs.get("metrics", {}).get("cost/train_fraction", float("inf"))
    chosen = min(close, key=lambda t: (cost(t), -sign * t.values[0], t.number))
    return Plan.from_dict(chosen.user_attrs["plan"]), chosen.values[0], sign * best


def is_enqueued(trial) -> bool:
    """Whether a trial is one of the known-good starting points (Optuna `enqueue_trial` marks them
    with `fixed_params`), not a point the sampler drew."""
    return "fixed_params" in trial.system_attrs


def is_copied(trial) -> bool:
    """Whether a trial was copied from another study (`add_known_trials`), not scored in this one."""
    return "copied_from" in trial.user_attrs


def trial_counts(study: optuna.Study) -> dict[str, float]:
    """How the study's trials ended, and how many plans it scored of each kind: enqueued (the
    known-good starting points) and sampled (drawn by the sampler); repeats are not scored."""
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    scored = [t for t in study.trials if t.state == S.COMPLETE and "repeat_of" not in t.user_attrs]
    return {"n_trials_complete": float(states.count(S.COMPLETE)), "n_trials_pruned": float(states.count(S.PRUNED)),
            "n_trials_failed": float(states.count(S.FAIL)),
            "n_trials_repeat": float(sum("repeat_of" in t.user_attrs for t in study.trials)),
            "n_scored_enqueued": float(sum(is_enqueued(t) for t in scored)),
            "n_scored_sampled": float(sum(not is_enqueued(t) and not is_copied(t) for t in scored)),
            "n_copied": float(sum(is_copied(t) for t in scored))}



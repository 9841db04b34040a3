"""Choosing plans and hyperparameters without peeking: the MLflow-free core of the search.

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
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import optuna
import torch
from torch import nn

from .algorithms import FloatRange, IntRange, search_space
from .ids import check_something_retained, train_ids
from .metrics import (
    BUILTIN_METRICS,
    METRICS,
    MetricInputError,
    evaluate_unlearning,
    floor_key,
    split_outputs,
    objective as metric_objective,
    objectives as metric_objectives,
    outputs_for,
)
from .plans import Plan, PlanStep, ValidatedPlan
from .rum import execute_plan
from .task import ALL_TIER
from .statistics import mean_ci_row, metric_range
from .task import UnlearnTask
from .training import TrainConfig, retrain_from_scratch

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
DEFAULTS_KEY = "defaults"  # the categorical that says "this step runs at the algorithm's defaults"
WHOLE = "whole"  # Optuna parameter prefix of whole-set candidates (tier names may include "all")


class SearchError(ValueError):
    """A search setting that cannot work; the message names it and the fix."""


class NoCompletedTrial(SearchError):
    """Every trial of a study was pruned or diverged: it has no plan to offer."""


class Diverged(RuntimeError):
    """A candidate produced non-finite weights or outputs: the trial fails, the study goes on."""


# --------------------------------------------------------------------------------------------------
# References: a forget set, the model retrained without it, and its outputs


def train_reference(build: Callable[[int], nn.Module], config: TrainConfig, data, forget_ids, *,
                    seed: int) -> tuple[nn.Module, float]:
    """Retrain from scratch on train minus `forget_ids` with the source's recipe (`build(seed)` a
    fresh model, `config` with its seed replaced): the exact answer. Returns (model, seconds)."""
    forget = train_ids(forget_ids, len(data.train), what="the reference's forget set", error=SearchError)
    check_something_retained(len(forget), len(data.train), error=SearchError)
    keep = np.ones(len(data.train), dtype=bool)
    keep[forget] = False
    t0 = time.perf_counter()
    net = retrain_from_scratch(build, config, data, np.flatnonzero(keep), seed=seed)
    if data.device.type == "cuda":
        torch.cuda.synchronize(data.device)
    return net, time.perf_counter() - t0


@dataclass
class Reference:
    """A forget set cut into tiers and the model retrained without it, with the reference's outputs
    on forget, retain and the held-out split (`heldout`: the validation split during selection,
    `None` = the test split when reporting). `retain_ids` (default: train minus the forget set) is
    where retain accuracy is compared: a calibration reference retrained without the union of
    several calibration sets compares retain on train minus that union, the examples it saw."""

    forget_ids: np.ndarray
    tiers: dict[str, np.ndarray]
    model: nn.Module
    outputs: dict
    seconds: float
    heldout: Any = None
    name: str = ""
    retain_ids: np.ndarray | None = None
    task: UnlearnTask | None = None  # the checked task a plan runs on (`build` makes it)

    @classmethod
    def build(cls, model: nn.Module, data, forget_ids, tiers: Mapping[str, Any], *, seconds: float = float("nan"),
              heldout=None, name: str = "", retain_ids=None, task: UnlearnTask | None = None) -> "Reference":
        """`tiers` (name -> ids; their union is `forget_ids`) are checked once here
        (`UnlearnTask.build`) unless `task` is the request's checked task already. `retain_ids`
        (default: train minus the forget set) comes from the same caller: a calibration pool's
        complement."""
        if task is None:
            task = UnlearnTask.build(data, tiers, error=SearchError)
        ids = np.sort(np.asarray(forget_ids, dtype=np.int64))
        retain = task.retain_ids(ids) if retain_ids is None else np.sort(np.asarray(retain_ids, dtype=np.int64))
        outputs = split_outputs(model, data, ids, retain, heldout=heldout)
        return cls(ids, dict(task.tiers), model, outputs, seconds, heldout, name, retain, task)

    def tier_positions(self) -> dict[str, np.ndarray]:
        return {t: np.searchsorted(self.forget_ids, ids) for t, ids in self.tiers.items()}

    def outputs_of(self, model: nn.Module, data) -> dict:
        if self.retain_ids is None:  # a Reference made without `build`: its ids go through the check
            return outputs_for(model, data, self.forget_ids, None, heldout=self.heldout)
        return split_outputs(model, data, self.forget_ids, self.retain_ids, heldout=self.heldout)

    def run(self, model: nn.Module, data, plan: ValidatedPlan, *, seed: int, recipe=None, budget=None):
        """`plan` (validated for these tiers) from `model` on this reference's task."""
        task = self.task if self.task is not None else UnlearnTask.build(data, self.tiers, error=SearchError)
        if recipe is not None:
            task = dataclasses.replace(task, recipe=recipe)
        return execute_plan(model, task, plan, seed=seed, budget=budget)

    def evaluate(self, model: nn.Module, data, *, seed: int = 0, metrics: Sequence[str] | None = None) -> dict[str, float]:
        """Every metric of `model` against this reference (see `metrics.evaluate_unlearning`)."""
        return evaluate_unlearning(self.outputs_of(model, data), self.outputs, tiers=self.tier_positions(), seed=seed,
                                   metrics=metrics)


def noise_floor(second: Reference, first: Reference, data, *, seed: int = 0) -> dict[str, float]:
    """What "as close as retraining" means: a second retrain (another seed, same forget set) scored
    against the first. One `floor/<key>` (`metrics.floor_key`) per score key a registered metric
    declares (`floor/tow`, `floor/tow_pe`, `floor/tow_mia`, `floor/mia_gap`, and a plugin's)."""
    if not np.array_equal(second.forget_ids, first.forget_ids):
        raise SearchError("the noise floor needs two references of the same forget set")
    m = evaluate_unlearning(second.outputs, first.outputs, seed=seed, metrics=METRICS.registered())
    return {floor_key(key): m[key] for key in metric_objectives() if key in m}


# --------------------------------------------------------------------------------------------------
# Candidates

def suggest_step(trial: optuna.Trial, prefix: str, algorithm: str, max_epochs: int) -> dict[str, Any]:
    """Hyperparameters of one plan step: `{}` (the algorithm's defaults) when the trial's
    `<prefix><algorithm>.defaults` is True, else values from the space the algorithm declared when
    it was registered (`algorithms.search_space`; hyperparameters it does not declare stay at
    their defaults)."""
    space = search_space(algorithm)
    if not space:
        return {}
    if trial.suggest_categorical(f"{prefix}{algorithm}.{DEFAULTS_KEY}", [True, False]):
        return {}
    out: dict[str, Any] = {}
    for name, rng in space.items():
        key = f"{prefix}{algorithm}.{name}"
        if isinstance(rng, FloatRange):
            out[name] = trial.suggest_float(key, rng.low, rng.high, log=rng.log)
        elif isinstance(rng, IntRange):
            low, high = rng.bounds(max_epochs)
            out[name] = trial.suggest_int(key, low, high, log=rng.log)
        else:
            out[name] = trial.suggest_categorical(key, list(rng.values))
    return out


def rum_candidates(tiers: Sequence[str], algorithms: Sequence[str], *, max_epochs: int,
                   retain_mode: str = "exclude_all") -> Callable[[optuna.Trial], Plan]:
    """The RUM search space: a whole-set plan or a per-tier plan (see the module docstring)."""
    tiers, algorithms = list(tiers), list(algorithms)
    whole = [a for a in algorithms if a != "none"]

    def candidate(trial: optuna.Trial) -> Plan:
        shape = trial.suggest_categorical("shape", ["per_tier", "whole"] if whole else ["per_tier"])
        if shape == "whole":
            algorithm = trial.suggest_categorical(f"{WHOLE}.algorithm", whole)
            return Plan([PlanStep(ALL_TIER, algorithm, suggest_step(trial, f"{WHOLE}.", algorithm, max_epochs))],
                        retain_mode=retain_mode, name=f"whole-{algorithm}")
        steps = []
        for tier in tiers:
            algorithm = trial.suggest_categorical(f"{tier}.algorithm", algorithms)
            steps.append(PlanStep(tier, algorithm, suggest_step(trial, f"{tier}.", algorithm, max_epochs)))
        return Plan(steps, retain_mode=retain_mode, name="per-tier")

    return candidate


def rum_default_trials(tiers: Sequence[str], algorithms: Sequence[str]) -> list[dict[str, Any]]:
    """The known-good first trials of a RUM search, as Optuna params to enqueue: `none` on every
    tier, then every algorithm at its defaults on the whole set, then every algorithm at its
    defaults on each tier in turn."""
    out = []
    if "none" in algorithms:
        out.append({"shape": "per_tier", **{f"{t}.algorithm": "none" for t in tiers}})
    for a in algorithms:
        if a != "none":
            out.append({"shape": "whole", f"{WHOLE}.algorithm": a, **_defaults_flag(f"{WHOLE}.", a)})
    for a in algorithms:
        if a != "none":
            params = {"shape": "per_tier"}
            for t in tiers:
                params.update({f"{t}.algorithm": a, **_defaults_flag(f"{t}.", a)})
            out.append(params)
    return out


COMPOSED = "composed"  # the default RUM search: per-tier arms built from each algorithm's tuned setting
JOINT = "joint"  # the earlier RUM search: every tier's algorithm and hyperparameters sampled together
STRATEGIES = (COMPOSED, JOINT)


def check_n_trials(n_trials) -> int:
    """The one check of a trial budget (CLI, `main`, `search` and `optimize` all call it)."""
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials <= 0:
        raise SearchError(f"n_trials must be a positive number of trials, got {n_trials!r}")
    return n_trials


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise SearchError(f"unknown search strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    return strategy


def algorithm_candidates(algorithm: str, *, max_epochs: int,
                         retain_mode: str = "exclude_all") -> Callable[[optuna.Trial], Plan]:
    """One algorithm on the whole forget set, its hyperparameters searched: a tuned baseline."""

    def candidate(trial: optuna.Trial) -> Plan:
        return Plan([PlanStep(ALL_TIER, algorithm, suggest_step(trial, "", algorithm, max_epochs))],
                    retain_mode=retain_mode, name=f"tuned-{algorithm}")

    return candidate


def algorithm_default_trials(algorithm: str) -> list[dict[str, Any]]:
    return [_defaults_flag("", algorithm)] if search_space(algorithm) else [{}]


def _defaults_flag(prefix: str, algorithm: str) -> dict[str, Any]:
    return {f"{prefix}{algorithm}.{DEFAULTS_KEY}": True} if search_space(algorithm) else {}


# --------------------------------------------------------------------------------------------------
# Scoring a candidate on the calibration sets


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


def _finite_model(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@dataclass
class CalibrationScorer:
    """Scores a plan: run it from `model` on every calibration reference's forget set (seed `seed`),
    evaluate against that reference (held-out term from the validation split), average over sets.
    `metrics`: extra registered metric names computed with the built-ins."""

    model: nn.Module
    data: Any
    references: Sequence[Reference]
    seed: int = 0
    metrics: Sequence[str] | None = None
    recipe: Any = None  # algorithms.TrainRecipe: how the source was trained (the `retrain` algorithm replays it)
    budget: Any = None  # compute.Budget every plan runs under (None: unlimited)
    original_passes: int | None = None  # the unit of cost/train_fraction when there is no budget

    def __post_init__(self):
        if not self.references:
            raise SearchError("the search needs at least one calibration reference")
        self.spent_passes = 0  # example passes of every plan this scorer ran, pruned trials included

    def run(self, plan: Plan, *, report: Callable[[int, dict], None] | None = None) -> dict[str, float]:
        """Mean metrics over the calibration sets, plus `time/unlearn_s` (mean seconds per set) and
        the `cost/*` metrics (mean per set; `cost/train_fraction` needs a budget or `original_passes`).
        `report(j, mean_so_far)` is called after each set (pruning); Diverged on non-finite output."""
        per_set: list[dict[str, float]] = []
        seconds, costs = [], []
        plan = Plan.parse(plan).validate(self.references[0].tiers)  # once per plan: every set has these tiers
        for j, ref in enumerate(self.references):
            try:
                result = ref.run(self.model, self.data, plan, seed=self.seed, recipe=self.recipe, budget=self.budget)
                if not _finite_model(result.model):
                    raise Diverged(f"non-finite weights after {plan.to_compact()} on calibration set {j + 1}")
                m = ref.evaluate(result.model, self.data, seed=self.seed, metrics=self.metrics)
            except (MetricInputError, FloatingPointError) as exc:
                raise Diverged(f"{type(exc).__name__}: {exc}") from None
            self.spent_passes += result.train_passes
            per_set.append(m)
            seconds.append(result.seconds)
            costs.append(result.cost(self.original_passes))
            if report is not None:
                report(j, _mean(per_set))
        out = _mean(per_set)
        out["time/unlearn_s"] = float(np.mean(seconds))
        out.update(_mean(costs))
        for j, m in enumerate(per_set):
            out[f"calibration/{j}/tow"] = m.get("tow", float("nan"))
        return out


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


# --------------------------------------------------------------------------------------------------
# Studies


def make_study(name: str | None, storage, *, seed: int = 0, objective: str = "tow",
               load_if_exists: bool = True) -> optuna.Study:
    """A study with a seeded multivariate TPE sampler and the median pruner, in the direction the
    objective's metric declared (`tow+cost`: two directions, no pruning). `storage`: an Optuna
    storage object or URL, or None (in memory)."""
    directions, _ = objective_directions(objective)
    with warnings.catch_warnings():  # multivariate/group TPE are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = ExploreAfterRepeat(optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True), seed=seed)
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


# --------------------------------------------------------------------------------------------------
# Reporting on a held-out request


@dataclass
class MethodReport:
    """A plan run on a held-out request with several unlearning seeds, each scored against the
    request's reference. `unchanged`: every seed's predictions on forget, retain and test equal the
    original model's (the method did nothing visible, whatever its metrics say)."""

    name: str
    plan: Plan
    per_seed: list[dict[str, float]]
    seeds: list[int]
    unchanged: bool
    models: list[nn.Module]

    def values(self, key: str) -> list[float]:
        return [m.get(key, float("nan")) for m in self.per_seed]

    def summary(self, key: str) -> tuple[float, float, float]:
        """Mean and 95% interval over seeds, the interval cut to the metric's range (metric_range)."""
        return mean_ci_row(self.values(key), metric_range(key))


def _predictions(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {split: o.pred for split, o in outputs.items()}


def report_plan(name: str, model: nn.Module, data, reference: Reference, plan: Plan, *, seeds: Sequence[int],
                eval_seed: int = 0, metrics: Sequence[str] | None = None, keep_models: bool = False,
                recipe=None, budget=None, original_passes: int | None = None) -> MethodReport:
    """Run `plan` from `model` on the reference's forget set once per unlearning seed and score each
    result against the reference (MIA member sample: `eval_seed`, the same for every method). Every
    run spends at most `budget` (a compute.Budget; None: unlimited) and logs its `cost/*` metrics
    (fractions need the budget or `original_passes`)."""
    if not seeds:
        raise SearchError("report_plan needs at least one unlearning seed")
    original = _predictions(reference.outputs_of(model, data))
    rows, kept, unchanged = [], [], True
    plan = Plan.parse(plan).validate(reference.tiers)
    for s in seeds:
        result = reference.run(model, data, plan, seed=int(s), recipe=recipe, budget=budget)
        outputs = reference.outputs_of(result.model, data)
        unchanged = unchanged and all(np.array_equal(p, original[k]) for k, p in _predictions(outputs).items())
        m = evaluate_unlearning(outputs, reference.outputs, tiers=reference.tier_positions(), seed=eval_seed,
                                metrics=metrics)
        m["time/unlearn_s"] = result.seconds
        m.update(result.cost(original_passes))
        rows.append(m)
        if keep_models:
            kept.append(result.model)
    return MethodReport(name, plan, rows, [int(s) for s in seeds], unchanged, kept)

"""The composed RUM search: one arm per memorisation tier, chosen by coordinate search over the
settings each algorithm's own tuning found (strategy `composed`, the default). MLflow-free; the
edge is `mlflow_unlearn.search`.

    tuned = {a: best_plan(study_a)[0] for a in algorithms}          # tuning.optimize per algorithm
    arms = compose_arms(["none", *algorithms], tuned)
    add_known_trials(study, [KnownTrial(tuned[a], metrics_a, "tuned-a") for a in ...])
    compose_search(study, tiers, arms, scorer, n_trials=16)
    plan, value, best = tuning.cheapest_within(study)

Why (docs/steps.md, "Selection is not reporting"): at 10-16 trials a sampler over every tier's
algorithm and hyperparameters together (strategy `joint`) found less than tuning one algorithm on
the whole set; composing tuned settings tier by tier keeps each study small, and the tuned
whole-set settings compete in the same study, so the selected plan is never worse on calibration
than the best of them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import optuna

from .plans import Plan, PlanStep
from .task import ALL_TIER
from .tuning import (
    CalibrationScorer,
    TrialObserver,
    budget_spent,
    completed_with_plan,
    counts_against_budget,
    objective_directions,
    optimize,
)


@dataclass(frozen=True)
class KnownTrial:
    """A plan scored by another study on the same calibration sets, scorer seed and budget (a tuned
    baseline's selected setting): copied into a composed study with its metrics, so it competes for
    selection without being run again. `source`: where the score comes from (study and trial)."""

    plan: Plan
    metrics: Mapping[str, float]
    source: str


def compose_arms(algorithms: Sequence[str], tuned: Mapping[str, Plan]) -> dict[str, PlanStep]:
    """The choices of one tier in a composed search, by name: `none`, and every other algorithm at
    its tuned whole-set setting (`tuned[a]`; its defaults where it was not tuned or kept them). A
    tuning starts from the defaults, so on calibration its setting is never worse than them: one
    arm per algorithm keeps the per-tier search short. Tier names are filled in by the search."""
    arms: dict[str, PlanStep] = {}
    for a in algorithms:
        plan = tuned.get(a)
        if a != "none" and plan is not None and len(plan.steps) == 1 and plan.steps[0].algorithm == a:
            arms[a] = PlanStep(ALL_TIER, a, dict(plan.steps[0].hyperparameters))
        else:
            arms[a] = PlanStep(ALL_TIER, a, {})
    return arms


def compose_candidates(tiers: Sequence[str], arms: Mapping[str, PlanStep], *,
                       retain_mode: str = "exclude_all") -> Callable[[optuna.Trial], Plan]:
    """A per-tier plan from one arm per tier (Optuna parameter `<tier>.arm`), hyperparameters fixed
    by the arm."""
    tiers, names = list(tiers), list(arms)

    def candidate(trial: optuna.Trial) -> Plan:
        steps = []
        for tier in tiers:
            arm = arms[trial.suggest_categorical(f"{tier}.arm", names)]
            steps.append(PlanStep(tier, arm.algorithm, dict(arm.hyperparameters)))
        return Plan(steps, retain_mode=retain_mode, name="per-tier")

    return candidate


def compose_default_trials(tiers: Sequence[str], arms: Mapping[str, PlanStep]) -> list[dict[str, Any]]:
    """The first trials of a composed search: every arm on every tier (`none` first), i.e. the
    paper's sequential variant of each tuned algorithm. Whole-set settings are not run again: they
    come in as `KnownTrial`s."""
    names = sorted(arms, key=lambda a: a != "none")
    return [{f"{t}.arm": name for t in tiers} for name in names]


def compose_search(study: optuna.Study, tiers: Sequence[str], arms: Mapping[str, PlanStep], scorer: CalibrationScorer,
                   *, n_trials: int, objective: str = "tow", observer: TrialObserver | None = None,
                   timeout_s: float | None = None, retain_mode: str = "exclude_all") -> list[dict[str, str]]:
    """Choose one arm per tier by coordinate search, at most `n_trials` scored plans:

    1. every arm on every tier (`compose_default_trials`); the best is the current assignment;
    2. for each tier, highest memorisation first (where algorithms differ most), every other arm on
       that tier with the other tiers as they are; the best (ties: the cheaper) becomes current;
    3. passes repeat while one changed something and budget is left.

    Why not a sampler: per tier the choice is categorical and tiers interact little (each tier's
    step mostly moves its own examples), so a pass of (arms - 1) x tiers trials visits every
    single-tier change, where TPE over the arms^tiers grid at 10-16 trials left most of it unseen
    (the joint space fared worse still). A pruned or diverged plan is not better. Returns the
    assignments visited in order (tests and logs)."""
    directions, _ = objective_directions(objective)  # tow+cost: ToW decides, cost breaks ties (both are logged)
    sign = 1.0 if directions[0] == "maximize" else -1.0
    tiers, names = list(tiers), list(arms)
    candidates = compose_candidates(tiers, arms, retain_mode=retain_mode)
    if isinstance(study.pruner, optuna.pruners.MedianPruner):
        study.pruner = BehindBestPruner()  # only a new best matters here, not beating the median
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: dict[tuple, tuple[float, float] | None] = {}  # assignment -> (signed objective, cost), None: not better
    visited: list[dict[str, str]] = []
    for t in study.get_trials(deepcopy=False):  # a resumed study: what it scored before
        key = tuple(t.params.get(f"{tier}.arm") for tier in tiers)
        if None not in key and t.state != optuna.trial.TrialState.RUNNING:
            seen[key] = _composed_score(t, sign) if t.state == optuna.trial.TrialState.COMPLETE else None

    def score(assignment: tuple) -> tuple[float, float] | None:
        if assignment not in seen:
            if budget_spent(study, n_trials) or (deadline is not None and time.monotonic() >= deadline):
                raise _Exhausted
            before = {t.number for t in study.get_trials(deepcopy=False)}
            params = {f"{tier}.arm": arm for tier, arm in zip(tiers, assignment)}
            optimize(study, candidates, scorer, n_trials=_scored(study) + 1, objective=objective, enqueue=[params],
                     observer=observer, timeout_s=None if deadline is None else max(1.0, deadline - time.monotonic()),
                     skip_existing=False)
            mine = [t for t in study.get_trials(deepcopy=False) if t.number not in before and t.params == params]
            done = [t for t in mine if t.state == optuna.trial.TrialState.COMPLETE]
            seen[assignment] = _composed_score(done[0], sign) if done else None
            visited.append(params)
        return seen[assignment]

    def better(a, b) -> bool:  # (signed value, cost): higher value, then lower cost
        return a is not None and (b is None or a[0] > b[0] + 1e-12 or (abs(a[0] - b[0]) <= 1e-12 and a[1] < b[1]))

    current, best = None, None
    try:
        for params in compose_default_trials(tiers, arms):
            assignment = tuple(params[f"{tier}.arm"] for tier in tiers)
            result = score(assignment)
            if current is None or better(result, best):  # (the first start stands while nothing scores)
                current, best = assignment, result
        changed = True
        while changed:
            changed = False
            for i in reversed(range(len(tiers))):  # the last tier is the most memorised one
                for arm in names:
                    if arm == current[i]:
                        continue
                    trial_assignment = current[:i] + (arm,) + current[i + 1:]
                    result = score(trial_assignment)
                    if better(result, best):
                        current, best, changed = trial_assignment, result, True
    except _Exhausted:
        pass
    return visited


class BehindBestPruner(optuna.pruners.BasePruner):
    """Prune a trial whose mean after calibration set j is behind the best complete trial's mean
    after set j (single objective). A coordinate search keeps a plan only if it beats the best, so
    the median (what `make_study`'s pruner compares with) lets through trials that cannot matter and
    cut ones that could: on digits it pruned a per-tier plan at 0.936 after one set while the best
    finished at 0.919. Copied trials (no per-set values) and the first trial are never compared."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                    if step in t.intermediate_values]
        if not complete:
            return False
        higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best = (max if higher else min)(complete, key=lambda t: t.values[0])
        value, reference = trial.intermediate_values[step], best.intermediate_values[step]
        return value < reference if higher else value > reference


class _Exhausted(Exception):
    """The composed search's budget or time is spent."""


def _composed_score(trial: optuna.trial.FrozenTrial, sign: float) -> tuple[float, float]:
    cost = trial.user_attrs.get("metrics", {}).get("cost/train_fraction", math.inf)
    return sign * trial.values[0], float(cost)


def _scored(study: optuna.Study) -> int:
    return sum(counts_against_budget(t) for t in study.get_trials(deepcopy=False))  # started, not repeats


def add_known_trials(study: optuna.Study, known: Sequence[KnownTrial], objective: str = "tow") -> int:
    """Copy scored plans into `study` as complete trials (user attribute `copied_from`), once: a
    resumed study that holds a plan already is left as it is. They compete for selection and are
    free (`counts_against_budget`). Returns how many were added."""
    objective_directions(objective)  # an unknown objective lists the valid ones
    added = 0
    for k in known:
        plan = k.plan.to_dict()
        if completed_with_plan(study, plan) is not None:
            continue
        values = ([float(k.metrics["tow"]), float(k.metrics.get("cost/train_fraction", math.nan))]
                  if len(study.directions) > 1 else [float(k.metrics[objective])])
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, values=values, params={}, distributions={},
            user_attrs={"plan": plan, "metrics": {m: float(v) for m, v in k.metrics.items()},
                        "copied_from": k.source}))
        added += 1
    return added

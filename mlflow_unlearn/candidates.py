"""What a trial can be (docs/design.md section 2, "Search"): the Optuna spaces of a plan.

- `rum_candidates`: a whole-set plan (one algorithm on the whole forget set, tier "all") or a
  per-tier plan (an algorithm per tier, `none` allowed); each step either at the algorithm's
  defaults or with searched hyperparameters. Its first trials (`rum_default_trials`, enqueued) are
  the known-good points: `none` everywhere, every algorithm at its defaults on the whole set, every
  algorithm at its defaults tier by tier. This is strategy `joint`; the default RUM search
  (`composed`) is `mlflow_unlearn.compose`.
- `algorithm_candidates`: one algorithm on the whole set, defaults first: the tuned baseline.

Hyperparameter spaces are declared by each algorithm when it is registered
(`mlflow_unlearn.algorithms.search_space`): epochs at most `max_epochs` (by default `auto`: what the
budget pays for over retain, `budget_epochs`), plus the batch-size bound for the ascent-based methods. An algorithm that declares no space is tried at its defaults.
No mlflow here.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import optuna

from .algorithms import FloatRange, IntRange, search_space
from .plans import Plan, PlanStep
from .task import ALL_TIER

from .scoring import SearchError

DEFAULTS_KEY = "defaults"  # the categorical that says "this step runs at the algorithm's defaults"
WHOLE = "whole"  # Optuna parameter prefix of whole-set candidates (tier names may include "all")




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


AUTO_EPOCHS = "auto"  # max_epochs bounded by the budget (budget_epochs), the default of search and main
FALLBACK_MAX_EPOCHS = 3  # `auto` without a budget to bound it: the bound before budgets existed


def budget_epochs(budget_passes: int, n_retain: int) -> int:
    """The epochs over retain a budget pays for, rounded up (at least 1): the search space's bound on
    `epochs` at `max_epochs auto`. A retain-driven algorithm (finetune, neggrad_plus, salun, scrub,
    ...) asked for more is cut to the budget anyway, so a trial never asks for epochs it cannot get,
    and a tuned setting can spend the whole budget. A fixed bound could not: with 3 epochs a request
    on a model trained 40 epochs spends at most 0.075 of a budget of 0.1 and one trained 182 epochs
    0.016 (finetune's epoch is one pass over retain, about 1/epochs of the original training)."""
    if not isinstance(budget_passes, int) or budget_passes < 1:
        raise SearchError(f"the budget's example passes must be a whole number >= 1, got {budget_passes!r}")
    if not isinstance(n_retain, int) or n_retain < 1:
        raise SearchError(f"the retain set's size must be a whole number >= 1, got {n_retain!r}")
    return max(1, -(-budget_passes // n_retain))


def check_max_epochs(max_epochs) -> int | str:
    """`auto` or a whole number >= 1 (the bound on searched `epochs`)."""
    if max_epochs == AUTO_EPOCHS:
        return max_epochs
    if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
        raise SearchError(f"max_epochs must be {AUTO_EPOCHS!r} (bounded by the budget) or a whole number >= 1, "
                          f"got {max_epochs!r}")
    return max_epochs


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



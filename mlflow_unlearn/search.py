"""The `search` step: Optuna chooses, per memorisation tier, the algorithm and its hyperparameters.

One trial = one RUM plan, run on a calibration forget set and scored against the cached retrained
reference. Each trial is a nested MLflow run (role `trial`) with its params and metrics. The study
lives in an Optuna RDB storage (default: `optuna.db` beside the SQLite tracking database), so several
processes or machines can run `mlflow-unlearn search` with the same `--study-name` and share it.

Search space (per tier, conditional on the algorithm; ranges are wide enough to contain the RUM/SalUn
papers' settings and narrow enough for a small budget):
- `none`: nothing to choose (the paper found it best for low memorisation).
- `finetune`, `l1_sparse`, `random_label`, `salun`: lr log-uniform in [1e-3, 1e-1] (papers: 0.01-0.1),
  epochs in [1, max_epochs]; `l1_sparse` alpha_l1 log-uniform [1e-5, 1e-3] (paper: 5e-4);
  `salun` mask_fraction in [0.1, 0.9] (paper: 0.5).
- `neggrad`: lr log-uniform in [1e-5, 1e-2] (ascent diverges fast; papers: 1e-4).
- `neggrad_plus`: lr in [1e-3, 1e-1], alpha in [0.8, 0.999] (paper: 0.99; lower forgets harder).
- `scrub`: lr log-uniform in [1e-4, 1e-2] (paper: 5e-3), max_steps in [1, 4].
Epochs stop at `max_epochs` (default 5): on the embedded data a retrain takes ~10 epochs, and an
unlearning step that costs as much as a retrain has lost its point.

Objectives: `tow` (default), `tow_mia`, `tow_pe`, or `tow+time` (multi-objective: maximise ToW,
minimise unlearning seconds; Pareto front, no pruning). Pruning (single objective): after each tier
the trial reports the ToW of the model so far; Optuna's median pruner stops hopeless trials.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import mlflow
import numpy as np
import optuna

from . import steps, tracking
from .rum import ALL_TIER, Plan, PlanStep, run_rum
from .tracking import TAG

OBJECTIVES = ("tow", "tow_mia", "tow_pe", "tow+time")
DEFAULT_ALGORITHMS = ("none", "finetune", "neggrad", "neggrad_plus", "l1_sparse", "scrub", "random_label", "salun")


class SearchError(ValueError):
    """A search setting that cannot work; the message names it and the fix."""


def suggest_hyperparameters(trial: optuna.Trial, prefix: str, algorithm: str, max_epochs: int) -> dict[str, Any]:
    """The conditional space of one algorithm (see the module docstring for the reasons)."""
    p = lambda name: f"{prefix}{algorithm}.{name}"
    if algorithm == "none":
        return {}
    if algorithm == "neggrad":
        return {"lr": trial.suggest_float(p("lr"), 1e-5, 1e-2, log=True), "epochs": trial.suggest_int(p("epochs"), 1, max_epochs)}
    if algorithm == "scrub":
        return {"lr": trial.suggest_float(p("lr"), 1e-4, 1e-2, log=True), "epochs": trial.suggest_int(p("epochs"), 1, max_epochs),
                "max_steps": trial.suggest_int(p("max_steps"), 1, 4)}
    hp = {"lr": trial.suggest_float(p("lr"), 1e-3, 1e-1, log=True), "epochs": trial.suggest_int(p("epochs"), 1, max_epochs)}
    if algorithm == "neggrad_plus":
        hp["alpha"] = trial.suggest_float(p("alpha"), 0.8, 0.999)
    elif algorithm == "l1_sparse":
        hp["alpha_l1"] = trial.suggest_float(p("alpha_l1"), 1e-5, 1e-3, log=True)
    elif algorithm == "salun":
        hp["mask_fraction"] = trial.suggest_float(p("mask_fraction"), 0.1, 0.9)
    elif algorithm not in ("finetune", "random_label"):
        # Plugins and algorithms without a declared space are searched with their defaults.
        return {}
    return hp


def default_storage() -> str:
    """A SQLite file beside the SQLite tracking database (or in the working directory)."""
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return "sqlite:///optuna.db"


def open_storage(url: str, *, attempts: int = 5) -> optuna.storages.BaseStorage:
    """Open (and on first use create) an Optuna RDB storage. Two workers starting on a fresh
    database race to create Optuna's schema and one gets an IntegrityError; it waits and opens the
    schema the other one made."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            # heartbeats let another worker fail a trial whose process died, instead of leaving it RUNNING
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == attempts - 1:
                raise SearchError(f"cannot create the Optuna schema in {_redact(url)!r}: {exc}") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # sqlalchemy raises many types for a bad URL
            raise SearchError(f"cannot open the Optuna storage {_redact(url)!r}: {type(exc).__name__}: {exc}; use e.g. "
                              f"sqlite:///optuna.db or postgresql://user@127.0.0.1:5432/db") from None


@dataclass
class SearchResult:
    study_name: str
    storage: str
    best_plan: Plan
    best_value: float
    best_single: dict | None  # the best one-algorithm plan on the whole forget set
    run_id: str
    n_trials: int


class _TrialTiers:
    """RUM callbacks for a trial: after each tier, report the ToW so far and maybe prune."""

    def __init__(self, ctx, reference, trial, objective, prune: bool):
        self.ctx, self.reference, self.trial, self.objective, self.prune = ctx, reference, trial, objective, prune

    def step_started(self, index, step, n_forget, n_retain):
        return None

    def step_finished(self, index, step, record, model):
        if not self.prune:
            return
        value = steps.evaluation_metrics(self.ctx, model, self.reference.model)[self.objective]
        self.trial.report(value, index)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"ToW {value:.4f} after tier {step.tier!r}")


def _objective_values(metrics: dict, seconds: float, objective: str):
    if objective == "tow+time":
        return metrics["tow"], seconds
    return metrics[objective]


def search(ctx: steps.ForgetContext, reference: steps.StepResult, *, n_trials: int = 12, objective: str = "tow",
           algorithms: Sequence[str] = DEFAULT_ALGORITHMS, max_epochs: int = 5, storage: str | None = None,
           study_name: str | None = None, retain_mode: str = "exclude_all", single_trials: int | None = None,
           attach: bool = True, timeout_s: float | None = None) -> SearchResult:
    """Run (or join) the Optuna study; log every trial as a nested run; attach the best plan to the
    registered model so later requests and the registry hook reuse it."""
    from .algorithms import ALGORITHMS

    if not isinstance(n_trials, int) or n_trials <= 0:
        raise SearchError(f"n_trials must be a positive number of trials, got {n_trials!r}")
    if objective not in OBJECTIVES:
        raise SearchError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise SearchError(f"unknown algorithm(s) {unknown} in the search space; registered: {', '.join(ALGORITHMS.names())}")
    if max_epochs < 1:
        raise SearchError(f"max_epochs must be at least 1, got {max_epochs}")
    storage = storage or default_storage()
    store = open_storage(storage)
    tiers = list(ctx.tiers)
    shared = study_name is not None
    study_name = study_name or f"rum-{ctx.source.name}-v{ctx.source.version}-{ctx.forget.digest[:8]}-{objective}"
    multi = objective == "tow+time"
    # Workers joining a named study must not replay each other's random start-up trials.
    sampler_seed = ctx.seed if not shared else ctx.seed * 1_000_003 + os.getpid()
    directions = ["maximize", "minimize"] if multi else ["maximize"]

    def make_study(name):
        # a sampler per study: TPE's grouped search space belongs to one study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=sampler_seed, multivariate=True, group=True)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
        return optuna.create_study(study_name=name, storage=store, sampler=sampler, pruner=pruner, directions=directions,
                                   load_if_exists=True)

    def run_trials(study, plan_for, n, space: str):
        def objective_fn(trial: optuna.Trial):
            plan = plan_for(trial)
            trial.set_user_attr("plan", plan.to_dict())
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            with mlflow.start_run(run_name=f"trial-{space}-{trial.number}", nested=True):
                mlflow.set_tags({**ctx.tags("trial"), TAG + "study": study.study_name, TAG + "trial": str(trial.number),
                                 TAG + "search_space": space, TAG + "algorithm": plan.steps[0].algorithm if space == "single" else "rum"})
                mlflow.log_params({"plan": plan.to_compact()[:500], **{k: v for k, v in trial.params.items()}})
                tier_map = ctx.tiers if space == "per_tier" else {ALL_TIER: ctx.forget.ids}
                try:
                    result = run_rum(ctx.source.model, ctx.data, tier_map, plan, seed=ctx.seed,
                                     callbacks=_TrialTiers(ctx, reference, trial, "tow" if multi else objective, prune=not multi))
                except optuna.TrialPruned:
                    mlflow.set_tag(TAG + "pruned", "true")
                    raise
                metrics = steps.evaluation_metrics(ctx, result.model, reference.model)
                metrics["time/unlearn_s"] = result.seconds
                metrics["time/fraction_of_retrain"] = result.seconds / reference.seconds if reference.seconds else float("nan")
                mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
                mlflow.log_dict(plan.to_dict(), "plan.json")
            return _objective_values(metrics, result.seconds, objective)

        # The budget is the study's, not this worker's: with several workers, they share n trials.
        budget = optuna.study.MaxTrialsCallback(n, states=None)
        study.optimize(objective_fn, n_trials=n, timeout=timeout_s, callbacks=[budget], catch=(FloatingPointError,))

    def per_tier_plan(trial):
        plan_steps = []
        for tier in tiers:
            algorithm = trial.suggest_categorical(f"{tier}.algorithm", list(algorithms))
            plan_steps.append(PlanStep(tier, algorithm, suggest_hyperparameters(trial, f"{tier}.", algorithm, max_epochs)))
        return Plan(plan_steps, retain_mode=retain_mode, name=f"searched-{study_name}")

    def single_plan(trial):
        choices = [a for a in algorithms if a != "none"] or list(algorithms)
        algorithm = trial.suggest_categorical("algorithm", choices)
        return Plan([PlanStep(ALL_TIER, algorithm, suggest_hyperparameters(trial, "", algorithm, max_epochs))],
                    retain_mode=retain_mode, name=f"single-{algorithm}")

    with mlflow.start_run(run_name=f"search-{ctx.source_tag}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({**ctx.tags("search"), TAG + "study": study_name, TAG + "objective": objective})
        steps.log_forget_set(ctx)
        mlflow.log_params({"n_trials": n_trials, "objective": objective, "algorithms": ",".join(algorithms),
                           "max_epochs": max_epochs, "storage": _redact(storage), "study_name": study_name,
                           "reference_run": reference.run_id})
        study = make_study(study_name)
        run_trials(study, per_tier_plan, n_trials, "per_tier")
        best_trial = _best(study, multi)
        if best_trial is None:
            raise SearchError(f"study {study_name!r} has no completed trial (all pruned or failed); raise n_trials")
        best_plan = Plan.from_dict(best_trial.user_attrs["plan"])
        best_value = best_trial.values[0]
        mlflow.log_dict(best_plan.to_dict(), "best_plan.json")
        mlflow.log_metrics({"best/" + (objective if not multi else "tow"): best_value,
                            "n_trials_complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials),
                            "n_trials_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)})

        # The best single algorithm on the whole forget set, with the same budget and reference:
        # the gain of per-tier plans is then visible in this one run.
        best_single = None
        n_single = n_trials if single_trials is None else single_trials
        if n_single > 0:
            single = make_study(study_name + "-single")
            run_trials(single, single_plan, n_single, "single")
            bs = _best(single, multi)
            if bs is not None:
                best_single = {"plan": bs.user_attrs["plan"], "value": bs.values[0]}
                mlflow.log_dict(best_single, "best_single.json")
                mlflow.log_metrics({"best_single/" + (objective if not multi else "tow"): bs.values[0],
                                    "gain_vs_single": best_value - bs.values[0]})
        if attach:
            client = mlflow.MlflowClient()
            client.set_registered_model_tag(ctx.source.name, steps.PLAN_TAG, best_plan.to_json())
            client.set_registered_model_tag(ctx.source.name, steps.PLAN_RUN_TAG, run.info.run_id)
    return SearchResult(study_name, storage, best_plan, best_value, best_single, run.info.run_id, n_trials)


def _best(study: optuna.Study, multi: bool):
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    if multi:  # the Pareto point with the best ToW
        return max(study.best_trials, key=lambda t: t.values[0])
    return study.best_trial


def _redact(url: str) -> str:
    """Do not log passwords of storage URLs."""
    import re

    return re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)


def search_step(model_uri: str, forget, *, n_trials: int = 12, objective: str = "tow", algorithms: Sequence[str] | None = None,
                max_epochs: int = 5, storage: str | None = None, study_name: str | None = None, seed: int = 0,
                single_trials: int | None = None, device: str | None = "auto", experiment: str | None = None) -> SearchResult:
    if not isinstance(n_trials, int) or n_trials <= 0:  # before loading anything
        raise SearchError(f"n_trials must be a positive number of trials, got {n_trials!r}")
    if storage:
        open_storage(storage)
    ctx = steps.prepare(model_uri, forget, seed=seed, device=device)
    tracking.use_experiment(experiment)
    reference = steps.retrain(ctx)
    result = search(ctx, reference, n_trials=n_trials, objective=objective, algorithms=tuple(algorithms or DEFAULT_ALGORITHMS),
                    max_epochs=max_epochs, storage=storage, study_name=study_name, single_trials=single_trials)
    print(f"best plan ({objective} {result.best_value:.4f}): {result.best_plan.to_compact()}")
    if result.best_single:
        print(f"best single algorithm: {Plan.from_dict(result.best_single['plan']).to_compact()} ({result.best_single['value']:.4f})")
    print(f"attached to registered model {ctx.source.name!r} as tag {steps.PLAN_TAG}")
    return result

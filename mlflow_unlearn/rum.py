"""RUM, the Refined-Unlearning Meta-algorithm (docs/design.md section 2): a forget set cut into tiers by
memorisation, each tier unlearned by its own algorithm, in order, carrying the model from step to step.

    from mlflow_unlearn.rum import Plan, run_rum, default_plan
    plan = Plan.parse("low=finetune(epochs=2);mid=neggrad_plus;high=neggrad_plus(alpha=0.95)")
    result = run_rum(model, data, {"low": low_ids, "mid": mid_ids, "high": high_ids}, plan, seed=0)
    result.model, result.steps[0].seconds

Plans themselves (the schema, its forms, validation, the plans the system builds) are in
`mlflow_unlearn.plans`; they are re-exported here, the names the examples above use.

No mlflow here (docs/design.md section 3): the edge reports progress through `RumCallbacks`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from .algorithms import TrainRecipe, is_exact, run_validated
from .compute import Budget, BudgetError, ComputeMeter
from .data import ImageData
from .plans import (  # noqa: F401 (re-exported: `from mlflow_unlearn.rum import Plan, run_rum, default_plan`)
    DEFAULT_RETAIN_MODE,
    RETAIN_MODES,
    Plan,
    PlanError,
    PlanStep,
    ValidatedPlan,
    all_tier,
    default_plan,
    plain_value,
    single_algorithm_plan,
    stronger_plan,
    whole_set_tiers,
)
from .progress import MetricLogger
from .task import ALL_TIER, UnlearnTask  # noqa: F401 (ALL_TIER: the one tier of a whole-set plan)


# --------------------------------------------------------------------------------------------------
# Running


class RumCallbacks(Protocol):
    """What `run_rum` reports to, between steps. Either method may be left out.

    `step_started` returns the logger the step's algorithm writes its per-epoch metrics to (or
    None); `step_finished` gets the step's record and the model after the step (do not change it:
    the next step starts from it). The MLflow edge opens a nested run per step here.
    """

    def step_started(self, index: int, step: PlanStep, n_forget: int, n_retain: int) -> MetricLogger | None: ...

    def step_finished(self, index: int, step: PlanStep, record: "StepRecord", model: nn.Module) -> None: ...


class NullCallbacks:
    def step_started(self, index, step, n_forget, n_retain):
        return None

    def step_finished(self, index, step, record, model) -> None:
        pass


@dataclass
class StepRecord:
    """One executed step: which tier, algorithm, the complete hyperparameters, the seed, the ids it
    forgot and retained (CPU tensors of train ids) and the algorithm's wall time in seconds; its
    compute: example passes (`train_passes`), eval passes, the limit it ran under (None: unlimited)
    and whether the meter stopped it there."""

    index: int
    tier: str
    algorithm: str
    hyperparameters: dict[str, Any]
    seed: int
    forget_ids: torch.Tensor
    retain_ids: torch.Tensor
    seconds: float
    train_passes: int = 0
    eval_passes: int = 0
    limit: int | None = None
    stopped_at_limit: bool = False

    @property
    def n_forget(self) -> int:
        return int(self.forget_ids.numel())

    @property
    def n_retain(self) -> int:
        return int(self.retain_ids.numel())

    def to_dict(self) -> dict[str, Any]:
        """A summary without the ids (counts instead), for logs and tags."""
        return {"index": self.index, "tier": self.tier, "algorithm": self.algorithm,
                "hyperparameters": {k: plain_value(v) for k, v in self.hyperparameters.items()}, "seed": self.seed,
                "n_forget": self.n_forget, "n_retain": self.n_retain, "seconds": self.seconds,
                "train_passes": self.train_passes, "eval_passes": self.eval_passes, "limit": self.limit}


@dataclass
class RumResult:
    """The unlearned model, one record per step (in plan order), the validated plan (complete
    hyperparameters), `seconds`: the sum of the steps' algorithm times (callbacks not counted), and
    the budget it ran under (None: unlimited)."""

    model: nn.Module
    steps: list[StepRecord]
    seconds: float
    plan: Plan
    budget: Budget | None = None

    @property
    def retain_mode(self) -> str:
        return self.plan.retain_mode

    @property
    def train_passes(self) -> int:
        return sum(s.train_passes for s in self.steps)

    @property
    def eval_passes(self) -> int:
        return sum(s.eval_passes for s in self.steps)

    def cost(self, original_passes: int | None = None) -> dict[str, float]:
        """The `cost/*` metrics: example and eval passes, and both as fractions of the original
        training's example passes (the budget's unit, or `original_passes`), plus the budget."""
        unit = original_passes or (self.budget.original_passes if self.budget is not None else None)
        out = {"cost/train_passes": float(self.train_passes), "cost/eval_passes": float(self.eval_passes)}
        if unit:
            out["cost/train_fraction"] = self.train_passes / unit
            out["cost/eval_fraction"] = self.eval_passes / unit
        if self.budget is not None:
            out["cost/budget"] = self.budget.fraction
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "seconds": self.seconds, "steps": [s.to_dict() for s in self.steps],
                "budget": None if self.budget is None else self.budget.fraction,
                "train_passes": self.train_passes, "eval_passes": self.eval_passes}


def run_rum(model: nn.Module, data: ImageData, tiers: Mapping[str, Any], plan: Plan | str | Mapping, *,
            seed: int = 0, callbacks: RumCallbacks | None = None, recipe: TrainRecipe | None = None,
            augment: bool = False, forgotten: Any = None, budget: Budget | None = None) -> RumResult:
    """Unlearn every tier of `tiers` (name -> train ids) from a copy of `model`, following `plan`:
    the Python API's edge. The ids are checked once (`task.UnlearnTask.build`: disjoint tiers,
    none of `forgotten`, something left to retain) and the plan once (`Plan.validate`), then
    `execute_plan` runs. A plan whose only step is on tier "all" unlearns the union of the tiers in
    one step, so a whole-set plan runs against any tiering of the same request.

    `recipe` (how the source model was trained, a `mlflow_unlearn.algorithms.TrainRecipe`) and
    `augment` (augment unlearning batches; off by default) go into every step's `UnlearnData`.
    `forgotten`: train ids earlier requests already removed from `model` (requests accumulate on
    the served version): never in any step's retain set, and never in a tier.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    plan = Plan.parse(plan)
    if not isinstance(tiers, Mapping):
        raise TypeError(f"tiers must be a mapping of tier name -> train ids, got {type(tiers).__name__}")
    task = UnlearnTask.build(data, whole_set_tiers(plan, tiers), forgotten=forgotten, recipe=recipe, augment=augment,
                             error=PlanError)
    return execute_plan(model, task, plan.validate(task.tiers), seed=seed, callbacks=callbacks, budget=budget)


def execute_plan(model: nn.Module, task: UnlearnTask, plan: ValidatedPlan, *, seed: int = 0,
                 callbacks: RumCallbacks | None = None, budget: Budget | None = None) -> RumResult:
    """Run a validated plan on a checked task from a copy of `model`; nothing is checked again.

    Steps run in plan order; step k forgets its tier's ids with its algorithm (through
    `algorithms.run_validated`, seed `seed + k`) starting from the model step k-1 returned. The retain set
    follows the plan's retain mode and never holds `task.forgotten`. A whole-set plan (one step on
    tier "all") runs on the task's tiers merged into one. The caller's model never changes.

    `budget` (a `compute.Budget`; None: unlimited) is divided over the steps as they run: step k may
    spend what is left of the budget times its share of the forget examples still to come
    (its tier's size over the sizes of steps k..end), so a step that spends less than its share
    (`none` spends 0) leaves the rest to the steps after it, and the plan never spends more than
    the budget. Exact steps (`retrain`) are counted but not limited. A step whose share pays for no
    optimiser step raises BudgetError naming about the smallest budget that would.
    """
    if not isinstance(plan, ValidatedPlan):
        raise TypeError(f"execute_plan runs a ValidatedPlan (`plan.validate(task.tiers)`), got {type(plan).__name__}")
    if plan.tiers == [ALL_TIER]:
        task = task.merged()
    if set(plan.tiers) != set(task.tiers):  # a plan validated for another request's tiers
        raise PlanError(f"the plan has steps for tiers {plan.tiers}, the task has tiers {list(task.tiers)}; validate "
                        f"it for this task (`plan.validate(task.tiers)`)")
    callbacks = callbacks if callbacks is not None else NullCallbacks()
    data = task.data
    started = getattr(callbacks, "step_started", None)
    finished = getattr(callbacks, "step_finished", None)
    current, records = model, []
    excluded = task.forgotten  # shrinking retain: what is out of retain so far
    sizes = [len(task.tiers[step.tier]) for step in plan.steps]
    spent = 0
    for k, step in enumerate(plan.steps):
        forget = task.tiers[step.tier]
        excluded = np.union1d(excluded, forget)
        retain = task.retain_ids(None if plan.retain_mode == "exclude_all" else excluded)
        log = started(k, step, len(forget), len(retain)) if started is not None else None
        unlearn = task.unlearn_data(forget, retain)
        limit = None
        if budget is not None and not is_exact(step.algorithm):
            left = max(budget.passes - spent, 0)
            limit = int(left * sizes[k] // max(sum(sizes[k:]), 1))
        meter = ComputeMeter(limit, unit=None if budget is None else budget.original_passes)
        t0 = time.perf_counter()
        try:
            current = run_validated(step.algorithm, current, unlearn, step.hyperparameters, seed=seed + k, log=log,
                                    meter=meter)
            if data.device.type == "cuda":
                torch.cuda.synchronize(data.device)
        except BudgetError as exc:
            share = sizes[k] / max(sum(sizes[k:]), 1)
            raise _plan_budget_error(exc, budget, limit, share, spent, k, step, len(plan.steps)) from None
        except Exception as exc:
            if hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(f"in RUM step {k + 1}/{len(plan.steps)}: tier {step.tier!r}, algorithm {step.algorithm!r}")
            raise
        seconds = time.perf_counter() - t0
        spent += meter.train_passes
        record = StepRecord(k, step.tier, step.algorithm, dict(step.hyperparameters), seed + k,
                            torch.as_tensor(np.array(forget), dtype=torch.long),
                            torch.as_tensor(retain, dtype=torch.long), seconds, meter.train_passes,
                            meter.eval_passes, limit, meter.stopped_at_limit)
        records.append(record)
        if finished is not None:
            finished(k, step, record, current)
    return RumResult(current, records, math.fsum(r.seconds for r in records), plan, budget)


def _plan_budget_error(exc: BudgetError, budget: Budget | None, limit: int | None, share: float, spent: int, k: int,
                       step: PlanStep, n_steps: int) -> BudgetError:
    """A step's BudgetError restated for the whole request. The step may spend `share` of what the
    steps before it left, so it gets `needed` passes once the request's budget pays for
    spent + needed / share (rounded up to 4 decimals)."""
    where = f"RUM step {k + 1}/{n_steps} (tier {step.tier!r}, {step.algorithm})"
    if budget is None or not exc.needed or share <= 0:
        return BudgetError(f"{where}: {exc}", needed=exc.needed, limit=exc.limit)
    smallest = math.ceil((spent + exc.needed / share) / budget.original_passes * 1e4) / 1e4
    fix = (f"the smallest budget that gives this step one is about {smallest:g} (--budget {smallest:g})" if smallest <= 1
           else "no budget up to one training does: use fewer tiers, or `none` on this tier")
    return BudgetError(f"a budget of {budget.fraction:g} of the original training is too small for {where}: its share "
                       f"is {limit} example passes and one optimiser step needs {exc.needed}; {fix}",
                       needed=exc.needed, limit=limit)


__all__ = [
    "ALL_TIER",
    "DEFAULT_RETAIN_MODE",
    "NullCallbacks",
    "Plan",
    "PlanError",
    "PlanStep",
    "RETAIN_MODES",
    "RumCallbacks",
    "RumResult",
    "StepRecord",
    "ValidatedPlan",
    "all_tier",
    "default_plan",
    "execute_plan",
    "run_rum",
    "single_algorithm_plan",
    "stronger_plan",
]

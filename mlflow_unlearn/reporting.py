"""Reporting a plan on a held-out request: run it from the source model once per unlearning seed
and score each result against the request's retrained reference (`report_plan` ->
`MethodReport`: mean and interval per metric, whether it changed anything). Reported numbers come
from forget sets and the test split that no selection touched. No mlflow here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from torch import nn

from .metrics import evaluate_unlearning
from .plans import Plan
from .statistics import mean_ci_row, metric_range

from .scoring import Reference, SearchError


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

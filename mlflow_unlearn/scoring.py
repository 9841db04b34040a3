"""Scoring a plan without peeking (docs/design.md section 2, "Selection is not reporting"): a
calibration forget set with the model retrained without it (`Reference`), and `CalibrationScorer`,
which runs a plan on every calibration set and averages its metrics against their references; the
held-out term comes from the validation split. The errors every part of the search raises live here.
No mlflow here.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Mapping,
    Sequence,
)

import numpy as np
import torch
from torch import nn

from .ids import check_something_retained, train_ids
from .metrics import (
    METRICS,
    MetricInputError,
    evaluate_unlearning,
    floor_key,
    objectives as metric_objectives,
    outputs_for,
    split_outputs,
)
from .plans import Plan, ValidatedPlan
from .rum import execute_plan
from .task import UnlearnTask
from .training import TrainConfig, retrain_from_scratch

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
# Scoring a candidate on the calibration sets


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



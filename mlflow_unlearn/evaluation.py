"""Evaluating an unlearned model against its retrained reference (docs/design.md section 4's metrics,
every registered metric, the retrain-vs-retrain noise floor, the per-tier chart), logged to a run
with role `evaluate` and copied onto the evaluated run."""
from __future__ import annotations

import time

import mlflow
import numpy as np
import torch

from . import tracking
from .metrics import METRICS, embeddings, entanglement_score, evaluate_unlearning, shown_keys, split_outputs
from .plots import tier_accuracy_chart
from .references import retrain
from .request import ForgetContext
from .runs import StepResult, load_run_model, step_run
from .tags import Role, Tag
from .training import predict_logits
from .tuning import Reference, noise_floor as floor_of


def evaluation_metrics(ctx: ForgetContext, model: torch.nn.Module, reference: torch.nn.Module | None,
                       metrics=None) -> dict[str, float]:
    """The metrics of `model` against `reference`: the built-ins plus `metrics` (registered names;
    default: every registered metric, plugins included)."""

    u = outputs_of(ctx, model)
    r = outputs_of(ctx, reference) if reference is not None else None
    return evaluate_unlearning(u, r, tiers=ctx.tier_positions(), seed=ctx.seed,
                               metrics=METRICS.registered() if metrics is None else metrics)


def forget_tier_accuracy(ctx: ForgetContext, model: torch.nn.Module) -> dict[str, float]:
    """Accuracy of `model` on each tier of the forget set, and on all of it (`all`)."""

    # a copy: the checked ids are a read-only array, which torch warns about when it shares memory
    ids = torch.tensor(ctx.forget.ids, device=ctx.data.device)
    split = ctx.data.train.subset(ids)
    correct = (predict_logits(model.to(ctx.data.device), ctx.data, split).argmax(1) == split.y).cpu().numpy()
    positions = ctx.tier_positions()
    out = {t: float(correct[pos].mean()) for t, pos in positions.items() if len(pos)}
    out["all"] = float(correct.mean())
    return out


def tier_chart(ctx: ForgetContext, model: torch.nn.Module, reference: torch.nn.Module, label: str):
    """The per-tier forget accuracy of the original, `model` and the reference, as a figure."""

    if "original_tier_acc" not in ctx.cache:
        ctx.cache["original_tier_acc"] = forget_tier_accuracy(ctx, ctx.source.model)
    unlearned, ref = forget_tier_accuracy(ctx, model), forget_tier_accuracy(ctx, reference)
    per_tier = {t: {"original": ctx.cache["original_tier_acc"][t], "unlearned": unlearned[t], "reference": ref[t]}
                for t in unlearned}
    return tier_accuracy_chart(per_tier, title=f"{label}: forget-set accuracy per memorisation tier "
                                               f"({len(ctx.forget)} examples; reference = retrained without them)")


def entanglement(ctx: ForgetContext) -> float:
    """Entanglement score of forget vs retain in the source model's penultimate layer (docs/design.md
    section 2: higher = harder to unlearn); a property of the request, computed once per context."""

    if "entanglement" not in ctx.cache:
        ud = ctx.unlearn_data()
        model = ctx.source.model.to(ctx.data.device)
        ctx.cache["entanglement"] = entanglement_score(embeddings(model, ctx.data, ud.forget), embeddings(model, ctx.data, ud.retain))
    return ctx.cache["entanglement"]


def noise_floor(ctx: ForgetContext, reference: StepResult) -> dict[str, float]:
    """Retrain vs retrain: a second reference (seed + 1, cached like every retrain) scored against
    `reference`, so a reader sees what "as close as retraining" means for ToW, ToW-PE and the MIA
    gap (`floor/*` keys). Computed once per context and reference."""

    key = ("floor", reference.run_id)
    if key not in ctx.cache:
        second = retrain(ctx, seed=ctx.seed + 1)
        first_outputs = outputs_of(ctx, reference.model)
        second_outputs = outputs_of(ctx, second.model)
        ctx.cache[key] = {**floor_of(_as_reference(ctx, second, second_outputs), _as_reference(ctx, reference, first_outputs),
                                     ctx.data, seed=ctx.seed), "floor/retrain_seed": float(ctx.seed + 1)}
        ctx.cache[("floor_run", reference.run_id)] = second.run_id
    return ctx.cache[key]


def outputs_of(ctx: ForgetContext, model: torch.nn.Module) -> dict:
    """Forget / retain / test outputs; retain leaves out what earlier requests forgot (ctx.retain_ids)."""
    return split_outputs(model, ctx.data, ctx.forget.ids, ctx.retain_ids)  # the request's checked ids


def _as_reference(ctx: ForgetContext, result: StepResult, outputs: dict):
    return Reference(np.asarray(ctx.forget.ids), dict(ctx.tiers), result.model, outputs, result.seconds, task=ctx.task)


def evaluate(ctx: ForgetContext, unlearned_run_id: str, reference: StepResult, *, model: torch.nn.Module | None = None,
             label: str | None = None, floor: bool = True) -> dict[str, float]:
    """Every metric of docs/design.md section 4 for an unlearned run against the retrained reference,
    plus the retrain-vs-retrain noise floor (`floor/*`, unless `floor=False`), logged to a run with
    role `evaluate` and copied onto the unlearned run, so runs compare in the UI."""
    client = mlflow.MlflowClient()
    u_run = client.get_run(unlearned_run_id)
    model = model if model is not None else load_run_model(unlearned_run_id).to(ctx.data.device)
    metrics = evaluation_metrics(ctx, model, reference.model)
    if floor:
        metrics.update(noise_floor(ctx, reference))
    # Cost in trainings, as the unlearning run counted it; no ratio of seconds: the unlearning and
    # the reference ran in different processes (often on different loads), so it would mean nothing.
    metrics["time/unlearn_s"] = u_run.data.metrics.get("time/unlearn_s", float("nan"))
    metrics["time/retrain_s"] = reference.seconds
    metrics["cost/train_fraction"] = u_run.data.metrics.get("cost/train_fraction", float("nan"))
    metrics["entanglement"] = entanglement(ctx)
    algorithm = u_run.data.tags.get(Tag.ALGORITHM, "?")
    with step_run(f"evaluate-{label or algorithm}"):
        mlflow.set_tags({**ctx.tags(Role.EVALUATE), Tag.ALGORITHM: algorithm, Tag.EVALUATED_RUN: unlearned_run_id,
                         Tag.REFERENCE_RUN: reference.run_id})
        # What was evaluated, as params, so the compare page lines evaluate runs up by method.
        evaluated = {k: v for k, v in u_run.data.params.items() if k in ("algorithm", "plan", "plan.resolved", "retain_mode")
                     or k.startswith("hp.")}
        tracking.log_params({"algorithm": algorithm, **evaluated, "evaluated_run": unlearned_run_id})
        mlflow.log_metrics(metrics)
        fig = tier_chart(ctx, model, reference.model, label or algorithm)
        mlflow.log_figure(fig, "plots/tiers.png")
    client.log_figure(unlearned_run_id, fig, "plots/tiers.png")
    client.log_batch(unlearned_run_id, metrics=[mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0)
                                                for k, v in metrics.items() if np.isfinite(v) and k != "time/unlearn_s"])
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """One line: every shown metric key (metrics.Shown) the run has, then its cost."""
    keys = [*shown_keys(), "cost/train_fraction"]
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)

"""`main`: the whole pipeline on one dataset, as the README's main job.

train + register -> mix forget set -> retrained reference -> Optuna search for a per-tier plan ->
RUM with the best plan (registered as a new version) -> vanilla baselines -> evaluate all against
the same reference -> a table, also logged as `summary.md` on the parent run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import mlflow

from . import steps, tracking
from .rum import ALL_TIER, Plan
from .tracking import TAG

DEFAULT_BASELINES = ("finetune", "neggrad", "neggrad_plus", "l1_sparse", "scrub", "random_label", "salun")
TABLE_KEYS = (("ToW", "tow"), ("ToW-MIA", "tow_mia"), ("MIA gap", "mia/gap"), ("ToW-PE", "tow_pe"),
              ("forget acc", "forget/acc"), ("test acc", "test/acc"), ("seconds", "time/unlearn_s"),
              ("x retrain time", "time/fraction_of_retrain"))


def format_table(rows: list[tuple[str, dict]], reference_seconds: float) -> str:
    head = "| method | " + " | ".join(h for h, _ in TABLE_KEYS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_KEYS) + 1)]
    for name, m in rows:
        cells = []
        for _, key in TABLE_KEYS:
            v = m.get(key, float("nan"))
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.2f}" if key.startswith("time/unlearn") else f"{v:.4f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| retrain (reference) | 1.0000 | 1.0000 | 0.0000 | 1.0000 | - | - | {reference_seconds:.2f} | 1.0000 |")
    return "\n".join(lines)


def main_step(*, dataset: str = "digits", model: str = "small_cnn", epochs: int = 15, lr: float = 0.05, batch_size: int = 64,
              width: int | None = None, subset: int | None = None, forget: str = "mix:90", n_trials: int = 8,
              single_trials: int | None = None, max_epochs: int = 3, objective: str = "tow",
              baselines: Sequence[str] = DEFAULT_BASELINES, seed: int = 0, registered_model_name: str | None = None,
              storage: str | None = None, device: str | None = "auto", experiment: str | None = None) -> dict:
    from .algorithms import ALGORITHMS
    from .search import SearchError, search

    # Validate what would otherwise fail minutes in.
    unknown = [b for b in baselines if b not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown baseline algorithm(s) {unknown}; registered: {', '.join(ALGORITHMS.names())}")
    if n_trials <= 0:
        raise SearchError(f"n_trials must be a positive number of trials, got {n_trials}")
    t_start = time.perf_counter()
    tracking.connect()
    tracking.use_experiment(experiment)
    with mlflow.start_run(run_name="main", nested=False) as parent:
        mlflow.set_tag(TAG + "role", "pipeline")
        original = steps.train_step(dataset=dataset, model=model, epochs=epochs, lr=lr, batch_size=batch_size, width=width,
                                    subset=subset, seed=seed, registered_model_name=registered_model_name, device=device,
                                    progress=False)
        ctx = steps.prepare(original.model_uri, forget, seed=seed, device=device)
        print(f"forget set {forget}: {len(ctx.forget)} examples, tiers {ctx.histogram}")
        reference = steps.retrain(ctx)
        print(f"retrained reference: {reference.seconds:.1f} s")
        found = search(ctx, reference, n_trials=n_trials, single_trials=single_trials, max_epochs=max_epochs,
                       objective=objective, storage=storage)
        print(f"searched plan: {found.best_plan.to_compact()}  ({objective} {found.best_value:.4f})")

        rows = []
        rum = steps.rum(ctx, found.best_plan, register=True, run_name="rum-searched")
        rows.append(("RUM (searched plan)", steps.evaluate(ctx, rum.run_id, reference, model=rum.model, label="rum")))
        if found.best_single:
            # The best single algorithm the search found, on the whole forget set: the per-tier gain in one table.
            single_plan = Plan.from_dict(found.best_single["plan"])
            whole = dataclasses.replace(ctx, tiers={ALL_TIER: ctx.forget.ids})
            single = steps.rum(whole, single_plan, run_name="best-single-searched")
            rows.append((f"{single_plan.steps[0].algorithm} (searched, single)",
                         steps.evaluate(ctx, single.run_id, reference, model=single.model, label="best-single")))
        for algorithm in baselines:
            result = steps.unlearn(ctx, algorithm, {})
            rows.append((f"{algorithm} (vanilla)", steps.evaluate(ctx, result.run_id, reference, model=result.model)))
        source_metrics = steps.evaluation_metrics(ctx, ctx.source.model, reference.model)
        source_metrics.update({"time/unlearn_s": 0.0, "time/fraction_of_retrain": 0.0})
        rows.append(("original (no unlearning)", source_metrics))
        table = format_table(rows, reference.seconds)
        mlflow.log_text(table + "\n", "summary.md")
        mlflow.log_metric("time/pipeline_s", time.perf_counter() - t_start)
    print()
    print(f"{dataset} / {model}: forget {forget} ({len(ctx.forget)} examples), seed {seed}; original train acc "
          f"{original.history[-1]['train/acc']:.4f}")
    print(table)
    print(f"\nRUM model registered as models:/{ctx.source.name}/{rum.version} (source version {ctx.source.version}); "
          f"pipeline run {parent.info.run_id}, {time.perf_counter() - t_start:.0f} s")
    print(steps.ui_hint())
    return {"original": original, "rum": rum, "rows": rows, "search": found, "table": table}

"""`main`: the whole pipeline on one dataset, as the README's main job, with selection kept apart
from reporting (docs/design.md section 2).

train (with a validation split) + register -> the request (`mix:90` by default) -> K calibration
forget sets like it, each with its own reference -> select on them: the RUM plan search and, with
the same trial budget and space rules, a search per baseline algorithm -> report on the request,
which no selection touched: RUM, every baseline at its defaults and tuned, `none`, each run with
several unlearning seeds (mean and 95% interval) against the request's own reference, next to the
retrain-vs-retrain noise floor -> the RUM model registered as a new version; a table, also logged as
`summary.md` on the parent run.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import mlflow
import numpy as np

from . import evaluation, references, request, runs, steps, tracking
from .algorithms import ALGORITHMS, default_search_algorithms
from .compute import DEFAULT_BUDGET, break_even_requests, parse_budget
from .data import validate_dataset_name
from .metrics import METRICS, floor_key, shown_keys
from .statistics import paired_test
from .plots import method_comparison, tier_accuracy_chart
from .candidates import AUTO_EPOCHS, check_max_epochs
from .experiment import NONE_LABEL, RUM_LABEL, compared_methods
from .memorization import DEFAULT_TIERS
from .search import check_trials, prepare_calibration, search
from .tags import Role, Tag
from .tuning import COMPOSED, Reference, check_n_trials, check_strategy, objective_directions, report_plan

# The baselines `main` compares RUM with by default, and so RUM's search space (with `none`): the
# four the CIFAR benchmark compares (bench/README.md). With every registered algorithm the 16-trial
# RUM search was 15 enqueued defaults and 1 sampled plan, and the demo took 10 minutes here;
# `--baselines default` gives the registry's whole default space.
DEFAULT_BASELINES = ("finetune", "neggrad_plus", "salun", "scrub")

COST_COLUMN = ("cost (trainings)", "cost/train_fraction")


def table_keys() -> list[tuple[str, str]]:
    """(column, metric key) of the markdown summary: what each registered metric declares `table`
    (metrics.Shown), then the cost."""
    return [(where.label, key) for key, where in shown_keys(table_only=True).items()] + [COST_COLUMN]


def summary_keys() -> list[str]:
    """Every shown metric key (metrics.Shown), then the time and the cost: summary_table.json's columns."""
    return [*shown_keys(), "time/unlearn_s", "cost/train_fraction"]


def _cell(mean: float, lo: float, hi: float, digits: int = 4) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.3f}, {hi:.3f}]"


def format_table(reports, floor: dict[str, float], retrain_fraction: float) -> str:
    """Markdown: one row per method (mean [95% interval] over unlearning seeds), the noise floor
    with a retrain's cost (`retrain_fraction` of the original training), and a note on rows whose
    predictions never differ from the original's. Cost is in trainings (cost/train_fraction), never
    a ratio of seconds taken in another process."""
    columns = table_keys()
    head = "| method | " + " | ".join(h for h, _ in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for r in reports:
        label = r.name + (" (unchanged)" if r.unchanged else "")
        lines.append(f"| {label} | " + " | ".join(_cell(*r.summary(k)) for _, k in columns) + " |")
    floor_cells = [f"{retrain_fraction:.4f}" if key == COST_COLUMN[1] else _cell(floor.get(floor_key(key), math.nan),
                                                                                  math.nan, math.nan)
                   for _, key in columns]
    lines.append("| retrain vs retrain (noise floor) | " + " | ".join(floor_cells) + " |")
    return "\n".join(lines)


PLAN_KINDS = {"enqueued": "one of the enqueued defaults", "sampled": "found by the sampler",
              "tuned": "a tuned algorithm on the whole set: no per-tier mix scored better on calibration",
              "uniform": "one tuned algorithm run tier by tier", "per-tier": "a per-tier mix of tuned algorithms"}


def verdict(reports, floor: dict[str, float] | None = None, *, plan: str | None = None, plan_kind: str | None = None,
            costs: dict[str, float] | None = None, request_note: str = "") -> str:
    """The pipeline's answer in one paragraph: what the searched RUM plan scored on the held-out
    request against doing nothing, the retrain noise floor and the best baseline at the same budget
    (paired tests over unlearning seeds), and what the request cost (`costs`: cost_summary's metrics)."""
    by = {r.name: r for r in reports}
    rum, none = by.get(RUM_LABEL), by.get(NONE_LABEL)
    if rum is None or none is None:
        return ""
    tow, lo, hi = rum.summary("tow")
    kind = f" ({PLAN_KINDS[plan_kind]})" if plan_kind in PLAN_KINDS else ""
    parts = [f"Verdict: on the held-out request{request_note}, the searched RUM plan"
             f"{f' `{plan}`' if plan else ''}{kind} scores ToW {_cell(tow, lo, hi, 3)} at "
             f"{rum.summary('cost/train_fraction')[0]:.3f} of a training; doing nothing scores "
             f"{none.summary('tow')[0]:.3f}"
             + (f" and a second retrain {floor['floor/tow']:.3f} (the noise floor)" if floor else "") + "."]
    a, b = rum.values("tow"), none.values("tow")
    diff = float(np.mean(a) - np.mean(b))
    if len(a) >= 2 and np.ptp(np.asarray(a) - np.asarray(b)) > 0:
        t = paired_test(a, b)
        p = "p < 0.001" if t["p"] < 0.001 else f"p = {t['p']:.3f}"
        detail = f"{diff:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}], {p}"
    else:
        detail = f"{diff:+.3f}"
    if diff <= 0:
        parts.append(f"The searched RUM plan does NOT beat doing nothing (ToW {detail}); the registered plan would "
                     f"not help requests like this one.")
    else:
        parts.append(f"The searched RUM plan beats doing nothing (ToW {detail}).")
    baselines = [r for r in reports if r is not rum and r is not none]
    if baselines:
        best = max(baselines, key=lambda r: r.summary("tow")[0])
        parts.append(f"At the same budget it is {_compared(rum, best, 'the best baseline, ')}.")
        # a composed search may keep a tuned baseline's own plan: then say so, and compare with the
        # best baseline that runs another plan, which is the comparison that can tell them apart
        if _same_plan(rum, best):
            others = [r for r in baselines if not _same_plan(rum, r)]
            if others:
                runner_up = max(others, key=lambda r: r.summary("tow")[0])
                parts.append(f"That baseline runs the RUM plan itself; against the best baseline with another "
                             f"plan it is {_compared(rum, runner_up)}.")
    if costs:
        n = costs["cost/break_even_requests"]
        when = "never" if n < 0 else "from the first request on" if n == 1 else f"from request {int(n)} on"
        parts.append(f"Cost in trainings: the first request {costs['cost/first_request_train_fraction']:.2f} "
                     f"(calibration reference and RUM search included), each later one "
                     f"{costs['cost/later_request_train_fraction']:.3f}; cheaper than retraining every time: {when}.")
    return " ".join(parts)


def _same_plan(a, b) -> bool:
    return a.plan.to_compact() == b.plan.to_compact()


def _compared(rum, other, what: str = "") -> str:
    """'better than|worse than|not distinguishable from <other> (...)': the paired ToW call over
    unlearning seeds, a call only when the 95% interval of the difference excludes 0."""
    t = paired_test(rum.values("tow"), other.values("tow"))
    call = "better than" if t["ci_low"] > 0 else "worse than" if t["ci_high"] < 0 else "not distinguishable from"
    interval = f" [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]" if math.isfinite(t["ci_low"]) else ""
    return (f"{call} {what}{other.name} (ToW {other.summary('tow')[0]:.3f} at "
            f"{other.summary('cost/train_fraction')[0]:.3f} of a training; RUM minus it {t['mean_diff']:+.3f}{interval})")


def compute_matched(reports) -> list[str]:
    """Per baseline, whether the searched RUM plan beats it on the held-out request at the same
    budget: the paired ToW difference over unlearning seeds with its 95% interval; a call only when
    the interval excludes 0."""
    by = {r.name: r for r in reports}
    rum = by.get(RUM_LABEL)
    if rum is None:
        return []
    lines = []
    for r in reports:
        if r is rum:
            continue
        t = paired_test(rum.values("tow"), r.values("tow"))
        interval = (f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]" if math.isfinite(t["ci_low"])
                    else "(one seed: no interval)")
        call = ("RUM better" if t["ci_low"] > 0 else "RUM worse" if t["ci_high"] < 0 else "no difference shown")
        lines.append(f"- vs {r.name}: ToW {t['mean_diff']:+.4f} {interval}: {call} (cost {rum.summary('cost/train_fraction')[0]:.4f} "
                     f"vs {r.summary('cost/train_fraction')[0]:.4f} of a training)")
    return lines


def cost_summary(*, reference: float, search: float, request: float, retrain: float,
                 tunings: float | None = None) -> tuple[str, dict[str, float]]:
    """The first request's total cost (calibration reference + search + the request itself) and each
    later request's (the reference and the searched plan reused: the request alone), in trainings,
    and after how many requests unlearning has cost less than retraining for each."""
    first = reference + search + request
    n = break_even_requests(first, request, retrain)
    when = ("never: a later request costs as much as a retrain" if math.isinf(n)
            else "from the first request on" if n == 1 else f"from request {n} on")
    text = (f"Cost in trainings (example passes / the original training's): the first request "
            f"{first:.3f} (calibration reference(s) {reference:.3f} + RUM search {search:.3f}"
            + (f" [the tunings it builds on {tunings:.3f} + the per-tier search {search - tunings:.3f}]"
               if tunings is not None else "") + " + the request "
            f"{request:.4f}); each later request like it {request:.4f}; a retrain on retain {retrain:.3f}. "
            f"Unlearning is cheaper in total than retraining for every request {when}.")
    return text, {"cost/first_request_train_fraction": first, "cost/later_request_train_fraction": request,
                  "cost/break_even_requests": float(n) if math.isfinite(n) else -1.0}


def main_step(*, dataset: str = "digits-noisy", model: str = "small_cnn", epochs: int = 30, lr: float = 0.05, batch_size: int = 64,
              width: int | None = None, subset: int | None = None, val_fraction: float = 0.1, forget: str = "mix:90",
              n_trials: int = 16, calibration_sets: int = 2, max_epochs: int | str = AUTO_EPOCHS, objective: str = "tow",
              baselines: Sequence[str] | None = DEFAULT_BASELINES, algorithms: Sequence[str] | None = None,
              unlearn_seeds: int = 3, seed: int = 0, registered_model_name: str | None = None,
              storage: str | None = None, device: str | None = "auto", experiment: str | None = None,
              budget: float = DEFAULT_BUDGET, calibration_noise: bool = False,
              calibration_size: int | None = None, trial_runs: bool = False, strategy: str = COMPOSED) -> dict:
    """Run the pipeline; `n_trials` is the budget of the RUM search and of each baseline's search
    alike. `baselines` (default: the registry's default search space but `none`) are reported at
    their defaults and tuned; `algorithms`: the RUM search space (default `none` plus the baselines)."""

    # Validate what would otherwise fail minutes in.
    baselines = list(baselines) if baselines is not None else [a for a in default_search_algorithms() if a != "none"]
    algorithms = list(algorithms) if algorithms is not None else ["none", *baselines]
    unknown = [b for b in [*baselines, *algorithms] if b not in ALGORITHMS]
    if unknown:
        raise ValueError(ALGORITHMS.unknown_message(unknown))
    check_n_trials(n_trials)
    check_max_epochs(max_epochs)
    check_strategy(strategy)
    check_trials(n_trials, strategy, DEFAULT_TIERS, algorithms)
    if not isinstance(unlearn_seeds, int) or unlearn_seeds < 1:
        raise ValueError(f"unlearn_seeds must be a whole number >= 1, got {unlearn_seeds!r}")
    objective_directions(objective)  # an unknown objective lists the valid ones, before any training
    validate_dataset_name(dataset)
    parse_budget(budget)
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be a fraction in (0, 1): selection needs a validation split; got {val_fraction!r}")
    t_start = time.perf_counter()
    tracking.connect()
    tracking.use_experiment(experiment)
    with mlflow.start_run(run_name="main", nested=False) as parent:
        mlflow.set_tag(Tag.ROLE, Role.PIPELINE)
        tracking.log_params({"forget": forget, "n_trials": n_trials, "calibration_sets": calibration_sets,
                           "max_epochs": max_epochs, "objective": objective, "unlearn_seeds": unlearn_seeds,
                           "baselines": ",".join(baselines), "search_algorithms": ",".join(algorithms),
                           "budget": budget, "calibration_noise": calibration_noise,
                           "calibration_size": calibration_size})
        original = steps.train_step(dataset=dataset, model=model, epochs=epochs, lr=lr, batch_size=batch_size, width=width,
                                    subset=subset, val_fraction=val_fraction, seed=seed,
                                    registered_model_name=registered_model_name, device=device, progress=True)
        ctx = request.prepare(original.model_uri, forget, seed=seed, device=device, budget=budget)
        print(f"forget set {forget}: {len(ctx.forget)} examples, tiers {ctx.histogram}")

        # Selection: calibration sets only (their references, the validation split).
        calibration = prepare_calibration(ctx, calibration_sets, noise=calibration_noise, size=calibration_size)
        # The baselines are tuned first (experiment.select_plans, the benchmark's order too): a composed
        # RUM search builds its per-tier arms on these tunings (same calibration sets, budget and
        # trials), and the first request's cost counts them.
        found = search(ctx, calibration, n_trials=n_trials, max_epochs=max_epochs, objective=objective,
                       algorithms=algorithms, baselines=baselines, storage=storage, trial_runs=trial_runs,
                       strategy=strategy)
        tuned = found.tunings
        for algorithm, result in tuned.items():
            print(f"tuned {algorithm}: {result.best_plan.to_compact(3)}  (calibration {result.best_value:.4f})")
        print(f"searched plan: {found.best_plan.to_compact(3)}  (calibration {objective} {found.best_value:.4f}: a "
              f"selection score, not a result)")
        # what the RUM plan's selection cost: its own study, plus the tunings it built on
        tunings_cost = found.tuning_cost_train_fraction
        rum_search_cost = found.cost_train_fraction + tunings_cost

        # Reporting: the request itself, its own reference and the test split; nothing here chooses anything.
        reference = references.retrain(ctx, progress=True)
        ctx.cache["original_tier_acc"] = evaluation.forget_tier_accuracy(ctx, ctx.source.model)
        ctx.cache["reference_tier_acc"] = evaluation.forget_tier_accuracy(ctx, reference.model)
        tier_line = (f"forget-set accuracy per tier ({', '.join(ctx.tiers)}): the retrained reference "
                     + "/".join(f"{ctx.cache['reference_tier_acc'][t]:.2f}" for t in ctx.tiers) + ", the original "
                     + "/".join(f"{ctx.cache['original_tier_acc'][t]:.2f}" for t in ctx.tiers)
                     + " (what unlearning should move towards)")
        print(tier_line)
        floor = evaluation.noise_floor(ctx, reference)
        # Per-request constants live once, on the parent: no flat chart on every method run.
        mlflow.log_metrics(_rounded({**floor, "time/retrain_s": reference.seconds,
                                     "entanglement": evaluation.entanglement(ctx)}))
        held_out = Reference.build(reference.model, ctx.data, ctx.forget.ids, ctx.tiers, seconds=reference.seconds,
                                   task=ctx.task)
        seeds = [seed + i for i in range(unlearn_seeds)]
        methods = compared_methods(found.best_plan, baselines, {a: r.best_plan for a, r in tuned.items()})
        source = ctx.source.model.to(ctx.data.device)
        reports = []
        for method in methods:
            label, algorithm = method.label, method.algorithm
            report = report_plan(label, source, ctx.data, held_out, method.plan, seeds=seeds, eval_seed=ctx.seed,
                                 recipe=ctx.recipe(), metrics=METRICS.registered(), budget=ctx.budget)
            reports.append(report)
            _log_method(ctx, report, algorithm, reference.run_id, tier_reference=reference.model)
            tow, lo, hi = report.summary("tow")
            cost = report.summary("cost/train_fraction")[0]
            print(f"  {label:<28} ToW {_cell(tow, lo, hi)}  cost {cost:.4f} of a training"
                  f"{'  (unchanged: predictions equal the original)' if report.unchanged else ''}")

        rum = steps.rum(ctx, found.best_plan, register=True, run_name="rum-searched")
        held = evaluation.evaluation_metrics(ctx, rum.model, reference.model)
        mlflow.MlflowClient().log_batch(rum.run_id, metrics=[
            mlflow.entities.Metric(k, round(float(v), 6), int(time.time() * 1000), 0)
            for k, v in held.items() if np.isfinite(v)])
        _describe_with_metrics(ctx, rum, held, reference.run_id)
        mlflow.MlflowClient().log_figure(rum.run_id, evaluation.tier_chart(ctx, rum.model, reference.model, "RUM (registered)"),
                                         "plots/tiers.png")
        retrain_fraction = len(ctx.retain_ids) / len(ctx.data.train)  # epochs x n_retain over epochs x n_train
        table = format_table(reports, floor, retrain_fraction)
        matched = compute_matched(reports)
        n_train = len(ctx.data.train)
        # the calibration reference(s): one retrain without the union, a second one for the noise
        references_cost = (2 if calibration.noise else 1) * (n_train - len(calibration.union_ids)) / n_train
        costs, cost_metrics = cost_summary(
            reference=references_cost, search=rum_search_cost, tunings=tunings_cost if strategy == COMPOSED else None,
            request=rum.cost.get("cost/train_fraction", float("nan")), retrain=retrain_fraction)
        mlflow.log_metrics(cost_metrics)
        conclusion = verdict(reports, floor, plan=found.best_plan.to_compact(3), costs=cost_metrics,
                             plan_kind=mlflow.MlflowClient().get_run(found.run_id).data.tags.get(Tag.BEST_KIND),
                             request_note=_request_note(ctx))
        header = (f"{dataset} / {model}: forget {forget} ({len(ctx.forget)} examples), seeds {seeds}; original train acc "
                  f"{original.history[-1]['train/acc']:.4f}. Selection on {calibration_sets} calibration forget set(s) "
                  f"({', '.join(d[:12] for d in calibration.digests)}) with the validation split; reported on the request "
                  f"({ctx.forget.digest[:12]}) and the test split. Search: {n_trials} trials for RUM and for each tuned "
                  f"baseline. Compute: every method at the same budget, at most {ctx.budget.fraction:g} of the original "
                  f"training per request; cost in trainings (example passes / the original's). Cells: mean [95% "
                  f"interval] over unlearning seeds (a t-interval cut to the metric's range: [0, 1] for scores and "
                  f"accuracies, >= 0 for costs). {tier_line[0].upper() + tier_line[1:]}.")
        view = runs.publish_methods_view(parent.info.experiment_id, parent.info.run_id)
        conclusion += f" Compare the methods in the MLflow UI: [one row per method]({view}) (also under Views)."
        # the experiment's description (the newest main's verdict): what opening the experiment shows first
        mlflow.MlflowClient().set_experiment_tag(parent.info.experiment_id, "mlflow.note.content",
                                                 f"Newest `main` run {parent.info.run_id}. {conclusion}")
        summary = "\n".join([conclusion, "", header, "", table, "",
                             f"At the same budget ({ctx.budget.fraction:g}), held out, paired over seeds:", *matched, "",
                             costs])
        mlflow.log_text(summary + "\n", "summary.md")
        mlflow.log_figure(comparison_figure(reports, floor, len(ctx.forget), len(seeds), ctx.budget.fraction),
                          "plots/methods.png")
        mlflow.log_table(summary_table(reports, floor), "summary_table.json")  # sortable in the UI's artifact view
        mlflow.set_tag("mlflow.note.content", summary)  # the run's description on its page
        mlflow.log_metric("time/pipeline_s", time.perf_counter() - t_start)
    print()
    # on the terminal the verdict comes last, where a reader's eye lands; in the run's description first
    print("\n".join([header, "", table, "", f"At the same budget ({ctx.budget.fraction:g}), held out, paired over seeds:",
                     *matched, "", costs, "", conclusion]))
    print(f"\nRUM model registered as models:/{ctx.source.name}/{rum.version} (source version {ctx.source.version}); "
          f"pipeline run {parent.info.run_id}, {time.perf_counter() - t_start:.0f} s")
    print(runs.ui_hint(view))
    return {"original": original, "rum": rum, "reports": reports, "search": found, "tuned": tuned, "table": table,
            "floor": floor, "verdict": conclusion, "calibration": calibration, "ctx": ctx}


def _rounded(metrics: dict[str, float], digits: int = 4) -> dict[str, float]:
    """Metrics as the UI should show them: 4 decimals (a ToW of 0.9113 over 3 seeds has no meaningful
    fifth digit; the UI printed all 16)."""
    return {k: round(float(v), digits) for k, v in metrics.items()}


def _describe_with_metrics(ctx, rum, held: dict[str, float], reference_run: str) -> None:
    """Append the registered version's headline numbers on the request to its description, so the
    registry page answers "how well did it forget, at what cost" without opening a run."""
    client = mlflow.MlflowClient()
    base = client.get_model_version(ctx.source.name, rum.version).description or ""
    cost = rum.cost.get("cost/train_fraction", float("nan"))
    reference_acc = ctx.cache.get("reference_tier_acc", {}).get("all", float("nan"))
    tracking.describe_version(ctx.source.name, rum.version, (
        f"{base} On the request, against its retrained reference (run {reference_run}): ToW {held['tow']:.3f}, "
        f"MIA gap {held['mia/gap']:.3f}, forget accuracy {held['forget/acc']:.3f} (the reference {reference_acc:.3f}), "
        f"test accuracy {held['test/acc']:.3f}; cost {cost:.3f} of a training."))


def _request_note(ctx) -> str:
    """What the request holds, in the words of its data: its size, and on label-noise data how many
    of its examples carry a flipped label, per tier (those are what a retrain gets wrong)."""
    note = f" ({len(ctx.forget)} examples"
    flipped = getattr(ctx.data, "flipped_ids", None)
    if flipped is not None:
        per_tier = ", ".join(f"{t} {int(np.isin(ids, flipped).sum())}" for t, ids in ctx.tiers.items())
        note += f"; flipped labels per tier: {per_tier}"
    return note + ")"


def summary_table(reports, floor: dict[str, float]) -> dict[str, list]:
    """The summary as columns (mlflow.log_table): one row per method, mean and interval bounds."""
    cols: dict[str, list] = {"method": [], "unchanged": []}
    keys = summary_keys()
    for key in keys:
        cols[key], cols[f"{key} ci95_low"], cols[f"{key} ci95_high"] = [], [], []
    for r in reports:
        cols["method"].append(r.name)
        cols["unchanged"].append(bool(r.unchanged))
        for key in keys:
            mean, lo, hi = r.summary(key)
            for col, v in ((key, mean), (f"{key} ci95_low", lo), (f"{key} ci95_high", hi)):
                cols[col].append(float(v) if math.isfinite(v) else None)
    cols["method"].append("retrain vs retrain (noise floor)")
    cols["unchanged"].append(False)
    for key in keys:
        v = floor.get(floor_key(key), float("nan"))
        cols[key].append(float(v) if math.isfinite(v) else None)
        cols[f"{key} ci95_low"].append(None)
        cols[f"{key} ci95_high"].append(None)
    return cols


def comparison_figure(reports, floor: dict[str, float], n_forget: int, n_seeds: int, budget: float | None = None):
    rows = [{"name": r.name + (" (unchanged)" if r.unchanged else ""), "tow": r.summary("tow"),
             "mia/gap": r.summary("mia/gap"), "cost": r.summary("cost/train_fraction")} for r in reports]
    return method_comparison(rows, floor, budget=budget,
                             title=f"Methods on the held-out request ({n_forget} examples), mean and 95% interval over "
                                   f"{n_seeds} unlearning seeds, every method within budget {budget:g}")


def _log_method(ctx, report, algorithm: str, reference_run: str, tier_reference=None) -> None:
    """One run per method: its plan and algorithm as params, per-seed metrics as steps, the mean
    and 95% interval of each headline metric, and the per-tier forget-accuracy chart (unlearned:
    the mean over seeds)."""
    with mlflow.start_run(run_name=report.name, nested=True):
        mlflow.set_tags({**ctx.tags(Role.EVALUATE), Tag.ALGORITHM: algorithm, Tag.REFERENCE_RUN: reference_run,
                         Tag.UNCHANGED: str(report.unchanged).lower()})
        params = {"algorithm": algorithm, "plan": report.plan.to_compact()[:500] or "-",
                  "unlearn_seeds": ",".join(map(str, report.seeds))}
        if len(report.plan.steps) == 1:
            params.update({f"hp.{k}": v for k, v in report.plan.steps[0].hyperparameters.items()})
        tracking.log_params(params)
        mlflow.log_dict(report.plan.to_dict(), "plan.json")
        keys = summary_keys()
        for step, row in enumerate(report.per_seed):
            mlflow.log_metrics(_rounded({f"seed/{k}": v for k, v in row.items() if k in keys and np.isfinite(v)}),
                               step=step)
        out = {}
        for key in keys:
            mean, lo, hi = report.summary(key)
            if math.isfinite(mean):
                out[key] = mean
            if math.isfinite(lo) and math.isfinite(hi):
                out[f"ci95_low/{key}"], out[f"ci95_high/{key}"] = lo, hi
        mlflow.log_metrics(_rounded(out))
        if tier_reference is not None:
            mlflow.log_figure(_method_tier_chart(ctx, report, tier_reference), "plots/tiers.png")


def _method_tier_chart(ctx, report, reference_model):
    if "original_tier_acc" not in ctx.cache:
        ctx.cache["original_tier_acc"] = evaluation.forget_tier_accuracy(ctx, ctx.source.model)
    if "reference_tier_acc" not in ctx.cache:
        ctx.cache["reference_tier_acc"] = evaluation.forget_tier_accuracy(ctx, reference_model)
    per_tier = {}
    for tier in [*ctx.tiers, "all"]:
        key = "forget/acc" if tier == "all" else f"tier/{tier}/forget_acc"
        values = [v for v in report.values(key) if math.isfinite(v)]
        if values:
            per_tier[tier] = {"original": ctx.cache["original_tier_acc"][tier], "unlearned": float(np.mean(values)),
                              "reference": ctx.cache["reference_tier_acc"][tier]}
    return tier_accuracy_chart(per_tier, title=f"{report.name}: forget-set accuracy per memorisation tier "
                                               f"(mean over {len(report.seeds)} unlearning seeds)")

"""The pipeline steps as plain functions: each is one MLflow run with a role tag. The CLI and the
MLproject entry points are thin wrappers around these. Inputs are validated before any run exists,
so bad input never leaves a half-created run or registered model."""
from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch

from . import tracking
from .compute import DEFAULT_BUDGET, ComputeMeter
from .confidences import ConfidenceRecorder
from .data import DatasetSpec, check_dataset, load_dataset
from .evaluation import evaluate, format_metrics
from .lineage import Lineage
from .memorization import DEFAULT_TIERS, tier_cut_points
from .memorization_estimate import estimate_memorization, proxy_correlations
from .models import build_model, validate_model_name
from .plots import c_proxy_histogram
from .references import build_calibration_reference, retrain
from .request import ForgetContext, ResolvedPlan, log_forget_set, prepare, resolve_plan
from .plans import ValidatedPlan, algorithm_plan
from .rum import execute_plan
from .runs import StepResult, project_run
from .tags import TAG, Role, Tag, plan_tag_value
from .training import TrainConfig, accuracy, resolve_device, train_model


def default_model_name(dataset: str, model: str) -> str:
    base = dataset.split(":", 1)[0] if not dataset.startswith("imagefolder:") else "imagefolder-" + re.sub(r"\W+", "-", dataset.split(":", 1)[1].rstrip("/").split("/")[-1])
    return f"{base}-{model}"


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    history: list[dict]
    model: torch.nn.Module  # the trained network, as logged


    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


def train_step(
    *,
    dataset: str = "digits",
    model: str = "small_cnn",
    epochs: int = 15,
    lr: float = 0.05,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: bool | None = None,
    subset: int | None = None,
    val_fraction: float = 0.1,
    root: str | None = None,
    download: bool = False,
    width: int | None = None,
    registered_model_name: str | None = None,
    device: str | None = "auto",
    experiment: str | None = None,
    progress: bool = True,
    calibration_reference: bool = False,
    calibration_size: int | None = None,
) -> TrainResult:
    """Train an original model while recording per-example confidences; log and register it. With
    `calibration_reference`, also retrain its calibration reference (references.calibration_reference)
    right away, so no later search or registry request waits for that retrain."""
    # Validation first: nothing is created in MLflow until every input is known to be usable.
    spec = DatasetSpec(name=dataset, root=root, subset=subset, val_fraction=val_fraction, seed=seed, download=download)
    validate_model_name(model)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, seed=seed, augment=augment)
    check_dataset(spec)
    if calibration_size is not None and (isinstance(calibration_size, bool) or not isinstance(calibration_size, int)
                                         or calibration_size < 1):
        raise ValueError(f"calibration_size must be a whole number >= 1 (a mix request's size), got {calibration_size!r}")
    dev = resolve_device(device)
    model_kwargs = {} if width is None else {"width": int(width)}
    name = registered_model_name or default_model_name(dataset, model)
    tracking.connect()
    data = load_dataset(spec, device=dev)
    net = build_model(model, num_classes=data.num_classes, input_shape=data.input_shape, seed=seed, **model_kwargs)

    tracking.use_experiment(experiment)
    with mlflow.start_run(run_name=f"train-{model}-{spec.name.split(':')[0]}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({Tag.ROLE: Role.ORIGINAL, Tag.DATASET: spec.name, Tag.MODEL: model})
        tracking.log_params({"dataset": spec.name, "model": model, "subset": subset, "val_fraction": val_fraction,
                           "train_device": str(dev), "n_train": len(data.train), "n_test": len(data.test), **model_kwargs,
                           **config.to_dict()})
        recorder = ConfidenceRecorder(len(data.train))
        # the validation split's confidences after each epoch: the gate's never-seen estimate without a search
        heldout_recorder = ConfidenceRecorder(len(data.val)) if data.val is not None and len(data.val) else None
        t0 = time.perf_counter()
        meter = ComputeMeter()  # the unit of every later cost: this training's example passes
        with meter.watching(net):
            history = train_model(net, data, config, recorder=recorder, log=tracking.MlflowLogger(), progress=progress,
                                  heldout=data.val if heldout_recorder is not None else None,
                                  heldout_recorder=heldout_recorder)
        train_seconds = time.perf_counter() - t0
        final = {"train/acc_eval": accuracy(net, data, data.train), "test/acc": history[-1]["test/acc"],
                 "time/train_s": train_seconds, "cost/train_passes": float(meter.train_passes),
                 "cost/eval_passes": float(meter.eval_passes), "cost/train_fraction": 1.0}
        if data.val is not None:
            final["val/acc"] = accuracy(net, data, data.val)
        mlflow.log_metrics(final)
        model_spec = {"name": model, "kwargs": model_kwargs, "num_classes": data.num_classes,
                      "input_shape": list(data.input_shape), "dataset_spec": spec.to_dict(), "train_config": config.to_dict(),
                      "train_seconds": train_seconds, "train_passes": meter.train_passes}
        info = tracking.log_model(net, model_spec, data, name="original")
        tracking.log_dataset_input(f"{spec.name}-train", data.digest, "training", n_train=len(data.train),
                                   subset=subset, val_fraction=val_fraction, seed=seed)
        proxies = tracking.log_confidences(recorder, heldout=heldout_recorder)
        tracking.log_manifest({**data.manifest(), "train_passes": meter.train_passes, "eval_passes": meter.eval_passes})
        log_c_proxy_plot(proxies["c_proxy"])
        mv = tracking.register_version(info.model_uri, name, {
            Tag.ROLE: Role.ORIGINAL, Tag.DATASET: spec.name, Tag.DATASET_DIGEST: data.digest,
            Tag.RUN_ID: run.info.run_id, Tag.TRAIN_ACC: f"{final['train/acc_eval']:.4f}",
            Tag.TEST_ACC: f"{final['test/acc']:.4f}",
        }, description=(f"Original {model} trained on {spec.name} ({len(data.train)} train examples, {config.epochs} "
                        f"epochs, seed {seed}): train accuracy {final['train/acc_eval']:.4f}, test accuracy "
                        f"{final['test/acc']:.4f}. Per-example confidences and the C-proxy are in run "
                        f"{run.info.run_id} (confidences/, plots/c_proxy.png)."), aliases=("original",))
        mlflow.set_tag(Tag.REGISTERED_VERSION, f"{name}/{mv.version}")
        tracking.log_lineage(Lineage.original(run.info.run_id, f"{name}/{mv.version}"))
    print(f"registered models:/{name}/{mv.version}  train acc {final['train/acc_eval']:.4f}  test acc {final['test/acc']:.4f}  ({train_seconds:.1f} s)")
    if calibration_reference:
        pool, ref = build_calibration_reference(f"models:/{name}/{mv.version}", size=calibration_size, device=device,
                                                progress=progress)
        print(f"calibration reference: run {ref.run_id}{' (cached)' if ref.cached else ''}, retrained without the "
              f"calibration pool ({pool.tag()}) in {ref.seconds:.1f} s")
    return TrainResult(run.info.run_id, name, str(mv.version), history, net)


def log_c_proxy_plot(c_proxy: np.ndarray) -> None:
    """plots/c_proxy.png on the active run: the C-proxy histogram with the train-set tier cuts."""

    fig = c_proxy_histogram(c_proxy, tier_cut_points(c_proxy, DEFAULT_TIERS), DEFAULT_TIERS,
                            title=f"C-proxy of the {len(c_proxy)} train examples and the memorisation tiers")
    mlflow.log_figure(fig, "plots/c_proxy.png")


def register_unlearned(ctx: ForgetContext, run_id: str, model_uri: str, extra_tags: dict[str, str], *,
                       how: str) -> str:
    """A new version of the source's registered model, tagged, described and aliased `unlearned`
    (the alias moves to the newest result)."""
    source = str(ctx.forget.source)
    # the request as given when it is a plain spec or URI (a path or anything longer: its size)
    named = f"`{source}`" if re.fullmatch(r"[\w:/.@=,+-]{1,100}", source) else f"of {len(ctx.forget)} ids"
    tiers = ", ".join(f"{t} {n}" for t, n in ctx.histogram.items())
    how = re.sub(r"([;,])(?=\S)", r"\1 ", how)  # a compact plan has no spaces: it ran off the version page
    description = (f"Version {ctx.source.version} with {len(ctx.forget)} training examples unlearned by {how}: the "
                   f"request {named} (forget digest {ctx.forget.digest[:12]}; per memorisation tier {tiers}). Run "
                   f"{run_id}. Evaluate it against retraining: `mlflow-unlearn evaluate --model-uri {ctx.source.uri} "
                   f"--run-id {run_id} --forget runs:/{run_id}/forget_set/ids.json`.")
    mv = tracking.register_version(model_uri, ctx.source.name, {
        **ctx.tags(Role.UNLEARN), Tag.SOURCE_VERSION: ctx.source.version, Tag.RUN_ID: run_id,
        Tag.N_FORGET: str(len(ctx.forget)), **extra_tags}, description=description, aliases=("unlearned",))
    return str(mv.version)


def unlearn(ctx: ForgetContext, algorithm: str | ValidatedPlan, hyperparameters: dict | None = None, *,
            register: bool = False, run_name: str | None = None) -> StepResult:
    """Apply one algorithm to the whole forget set: the one-step plan `all=<algorithm>` through the
    same executor as `rum` (a run with role `unlearn`, per-epoch metrics on it, no tier runs); log
    the model (and register it when asked). `algorithm` may be that plan already validated
    (`plans.algorithm_plan`, as `unlearn_step` builds it before any work)."""

    plan = algorithm if isinstance(algorithm, ValidatedPlan) else algorithm_plan(algorithm, hyperparameters)
    algorithm, params = plan.steps[0].algorithm, plan.steps[0].hyperparameters
    return _apply_plan(ctx, ResolvedPlan(plan, "given"), role=Role.UNLEARN, algorithm=algorithm,
                       run_name=run_name or f"unlearn-{algorithm}", model_name=f"unlearn-{algorithm}",
                       params={"algorithm": algorithm, **{f"hp.{k}": v for k, v in params.items()}},
                       register=register, how=f"{algorithm} {params}", tier_runs=False)


def _apply_plan(ctx: ForgetContext, resolved: ResolvedPlan, *, role: str, algorithm: str, run_name: str,
                model_name: str, params: dict, register: bool, how: str, tier_runs: bool,
                extra_tags: dict[str, str] | None = None) -> StepResult:
    """The one executor of `unlearn` and `rum`: a run, `rum.execute_plan` on the request's task, the
    logged model, and (when asked) a registered version tagged with the applied plan."""

    plan = resolved.plan
    applied = plan_tag_value(plan.to_dict())  # too long for a tag: an error now, not a broken tag later
    with mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({**ctx.tags(role), Tag.ALGORITHM: algorithm, Tag.PLAN_NAME: plan.name or "",
                         Tag.PLAN_SOURCE: resolved.source[:500], **(extra_tags or {})})
        log_forget_set(ctx)
        mlflow.log_dict(plan.to_dict(), "plan.json")
        tracking.log_params(params)
        callbacks = _TierRuns(ctx) if tier_runs else _ThisRun()
        try:
            result = execute_plan(ctx.source.model.to(ctx.data.device), ctx.task, plan, seed=ctx.seed,
                                  callbacks=callbacks, budget=ctx.budget)
        except BaseException:
            callbacks.abort()
            raise
        cost = result.cost(ctx.source.original_passes)
        mlflow.log_metrics({"time/unlearn_s": result.seconds, **cost})
        info = tracking.log_model(result.model, ctx.source.model_spec, ctx.data, name=model_name)
        exact = all(s.algorithm == "retrain" for s in plan.steps)  # the retrain_after policy counts from these
        tracking.log_lineage(ctx.lineage_after(run.info.run_id, how="retrain" if exact else algorithm))
        result.model.to(ctx.data.device)
        version = None
        if register:
            version = register_unlearned(ctx, run.info.run_id, info.model_uri, {
                Tag.ALGORITHM: algorithm, Tag.APPLIED_PLAN: applied, Tag.PLAN_SOURCE: resolved.source[:500],
                **cost_tags(cost), **(extra_tags or {})}, how=how)
            mlflow.set_tag(Tag.REGISTERED_VERSION, f"{ctx.source.name}/{version}")
    return StepResult(run.info.run_id, result.model, result.seconds, version=version, cost=cost)


def cost_tags(cost: dict[str, float]) -> dict[str, str]:
    """A result's compute as version tags: its training fraction and the budget it ran under."""
    tags = {}
    if "cost/train_fraction" in cost:
        tags[Tag.COST_TRAIN_FRACTION] = f"{cost['cost/train_fraction']:.4f}"
    if "cost/budget" in cost:
        tags[Tag.BUDGET] = f"{cost['cost/budget']:g}"
    return tags


def cost_text(cost: dict[str, float]) -> str:
    """'0.0983 of a training (budget 0.1)': what a request cost, in the units of training."""
    if "cost/train_fraction" not in cost:
        return f"{int(cost.get('cost/train_passes', 0))} example passes"
    text = f"{cost['cost/train_fraction']:.4f} of a training"
    return text + (f" (budget {cost['cost/budget']:g})" if "cost/budget" in cost else "")


class _ThisRun:
    """RumCallbacks for a one-step plan: the algorithm's per-epoch metrics go to the active run."""

    def step_started(self, index, step, n_forget, n_retain):
        return tracking.MlflowLogger()

    def abort(self):
        pass


def parse_hyperparameters(text: str | dict | None) -> dict:
    """'lr=0.01,epochs=3' or a JSON object -> dict (values stay strings; the algorithm validates them)."""
    if text is None or isinstance(text, dict):
        return dict(text or {})
    text = text.strip()
    if text in ("", "none", "{}"):
        return {}
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"hyperparameters {text!r} are not valid JSON: {exc}") from None
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"hyperparameter {part!r} is not key=value (e.g. lr=0.01,epochs=3)")
        out[key.strip()] = value.strip()
    return out


def retrain_step(model_uri: str, forget, *, seed: int = 0, epochs: int | None = None, device: str | None = "auto",
                 experiment: str | None = None, use_cache: bool = True) -> StepResult:
    ctx = prepare(model_uri, forget, seed=seed, device=device)
    tracking.use_experiment(experiment)
    result = retrain(ctx, epochs=epochs, use_cache=use_cache, progress=True)
    print(f"retrain run {result.run_id} ({'cached' if result.cached else f'{result.seconds:.1f} s'})")
    return result


def unlearn_step(model_uri: str, forget, algorithm: str, hyperparameters=None, *, seed: int = 0, register: bool = False,
                 evaluate_against_retrain: bool = False, device: str | None = "auto", experiment: str | None = None,
                 budget: float | None = DEFAULT_BUDGET) -> StepResult:
    plan = algorithm_plan(algorithm, parse_hyperparameters(hyperparameters))  # the one check, before any work
    ctx = prepare(model_uri, forget, seed=seed, device=device, budget=budget)
    tracking.use_experiment(experiment)
    result = unlearn(ctx, plan, register=register)
    line = f"unlearn {algorithm}: run {result.run_id}, {cost_text(result.cost)}, {result.seconds:.1f} s"
    if result.version:
        line += f", registered models:/{ctx.source.name}/{result.version}"
    print(line)
    if evaluate_against_retrain:
        print(format_metrics(evaluate(ctx, result.run_id, retrain(ctx), model=result.model)))
    return result


def evaluate_step(model_uri: str, forget, run_id: str, *, seed: int = 0, device: str | None = "auto",
                  experiment: str | None = None) -> dict[str, float]:
    ctx = prepare(model_uri, forget, seed=seed, device=device)
    run = mlflow.MlflowClient().get_run(run_id)  # unknown run ids fail here, before anything is logged
    if run.data.tags.get(Tag.FORGET_DIGEST) not in (None, ctx.forget.digest):
        raise ValueError(f"run {run_id} unlearned a different forget set (digest {run.data.tags[TAG + 'forget_digest'][:12]}...) "
                         f"than {str(forget)!r} ({ctx.forget.digest[:12]}...); pass the same forget set")
    tracking.use_experiment(experiment)
    with project_run():
        metrics = evaluate(ctx, run_id, retrain(ctx))
    print(format_metrics(metrics))
    return metrics


# --------------------------------------------------------------------------------------------------
# RUM: one parent run (role rum), one nested run per tier

class _TierRuns:
    """RumCallbacks that open a nested MLflow run per tier, with its own metrics and time."""

    def __init__(self, ctx: ForgetContext):
        self.ctx, self.open = ctx, None

    def step_started(self, index, step, n_forget, n_retain):
        self.open = mlflow.start_run(run_name=f"tier-{step.tier}-{step.algorithm}", nested=True)
        mlflow.set_tags({**self.ctx.tags(Role.UNLEARN), Tag.TIER: step.tier, Tag.ALGORITHM: step.algorithm})
        tracking.log_params({"tier": step.tier, "algorithm": step.algorithm, "n_forget": n_forget, "n_retain": n_retain,
                           **{f"hp.{k}": v for k, v in step.hyperparameters.items()}})
        return tracking.MlflowLogger()

    def step_finished(self, index, step, record, model):
        tier_split = self.ctx.data.train.subset(torch.as_tensor(record.forget_ids, device=self.ctx.data.device))
        unit = self.ctx.source.original_passes
        mlflow.log_metrics({"time/unlearn_s": record.seconds, f"tier/{step.tier}/forget_acc": accuracy(model, self.ctx.data, tier_split),
                            "cost/train_passes": float(record.train_passes), "cost/eval_passes": float(record.eval_passes),
                            "cost/train_fraction": record.train_passes / unit, "cost/eval_fraction": record.eval_passes / unit,
                            **({} if record.limit is None else {"cost/limit_fraction": record.limit / unit})})
        mlflow.end_run()
        self.open = None

    def abort(self):
        if self.open is not None:
            mlflow.end_run(status="FAILED")
            self.open = None


def rum(ctx: ForgetContext, plan, *, register: bool = False, run_name: str | None = None,
        extra_tags: dict[str, str] | None = None, on_unfit: str = "error") -> StepResult:
    """Unlearn tier by tier with `plan` (resolved by `request.resolve_plan` with policy `on_unfit`),
    one nested run per tier; log the model and, when asked, register it as a new version."""
    resolved = plan if isinstance(plan, ResolvedPlan) else resolve_plan(ctx, plan, on_unfit=on_unfit)  # before any run
    if resolved.budget is not None:  # a plan chosen under a smaller budget runs at its own (request.at_plan_budget)
        ctx = dataclasses.replace(ctx, budget=resolved.budget)
    p = resolved.plan
    return _apply_plan(ctx, resolved, role=Role.RUM, algorithm="rum", run_name=run_name or f"rum-{p.name or 'plan'}",
                       model_name="rum", params={"algorithm": "rum", "plan": p.to_compact()[:500],
                                                 "retain_mode": p.retain_mode},
                       register=register, how=f"RUM, plan {p.to_compact()[:300]}", tier_runs=True, extra_tags=extra_tags)


def rum_step(model_uri: str, forget, plan="auto", *, seed: int = 0, register: bool = False, evaluate_against_retrain: bool = False,
             device: str | None = "auto", experiment: str | None = None,
             budget: float | None = DEFAULT_BUDGET) -> StepResult:
    ctx = prepare(model_uri, forget, seed=seed, device=device, budget=budget)
    tracking.use_experiment(experiment)
    result = rum(ctx, plan, register=register)
    line = f"rum: run {result.run_id}, {cost_text(result.cost)}, {result.seconds:.1f} s"
    if result.version:
        line += f", registered models:/{ctx.source.name}/{result.version}"
    print(line)
    if evaluate_against_retrain:
        print(format_metrics(evaluate(ctx, result.run_id, retrain(ctx), model=result.model, label="rum")))
    return result


def memorization_step(model_uri: str, *, n_models: int = 16, subset_fraction: float = 0.7, epochs: int | None = None,
                      n_workers: int = 1, workdir: str | None = None, seed: int = 0, device: str | None = "auto",
                      experiment: str | None = None) -> dict[str, float]:
    """Train `n_models` models on random subsets (fraction `subset_fraction`) of the source's train set
    with its recipe, estimate per-example memorisation, and log it with the Spearman correlation of
    each proxy against it. With `workdir` an interrupted run resumes where it stopped (default: a
    folder keyed by the source version under ./memorization)."""

    tracking.connect()
    source = tracking.load_source(model_uri)
    data = source.load_data(resolve_device(device))
    cfg = dict(source.model_spec["train_config"])
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    config = TrainConfig(**cfg)
    workdir = workdir or str(Path("memorization") / f"{source.name}-v{source.version}")
    tracking.use_experiment(experiment)
    with mlflow.start_run(run_name=f"memorization-{source.name}/{source.version}", nested=mlflow.active_run() is not None):
        mlflow.set_tags({Tag.ROLE: Role.MEMORIZATION, Tag.SOURCE_MODEL: f"{source.name}/{source.version}"})
        tracking.log_params({"n_models": n_models, "subset_fraction": subset_fraction, "n_workers": n_workers,
                           "epochs": config.epochs, "workdir": workdir})
        est = estimate_memorization(data, model_name=source.model_spec["name"], model_kwargs=source.model_spec["kwargs"],
                                    train_config=config, n_models=n_models, subset_fraction=subset_fraction, seed=seed,
                                    workdir=workdir, n_workers=n_workers, progress=True, log=tracking.MlflowLogger())
        corr = proxy_correlations(est.mem, source.proxies)
        metrics = {**est.summary(), **{f"spearman/{k}": v for k, v in corr.items()}, "time/memorization_s": est.seconds}
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "memorization.npz", mem=est.mem, in_counts=est.in_counts, out_counts=est.out_counts)
            mlflow.log_artifact(str(Path(tmp) / "memorization.npz"), "memorization")
    print("Spearman correlation with the memorisation estimate: " + ", ".join(f"{k} {v:+.3f}" for k, v in corr.items()))
    return metrics

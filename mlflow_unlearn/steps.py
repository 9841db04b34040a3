"""The pipeline steps as plain functions: each is one MLflow run with a role tag. The CLI and the
MLproject entry points are thin wrappers around these. Inputs are validated before any run exists,
so bad input never leaves a half-created run or registered model."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from . import tracking
from .confidences import ConfidenceRecorder
from .data import DatasetSpec, check_dataset, load_dataset
from .models import build_model, validate_model_name
from .training import TrainConfig, accuracy, train_model
from .tracking import TAG, Role, Tag


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use device=cpu or auto")
    return torch.device(device)


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
) -> TrainResult:
    """Train an original model while recording per-example confidences; log and register it."""
    # Validation first: nothing is created in MLflow until every input is known to be usable.
    spec = DatasetSpec(name=dataset, root=root, subset=subset, val_fraction=val_fraction, seed=seed, download=download)
    validate_model_name(model)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, seed=seed, augment=augment)
    check_dataset(spec)
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
        t0 = time.perf_counter()
        history = train_model(net, data, config, recorder=recorder, log=tracking.MlflowLogger(), progress=progress)
        train_seconds = time.perf_counter() - t0
        final = {"train/acc_eval": accuracy(net, data, data.train), "test/acc": history[-1]["test/acc"],
                 "time/train_s": train_seconds}
        if data.val is not None:
            final["val/acc"] = accuracy(net, data, data.val)
        mlflow.log_metrics(final)
        model_spec = {"name": model, "kwargs": model_kwargs, "num_classes": data.num_classes,
                      "input_shape": list(data.input_shape), "dataset_spec": spec.to_dict(), "train_config": config.to_dict(),
                      "train_seconds": train_seconds}
        info = tracking.log_model(net, model_spec, data, name="original")
        tracking.log_dataset_input(f"{spec.name}-train", data.digest, "training", n_train=len(data.train),
                                   subset=subset, val_fraction=val_fraction, seed=seed)
        proxies = tracking.log_confidences(recorder)
        tracking.log_manifest(data.manifest())
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
    print(f"registered models:/{name}/{mv.version}  train acc {final['train/acc_eval']:.4f}  test acc {final['test/acc']:.4f}  ({train_seconds:.1f} s)")
    return TrainResult(run.info.run_id, name, str(mv.version), history, net)


def log_c_proxy_plot(c_proxy: np.ndarray) -> None:
    """plots/c_proxy.png on the active run: the C-proxy histogram with the train-set tier cuts."""
    from .memorization import DEFAULT_TIERS, tier_cut_points
    from .plots import c_proxy_histogram

    fig = c_proxy_histogram(c_proxy, tier_cut_points(c_proxy, DEFAULT_TIERS), DEFAULT_TIERS,
                            title=f"C-proxy of the {len(c_proxy)} train examples and the memorisation tiers")
    mlflow.log_figure(fig, "plots/c_proxy.png")


@contextlib.contextmanager
def project_run():
    """Under `mlflow run` the step's run exists before the step starts (MLFLOW_RUN_ID). Open it
    first, so the work a step nests (reference retrains) lands under it instead of taking it over;
    `step_run` then writes the step's own results into it. Outside `mlflow run`: nothing."""
    global _project_run_id
    if os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None:
        with mlflow.start_run() as run:  # MLflow removes MLFLOW_RUN_ID from the environment here
            _project_run_id = run.info.run_id
            try:
                yield
            finally:
                _project_run_id = None
    else:
        yield


_project_run_id: str | None = None  # the `mlflow run` run opened by project_run, while it is open


def step_run(run_name: str):
    """The run a step logs into: the `mlflow run` project run while it has no role yet (see
    `project_run`), else a new run, nested under any active one."""
    active = mlflow.active_run()
    if (active is not None and active.info.run_id == _project_run_id
            and Tag.ROLE not in mlflow.MlflowClient().get_run(active.info.run_id).data.tags):
        return contextlib.nullcontext(active)
    return mlflow.start_run(run_name=run_name, nested=active is not None)


def ui_hint() -> str:
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"Open the runs in the MLflow UI: {uri}"
    return f"Open the runs in the MLflow UI: mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000)"


# --------------------------------------------------------------------------------------------------
# Forget requests: the context every unlearning step starts from


@dataclass
class ForgetContext:
    """A source model version, its data on the device, a validated forget set and its tiers."""

    source: tracking.SourceModel
    data: Any  # ImageData
    forget: Any  # ForgetSet
    tiers: dict[str, np.ndarray]  # tier name -> forget ids, by C-proxy rank within the forget set
    histogram: dict[str, int]  # forget examples per train-set memorisation bin
    seed: int
    cache: dict = dataclasses.field(default_factory=dict)  # values derived once per request

    @property
    def source_tag(self) -> str:
        return f"{self.source.name}/{self.source.version}"

    def unlearn_data(self, retain_ids=None):
        from .algorithms import UnlearnData

        if retain_ids is None:
            return UnlearnData.from_forget(self.data, self.forget.ids, recipe=self.recipe())
        return UnlearnData(self.data, self.forget.ids, retain_ids, recipe=self.recipe())

    def recipe(self):
        """How the source was made (its architecture, fresh weights per seed, and its TrainConfig):
        what the `retrain` algorithm replays, the same recipe as the retrained reference."""
        from .algorithms import TrainRecipe

        return TrainRecipe(build=lambda seed: build_source_architecture(self, seed).to(self.data.device),
                           config=TrainConfig(**self.source.model_spec["train_config"]))

    def tags(self, role: str) -> dict[str, str]:
        return {Tag.ROLE: role, Tag.SOURCE_MODEL: self.source_tag, Tag.FORGET_DIGEST: self.forget.digest,
                Tag.SEED: str(self.seed)}

    def tier_positions(self) -> dict[str, np.ndarray]:
        """Tier -> positions within the (sorted) forget set, for per-tier metrics."""
        return {k: np.searchsorted(self.forget.ids, v) for k, v in self.tiers.items()}


def resolve_forget_source(forget) -> Any:
    """Download an MLflow artifact URI to a local file; pass specs, paths and id lists through."""
    from .forget_sets import ForgetSetError, is_spec

    if isinstance(forget, (list, tuple, np.ndarray)) or is_spec(str(forget)):
        return forget
    text = str(forget)
    if re.match(r"^(runs|models|mlflow-artifacts|s3|gs|wasbs|dbfs|file)://?", text) and not Path(text).exists():
        try:
            return mlflow.artifacts.download_artifacts(artifact_uri=text)
        except Exception as exc:  # MLflow raises several types for unreadable URIs
            raise ForgetSetError(f"cannot read the forget-set artifact {text!r}: {exc}") from None
    return text


def prepare(source_uri: str, forget, *, seed: int = 0, device: str | None = "auto", tier_names=None) -> ForgetContext:
    """Load a registered source version and validate a forget set against its training manifest."""
    from .forget_sets import load_forget_set
    from .memorization import DEFAULT_TIERS, tier_histogram, tiers_from_c_proxy

    names = tuple(tier_names or DEFAULT_TIERS)
    tracking.connect()
    source = tracking.load_source(source_uri)
    labels = np.asarray(source.manifest["labels"])
    c_proxy = None if source.proxies is None else source.proxies["c_proxy"]
    fs = load_forget_set(resolve_forget_source(forget), labels=labels, c_proxy=c_proxy,
                         classes=source.manifest.get("classes"), tier_names=names, seed=seed)
    data = source.load_data(resolve_device(device))
    tiers = tiers_from_c_proxy(fs.ids, c_proxy, names=names) if len(fs) >= len(names) else {"all": fs.ids}
    histogram = tier_histogram(fs.ids, c_proxy, names=names)
    return ForgetContext(source=source, data=data, forget=fs, tiers=tiers, histogram=histogram, seed=seed)


def log_forget_set(ctx: ForgetContext) -> None:
    mlflow.log_dict({"ids": ctx.forget.ids.tolist(), "digest": ctx.forget.digest, "source": str(ctx.forget.source),
                     "source_model": ctx.source_tag}, "forget_set/ids.json")
    mlflow.log_dict({"tier_histogram": ctx.histogram, "tiers": {k: v.tolist() for k, v in ctx.tiers.items()}},
                    "forget_set/tiers.json")
    tracking.log_params({"forget_source": str(ctx.forget.source)[:500], "n_forget": len(ctx.forget), "seed": ctx.seed})
    # Constant for a request: a tag, not a metric that would add a flat chart to every run.
    mlflow.set_tag(Tag.TIER_HISTOGRAM, json.dumps(ctx.histogram))
    tracking.log_dataset_input(f"{ctx.source.dataset_spec.name}-train", ctx.source.manifest.get("dataset_digest") or "unknown",
                               "training", n_train=len(ctx.source.manifest.get("ids", [])), source_model=ctx.source_tag)
    tracking.log_dataset_input("forget-set", ctx.forget.digest, "forget", n_forget=len(ctx.forget),
                               source=str(ctx.forget.source)[:200], tiers=json.dumps(ctx.histogram))
    tracking.log_model_input(ctx.source.model_id)


def load_run_model(run_id: str, map_location="cpu") -> torch.nn.Module:
    """The network a step's run logged, rebuilt from weights + spec (tracking.load_logged_classifier)."""
    return tracking.load_logged_classifier(tracking.run_model_id(run_id), map_location=map_location)


# --------------------------------------------------------------------------------------------------
# Retrain (the reference), cached by source version, forget digest, seed and recipe


@dataclass
class StepResult:
    run_id: str
    model: torch.nn.Module
    seconds: float
    cached: bool = False
    version: str | None = None  # registered version, when registered


def _retrain_config(ctx: ForgetContext, epochs: int | None, seed: int | None = None) -> TrainConfig:
    cfg = dict(ctx.source.model_spec["train_config"])
    cfg["seed"] = ctx.seed if seed is None else int(seed)
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    return TrainConfig(**cfg)


def find_cached_retrain(ctx: ForgetContext, recipe: str, seed: int | None = None) -> str | None:
    client = mlflow.MlflowClient()
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    seed = ctx.seed if seed is None else int(seed)
    runs = client.search_runs(
        exp_ids,
        filter_string=(f"tags.`{Tag.ROLE}` = '{Role.RETRAIN}' and tags.`{Tag.SOURCE_MODEL}` = '{ctx.source_tag}' and "
                       f"tags.`{Tag.FORGET_DIGEST}` = '{ctx.forget.digest}' and tags.`{Tag.SEED}` = '{seed}' and "
                       f"tags.`{Tag.RECIPE}` = '{recipe}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def build_source_architecture(ctx: ForgetContext, seed: int) -> torch.nn.Module:
    """A freshly initialised model of the source's architecture (what a retrain starts from)."""
    spec = ctx.source.model_spec
    return build_model(spec["name"], num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"]), seed=seed,
                       **spec["kwargs"])


def retrain(ctx: ForgetContext, *, epochs: int | None = None, use_cache: bool = True, progress: bool = False,
            seed: int | None = None) -> StepResult:
    """Train the source's architecture from scratch on retain with the source's recipe: the exact
    answer every unlearned model is measured against. A finished run with the same key (source,
    forget digest, seed, recipe) is reused. `seed` (default: the context's) seeds the init and the
    data order; a second seed gives the retrain-vs-retrain noise floor."""
    seed = ctx.seed if seed is None else int(seed)
    config = _retrain_config(ctx, epochs, seed)
    recipe = retrain_recipe(ctx, epochs)
    if use_cache and (run_id := find_cached_retrain(ctx, recipe, seed)):
        run = mlflow.MlflowClient().get_run(run_id)
        model = load_run_model(run_id).to(ctx.data.device)
        print(f"retrain: cache hit, run {run_id}")
        return StepResult(run_id, model, float(run.data.metrics.get("time/retrain_s", float("nan"))), cached=True)
    spec = ctx.source.model_spec
    net = build_source_architecture(ctx, seed)
    ud = ctx.unlearn_data()
    with mlflow.start_run(run_name=f"retrain-{ctx.source_tag}" + ("" if seed == ctx.seed else f"-seed{seed}"),
                          nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({**ctx.tags(Role.RETRAIN), Tag.ALGORITHM: "retrain", Tag.RECIPE: recipe,
                         Tag.SEED: str(seed)})
        log_forget_set(ctx)
        tracking.log_params({f"train.{k}": v for k, v in config.to_dict().items()})
        t0 = time.perf_counter()
        train_model(net, ctx.data, config, train_ids=ud.retain_ids, log=tracking.MlflowLogger(), progress=progress, eval_test=False)
        seconds = time.perf_counter() - t0
        mlflow.log_metric("time/retrain_s", seconds)
        tracking.log_model(net, spec, ctx.data, name="retrain")
    net.to(ctx.data.device)
    return StepResult(run.info.run_id, net, seconds)


# --------------------------------------------------------------------------------------------------
# Unlearn with one algorithm


def register_unlearned(ctx: ForgetContext, run_id: str, model_uri: str, extra_tags: dict[str, str], *,
                       how: str) -> str:
    """A new version of the source's registered model, tagged, described and aliased `unlearned`
    (the alias moves to the newest result)."""
    description = (f"Version {ctx.source.version} with {len(ctx.forget)} training examples unlearned "
                   f"(forget digest {ctx.forget.digest[:12]}..., per memorisation tier {ctx.histogram}) by {how}. "
                   f"Run {run_id}; evaluate it against retraining with `mlflow-unlearn evaluate --model-uri "
                   f"{ctx.source.uri} --run-id {run_id} --forget <the same forget set>`.")
    mv = tracking.register_version(model_uri, ctx.source.name, {
        **ctx.tags(Role.UNLEARN), Tag.SOURCE_VERSION: ctx.source.version, Tag.RUN_ID: run_id,
        Tag.N_FORGET: str(len(ctx.forget)), **extra_tags}, description=description, aliases=("unlearned",))
    return str(mv.version)


def unlearn(ctx: ForgetContext, algorithm: str, hyperparameters: dict | None = None, *, register: bool = False,
            run_name: str | None = None) -> StepResult:
    """Apply one algorithm to the whole forget set; log the model (and register it when asked)."""
    from .algorithms import run_algorithm, validate_hyperparameters
    from .rum import single_algorithm_plan

    params = validate_hyperparameters(algorithm, hyperparameters or {})  # before any run exists
    with mlflow.start_run(run_name=run_name or f"unlearn-{algorithm}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({**ctx.tags(Role.UNLEARN), Tag.ALGORITHM: algorithm})
        log_forget_set(ctx)
        tracking.log_params({"algorithm": algorithm, **{f"hp.{k}": v for k, v in params.items()}})
        t0 = time.perf_counter()
        model = run_algorithm(algorithm, ctx.source.model.to(ctx.data.device), ctx.unlearn_data(), params, seed=ctx.seed,
                              log=tracking.MlflowLogger())
        seconds = time.perf_counter() - t0
        mlflow.log_metric("time/unlearn_s", seconds)
        info = tracking.log_model(model, ctx.source.model_spec, ctx.data, name=f"unlearn-{algorithm}")
        model.to(ctx.data.device)
        version = None
        if register:
            applied = single_algorithm_plan(algorithm, params).to_dict()  # the one plan schema
            version = register_unlearned(ctx, run.info.run_id, info.model_uri, {
                Tag.ALGORITHM: algorithm, Tag.APPLIED_PLAN: tracking.plan_tag_value(applied)},
                                         how=f"{algorithm} {params}")
            mlflow.set_tag(Tag.REGISTERED_VERSION, f"{ctx.source.name}/{version}")
    return StepResult(run.info.run_id, model, seconds, version=version)


# --------------------------------------------------------------------------------------------------
# Evaluate


def evaluation_metrics(ctx: ForgetContext, model: torch.nn.Module, reference: torch.nn.Module | None,
                       metrics=None) -> dict[str, float]:
    """The metrics of `model` against `reference`: the built-ins plus `metrics` (registered names;
    default: every registered metric, plugins included)."""
    from .metrics import METRICS, evaluate_unlearning, outputs_for

    u = outputs_for(model, ctx.data, ctx.forget.ids)
    r = outputs_for(reference, ctx.data, ctx.forget.ids) if reference is not None else None
    return evaluate_unlearning(u, r, tiers=ctx.tier_positions(), seed=ctx.seed,
                               metrics=METRICS.registered() if metrics is None else metrics)


def forget_tier_accuracy(ctx: ForgetContext, model: torch.nn.Module) -> dict[str, float]:
    """Accuracy of `model` on each tier of the forget set, and on all of it (`all`)."""
    from .training import predict_logits

    ids = torch.as_tensor(ctx.forget.ids, device=ctx.data.device)
    split = ctx.data.train.subset(ids)
    correct = (predict_logits(model.to(ctx.data.device), ctx.data, split).argmax(1) == split.y).cpu().numpy()
    positions = ctx.tier_positions()
    out = {t: float(correct[pos].mean()) for t, pos in positions.items() if len(pos)}
    out["all"] = float(correct.mean())
    return out


def tier_chart(ctx: ForgetContext, model: torch.nn.Module, reference: torch.nn.Module, label: str):
    """The per-tier forget accuracy of the original, `model` and the reference, as a figure."""
    from .plots import tier_accuracy_chart

    if "original_tier_acc" not in ctx.cache:
        ctx.cache["original_tier_acc"] = forget_tier_accuracy(ctx, ctx.source.model)
    unlearned, ref = forget_tier_accuracy(ctx, model), forget_tier_accuracy(ctx, reference)
    per_tier = {t: {"original": ctx.cache["original_tier_acc"][t], "unlearned": unlearned[t], "reference": ref[t]}
                for t in unlearned}
    return tier_accuracy_chart(per_tier, title=f"{label}: forget-set accuracy per memorisation tier "
                                               f"({len(ctx.forget)} examples; reference = retrained without them)")


def entanglement(ctx: ForgetContext) -> float:
    """Entanglement score of forget vs retain in the source model's penultimate layer (DESIGN.md
    section 2: higher = harder to unlearn); a property of the request, computed once per context."""
    from .metrics import embeddings, entanglement_score

    if "entanglement" not in ctx.cache:
        ud = ctx.unlearn_data()
        model = ctx.source.model.to(ctx.data.device)
        ctx.cache["entanglement"] = entanglement_score(embeddings(model, ctx.data, ud.forget), embeddings(model, ctx.data, ud.retain))
    return ctx.cache["entanglement"]


def noise_floor(ctx: ForgetContext, reference: StepResult) -> dict[str, float]:
    """Retrain vs retrain: a second reference (seed + 1, cached like every retrain) scored against
    `reference`, so a reader sees what "as close as retraining" means for ToW, ToW-PE and the MIA
    gap (`floor/*` keys). Computed once per context and reference."""
    from .tuning import noise_floor as floor_of

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
    from .metrics import outputs_for

    return outputs_for(model, ctx.data, ctx.forget.ids)


def _as_reference(ctx: ForgetContext, result: StepResult, outputs: dict):
    from .tuning import Reference

    return Reference(np.asarray(ctx.forget.ids), dict(ctx.tiers), result.model, outputs, result.seconds)


def evaluate(ctx: ForgetContext, unlearned_run_id: str, reference: StepResult, *, model: torch.nn.Module | None = None,
             label: str | None = None, floor: bool = True) -> dict[str, float]:
    """Every metric of DESIGN.md section 4 for an unlearned run against the retrained reference,
    plus the retrain-vs-retrain noise floor (`floor/*`, unless `floor=False`), logged to a run with
    role `evaluate` and copied onto the unlearned run, so runs compare in the UI."""
    client = mlflow.MlflowClient()
    u_run = client.get_run(unlearned_run_id)
    model = model if model is not None else load_run_model(unlearned_run_id).to(ctx.data.device)
    metrics = evaluation_metrics(ctx, model, reference.model)
    if floor:
        metrics.update(noise_floor(ctx, reference))
    unlearn_s = u_run.data.metrics.get("time/unlearn_s", float("nan"))
    metrics["time/unlearn_s"] = unlearn_s
    metrics["time/retrain_s"] = reference.seconds
    metrics["time/fraction_of_retrain"] = unlearn_s / reference.seconds if reference.seconds else float("nan")
    metrics["time/speedup_vs_retrain"] = reference.seconds / unlearn_s if unlearn_s else float("nan")
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


# --------------------------------------------------------------------------------------------------
# Step entry points (CLI and MLproject): one call, one context


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
                 evaluate_against_retrain: bool = False, device: str | None = "auto", experiment: str | None = None) -> StepResult:
    from .algorithms import validate_hyperparameters

    params = validate_hyperparameters(algorithm, parse_hyperparameters(hyperparameters))
    ctx = prepare(model_uri, forget, seed=seed, device=device)
    tracking.use_experiment(experiment)
    result = unlearn(ctx, algorithm, params, register=register)
    line = f"unlearn {algorithm}: run {result.run_id}, {result.seconds:.1f} s"
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


def format_metrics(metrics: dict[str, float]) -> str:
    keys = ["forget/acc", "retain/acc", "test/acc", "tow", "tow_mia", "tow_pe", "mia/efficacy", "mia/gap", "time/fraction_of_retrain"]
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


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
        from .training import accuracy

        tier_split = self.ctx.data.train.subset(torch.as_tensor(record.forget_ids, device=self.ctx.data.device))
        mlflow.log_metrics({"time/unlearn_s": record.seconds, f"tier/{step.tier}/forget_acc": accuracy(model, self.ctx.data, tier_split)})
        mlflow.end_run()
        self.open = None

    def abort(self):
        if self.open is not None:
            mlflow.end_run(status="FAILED")
            self.open = None


@dataclass(frozen=True)
class ResolvedPlan:
    """A plan checked against the request's tiers, and where it came from (tagged on the result)."""

    plan: Any  # rum.Plan
    source: str


PLAN_POLICIES = ("error", "default")


def resolve_plan(ctx: ForgetContext, spec="auto", *, on_unfit: str = "error") -> ResolvedPlan:
    """The one plan resolution, for the CLI, `main` and the registry hook alike.

    `spec`: a `Plan`; `default` (`rum.default_plan` for the request's tiers); `registered` (the
    searched plan on the source's registered model, tag `mlflow_unlearn.searched_plan`); `auto`
    (registered if the model has one, else default); or a file / JSON / YAML / compact string.

    `on_unfit` is the policy when a *registered* plan cannot be used for this request (unreadable,
    or its tiers are not the request's): `error` raises PlanError naming the tiers and the fix (the
    CLI: a user asked for it and is there to read the message); `default` falls back to the default
    plan and says why in `source` (the hook: a request must not fail because an old search used
    other tiers; the reason lands in the `plan_source` tag and the evidence). A plan the caller
    gives explicitly is never replaced: it is validated and errors raise."""
    from .rum import Plan, PlanError, default_plan

    if on_unfit not in PLAN_POLICIES:
        raise ValueError(f"unknown plan policy on_unfit={on_unfit!r}; valid: {', '.join(PLAN_POLICIES)}")
    if isinstance(spec, Plan):
        return ResolvedPlan(spec.validate(ctx.tiers), "given")
    text = str(spec or "auto").strip()
    default = lambda why: ResolvedPlan(default_plan(tuple(ctx.tiers)).validate(ctx.tiers), why)
    if text in ("auto", "registered"):
        where = f"tag {Tag.SEARCHED_PLAN} of registered model {ctx.source.name}"
        try:
            registered = registered_plan(ctx.source.name)
            if registered is not None:
                return ResolvedPlan(registered.validate(ctx.tiers), f"registered ({where})")
        except PlanError as exc:
            if on_unfit == "error":
                raise PlanError(f"the searched plan of registered model {ctx.source.name!r} cannot be used for this "
                                f"request (tiers {list(ctx.tiers)}): {exc}; search again for this kind of request "
                                f"(`mlflow-unlearn search`), or pass --plan default") from None
            return default(f"default (the registered plan does not fit tiers {list(ctx.tiers)}: {exc})")
        if text == "registered":
            raise PlanError(f"registered model {ctx.source.name!r} has no searched plan ({where}); run "
                            f"`mlflow-unlearn search --model-uri {ctx.source.uri} ...` first, or use --plan default")
        return default("default (no plan registered on the model)")
    if text == "default":
        return default("default")
    return ResolvedPlan(Plan.parse(text).validate(ctx.tiers), "given")


def registered_plan(model_name: str):
    """The searched plan on a registered model, or None. Read as data (JSON), never executed; the
    pre-0.2 key `mlflow_unlearn.plan` is still read."""
    from .rum import Plan

    rm = mlflow.MlflowClient().get_registered_model(model_name)
    tags = rm.tags or {}
    text = tags.get(Tag.SEARCHED_PLAN) or tags.get(Tag.LEGACY_PLAN)
    return Plan.from_json(text) if text else None


def rum(ctx: ForgetContext, plan, *, register: bool = False, run_name: str | None = None,
        extra_tags: dict[str, str] | None = None) -> StepResult:
    """Unlearn tier by tier with `plan`; log the model and, when asked, register it as a new version."""
    from .rum import run_rum

    resolved = resolve_plan(ctx, plan)  # errors before any run exists
    plan = resolved.plan
    applied = tracking.plan_tag_value(plan.to_dict())  # too long for a tag: an error now, not a broken tag later
    with mlflow.start_run(run_name=run_name or f"rum-{plan.name or 'plan'}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({**ctx.tags(Role.RUM), Tag.ALGORITHM: "rum", Tag.PLAN_NAME: plan.name or "",
                         Tag.PLAN_SOURCE: resolved.source[:500], **(extra_tags or {})})
        log_forget_set(ctx)
        mlflow.log_dict(plan.to_dict(), "plan.json")
        tracking.log_params({"algorithm": "rum", "plan": plan.to_compact()[:500], "retain_mode": plan.retain_mode})
        callbacks = _TierRuns(ctx)
        try:
            result = run_rum(ctx.source.model.to(ctx.data.device), ctx.data, ctx.tiers, plan, seed=ctx.seed, callbacks=callbacks,
                             recipe=ctx.recipe())
        except BaseException:
            callbacks.abort()
            raise
        mlflow.log_metric("time/unlearn_s", result.seconds)
        info = tracking.log_model(result.model, ctx.source.model_spec, ctx.data, name="rum")
        result.model.to(ctx.data.device)
        version = None
        if register:
            version = register_unlearned(ctx, run.info.run_id, info.model_uri, {
                Tag.ALGORITHM: "rum", Tag.APPLIED_PLAN: applied, Tag.PLAN_SOURCE: resolved.source[:500],
                **(extra_tags or {})},
                how=f"RUM, plan {plan.to_compact()[:300]}")
            mlflow.set_tag(Tag.REGISTERED_VERSION, f"{ctx.source.name}/{version}")
    return StepResult(run.info.run_id, result.model, result.seconds, version=version)


def rum_step(model_uri: str, forget, plan="auto", *, seed: int = 0, register: bool = False, evaluate_against_retrain: bool = False,
             device: str | None = "auto", experiment: str | None = None) -> StepResult:
    ctx = prepare(model_uri, forget, seed=seed, device=device)
    tracking.use_experiment(experiment)
    result = rum(ctx, plan, register=register)
    line = f"rum: run {result.run_id}, {result.seconds:.1f} s"
    if result.version:
        line += f", registered models:/{ctx.source.name}/{result.version}"
    print(line)
    if evaluate_against_retrain:
        print(format_metrics(evaluate(ctx, result.run_id, retrain(ctx), model=result.model, label="rum")))
    return result


# --------------------------------------------------------------------------------------------------
# Memorisation (optional, expensive): Feldman-Zhang estimate and how well the free proxies track it


def memorization_step(model_uri: str, *, n_models: int = 16, subset_fraction: float = 0.7, epochs: int | None = None,
                      n_workers: int = 1, workdir: str | None = None, seed: int = 0, device: str | None = "auto",
                      experiment: str | None = None) -> dict[str, float]:
    """Train `n_models` models on random subsets (fraction `subset_fraction`) of the source's train set
    with its recipe, estimate per-example memorisation, and log it with the Spearman correlation of
    each proxy against it. With `workdir` an interrupted run resumes where it stopped (default: a
    folder keyed by the source version under ./memorization)."""
    from .memorization import estimate_memorization, proxy_correlations

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


# --------------------------------------------------------------------------------------------------
# Cached references without training one (the registry hook evaluates against a retrain only when
# one already exists)


def retrain_recipe(ctx: ForgetContext, epochs: int | None = None) -> str:
    """The recipe key `retrain` caches its runs under: the source's training config with the seed
    left out (the seed is a key of its own)."""
    import hashlib

    config = {k: v for k, v in _retrain_config(ctx, epochs).to_dict().items() if k != "seed"}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def cached_reference(ctx: ForgetContext, epochs: int | None = None) -> StepResult | None:
    """The cached retrained reference for this source, forget set, seed and recipe, or None (never trains)."""
    run_id = find_cached_retrain(ctx, retrain_recipe(ctx, epochs))
    if run_id is None:
        return None
    run = mlflow.MlflowClient().get_run(run_id)
    model = load_run_model(run_id).to(ctx.data.device)
    return StepResult(run_id, model, float(run.data.metrics.get("time/retrain_s", float("nan"))), cached=True)

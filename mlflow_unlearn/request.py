"""A deletion request, resolved once at the edge: the source version (model, data, manifest,
C-proxy), a validated forget set with its digest and tiers (`prepare` -> `ForgetContext`), and the
plan to apply (`resolve_plan`, one function and one explicit policy for the CLI and the hook).
Everything below this trusts these values."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from . import tracking
from .algorithms import TrainRecipe
from .data import ImageData
from .compute import DEFAULT_BUDGET, Budget, parse_budget
from .forget_sets import ForgetSet, ForgetSetError, is_spec, load_forget_set
from .ids import check_something_retained
from .lineage import Lineage
from .memorization import DEFAULT_TIERS, train_bin_counts
from .models import build_model
from .plans import Plan, PlanError, default_plan
from .task import UnlearnTask
from .tags import Tag
from .training import TrainConfig, resolve_device


@dataclass
class ForgetContext:
    """A deletion request resolved at the edge: the source version, the checked forget set as the
    user gave it (its digest names the request) and the task it becomes (`task.UnlearnTask`: the
    data on the device, the new ids cut into tiers, the ids forgotten before, the source's recipe),
    built once in `prepare`; every step below takes these and checks nothing again."""

    source: tracking.SourceModel
    forget: ForgetSet
    task: UnlearnTask
    histogram: dict[str, int]  # forget examples per train-set memorisation bin
    seed: int
    cache: dict = dataclasses.field(default_factory=dict)  # values derived once per request
    # Requested ids earlier requests on the source's chain already removed: reported, not unlearned
    # again (requests accumulate; the task's `forgotten` holds every id removed before).
    already_forgotten: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # The most compute this request may use (compute.Budget, in the source's original training
    # passes); None: unlimited (internal uses only; every entry point sets one).
    budget: Budget | None = None

    @property
    def data(self) -> ImageData:
        return self.task.data

    @property
    def tiers(self) -> dict[str, np.ndarray]:
        """Tier name -> the new ids of that tier (C-proxy rank within the request)."""
        return dict(self.task.tiers)

    @property
    def forgotten_before(self) -> np.ndarray:
        return self.task.forgotten

    @property
    def new_ids(self) -> np.ndarray:
        """The requested ids this request removes (the tiers partition them)."""
        return self.task.forget_ids

    @property
    def retain_ids(self) -> np.ndarray:
        """Train minus this request minus everything forgotten before: what the model may still learn from."""
        return self.task.retain_ids(self.forget.ids)

    def lineage_after(self, run_id: str, how: str) -> Lineage:
        """The lineage of the model this request produces (logged with it as manifest/lineage.json)."""
        base = self.source.lineage or Lineage.original(self.source.run_id, self.source_tag)
        return base.after(source=self.source_tag, forget_ids=self.forget.ids, run_id=run_id, how=how)

    @property
    def source_tag(self) -> str:
        return f"{self.source.name}/{self.source.version}"

    def unlearn_data(self, retain_ids=None):
        """Forget the request; retain `retain_ids` (default: `self.retain_ids`; ids derived from this
        request, so nothing is checked again)."""
        return self.task.unlearn_data(self.forget.ids, self.retain_ids if retain_ids is None else retain_ids)

    def recipe(self) -> TrainRecipe:
        """How the source was made: what the `retrain` algorithm replays, the same recipe as the
        retrained reference."""
        return self.task.recipe

    def tags(self, role: str) -> dict[str, str]:
        return {Tag.ROLE: role, Tag.SOURCE_MODEL: self.source_tag, Tag.FORGET_DIGEST: self.forget.digest,
                Tag.SEED: str(self.seed)}

    def tier_positions(self) -> dict[str, np.ndarray]:
        """Tier -> positions within the (sorted) forget set, for per-tier metrics."""
        return {k: np.searchsorted(self.forget.ids, v) for k, v in self.task.tiers.items()}


def resolve_forget_source(forget) -> Any:
    """Download an MLflow artifact URI to a local file; pass specs, paths and id lists through."""

    if isinstance(forget, (list, tuple, np.ndarray)) or is_spec(str(forget)):
        return forget
    text = str(forget)
    if re.match(r"^(runs|models|mlflow-artifacts|s3|gs|wasbs|dbfs|file)://?", text) and not Path(text).exists():
        try:
            return mlflow.artifacts.download_artifacts(artifact_uri=text)
        except Exception as exc:  # MLflow raises several types for unreadable URIs
            raise ForgetSetError(f"cannot read the forget-set artifact {text!r}: {exc}") from None
    return text


def prepare(source_uri: str, forget, *, seed: int = 0, device: str | None = "auto", tier_names=None,
            budget: float | None = DEFAULT_BUDGET, data_roots: list[str] | None = None) -> ForgetContext:
    """Load a registered source version and validate a forget set against its training manifest.
    `budget`: the most compute the request may use, a fraction in (0, 1] of the source's original
    training (None: unlimited). `data_roots` (the registry hook): refuse a source whose dataset reads
    files on this host outside these folders (None: no restriction, the CLI's own data)."""

    names = tuple(tier_names or DEFAULT_TIERS)
    if budget is not None:
        parse_budget(budget)  # before any work: a bad budget names itself, not a later failure
    tracking.connect()
    source = tracking.load_source(source_uri)
    labels = np.asarray(source.manifest["labels"])
    c_proxy = None if source.proxies is None else source.proxies["c_proxy"]
    fs = load_forget_set(resolve_forget_source(forget), labels=labels, c_proxy=c_proxy,
                         classes=source.manifest.get("classes"), tier_names=names, seed=seed)
    if c_proxy is None:
        raise ForgetSetError(f"{source.uri} has no C-proxy (its run lacks the confidences/ artifacts the train step "
                             f"logs), so its forget sets cannot be cut into memorisation tiers; train it with "
                             f"`mlflow-unlearn train`")
    already = np.intersect1d(fs.ids, source.forgotten)
    if len(already) == len(fs):
        raise AlreadyForgotten(source.uri, len(fs), fs.digest)
    check_something_retained(len(fs) - len(already) + len(source.forgotten), len(labels),
                             what="this request and the earlier ones", error=ForgetSetError)  # before loading data
    data = source.load_data(resolve_device(device), data_roots=data_roots)
    recipe = TrainRecipe(build=lambda s: build_source_architecture(source, s).to(data.device),
                         config=TrainConfig(**source.model_spec["train_config"]))
    task = UnlearnTask.from_forget_set(data, fs.ids, c_proxy, names=names, forgotten=source.forgotten, recipe=recipe)
    return ForgetContext(source=source, forget=fs, task=task, histogram=train_bin_counts(fs.ids, c_proxy, names),
                         seed=seed, already_forgotten=already,
                         budget=None if budget is None else Budget.of(budget, source.original_passes))


class AlreadyForgotten(ForgetSetError):
    """Every id of a request was forgotten by an earlier request on the chain that made the source:
    nothing to unlearn, and the source itself is the answer (the hook answers `done` with it)."""

    def __init__(self, source_uri: str, n: int, digest: str):
        self.source_uri, self.n, self.digest = source_uri, n, digest
        super().__init__(f"all {n} ids of this request (digest {digest[:12]}...) were already forgotten by an "
                         f"earlier request on {source_uri}: nothing to unlearn; {source_uri} is the model without them")


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


def build_source_architecture(source: "tracking.SourceModel | ForgetContext", seed: int) -> torch.nn.Module:
    """A freshly initialised model of the source's architecture (what a retrain starts from)."""
    spec = (source.source if isinstance(source, ForgetContext) else source).model_spec
    return build_model(spec["name"], num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"]), seed=seed,
                       **spec["kwargs"])


@dataclass(frozen=True)
class ResolvedPlan:
    """A plan checked against the request's tiers, and where it came from (tagged on the result)."""

    plan: Any  # plans.ValidatedPlan
    source: str
    # The budget to run under when it is not the request's: a plan chosen under a smaller budget
    # than the request's runs at its own (what was scored); None: the request's.
    budget: Budget | None = None


PLAN_POLICIES = ("error", "default")


def resolve_plan(ctx: ForgetContext, spec="auto", *, on_unfit: str = "error") -> ResolvedPlan:
    """The one plan resolution, for the CLI, `main` and the registry hook alike.

    `spec`: a `Plan`; `default` (`plans.default_plan` for the request's tiers); `registered` (the
    searched plan on the source's registered model, tag `mlflow_unlearn.searched_plan`); `auto`
    (registered if the model has one, else default); or a file / JSON / YAML / compact string.

    `on_unfit` is the policy when a *registered* plan cannot be used for this request (unreadable,
    or its tiers are not the request's): `error` raises PlanError naming the tiers and the fix (the
    CLI: a user asked for it and is there to read the message); `default` falls back to the default
    plan and says why in `source` (the hook: a request must not fail because an old search used
    other tiers; the reason lands in the `plan_source` tag and the evidence). A plan the caller
    gives explicitly is never replaced: it is validated and errors raise."""

    if on_unfit not in PLAN_POLICIES:
        raise ValueError(f"unknown plan policy on_unfit={on_unfit!r}; valid: {', '.join(PLAN_POLICIES)}")
    if isinstance(spec, Plan):
        return at_plan_budget(ctx, spec.validate(ctx.tiers), "given")
    text = str(spec or "auto").strip()
    default = lambda why: ResolvedPlan(default_plan(tuple(ctx.tiers)).validate(ctx.tiers), why)
    if text in ("auto", "registered"):
        where = f"tag {Tag.SEARCHED_PLAN} of registered model {ctx.source.name}"
        try:
            registered = registered_plan(ctx.source.name)
            if registered is not None:
                return at_plan_budget(ctx, registered.validate(ctx.tiers), f"registered ({where})")
        except PlanBudgetError as exc:
            if on_unfit == "error":
                raise PlanBudgetError(f"the searched plan of registered model {ctx.source.name!r} {exc}; pass --budget "
                                      f"{exc.plan_budget:g} (the budget it was searched at), search again with "
                                      f"--budget {exc.request_budget:g}, or pass --plan default",
                                      exc.plan_budget, exc.request_budget) from None
            return default(f"default (the registered plan {exc})")
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
    try:
        return at_plan_budget(ctx, Plan.parse(text).validate(ctx.tiers), "given")
    except PlanBudgetError as exc:
        raise PlanBudgetError(f"the plan {exc}; pass --budget {exc.plan_budget:g}, or drop the plan's budget key to "
                              f"run it cut to --budget {exc.request_budget:g}", exc.plan_budget, exc.request_budget) from None


class PlanBudgetError(PlanError):
    """A plan chosen under a larger budget than the request's (`at_plan_budget`)."""

    def __init__(self, message: str, plan_budget: float, request_budget: float):
        super().__init__(message)
        self.plan_budget, self.request_budget = plan_budget, request_budget


def at_plan_budget(ctx: ForgetContext, plan, source: str) -> ResolvedPlan:
    """The rule for a plan that says the budget it was chosen under (`Plan.budget`, which `search`
    records): the hyperparameters were scored with the algorithms' steps cut to that budget, so
    - within the request's budget, the plan runs at its own: the run that was scored, and no more
      compute than the request allows (the source says so);
    - above it, cut to the request's budget the plan would be another run that nobody scored:
      `PlanBudgetError` (the caller's policy decides between the error and the default plan).
    A plan without a budget, or a request without one, runs as before."""
    if plan.budget is None or ctx.budget is None or math.isclose(plan.budget, ctx.budget.fraction):
        return ResolvedPlan(plan, source)
    if plan.budget > ctx.budget.fraction:
        raise PlanBudgetError(f"was chosen under budget {plan.budget:g}, above this request's {ctx.budget.fraction:g}: "
                              f"cut to it, its steps would not be the run that was scored",
                              plan.budget, ctx.budget.fraction)
    return ResolvedPlan(plan, f"{source}; at its searched budget {plan.budget:g} (request budget "
                              f"{ctx.budget.fraction:g})", Budget(plan.budget, ctx.budget.original_passes))


def registered_plan(model_name: str):
    """The searched plan on a registered model, or None. Read as data (JSON), never executed."""

    rm = mlflow.MlflowClient().get_registered_model(model_name)
    tags = rm.tags or {}
    text = tags.get(Tag.SEARCHED_PLAN)
    return Plan.from_json(text) if text else None

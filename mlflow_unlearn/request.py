"""A deletion request, resolved once at the edge: the source version (model, data, manifest,
C-proxy), a validated forget set with its digest and tiers (`prepare` -> `ForgetContext`), and the
plan to apply (`resolve_plan`, one function and one explicit policy for the CLI and the hook).
Everything below this trusts these values."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from . import tracking
from .algorithms import TrainRecipe, UnlearnData
from .compute import DEFAULT_BUDGET, Budget, parse_budget
from .forget_sets import ForgetSetError, is_spec, load_forget_set
from .ids import check_something_retained, checked
from .lineage import Lineage
from .memorization import DEFAULT_TIERS, tier_histogram, tiers_from_c_proxy
from .models import build_model
from .rum import Plan, PlanError, default_plan
from .tracking import Tag
from .training import TrainConfig, resolve_device


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
    # Requests accumulate (issue 11): ids earlier requests already removed from the source. They are
    # never retained; requested ids among them are reported (`already_forgotten`), not unlearned again.
    forgotten_before: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    already_forgotten: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # The most compute this request may use (compute.Budget, in the source's original training
    # passes); None: unlimited (internal uses only; every entry point sets one).
    budget: Budget | None = None

    @property
    def new_ids(self) -> np.ndarray:
        """The requested ids this request removes (the tiers partition them)."""
        return checked(np.setdiff1d(self.forget.ids, self.already_forgotten), len(self.data.train))

    @property
    def retain_ids(self) -> np.ndarray:
        """Train minus this request minus everything forgotten before: what the model may still learn from."""
        keep = np.ones(len(self.data.train), dtype=bool)
        keep[np.asarray(self.forget.ids, dtype=np.int64)] = False
        keep[self.forgotten_before] = False
        return checked(np.flatnonzero(keep), len(keep))  # a mask over the train split: valid by construction

    def lineage_after(self, run_id: str, how: str) -> Lineage:
        """The lineage of the model this request produces (logged with it as manifest/lineage.json)."""
        base = self.source.lineage or Lineage.original(self.source.run_id, self.source_tag)
        return base.after(source=self.source_tag, forget_ids=self.forget.ids, run_id=run_id, how=how)

    @property
    def source_tag(self) -> str:
        return f"{self.source.name}/{self.source.version}"

    def unlearn_data(self, retain_ids=None):
        """Forget the request; retain `retain_ids` (default: `self.retain_ids`)."""
        return UnlearnData(self.data, self.forget.ids, self.retain_ids if retain_ids is None else retain_ids,
                           recipe=self.recipe())

    def recipe(self):
        """How the source was made (its architecture, fresh weights per seed, and its TrainConfig):
        what the `retrain` algorithm replays, the same recipe as the retrained reference."""

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
    new, already = (source.lineage.split(fs.ids) if source.lineage is not None
                    else (np.asarray(fs.ids, dtype=np.int64), np.zeros(0, dtype=np.int64)))
    if len(new) == 0:
        raise AlreadyForgotten(source.uri, len(fs), fs.digest)
    check_something_retained(len(new) + len(source.forgotten), len(labels), what="this request and the earlier ones",
                             error=ForgetSetError)
    data = source.load_data(resolve_device(device), data_roots=data_roots)
    tiers = tiers_from_c_proxy(new, c_proxy, names=names) if len(new) >= len(names) else {"all": new}
    histogram = tier_histogram(fs.ids, c_proxy, names=names)
    return ForgetContext(source=source, data=data, forget=fs, tiers=tiers, histogram=histogram, seed=seed,
                         forgotten_before=source.forgotten, already_forgotten=already,
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


def build_source_architecture(ctx: ForgetContext, seed: int) -> torch.nn.Module:
    """A freshly initialised model of the source's architecture (what a retrain starts from)."""
    spec = ctx.source.model_spec
    return build_model(spec["name"], num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"]), seed=seed,
                       **spec["kwargs"])


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
    """The searched plan on a registered model, or None. Read as data (JSON), never executed."""

    rm = mlflow.MlflowClient().get_registered_model(model_name)
    tags = rm.tags or {}
    text = tags.get(Tag.SEARCHED_PLAN)
    return Plan.from_json(text) if text else None

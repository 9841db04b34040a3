"""The retrained reference: the source's architecture trained from scratch on retain with the
source's recipe (the exact answer every unlearned model is measured against), logged as a run with
role `retrain` and cached by source version, forget digest, seed and recipe.

Also the calibration reference: one retrain per source version and recipe, without a calibration
pool (`forget_sets.calibration_pool`), that every request's calibration sets and the hook's
acceptance gate are scored against."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass

import mlflow
import numpy as np

from . import tracking
from .compute import ComputeMeter
from .forget_sets import ForgetSet, calibration_pool, default_calibration_size
from .gate import GateError, NeverSeen
from .memorization import DEFAULT_TIERS, train_bin_counts
from .task import UnlearnTask
from .request import ForgetContext, build_source_architecture, log_forget_set
from .runs import StepResult, load_run_model
from .tags import Role, Tag
from .training import TrainConfig, retrain_from_scratch


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


def retrain(ctx: ForgetContext, *, epochs: int | None = None, use_cache: bool = True, progress: bool = False,
            seed: int | None = None, tags: dict[str, str] | None = None) -> StepResult:
    """Train the source's architecture from scratch on retain with the source's recipe: the exact
    answer every unlearned model is measured against. A finished run with the same key (source,
    forget digest, seed, recipe) is reused. `seed` (default: the context's) seeds the init and the
    data order; a second seed gives the retrain-vs-retrain noise floor."""
    seed = ctx.seed if seed is None else int(seed)
    config = _retrain_config(ctx, epochs, seed)
    recipe = retrain_recipe(ctx, epochs)
    if use_cache and (hit := cached_reference(ctx, epochs, seed=seed)) is not None:
        print(f"retrain: cache hit, run {hit.run_id}")
        return hit
    spec = ctx.source.model_spec
    ud = ctx.unlearn_data()
    with mlflow.start_run(run_name=f"retrain-{ctx.source_tag}" + ("" if seed == ctx.seed else f"-seed{seed}"),
                          nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({**ctx.tags(Role.RETRAIN), Tag.ALGORITHM: "retrain", Tag.RECIPE: recipe,
                         Tag.SEED: str(seed), **(tags or {})})
        log_forget_set(ctx)
        tracking.log_params({f"train.{k}": v for k, v in config.to_dict().items()})
        t0 = time.perf_counter()
        meter = ComputeMeter(unit=ctx.source.original_passes)

        net = retrain_from_scratch(lambda s: meter.attach(build_source_architecture(ctx, s)), config, ctx.data, ud.retain_ids, seed=seed, log=tracking.MlflowLogger(),
                                   progress=progress)
        meter.strip(net)
        seconds = time.perf_counter() - t0
        mlflow.log_metrics({"time/retrain_s": seconds, "cost/train_passes": float(meter.train_passes),
                            "cost/eval_passes": float(meter.eval_passes), "cost/train_fraction": meter.fraction()})
        tracking.log_model(net, spec, ctx.data, name="retrain")
        tracking.log_lineage(ctx.lineage_after(run.info.run_id, how="retrain"))
    net.to(ctx.data.device)
    return StepResult(run.info.run_id, net, seconds)


def retrain_recipe(ctx: ForgetContext, epochs: int | None = None) -> str:
    """The recipe key `retrain` caches its runs under: the source's training config with the seed
    left out (the seed is a key of its own)."""
    config = {k: v for k, v in _retrain_config(ctx, epochs).to_dict().items() if k != "seed"}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def cached_reference(ctx: ForgetContext, epochs: int | None = None, *, seed: int | None = None) -> StepResult | None:
    """The cached retrained reference for this source, forget set, seed (default: the context's)
    and recipe, or None (never trains): the one cache loader, used by `retrain` and the hook."""
    run_id = find_cached_retrain(ctx, retrain_recipe(ctx, epochs), seed)
    if run_id is None:
        return None
    run = mlflow.MlflowClient().get_run(run_id)
    model = load_run_model(run_id).to(ctx.data.device)
    return StepResult(run_id, model, float(run.data.metrics.get("time/retrain_s", float("nan"))), cached=True)


# --------------------------------------------------------------------------------------------------
# The calibration reference: one per source version and recipe

CALIBRATION_SEED = 0  # the pool's draw and its reference's seed: a fixed key, so every request finds it
DEFAULT_CALIBRATION_SETS = 2


@dataclass(frozen=True)
class PoolSpec:
    """A calibration pool: the `k` calibration sets of the canonical request `mix:size`, cut into
    `tiers` bins. It determines the pool's ids (given the source's C-proxy), so it is the cache key
    a source's calibration reference is found by (tag `mlflow_unlearn.calibration_pool`)."""

    k: int
    size: int
    tiers: int = len(DEFAULT_TIERS)

    def tag(self) -> str:
        return f"k={self.k};size={self.size};tiers={self.tiers}"

    @classmethod
    def parse(cls, text) -> "PoolSpec | None":
        """The spec a run's tag names, or None for anything else (tags are read, never trusted)."""
        m = re.fullmatch(r"k=(\d{1,3});size=(\d{1,7});tiers=(\d{1,2})", str(text or ""))
        return None if m is None or min(map(int, m.groups())) < 1 else cls(*map(int, m.groups()))

    @classmethod
    def default(cls, n_train: int, *, k: int = DEFAULT_CALIBRATION_SETS, tiers: int = len(DEFAULT_TIERS),
                at_least: int = 0) -> "PoolSpec":
        """The pool built when none fits: `default_calibration_size`, or the smallest mix of whole
        tiers holding `at_least` examples (a request larger than the default)."""
        return cls(k, max(default_calibration_size(n_train, tiers), tiers * -(-int(at_least) // tiers)), tiers)


def pool_names(spec: PoolSpec) -> tuple[str, ...]:
    return DEFAULT_TIERS if spec.tiers == len(DEFAULT_TIERS) else tuple(f"bin{i + 1}" for i in range(spec.tiers))


def calibration_pool_ids(ctx: ForgetContext, spec: PoolSpec) -> np.ndarray:
    """The pool's ids for this source: deterministic in its C-proxy and `spec`, less whatever earlier
    requests removed (never a calibration example). Raises MemorizationError with the counts when
    the train set cannot hold it."""
    ids = calibration_pool(ctx.source.proxies["c_proxy"], spec.size, spec.k, names=pool_names(spec),
                           seed=CALIBRATION_SEED)
    return np.setdiff1d(ids, ctx.forgotten_before)


def with_forget_set(ctx: ForgetContext, ids, source: str, names=None) -> ForgetContext:
    """The same source and data with another forget set, cut into tiers like `ctx` (or `names`)."""
    c_proxy = ctx.source.proxies["c_proxy"]
    names = tuple(names or (ctx.tiers if list(ctx.tiers) != ["all"] else DEFAULT_TIERS))
    fs = ForgetSet(np.asarray(ids, dtype=np.int64), source=source)  # ids of this source's train split, none forgotten
    task = UnlearnTask.from_forget_set(ctx.data, fs.ids, c_proxy, names=names, forgotten=ctx.forgotten_before,
                                       recipe=ctx.recipe())
    return dataclasses.replace(ctx, forget=fs, task=task, histogram=train_bin_counts(fs.ids, c_proxy, names),
                               already_forgotten=np.zeros(0, dtype=np.int64), cache={})


def calibration_reference(ctx: ForgetContext, spec: PoolSpec, *, seed: int = CALIBRATION_SEED, build: bool = True,
                          progress: bool = False) -> tuple[np.ndarray, StepResult | None]:
    """The pool's ids and the source's calibration reference: retrained without the pool (`build`),
    or only looked up in the cache (None when there is none). One per source version, recipe, pool
    and seed: every later request, search and gate check reuses it."""
    ids = calibration_pool_ids(ctx, spec)
    pool_ctx = with_forget_set(ctx, ids, f"calibration pool of {ctx.source_tag}: {spec.k} calibration set(s) of "
                                         f"mix:{spec.size}", names=pool_names(spec))
    if not build:
        return ids, cached_reference(pool_ctx, seed=seed)
    return ids, retrain(pool_ctx, seed=seed, progress=progress, tags={Tag.CALIBRATION_POOL: spec.tag()})


def cached_pool_specs(ctx: ForgetContext) -> list[PoolSpec]:
    """The pools this source version already has a calibration reference for (same recipe, the
    calibration seed), smallest first."""
    client = mlflow.MlflowClient()
    found = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=(f"tags.`{Tag.ROLE}` = '{Role.RETRAIN}' and tags.`{Tag.SOURCE_MODEL}` = '{ctx.source_tag}' and "
                       f"tags.`{Tag.SEED}` = '{CALIBRATION_SEED}' and tags.`{Tag.RECIPE}` = '{retrain_recipe(ctx)}' and "
                       f"attributes.status = 'FINISHED'"), max_results=200)
    specs = {s for r in found if (s := PoolSpec.parse(r.data.tags.get(Tag.CALIBRATION_POOL))) is not None}
    return sorted(specs, key=lambda s: (s.k * s.size, s.k, s.tiers))


def build_calibration_reference(model_uri: str, *, k: int = DEFAULT_CALIBRATION_SETS, size: int | None = None,
                                device: str | None = "auto", progress: bool = False) -> tuple[PoolSpec, StepResult]:
    """Retrain a registered version's calibration reference now (`train --calibration-reference
    true`), so no later request waits for it: the pool of `size` (default: `default_calibration_size`)."""
    from .request import prepare

    ctx = prepare(model_uri, f"mix:{len(DEFAULT_TIERS)}", seed=CALIBRATION_SEED, device=device, budget=None)
    spec = PoolSpec(k, size) if size is not None else PoolSpec.default(len(ctx.data.train), k=k)
    _, run = calibration_reference(ctx, spec, progress=progress)
    return spec, run


def pool_never_seen(ctx: ForgetContext) -> NeverSeen | None:
    """The gate's never-seen estimate from the source's calibration reference (the largest cached
    pool): what a model that never saw the pool gets on each pool example, with its C-proxy, across
    the least, median and most memorised ranks. None when the source has none (nothing is trained)."""
    from .metrics import SplitOutputs, mia_auc
    from .training import predict_logits

    val = getattr(ctx.data, "val", None)
    specs = cached_pool_specs(ctx) if ctx.source.proxies is not None else []
    if not specs or val is None or len(val) == 0:
        return None
    spec = specs[-1]
    ids, run = calibration_reference(ctx, spec, build=False)
    if run is None or len(ids) == 0:
        return None
    pool, held = (SplitOutputs(predict_logits(run.model, ctx.data, split), split.y)
                  for split in (ctx.data.train.subset(ids), val))
    try:
        return NeverSeen(np.asarray(ctx.source.proxies["c_proxy"], dtype=np.float64)[ids],
                         pool.correct.astype(np.float64), mia_auc(pool.true_conf, held.true_conf),
                         source=f"the calibration reference ({len(ids)} pool examples, run {run.run_id})",
                         conf=pool.true_conf, heldout_conf=held.true_conf)
    except GateError:
        return None


def calibration_never_seen(ctx: ForgetContext) -> NeverSeen | None:
    """The never-seen estimate of the acceptance gate (gate.py): the calibration references of the
    search whose plan the source's registered model carries (tag searched_plan_run, its
    calibration.json), as (C-proxy, correct) pairs. None when there was no search, or it predates
    this record. Read as checked JSON; ids outside the source's train set make it None."""
    import numpy as np
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        run_id = (client.get_registered_model(ctx.source.name).tags or {}).get(Tag.SEARCHED_PLAN_RUN)
        if not run_id or ctx.source.proxies is None:
            return None
        record = json.loads(open(client.download_artifacts(run_id, "calibration.json")).read())
    except (MlflowException, OSError, ValueError):
        return None
    c_proxy = np.asarray(ctx.source.proxies["c_proxy"], dtype=np.float64)
    cs, ys, aucs, confs, held = [], [], [], [], []
    for entry in (record.get("calibration_sets") or []) if isinstance(record, dict) else []:
        seen = entry.get("never_seen") if isinstance(entry, dict) else None
        if not isinstance(seen, dict):
            continue
        ids, correct = np.asarray(seen.get("ids", []), dtype=np.int64), np.asarray(seen.get("correct", []))
        if len(ids) == 0 or len(ids) != len(correct) or ids.min() < 0 or ids.max() >= len(c_proxy):
            return None
        cs.append(c_proxy[ids])
        ys.append(correct.astype(np.float64))
        if isinstance(seen.get("auc"), (int, float)):
            aucs.append(float(seen["auc"]))
        conf = np.asarray(seen.get("conf", []), dtype=np.float64)
        confs.append(conf if len(conf) == len(ids) else None)
        held.append(np.asarray(seen.get("heldout_conf", []), dtype=np.float64))
    if not cs:
        return None
    with_conf = all(c is not None for c in confs) and all(len(h) for h in held)
    try:
        return NeverSeen(np.concatenate(cs), np.concatenate(ys), float(np.mean(aucs)) if aucs else None,
                         source=f"{len(cs)} calibration reference(s) of search run {run_id}",
                         conf=np.concatenate(confs) if with_conf else None,
                         heldout_conf=np.concatenate(held) if with_conf else None)
    except GateError:
        return None


def heldout_never_seen_for(ctx: ForgetContext) -> NeverSeen | None:
    """The gate's never-seen estimate without a search (gate.heldout_never_seen): the validation
    split's confidences recorded while the original trained (its held-out C-proxy), matched by rank
    to the train C-proxy, with the source version's own correctness on those examples (it never
    trained on them, whatever it forgot since). None when the original recorded no held-out
    confidences (no validation split, or trained before they were recorded) or they do not fit."""
    import numpy as np

    from .confidences import heldout_c_proxy
    from .gate import heldout_never_seen
    from .metrics import SplitOutputs
    from .training import predict_logits

    held = ctx.source.heldout_true_class_prob
    val = getattr(ctx.data, "val", None)
    if held is None or ctx.source.proxies is None or val is None or len(val) == 0 or held.ndim != 2 or held.shape[1] != len(val):
        return None
    try:
        proxy = heldout_c_proxy(held)
        outputs = {name: SplitOutputs(predict_logits(ctx.source.model, ctx.data, split), split.y)
                   for name, split in (("val", val), ("test", ctx.data.test))}
        return heldout_never_seen(np.asarray(ctx.source.proxies["c_proxy"]), proxy, outputs["val"].correct,
                                  heldout_conf=outputs["val"].true_conf, test_conf=outputs["test"].true_conf,
                                  source=f"{len(val)} validation examples of the same C-proxy rank (no search)")
    except (GateError, ValueError):
        return None


def never_seen_estimate(ctx: ForgetContext) -> NeverSeen | None:
    """The acceptance gate's never-seen estimate: the source's calibration reference where it has
    one, else the search's calibration references (retrains: the better estimates), else held-out
    examples of the same C-proxy rank, else None (the per-tier checks are then reported as not
    checked)."""
    return pool_never_seen(ctx) or calibration_never_seen(ctx) or heldout_never_seen_for(ctx)

"""Unlearning benchmarks on the CIFAR-10 JPEG copy: every algorithm against retrain, and the RUM
paper's question (does a searched per-tier plan beat the best single algorithm?).

    .venv/bin/python bench/bench_unlearning.py --mode algorithms        # issue 3: docs/bench_algorithms.md
    .venv/bin/python bench/bench_unlearning.py --mode rum               # issue 4: docs/bench_rum.md
    .venv/bin/python bench/bench_unlearning.py --mode paper --device cuda   # the paper's setting, one seed
    .venv/bin/python bench/bench_unlearning.py --mode paper --smoke     # same code path, tiny, CPU, < 2 min

Core only (no MLflow runs): data -> original training with the C-proxy recorder -> "mix" forget set
-> retrained reference -> algorithms / RUM plans -> metrics, all through the package's functions.
The search mirrors `mlflow_unlearn.search` (same space via `suggest_hyperparameters`, same sampler
and pruner) on a *calibration* forget set with its own reference, so the plans it finds are
evaluated on a forget set they were not tuned on. Results are printed as they come (flushed) and
written as markdown tables under --out-dir (default docs/; nothing is written with --smoke unless
--out-dir is given).

Scale (DESIGN.md section 7, "shrink the data, not the fit"): on the CPU a small subset is trained to
near 100% train accuracy; every table states the subset, model, epochs and the original's train
accuracy (plain images, eval mode).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow_unlearn.algorithms import ALGORITHMS, UnlearnData, run_algorithm  # noqa: E402
from mlflow_unlearn.confidences import ConfidenceRecorder  # noqa: E402
from mlflow_unlearn.data import DatasetSpec, load_dataset  # noqa: E402
from mlflow_unlearn.memorization import mix_forget_set, tiers_from_c_proxy  # noqa: E402
from mlflow_unlearn.metrics import evaluate_unlearning, mean_ci, outputs_for, paired_test  # noqa: E402
from mlflow_unlearn.models import build_model  # noqa: E402
from mlflow_unlearn.rum import ALL_TIER, Plan, PlanStep, all_tier, run_rum, single_algorithm_plan  # noqa: E402
from mlflow_unlearn.training import TrainConfig, accuracy, train_model  # noqa: E402

DEFAULT_DATA = str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
TIERS = ("low", "mid", "high")
COMPARED = ("neggrad_plus", "finetune", "l1_sparse", "salun", "scrub")  # vanilla vs per-tier
# The search space of mlflow_unlearn.search (DEFAULT_ALGORITHMS), without importing it up front.
SEARCHED = ("none", "finetune", "neggrad", "neggrad_plus", "l1_sparse", "scrub", "random_label", "salun")


@dataclass(frozen=True)
class Scale:
    subset: int | None  # train images (None: all 50,000)
    test_subset: int | None  # test images (None: all 10,000)
    model: str
    width: int
    epochs: int
    batch_size: int
    lr: float
    augment: bool  # crop+flip for the original, every retrain and the unlearning algorithms
    forget: int  # size of the mix forget set (and of the calibration forget set)
    trials: int  # Optuna trials per search space (per-tier plan, single algorithm)
    max_epochs: int  # search space: epochs per step at most
    seeds: tuple[int, ...]


# CPU scale (modes algorithms and rum): the original fits its training set (train accuracy 1.0)
# and mode rum (3 seeds, each with its own original, 3 retrains, 2 searches and 5 algorithms x 2
# variants at their default epochs) stays near 12 minutes on 2 shared CPU cores. With crop+flip no
# CPU-sized run got there (resnet18 width 8 on 800 images, 40 epochs of batch 32: 0.78), so the CPU
# scale trains on the plain images; see bench/README.md.
CPU = Scale(subset=600, test_subset=500, model="resnet18", width=4, epochs=20, batch_size=32, lr=0.1,
            augment=False, forget=60, trials=10, max_epochs=2, seeds=(0, 1, 2))
# The paper's setting (ResNet-18, CIFAR-10, 30 epochs, crop+flip, mix forget set of 3,000).
PAPER = Scale(subset=None, test_subset=None, model="resnet18", width=64, epochs=30, batch_size=256, lr=0.1,
              augment=True, forget=3000, trials=4, max_epochs=2, seeds=(0,))
# The paper mode's code path at a size that runs in CI on 2 CPU cores.
SMOKE = Scale(subset=300, test_subset=200, model="resnet18", width=4, epochs=2, batch_size=64, lr=0.1,
              augment=True, forget=30, trials=2, max_epochs=1, seeds=(0,))


def say(*parts) -> None:
    print(*parts, flush=True)


# ------------------------------------------------------------------------------------------------
# Setup: device, data, original model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu or auto")
    return torch.device(name)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, bf16 autocast, channels_last"
    else:
        where = f"{os.cpu_count()} CPU cores ({platform.machine()}), {torch.get_num_threads()} torch thread(s)"
    return f"{where}, torch {torch.__version__}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def new_model(data, scale: Scale, seed: int) -> torch.nn.Module:
    model = build_model(scale.model, num_classes=data.num_classes, input_shape=data.input_shape, seed=seed,
                        width=scale.width).to(data.device)
    if data.device.type == "cuda":  # NHWC convolutions: the fast path for bf16 on tensor cores
        model = model.to(memory_format=torch.channels_last)
    return model


def load(args, scale: Scale, seed: int, device: torch.device):
    """The train subset (seeded) and a seeded test subset, resident on `device`."""
    t0 = time.perf_counter()
    data = load_dataset(DatasetSpec(name=f"imagefolder:{args.data}", subset=scale.subset, seed=seed), device="cpu")
    if scale.test_subset is not None and scale.test_subset < len(data.test):
        keep = np.sort(np.random.RandomState(10_000 + seed).choice(len(data.test), scale.test_subset, replace=False))
        data = dataclasses.replace(data, test=data.test.subset(keep))
    data = dataclasses.replace(data, augment=scale.augment).to(device)  # the algorithms follow data.augment
    say(f"data: {len(data.train)} train / {len(data.test)} test images, loaded in {time.perf_counter() - t0:.1f} s")
    return data


@dataclass
class Original:
    model: torch.nn.Module
    c_proxy: np.ndarray
    train_acc: float  # eval mode, plain images
    test_acc: float
    seconds: float


def train_config(scale: Scale, seed: int) -> TrainConfig:
    return TrainConfig(epochs=scale.epochs, lr=scale.lr, batch_size=scale.batch_size, seed=seed, augment=scale.augment)


def train_original(data, scale: Scale, seed: int) -> Original:
    model = new_model(data, scale, seed)
    recorder = ConfidenceRecorder(len(data.train))
    sync(data.device)
    t0 = time.perf_counter()
    train_model(model, data, train_config(scale, seed), recorder=recorder, progress=False, eval_test=False)
    sync(data.device)
    seconds = time.perf_counter() - t0
    out = Original(model, recorder.proxies()["c_proxy"], accuracy(model, data, data.train),
                   accuracy(model, data, data.test), seconds)
    steps = math.ceil(len(data.train) / scale.batch_size) * scale.epochs
    say(f"original: {scale.model} width {scale.width}, {scale.epochs} epochs ({steps} steps of {scale.batch_size}), "
        f"{seconds:.1f} s ({steps * scale.batch_size / seconds:.0f} img/s): train acc {out.train_acc:.4f}, "
        f"test acc {out.test_acc:.4f}")
    return out


# ------------------------------------------------------------------------------------------------
# A forget set, its retrained reference, and evaluation against it


@dataclass
class Target:
    """A forget set cut into memorisation tiers, and the model retrained without it."""

    name: str
    forget_ids: np.ndarray
    tiers: dict[str, np.ndarray]
    reference: torch.nn.Module
    reference_outputs: dict
    retrain_s: float
    eval_batch: int
    tier_acc: dict | None = None  # the reference's accuracy on each tier of the forget set

    def tier_positions(self) -> dict[str, np.ndarray]:
        return {t: np.searchsorted(self.forget_ids, ids) for t, ids in self.tiers.items()}

    def evaluate(self, model, data, seed: int) -> dict[str, float]:
        u = outputs_for(model, data, self.forget_ids, batch_size=self.eval_batch)
        return evaluate_unlearning(u, self.reference_outputs, tiers=self.tier_positions(), seed=seed)


def make_target(name: str, data, original: Original, forget_ids, scale: Scale, seed: int) -> Target:
    forget_ids = np.sort(np.asarray(forget_ids, dtype=np.int64))
    keep = np.ones(len(data.train), dtype=bool)
    keep[forget_ids] = False
    reference = new_model(data, scale, seed + 1000)  # its own init: a retrain is a fresh run
    sync(data.device)
    t0 = time.perf_counter()
    train_model(reference, data, train_config(scale, seed + 1000), train_ids=torch.from_numpy(np.flatnonzero(keep)),
                progress=False, eval_test=False)
    sync(data.device)
    retrain_s = time.perf_counter() - t0
    eval_batch = 4096 if data.device.type == "cuda" else 1024
    target = Target(name, forget_ids, tiers_from_c_proxy(forget_ids, original.c_proxy, TIERS), reference,
                    outputs_for(reference, data, forget_ids, batch_size=eval_batch), retrain_s, eval_batch)
    r = evaluate_unlearning(target.reference_outputs, None, tiers=target.tier_positions(), seed=seed)
    target.tier_acc = {t: r[f"tier/{t}/forget_acc"] for t in TIERS}
    say(f"{name} forget set: {len(forget_ids)} ids ({', '.join(f'{t} {len(v)}' for t, v in target.tiers.items())}); "
        f"retrain {retrain_s:.1f} s: forget acc {r['forget/acc']:.3f} (per tier "
        f"{'/'.join(f'{a:.2f}' for a in target.tier_acc.values())}), retain acc {r['retain/acc']:.3f}, "
        f"test acc {r['test/acc']:.3f}, MIA efficacy {r['mia/efficacy']:.3f}")
    return target


def forget_sets(original: Original, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's mix forget set (n/3 from the least, the middle and the most memorised ranks by
    C-proxy) and a calibration mix set of the same size from the remaining ids (the neighbouring
    ranks: the same memorisation profile, no shared example)."""
    forget = mix_forget_set(original.c_proxy, n, names=TIERS, seed=seed)
    rest = np.setdiff1d(np.arange(len(original.c_proxy)), forget)
    calibration = rest[mix_forget_set(original.c_proxy[rest], n, names=TIERS, seed=seed)]
    return forget, np.sort(calibration)


# ------------------------------------------------------------------------------------------------
# Running algorithms and plans


def timed_plan(original: Original, data, tiers, plan: Plan, seed: int):
    """(model, seconds) of a RUM plan (a vanilla run is the one-step plan on tier "all")."""
    result = run_rum(original.model, data, tiers, plan, seed=seed)
    return result.model, result.seconds


def row(label: str, metrics: dict, seconds: float, retrain_s: float) -> dict:
    out = dict(metrics)
    out.update({"method": label, "time/unlearn_s": seconds, "time/fraction_of_retrain": seconds / retrain_s})
    return out


def show(r: dict) -> None:
    say(f"  {r['method']:<34} ToW {r['tow']:.4f}  ToW-MIA {r['tow_mia']:.4f}  MIA gap {r['mia/gap']:.4f}  "
        f"ToW-PE {r['tow_pe']:.4f}  forget/retain/test acc {r['forget/acc']:.3f}/{r['retain/acc']:.3f}/"
        f"{r['test/acc']:.3f}  {r['time/unlearn_s']:.1f} s ({r['time/fraction_of_retrain']:.3f} of retrain)")


def compare_variants(original, data, target: Target, algorithms, seed: int, budget: "Budget | None" = None,
                     reserve_s: float = 0.0, epochs: int = 30) -> list[dict]:
    """Vanilla (`single_algorithm_plan(alg)` on tier "all") vs the same algorithm and defaults per
    memorisation tier (`single_algorithm_plan(alg, {}, TIERS)`), for each algorithm.

    With a budget, a run is skipped (and says so) when its projected time and `reserve_s` do not
    fit in what is left: a vanilla run is projected at 12 epochs of retrain (the defaults are at most
    10 epochs of the retain set, neggrad_plus's two batches a step included), a per-tier run at three
    times the vanilla run it follows (each tier passes over the retain set with the same defaults)."""
    rows = []
    for alg in algorithms:
        variants = [("vanilla", single_algorithm_plan(alg), all_tier(target.forget_ids)),
                    ("per-tier", single_algorithm_plan(alg, {}, tier_names=TIERS), target.tiers)]
        projected = target.retrain_s * 12 / epochs
        for variant, plan, tiers in variants:
            label = f"{alg} ({variant})"
            if budget is not None and not budget.allows(projected, reserve_s):
                say(f"  {label:<34} skipped: projected {projected:.0f} s, {budget.left():.0f} s left, "
                    f"{reserve_s:.0f} s of it kept for the search")
                break
            model, seconds = timed_plan(original, data, tiers, plan, seed)
            projected = len(TIERS) * seconds
            r = row(label, target.evaluate(model, data, seed), seconds, target.retrain_s)
            r.update(algorithm=alg, variant=variant)
            show(r)
            rows.append(r)
    return rows


# ------------------------------------------------------------------------------------------------
# Search: a core-only mirror of mlflow_unlearn.search (same space, sampler and pruner, no MLflow)


class Budget:
    """Wall-clock seconds for the rest of a run (None: unlimited)."""

    def __init__(self, seconds: float | None):
        self.total, self.t0 = seconds, time.perf_counter()

    def left(self) -> float:
        return math.inf if self.total is None else self.total - (time.perf_counter() - self.t0)

    def allows(self, projected_s: float, reserve_s: float = 0.0) -> bool:
        return projected_s + reserve_s <= self.left()


class _PruneAfterTier:
    """After each tier, report the calibration ToW so far; Optuna's median pruner may stop the trial."""

    def __init__(self, target, data, trial, seed):
        self.target, self.data, self.trial, self.seed = target, data, trial, seed

    def step_finished(self, index, step, record, model):
        import optuna

        value = self.target.evaluate(model, self.data, self.seed)["tow"]
        self.trial.report(value, index)
        if self.trial.should_prune():
            raise optuna.TrialPruned()


def search_plans(original, data, calibration: Target, scale: Scale, seed: int, *, objective: str = "tow",
                 timeout_s: float | None = None) -> dict[str, Plan]:
    """Best per-tier plan and best single algorithm (on tier "all") on the calibration forget set:
    `scale.trials` Optuna trials each, objective `objective` (ToW by default, as the search step)."""
    import optuna

    from mlflow_unlearn.search import suggest_hyperparameters  # imports mlflow (the edge), only for the space

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def per_tier(trial):
        return Plan([PlanStep(t, a, suggest_hyperparameters(trial, f"{t}.", a, scale.max_epochs))
                     for t in TIERS for a in [trial.suggest_categorical(f"{t}.algorithm", list(SEARCHED))]],
                    name="searched")

    def single(trial):
        a = trial.suggest_categorical("algorithm", [x for x in SEARCHED if x != "none"])
        return Plan([PlanStep(ALL_TIER, a, suggest_hyperparameters(trial, "", a, scale.max_epochs))], name=f"single-{a}")

    best = {}
    for space, plan_for, tiers in (("per-tier", per_tier, calibration.tiers),
                                   ("single", single, all_tier(calibration.forget_ids))):
        def fn(trial):
            plan = plan_for(trial)
            trial.set_user_attr("plan", plan.to_dict())
            callbacks = _PruneAfterTier(calibration, data, trial, seed) if space == "per-tier" else None
            t0 = time.perf_counter()
            try:
                result = run_rum(original.model, data, tiers, plan, seed=seed, callbacks=callbacks)
            except optuna.TrialPruned:
                say(f"    {space} trial {trial.number}: pruned after {time.perf_counter() - t0:.1f} s  {plan.to_compact()}")
                raise
            value = calibration.evaluate(result.model, data, seed)[objective]
            say(f"    {space} trial {trial.number}: {objective} {value:.4f}  {result.seconds:.1f} s  {plan.to_compact()}")
            return value

        with warnings.catch_warnings():  # multivariate/group TPE are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        study.optimize(fn, n_trials=scale.trials, timeout=None if timeout_s is None else timeout_s / 2)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            say(f"  search {space}: no completed trial")
            continue
        best[space] = Plan.from_dict(study.best_trial.user_attrs["plan"])
        say(f"  search {space}: best calibration {objective} {study.best_value:.4f} after {len(study.trials)} trials: "
            f"{best[space].to_compact()}")
    return best


# ------------------------------------------------------------------------------------------------
# Markdown


def fmt(v: float, digits: int = 4) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def scale_lines(args, scale: Scale, data, originals: list[Original], device) -> list[str]:
    n_train = len(data.train)
    steps = math.ceil(n_train / scale.batch_size) * scale.epochs
    accs = ", ".join(f"{o.train_acc:.4f}" for o in originals)
    tests = ", ".join(f"{o.test_acc:.4f}" for o in originals)
    return [
        f"- machine: {machine(device)}",
        f"- data: CIFAR-10 JPEG copy ({args.data}), {n_train} train images "
        f"({'all' if scale.subset is None else 'seeded subset'}), {len(data.test)} test images",
        f"- model: {scale.model} (CIFAR stem) width {scale.width} (64 = standard), SGD lr {scale.lr} cosine, "
        f"batch {scale.batch_size}, {scale.epochs} epochs ({steps} steps), "
        f"{'crop+flip' if scale.augment else 'no augmentation'} (original, retrains and unlearning alike)",
        f"- original model: train accuracy {accs} (eval mode, plain images), test accuracy {tests}",
        f"- forget set: 'mix' of {scale.forget} ids ({scale.forget // 3} per memorisation tier by C-proxy)",
    ]


def write(args, name: str, text: str) -> None:
    if args.out_dir is None:
        return
    path = Path(args.out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    say(f"wrote {path}")


def command_line() -> str:
    return "python bench/bench_unlearning.py " + " ".join(sys.argv[1:])


# ------------------------------------------------------------------------------------------------
# Mode 1: every registered algorithm with its defaults


def mode_algorithms(args, scale: Scale, device) -> None:
    seed = scale.seeds[0]
    data = load(args, scale, seed, device)
    original = train_original(data, scale, seed)
    forget, _ = forget_sets(original, scale.forget, seed)
    target = make_target("evaluated", data, original, forget, scale, seed)
    unlearn = UnlearnData.from_forget(data, torch.from_numpy(forget))
    rows = []
    for name in ALGORITHMS.names():
        if name == "retrain":  # the reference itself: retrain-equivalent by definition
            r = row("retrain (the reference)", target.evaluate(target.reference, data, seed), target.retrain_s,
                    target.retrain_s)
        else:
            sync(device)
            t0 = time.perf_counter()
            model = run_algorithm(name, original.model, unlearn, {}, seed=seed)
            sync(device)
            r = row(name, target.evaluate(model, data, seed), time.perf_counter() - t0, target.retrain_s)
        show(r)
        rows.append(r)
    header = ["algorithm", "forget acc", "retain acc", "test acc", "ToW", "MIA efficacy", "MIA gap", "ToW-MIA",
              "ToW-PE", "gap high tier", "seconds", "time / retrain"]
    body = [[r["method"], fmt(r["forget/acc"], 3), fmt(r["retain/acc"], 3), fmt(r["test/acc"], 3), fmt(r["tow"]),
             fmt(r["mia/efficacy"], 3), fmt(r["mia/gap"], 3), fmt(r["tow_mia"]), fmt(r["tow_pe"]),
             fmt(r["tier/high/gap"], 3), f"{r['time/unlearn_s']:.1f}", fmt(r["time/fraction_of_retrain"], 3)]
            for r in rows]
    text = "\n".join([
        "# Unlearning algorithms against retrain", "", f"`{command_line()}`", "",
        *scale_lines(args, scale, data, [original], device),
        f"- retrain (reference, same recipe on retain): {target.retrain_s:.1f} s; its forget accuracy per tier "
        f"low/mid/high {'/'.join(fmt(a, 2) for a in target.tier_acc.values())} (the original: 1.00 on all "
        f"three if it fits); seed {seed}; every algorithm "
        f"with its registered defaults, one run each, all measured in this one run",
        "- ToW, ToW-MIA, ToW-PE: 1 = retrain-equivalent; MIA gap = |MIA efficacy - that of retrain|; "
        "gap high tier = forget-accuracy gap on the most memorised third; time / retrain = wall seconds of the "
        "algorithm divided by the reference's retrain seconds (on a shared CPU the same retrain took 12-17 s in two runs: +-40%)", "",
        table(header, body), "",
    ])
    say("\n" + text)
    write(args, "bench_algorithms.md", text)


# ------------------------------------------------------------------------------------------------
# Mode 2 (and 3): RUM with a searched plan vs the best single algorithm, vanilla vs per-tier


def run_seed(args, scale: Scale, seed: int, device, budget: Budget | None = None) -> dict:
    """One seed: its own subset, original, forget and calibration sets, references and searches."""
    say(f"\n=== seed {seed} ===")
    data = load(args, scale, seed, device)
    original = train_original(data, scale, seed)
    forget, calibration_ids = forget_sets(original, scale.forget, seed)
    target = make_target("evaluated", data, original, forget, scale, seed)
    rows = [row("original (no unlearning)", target.evaluate(original.model, data, seed), 0.0, target.retrain_s)]
    show(rows[0])
    # Keep time for the search: its calibration retrain (about one retrain) and its trials.
    search_reserve = 0.0 if budget is None else 1.2 * target.retrain_s + args.search_s * 1.5
    if budget is not None:
        # The defaults of the compared algorithms add up to about 47 epochs of the retain set
        # (neggrad_plus's forget batches and scrub's teacher passes included) and 3x that per tier.
        comparison = target.retrain_s * 4 * 47 / scale.epochs
        say(f"budget: {budget.left():.0f} s left; projected at this speed: vanilla + per-tier runs {comparison:.0f} s, "
            f"search {search_reserve:.0f} s (kept); per-tier runs that do not fit are skipped")
    rows += compare_variants(original, data, target, args.algorithms, seed, budget, search_reserve, scale.epochs)
    plans = {}
    if scale.trials > 0 and (budget is None or budget.allows(1.1 * target.retrain_s)):
        calibration = make_target("calibration", data, original, calibration_ids, scale, seed)
        timeout = None if budget is None else max(min(args.search_s, budget.left() - 0.5 * args.search_s), 1.0)
        plans = search_plans(original, data, calibration, scale, seed, timeout_s=timeout)
        for space, label in (("per-tier", "RUM, searched per-tier plan"), ("single", "best single algorithm (searched)")):
            if space not in plans:
                continue
            tiers = target.tiers if space == "per-tier" else all_tier(target.forget_ids)
            model, seconds = timed_plan(original, data, tiers, plans[space], seed)
            r = row(label, target.evaluate(model, data, seed), seconds, target.retrain_s)
            r.update(plan=plans[space].to_compact())
            show(r)
            rows.append(r)
    elif scale.trials > 0:
        say(f"  search skipped: {budget.left():.0f} s left")
    return {"seed": seed, "data": data, "original": original, "retrain_s": target.retrain_s, "rows": rows,
            "tier_acc": target.tier_acc,
            "plans": {k: v.to_compact() for k, v in plans.items()}}


def summary_text(args, scale: Scale, device, results: list[dict], title: str) -> str:
    methods = []
    for res in results:
        for r in res["rows"]:
            if r["method"] not in methods:
                methods.append(r["method"])
    per = {m: [next((r for r in res["rows"] if r["method"] == m), None) for res in results] for m in methods}

    def ci(m, key, digits=4):
        vals = [r[key] for r in per[m] if r is not None]
        if not vals:
            return "-"
        mean, lo, hi = mean_ci(vals)
        return fmt(mean, digits) if len(vals) < 2 else f"{fmt(mean, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"

    header = ["method", "n", "ToW", "MIA gap", "ToW-MIA", "ToW-PE", "forget acc", "time / retrain"]
    body = [[m, str(sum(r is not None for r in per[m])), ci(m, "tow"), ci(m, "mia/gap", 3), ci(m, "tow_mia"),
             ci(m, "tow_pe"), ci(m, "forget/acc", 3), ci(m, "time/fraction_of_retrain", 3)] for m in methods]

    tests = []
    pairs = [("RUM, searched per-tier plan", "best single algorithm (searched)")]
    pairs += [(f"{a} (per-tier)", f"{a} (vanilla)") for a in args.algorithms]
    for a, b in pairs:
        both = [(ra, rb) for ra, rb in zip(per.get(a, []), per.get(b, [])) if ra is not None and rb is not None]
        if not both:
            continue
        for key, better in (("tow", "higher"), ("mia/gap", "lower")):
            t = paired_test([ra[key] for ra, _ in both], [rb[key] for _, rb in both])
            tests.append([f"{a} - {b}", key, str(len(both)), f"{fmt(t['mean_diff'])} [{fmt(t['ci_low'])}, "
                          f"{fmt(t['ci_high'])}]", fmt(t["t"], 2), fmt(t["p"], 3), better])
    plans = [f"- seed {res['seed']}: per-tier `{res['plans'].get('per-tier', '-')}`; single "
             f"`{res['plans'].get('single', '-')}`" for res in results]
    retrain = ", ".join(f"{res['retrain_s']:.1f}" for res in results)
    tier_acc = "; ".join("/".join(fmt(a, 2) for a in res["tier_acc"].values()) for res in results)
    return "\n".join([
        f"# {title}", "", f"`{command_line()}`", "",
        *scale_lines(args, scale, results[0]["data"], [res["original"] for res in results], device),
        f"- seeds {', '.join(str(res['seed']) for res in results)}: each seed has its own train subset, original "
        f"model, forget set, calibration forget set, references and searches; retrain seconds per seed: {retrain}; "
        f"the reference's forget accuracy per tier low/mid/high, per seed: {tier_acc}",
        f"- search: Optuna TPE (multivariate, seeded) with the median pruner, objective ToW on a calibration mix "
        f"forget set of the same size (disjoint, neighbouring memorisation ranks, its own retrain); "
        f"{scale.trials} trials for the per-tier plan and {scale.trials} for the single algorithm on the whole "
        f"forget set; the space of `mlflow_unlearn.search.suggest_hyperparameters` with max_epochs "
        f"{scale.max_epochs}; the plans found are then run on the evaluated forget set",
        "- vanilla = `single_algorithm_plan(alg)` on the whole forget set; per-tier = "
        "`single_algorithm_plan(alg, {}, tier_names=('low', 'mid', 'high'))`; both with the algorithm's defaults",
        "- cells: mean [95% Student-t interval] over seeds; time / retrain = unlearning wall seconds / retrain seconds",
        "", table(header, body), "",
        "Paired tests over seeds (difference a - b; ToW: higher is better, MIA gap: lower is better):", "",
        table(["a - b", "metric", "n", "mean diff [95% CI]", "t", "p", "better"], tests) if tests else "(none)", "",
        "Searched plans:", "", *plans, "",
    ])


def mode_rum(args, scale: Scale, device) -> None:
    t0 = time.perf_counter()
    results = [run_seed(args, scale, seed, device) for seed in scale.seeds]
    text = summary_text(args, scale, device, results, "RUM: searched per-tier plan vs the best single algorithm")
    text += f"\ntotal {time.perf_counter() - t0:.0f} s\n"
    say("\n" + text)
    write(args, "bench_rum.md", text)


def mode_paper(args, scale: Scale, device) -> None:
    t0 = time.perf_counter()
    results = []
    for seed in scale.seeds:
        budget = Budget(args.budget_s)
        results.append(run_seed(args, scale, seed, device, budget))
        say(f"seed {seed}: {time.perf_counter() - budget.t0:.0f} s")
    text = summary_text(args, scale, device, results, "The RUM paper's setting" + (" (smoke)" if args.smoke else ""))
    text += f"\ntotal {time.perf_counter() - t0:.0f} s\n"
    say("\n" + text)
    write(args, "bench_paper.md", text)


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("algorithms", "rum", "paper"), required=True)
    p.add_argument("--smoke", action="store_true", help="a tiny CPU-sized run of the same code path (for CI)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data", default=DEFAULT_DATA, help="the CIFAR-10 JPEG copy (.tar.gz or extracted tree)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2 for rum, 0 otherwise)")
    p.add_argument("--subset", type=int, help="train images (0 = all 50,000)")
    p.add_argument("--test-subset", type=int, help="test images (0 = all 10,000)")
    p.add_argument("--epochs", type=int, help="epochs of the original and of every retrain")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--width", type=int, help="resnet18 width (64 = the standard network)")
    p.add_argument("--model", choices=("resnet18", "small_cnn"))
    p.add_argument("--augment", choices=("on", "off"), help="crop+flip (default: on for the paper's setting, off "
                   "for the CPU scale)")
    p.add_argument("--forget", type=int, help="size of the mix forget set")
    p.add_argument("--trials", type=int, help="Optuna trials per search space (0: no search)")
    p.add_argument("--max-epochs", type=int, help="search space: epochs per step at most")
    p.add_argument("--algorithms", nargs="+", default=list(COMPARED), help="vanilla vs per-tier comparison")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1: fastest on the shared 2-core machines)")
    p.add_argument("--budget-s", type=float, help="paper mode: seconds per seed; runs that would not fit are "
                   "skipped and say so (default 540 on CUDA, unlimited otherwise; 0: unlimited)")
    p.add_argument("--search-s", type=float, default=90.0, help="paper mode with a budget: seconds for the trials")
    p.add_argument("--out-dir", help="where the markdown goes (default docs/, or nothing with --smoke)")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    else:
        torch.backends.cudnn.benchmark = True
    base = SMOKE if args.smoke else (PAPER if args.mode == "paper" else CPU)
    if args.mode == "algorithms" and not args.smoke:
        base = dataclasses.replace(base, seeds=(0,))
    over = {"subset": args.subset, "test_subset": args.test_subset, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "width": args.width, "model": args.model, "forget": args.forget, "trials": args.trials,
            "max_epochs": args.max_epochs, "seeds": tuple(args.seeds) if args.seeds else None,
            "augment": None if args.augment is None else args.augment == "on"}
    over = {k: (None if v == 0 and k in ("subset", "test_subset") else v) for k, v in over.items() if v is not None}
    scale = dataclasses.replace(base, **over)
    if args.out_dir is None and not args.smoke:
        args.out_dir = str(REPO / "docs")
    if args.mode == "paper" and args.budget_s is None and device.type == "cuda" and not args.smoke:
        args.budget_s = 540.0
    if args.budget_s is not None and args.budget_s <= 0:
        args.budget_s = None  # --budget-s 0: no budget
    unknown = [a for a in args.algorithms if a not in ALGORITHMS]
    if unknown:
        p.error(f"unknown algorithm(s) {unknown}; registered: {', '.join(ALGORITHMS.names())}")
    say(f"mode {args.mode}{' (smoke)' if args.smoke else ''}; {machine(device)}; {scale}")
    t0 = time.perf_counter()
    {"algorithms": mode_algorithms, "rum": mode_rum, "paper": mode_paper}[args.mode](args, scale, device)
    say(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Unlearning benchmarks on the CIFAR-10 JPEG copy: every algorithm against retrain, and the RUM
paper's question (does a searched per-tier plan beat the best single algorithm?).

    .venv/bin/python bench/bench_unlearning.py --mode algorithms        # issue 3: docs/bench_algorithms.md
    .venv/bin/python bench/bench_unlearning.py --mode rum               # issue 4: docs/bench_rum.md
    .venv/bin/python bench/bench_unlearning.py --mode paper --device cuda   # the paper's setting, one seed
    .venv/bin/python bench/bench_unlearning.py --mode paper --smoke     # same code path, tiny, CPU, < 2 min

Core only (no MLflow runs): data -> original training with the C-proxy recorder -> "mix" forget set
-> retrained reference -> algorithms / RUM plans -> metrics, all through the package's functions.
The search is the package's own core (`mlflow_unlearn.tuning`, what `mlflow-unlearn search` runs):
candidates are scored on *calibration* forget sets (drawn like the evaluated one, disjoint, each
with its own reference) with the validation split standing in for test, so the plans it finds are
evaluated on a forget set and a test split they were not tuned on. Every baseline is tuned with the
same trial budget on the same calibration sets, and both its defaults and its tuned setting are
reported, next to `none` and the retrain-vs-retrain noise floor. Results are printed as they come (flushed) and
written as markdown tables under --out-dir (default docs/; nothing is written with --smoke unless
--out-dir is given).

Scale (docs/design.md section 7, "shrink the data, not the fit"): on the CPU a small subset is trained to
near 100% train accuracy; every table states the subset, model, epochs and the original's train
accuracy (plain images, eval mode).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow_unlearn.algorithms import ALGORITHMS, TrainRecipe, hyperparameters  # noqa: E402
from mlflow_unlearn.candidates import AUTO_EPOCHS, budget_epochs  # noqa: E402
from mlflow_unlearn.compute import Budget, break_even_requests, original_train_passes  # noqa: E402
from mlflow_unlearn.confidences import ConfidenceRecorder, heldout_c_proxy  # noqa: E402
from mlflow_unlearn.gate import NeverSeen, heldout_never_seen, tier_expectation  # noqa: E402
from mlflow_unlearn.data import DatasetSpec, load_dataset  # noqa: E402
from mlflow_unlearn.memorization import tiers_from_c_proxy
from mlflow_unlearn.forget_sets import calibration_forget_sets, calibration_pool, mix_forget_set  # noqa: E402
from mlflow_unlearn.metrics import SplitOutputs, evaluate_unlearning, outputs_for  # noqa: E402
from mlflow_unlearn.statistics import mean_ci, paired_test  # noqa: E402
from mlflow_unlearn.models import build_model  # noqa: E402
from mlflow_unlearn.rum import Plan, single_algorithm_plan  # noqa: E402
from mlflow_unlearn.training import TrainConfig, accuracy, predict_logits, train_model  # noqa: E402
from mlflow_unlearn import compose, experiment, tuning  # noqa: E402  (the search core, the same one `mlflow-unlearn search` runs)

DEFAULT_DATA = str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
T0 = time.perf_counter()  # process start: --stop-after-s counts from here
LOAD0 = os.getloadavg()[0]  # the machine's load when this run started: seconds are read against it
TIERS = ("low", "mid", "high")
COMPARED = ("finetune", "neggrad_plus", "salun", "scrub")  # baselines: defaults and tuned; RUM searches none + these


@dataclass(frozen=True)
class Scale:
    subset: int | None  # train images (None: all 50,000)
    test_subset: int | None  # test images (None: all 10,000)
    model: str
    width: int
    epochs: int
    batch_size: int
    lr: float
    augment: bool  # crop+flip for the original and every retrain (unlearning: off, as the papers' --no_aug)
    forget: int  # size of the mix forget set (and of the calibration forget set)
    trials: int  # Optuna trials per study (RUM and each tuned baseline alike)
    max_epochs: int | str  # search space: epochs per step at most, or `auto` (what the budget pays for over retain)
    seeds: tuple[int, ...]
    val_fraction: float = 0.1  # held out of training; the search's stand-in for the test split
    calibration_sets: int = 2
    budget: float = 0.1  # compute per request (fraction of the original training): every trial and the main table
    curve: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)  # the cost-quality curve: every method at each budget


# CPU scale (modes algorithms, rum and regime), docs/design.md section 7: the memorisation regime on a
# CPU, "shrink the data, not the fit": 3,000 CIFAR-10 images (2,700 train after the validation
# split), resnet18 width 32, crop+flip, batch 64, lr 0.05 cosine, 40 epochs. `--mode regime` checks
# that it is reached (eval-mode train accuracy >= 0.97, test >= 0.55, the reference's forget accuracy
# >= 0.8 on the least and <= 0.35 on the most memorised tier) before the hours of `--mode rum`.
# The search's epoch bound is the product's default, `auto` (the epochs over retain the budget pays for:
# 5 here), so the benchmark measures what `search` and `main` do; the first budgeted run
# (bench/results/rum-cpu-budget) fixed it at 2, which kept every sampled setting below half the budget.
CPU = Scale(subset=3000, test_subset=2000, model="resnet18", width=32, epochs=40, batch_size=64, lr=0.05,
            augment=True, forget=300, trials=10, max_epochs=AUTO_EPOCHS, seeds=(0, 1, 2))
# The paper's setting (ResNet-18, CIFAR-10, 30 epochs, crop+flip, mix forget set of 3,000).
PAPER = Scale(subset=None, test_subset=None, model="resnet18", width=64, epochs=30, batch_size=256, lr=0.1,
              augment=True, forget=3000, trials=4, max_epochs=AUTO_EPOCHS, seeds=(0,))
# The paper mode's code path at a size that runs in CI on 2 CPU cores.
SMOKE = Scale(subset=300, test_subset=200, model="resnet18", width=4, epochs=2, batch_size=64, lr=0.1,
              augment=True, forget=30, trials=2, max_epochs=1, seeds=(0,), budget=0.5, curve=(0.25, 0.5))


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


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else 'unknown CPU'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, bf16 autocast, channels_last"
    else:
        # the CPU model and the vector ISA torch dispatches to: training is bit-identical run to run on
        # one machine, but seed 1's original (same recipe and seed, no training change between) came out
        # train/test 0.9837/0.6650 in one session and 0.9859/0.6590 in another (2026-12-03); each session
        # runs on a fresh machine, and kernels for another ISA sum floats in another order
        where = (f"{os.cpu_count()} CPU cores ({platform.machine()}, {cpu_model()}, "
                 f"{torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} torch thread(s)")
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
    data = load_dataset(DatasetSpec(name=f"imagefolder:{args.data}", subset=scale.subset, seed=seed,
                                    val_fraction=scale.val_fraction), device="cpu")
    if scale.test_subset is not None and scale.test_subset < len(data.test):
        keep = np.sort(np.random.RandomState(10_000 + seed).choice(len(data.test), scale.test_subset, replace=False))
        data = dataclasses.replace(data, test=data.test.subset(keep))
    data = dataclasses.replace(data, augment=scale.augment).to(device)  # training and retrains follow data.augment
    say(f"data: {len(data.train)} train / {len(data.val) if data.val is not None else 0} validation / "
        f"{len(data.test)} test images, loaded in {time.perf_counter() - t0:.1f} s")
    return data


@dataclass
class Original:
    model: torch.nn.Module
    c_proxy: np.ndarray
    train_acc: float  # eval mode, plain images
    test_acc: float
    seconds: float
    heldout_c_proxy: np.ndarray | None = None  # the validation split's, recorded while training (as `train` does)
    passes: int = 0  # its example passes (epochs x train images, as train_model runs): the unit of cost

    def budget(self, fraction: float) -> Budget:
        return Budget.of(fraction, self.passes)


def recipe(data, scale: Scale, seed: int) -> TrainRecipe:
    """How every model here is trained: what the `retrain` algorithm replays."""
    return TrainRecipe(build=lambda s: new_model(data, scale, s), config=train_config(scale, seed))


def train_config(scale: Scale, seed: int) -> TrainConfig:
    return TrainConfig(epochs=scale.epochs, lr=scale.lr, batch_size=scale.batch_size, seed=seed, augment=scale.augment)


def train_original(data, scale: Scale, seed: int) -> Original:
    model = new_model(data, scale, seed)
    recorder = ConfidenceRecorder(len(data.train))
    # the validation split's confidences after every epoch, as the `train` step records them for the
    # hook's gate (weights are unchanged by it; tested); they cost one validation pass per epoch
    held = ConfidenceRecorder(len(data.val)) if data.val is not None and len(data.val) else None
    sync(data.device)
    t0 = time.perf_counter()
    train_model(model, data, train_config(scale, seed), recorder=recorder, progress=False, eval_test=False,
                heldout=data.val if held is not None else None, heldout_recorder=held)
    sync(data.device)
    seconds = time.perf_counter() - t0
    out = Original(model, recorder.proxies()["c_proxy"], accuracy(model, data, data.train),
                   accuracy(model, data, data.test), seconds,
                   # float16, as the artifact the gate reads (confidences.save_confidences)
                   None if held is None else heldout_c_proxy(held.true_class_prob().astype(np.float16)),
                   original_train_passes({"epochs": scale.epochs}, len(data.train)))
    steps = math.ceil(len(data.train) / scale.batch_size) * scale.epochs
    say(f"original: {scale.model} width {scale.width}, {scale.epochs} epochs ({steps} steps of {scale.batch_size}), "
        f"{seconds:.1f} s ({steps * scale.batch_size / seconds:.0f} img/s): train acc {out.train_acc:.4f}, "
        f"test acc {out.test_acc:.4f}")
    return out


# ------------------------------------------------------------------------------------------------
# A forget set, its retrained reference, and evaluation against it


@dataclass
class Target(tuning.Reference):
    """A forget set cut into memorisation tiers and the model retrained without it: the product's
    `Reference` (what the scorer, `report_plan` and the noise floor take, as `main` passes them),
    plus what the benchmark's tables and cache keep beside it."""

    eval_batch: int = 1024
    tier_acc: dict | None = None  # the reference's accuracy on each tier of the forget set
    retrained_here: bool = True  # False: loaded from the seed cache (`seconds` measured by an earlier run)

    @property
    def retrain_s(self) -> float:
        return self.seconds

    @property
    def reference_outputs(self) -> dict:
        return self.outputs

    def as_reference(self) -> tuning.Reference:
        return self


def make_target(name: str, data, original: Original, forget_ids, scale: Scale, seed: int, *, heldout=None,
                init_seed: int | None = None) -> Target:
    forget_ids = np.sort(np.asarray(forget_ids, dtype=np.int64))
    init_seed = seed + 1000 if init_seed is None else init_seed  # its own init: a retrain is a fresh run
    # the package's own retrain (the same one `search` and the references use): fresh init, retain only
    reference, retrain_s = tuning.train_reference(lambda s: new_model(data, scale, s), train_config(scale, init_seed),
                                                  data, forget_ids, seed=init_seed)
    eval_batch = 4096 if data.device.type == "cuda" else 1024
    target = Target(forget_ids, tiers_from_c_proxy(forget_ids, original.c_proxy, TIERS), reference,
                    outputs_for(reference, data, forget_ids, batch_size=eval_batch, heldout=heldout), retrain_s,
                    heldout=heldout, name=name, eval_batch=eval_batch)
    r = evaluate_unlearning(target.reference_outputs, None, tiers=target.tier_positions(), seed=seed)
    target.tier_acc = {t: r[f"tier/{t}/forget_acc"] for t in TIERS}
    say(f"{name} forget set: {len(forget_ids)} ids ({', '.join(f'{t} {len(v)}' for t, v in target.tiers.items())}); "
        f"retrain {retrain_s:.1f} s: forget acc {r['forget/acc']:.3f} (per tier "
        f"{'/'.join(f'{a:.2f}' for a in target.tier_acc.values())}), retain acc {r['retain/acc']:.3f}, "
        f"{'test' if heldout is None else 'validation'} acc {r['test/acc']:.3f}, MIA efficacy {r['mia/efficacy']:.3f}")
    return target


class SeedCache:
    """What a CPU seed keeps across runs under --results-dir (`seed<N>-cache/`), so a seed that takes
    more hours than one session resumes where it stopped: the forget-set draw, every retrained
    reference's *outputs* (scoring needs only those: ~1 MB per seed, not the weights) and the Optuna
    studies (SQLite), trial by trial, and the original's weights (`original.pt`, ~11 MB, in git): a
    session gets a fresh machine, and retraining the original there (40-47 minutes on 2 cores) gives
    an equivalent, not identical, model (training is bit-identical only on one CPU: seed 0 gave
    train/test accuracy 0.9830/0.6640 on one session's machine and 0.9856/0.6625 on the next), so
    trials stored by different runs would be scored from different originals. The stored weights are
    used on whatever machine reads them (evaluating them on another CPU moves logits in the last
    float digits, not the model). The cached draw and tiers are used as they are, so selection and
    reporting sets stay disjoint.
    No --results-dir (smoke runs): nothing is kept."""

    # what a retrained reference depends on: a file stored under another recipe (copied from another
    # configuration's cache, say a 45-epoch run into a 40-epoch one) is retrained, never scored against
    RECIPE_FIELDS = ("subset", "test_subset", "model", "width", "epochs", "batch_size", "lr", "augment", "val_fraction")

    def __init__(self, root: str | None, seed: int, key: dict, *, rerun: bool = False):
        self.recipe = {k: key["scale"][k] for k in self.RECIPE_FIELDS} | {"data": key["data"], "seed": seed}
        self.dir = None if root is None else Path(root) / f"seed{seed}-cache"
        if self.dir is None:
            return
        if rerun and self.dir.exists():  # --rerun: start the seed over
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "config.json"
        if config.exists() and json.loads(config.read_text()) != key:
            raise SystemExit(f"{self.dir} holds a seed of another configuration; remove it or pass another --results-dir")
        config.write_text(json.dumps(key, indent=1) + "\n")

    def sets(self, compute) -> tuple[np.ndarray, list[np.ndarray]]:
        path = None if self.dir is None else self.dir / "sets.npz"
        if path is not None and path.exists():
            with np.load(path) as z:
                return z["forget"], [z[f"calibration_{j}"] for j in range(int(z["k"]))]
        forget, calibration = compute()
        if path is not None:
            with _replacing(path) as tmp:
                np.savez(tmp, forget=forget, k=len(calibration), **{f"calibration_{j}": c for j, c in enumerate(calibration)})
        return forget, calibration

    def _target_path(self, name: str) -> Path | None:
        return None if self.dir is None else self.dir / f"target-{name.replace(' ', '_').replace('(', '').replace(')', '')}.npz"

    def cached_target(self, name: str, data) -> "Target | None":
        """The Target `name` if an earlier run stored it, else None (nothing is retrained)."""
        path = self._target_path(name)
        return self.target(name, None, data) if self._stored(path) else None

    def _stored(self, path: Path | None, *, quiet: bool = False) -> bool:
        """Whether `path` holds a reference retrained under this cache's recipe."""
        if path is None or not path.exists():
            return False
        with np.load(path) as z:
            stored = json.loads(str(z["meta"])).get("recipe")
        if stored != self.recipe:
            if not quiet:
                say(f"{path.name}: stored under another recipe ({_recipe_difference(stored, self.recipe)}); retrained")
            return False
        return True

    def target(self, name: str, make, data) -> "Target":
        """The Target `name` from the cache (reference weights not kept: None), else `make()` stored.
        A second process on this seed (`--reverse`) that needs the same reference while this one
        retrains it waits for it (`_claim`) instead of retraining it too."""
        path = self._target_path(name)
        if self._stored(path):
            return self._load_target(path, name, data)
        if path is None:
            return make()
        with _claim(path, lambda: self._stored(path, quiet=True)) as mine:
            if not mine or self._stored(path, quiet=True):  # the other process stored it meanwhile
                return self._load_target(path, name, data)
            return self._make_target(path, make)

    def _load_target(self, path: Path, name: str, data) -> "Target":
        from mlflow_unlearn.metrics import SplitOutputs

        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            outputs = {k: SplitOutputs(z[f"logits_{k}"], z[f"labels_{k}"]) for k in meta["splits"]}
            tiers = {t: z[f"tier_{t}"] for t in meta["tiers"]}
            target = Target(z["forget_ids"], tiers, None, outputs, meta["retrain_s"],
                            heldout=data.val if meta["heldout_is_val"] else None, name=name,
                            retain_ids=z["retain_ids"] if "retain_ids" in z.files else None,
                            eval_batch=meta["eval_batch"], tier_acc=meta["tier_acc"], retrained_here=False)
        say(f"{name}: cached ({path.name}; retrained {meta['retrain_s']:.1f} s in an earlier run); per tier "
            f"{'/'.join(fmt(a, 2) for a in target.tier_acc.values())}")
        return target

    def _make_target(self, path: Path, make) -> "Target":
        target = make()
        meta = {"splits": list(target.reference_outputs), "tiers": list(target.tiers), "retrain_s": target.retrain_s,
                "eval_batch": target.eval_batch, "tier_acc": target.tier_acc,
                "heldout_is_val": target.heldout is not None, "recipe": self.recipe}
        arrays = {f"logits_{k}": np.asarray(o.logits, dtype=np.float32) for k, o in target.reference_outputs.items()}
        arrays.update({f"labels_{k}": np.asarray(o.labels) for k, o in target.reference_outputs.items()})
        arrays.update({f"tier_{t}": ids for t, ids in target.tiers.items()})
        if target.retain_ids is not None:
            arrays["retain_ids"] = target.retain_ids
        with _replacing(path) as tmp:
            np.savez_compressed(tmp, meta=json.dumps(meta), forget_ids=target.forget_ids, **arrays)
        return target

    def original(self, train, data, scale: Scale, seed: int, where: str) -> Original:
        """The original model from `original.pt` when an earlier run (on any machine: `where` records
        which one trained it) trained it under this recipe, else `train()` stored. Loaded with
        `weights_only=True`: tensors and plain values, never pickled objects."""
        path = None if self.dir is None else self.dir / "original.pt"
        if path is not None and path.exists():
            stored = torch.load(path, map_location=data.device, weights_only=True)
            if stored["recipe"] == self.recipe:
                model = new_model(data, scale, seed)
                model.load_state_dict(stored["state_dict"])
                model.eval()
                out = Original(model, stored["c_proxy"].numpy(), stored["train_acc"], stored["test_acc"],
                               stored["seconds"], None if stored["heldout_c_proxy"] is None
                               else stored["heldout_c_proxy"].numpy(), stored["passes"])
                here = "this machine" if stored["machine"] == where else stored["machine"]
                say(f"original: {path.name} (trained {out.seconds:.1f} s by an earlier run on {here}): train acc "
                    f"{out.train_acc:.4f}, test acc {out.test_acc:.4f}")
                return out
            say(f"{path.name}: trained under another recipe ({_recipe_difference(stored['recipe'], self.recipe)}); "
                f"trained again")
        out = train()
        if path is not None:
            with _replacing(path) as tmp:
                torch.save({"recipe": self.recipe, "machine": where, "state_dict": out.model.state_dict(),
                            "c_proxy": torch.from_numpy(np.asarray(out.c_proxy)), "train_acc": out.train_acc,
                            "test_acc": out.test_acc, "seconds": out.seconds, "passes": out.passes,
                            "heldout_c_proxy": None if out.heldout_c_proxy is None
                            else torch.from_numpy(np.asarray(out.heldout_c_proxy))}, tmp)
        return out

    def reports(self) -> dict[tuple, dict]:
        """Report rows of earlier runs of this seed, by (method, budget, plan): the reporting half
        takes an hour here, and a run stopped in it (a session ending) keeps the rows it finished."""
        path = None if self.dir is None else self.dir / "reports.jsonl"
        if path is None or not path.exists():
            return {}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {(r["method"], r["budget"], r["plan"]): r for r in rows}

    def save_report(self, row: dict) -> None:
        if self.dir is not None:
            with open(self.dir / "reports.jsonl", "a") as f:
                f.write(json.dumps(row, default=_jsonable) + "\n")

    def storage(self) -> str | None:
        """Optuna storage for this seed's studies (None: in memory)."""
        return None if self.dir is None else f"sqlite:///{self.dir / 'studies.db'}"


def _recipe_difference(stored: dict | None, current: dict) -> str:
    if stored is None:
        return "no recipe recorded"
    return ", ".join(f"{k} {stored.get(k)!r} here {v!r}" for k, v in current.items() if stored.get(k) != v)


@contextlib.contextmanager
def _replacing(path: Path):
    """Write `path` through a temporary file in the same folder, renamed over it once complete: a run
    killed mid-write (a session ending) leaves the last complete file or none, never a torn one."""
    tmp = path.with_name(path.stem + ".partial" + path.suffix)  # np.savez keeps a name ending in .npz
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


CLAIM_POLL_S = 30.0  # a CPU retrain takes half an hour: checking twice a minute costs nothing


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def _claim(path: Path, ready, *, poll_s: float | None = None):
    """Hold `<path>.claim` (this host and pid) while this process makes `path`: two processes sharing
    a seed (`--reverse`) that both need it make it once. Yields True when this process holds the
    claim (it makes the file; the claim goes on exit, whatever happens), False when `ready()` (the
    file is stored, and usable) while another process holds it. A claim whose process is gone (a run killed when a
    session ended) is taken over; one held from another host is waited for."""
    claim = path.with_name(path.name + ".claim")
    me = f"{platform.node()} {os.getpid()}"
    while True:
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = claim.read_text().split() if claim.exists() else []
            if ready():
                yield False
                return
            if len(owner) == 2 and owner[0] == platform.node() and owner[1].isdigit() and not _pid_alive(int(owner[1])):
                say(f"{claim.name}: its process {owner[1]} is gone; taken over")
                claim.unlink(missing_ok=True)
                continue
            say(f"{path.name}: being made by another process ({' '.join(owner) or 'unknown'}); waiting for it")
            time.sleep(CLAIM_POLL_S if poll_s is None else poll_s)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        try:
            yield True
        finally:
            claim.unlink(missing_ok=True)
        return


def forget_sets(original: Original, n: int, seed: int, k: int = 2) -> tuple[np.ndarray, list[np.ndarray]]:
    """The paper's mix forget set (n/3 from the least, the middle and the most memorised ranks by
    C-proxy) and `k` calibration sets like it, drawn as the product draws them: inside the model's
    calibration pool (`calibration_pool`: the calibration sets of the canonical mix of this size,
    so here exactly the neighbouring ranks), same train-set bins, disjoint from it and each other."""
    forget = mix_forget_set(original.c_proxy, n, names=TIERS, seed=seed)
    pool = calibration_pool(original.c_proxy, n, k, names=TIERS, seed=seed)
    return forget, calibration_forget_sets(original.c_proxy, forget, k, names=TIERS, seed=seed, pool=pool)


def calibration_targets(cache, data, original: Original, sets: list[np.ndarray], scale: Scale, seed: int) -> list[Target]:
    """The K calibration sets scored against ONE reference retrained without their union, as the
    product does (`search.prepare_calibration`): one retrain for K sets, retain compared on train
    minus the union. Each set is cached as its own Target (outputs only); the retrain is timed once."""
    names = [f"calibration {j + 1} (pool)" for j in range(len(sets))]
    cached = [cache.cached_target(name, data) for name in names]
    if all(t is not None for t in cached):
        return cached
    union = np.unique(np.concatenate(sets))
    init_seed = seed + 1000
    model, retrain_s = tuning.train_reference(lambda s: new_model(data, scale, s), train_config(scale, init_seed), data,
                                              union, seed=init_seed)
    keep = np.ones(len(data.train), dtype=bool)
    keep[union] = False
    retain = np.flatnonzero(keep)
    eval_batch = 4096 if data.device.type == "cuda" else 1024
    targets = []
    for name, ids in zip(names, sets):
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        t = Target(ids, tiers_from_c_proxy(ids, original.c_proxy, TIERS), model,
                   outputs_for(model, data, ids, retain, batch_size=eval_batch, heldout=data.val), retrain_s,
                   heldout=data.val, name=name, retain_ids=retain, eval_batch=eval_batch)
        r = evaluate_unlearning(t.reference_outputs, None, tiers=t.tier_positions(), seed=seed)
        t.tier_acc = {tier: r[f"tier/{tier}/forget_acc"] for tier in TIERS}
        targets.append(cache.target(name, lambda t=t: t, data))
    say(f"calibration reference: one retrain without the union of {len(sets)} set(s) ({len(union)} ids), "
        f"{retrain_s:.1f} s; per set, forget acc per tier: " + "; ".join(
            "/".join(fmt(a, 2) for a in t.tier_acc.values()) for t in targets))
    return targets


# ------------------------------------------------------------------------------------------------
# Running algorithms and plans


def show(r: dict) -> None:
    say(f"  {r['method']:<34} ToW {r['tow']:.4f}  ToW-MIA {r['tow_mia']:.4f}  MIA gap {r['mia/gap']:.4f}  "
        f"ToW-PE {r['tow_pe']:.4f}  forget/retain/test acc {r['forget/acc']:.3f}/{r['retain/acc']:.3f}/"
        f"{r['test/acc']:.3f}  cost {r.get('cost/train_fraction', float('nan')):.4f} of a training, "
        f"{r['time/unlearn_s']:.1f} s")


class WallClock:
    """Wall-clock seconds for the rest of a run (None: unlimited)."""

    def __init__(self, seconds: float | None):
        self.total, self.t0 = seconds, time.perf_counter()

    def left(self) -> float:
        return math.inf if self.total is None else self.total - (time.perf_counter() - self.t0)

    def allows(self, projected_s: float, reserve_s: float = 0.0) -> bool:
        return projected_s + reserve_s <= self.left()


# ------------------------------------------------------------------------------------------------
# Search: the package's core (mlflow_unlearn.tuning), on the calibration sets


class _PrintTrials:
    def __init__(self, space: str):
        self.space = space

    def trial_finished(self, trial, plan, metrics, state, reason=""):
        value = f"calibration tow {metrics['tow']:.4f}" if "tow" in metrics else reason[:50]
        say(f"    {self.space} trial {trial.number}: {state} {value}  {plan.to_compact()}")


import optuna as _optuna  # noqa: E402

FINISHED = (_optuna.trial.TrialState.COMPLETE, _optuna.trial.TrialState.PRUNED)


def requeue_stale_trials(study) -> int:
    """Trials left RUNNING by a run that was killed (the bench runs one process per study, so any
    RUNNING trial at start is stale): mark them failed and queue their points again, through Optuna's
    public API (`tell`; the stale numbers kept in the study's user attribute `stale_trials`)."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == _optuna.trial.TrialState.RUNNING]
    for t in stale:
        study.tell(t.number, state=_optuna.trial.TrialState.FAIL)
        study.enqueue_trial(dict(t.params), skip_if_exists=False)
    if stale:
        study.set_user_attr("stale_trials", sorted({*_stale_numbers(study), *(t.number for t in stale)}))
    return len(stale)


def _stale_numbers(study) -> set[int]:
    return {int(n) for n in study.user_attrs.get("stale_trials", [])}


def failed_stale(study) -> int:
    """Stale trials do not count against the budget (tuning.optimize counts failed trials)."""
    stale = _stale_numbers(study)
    return sum(t.state == _optuna.trial.TrialState.FAIL and t.number in stale for t in study.trials)


def counted(study) -> int:
    """Trials that count against the budget: complete, pruned or diverged, not stale, not a repeat
    (a plan an earlier trial scored: free, tuning.counts_against_budget)."""
    stale = _stale_numbers(study)
    return sum(t.state in (*FINISHED, _optuna.trial.TrialState.FAIL) and t.number not in stale
               and tuning.counts_against_budget(t) for t in study.trials)


@dataclass
class Searched:
    """One study's selection, as `experiment.select_plans` reads it (the product's SearchResult has
    the same fields)."""

    best_plan: Plan
    best_value: float
    metrics: dict | None
    study_name: str


def study_cost_passes(study, budget_passes: int) -> tuple[int, int]:
    """What scoring a stored study's trials cost, in training-mode example passes: (counted, estimated).
    Counted: each trial's `spent_train_passes` (recorded by `tuning.optimize` since 2026-12-06), or,
    for a complete trial stored before that, its mean `cost/train_passes` times the calibration sets
    it scored. Estimated: a pruned or failed trial stored before that recorded no passes, so each
    calibration set it finished is counted at the full budget (a run stops at its budget, so this is
    at most a batch short of an upper bound); a set a killed run left half done is not counted at all.
    Copied and repeated trials cost nothing."""
    counted_passes = estimated = 0
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if tuning.SPENT_PASSES_ATTR in attrs:
            counted_passes += int(attrs[tuning.SPENT_PASSES_ATTR])
        elif "repeat_of" in attrs or "copied_from" in attrs:
            continue
        elif t.state == _optuna.trial.TrialState.COMPLETE and "metrics" in attrs:
            metrics = attrs["metrics"]
            sets = sum(1 for k in metrics if k.startswith("calibration/") and k.endswith("/tow"))
            counted_passes += round(metrics["cost/train_passes"] * sets)
        else:
            estimated += len(t.intermediate_values) * budget_passes
    return counted_passes, estimated


class _Stopped(Exception):
    """A study stopped by the time limit with trials left: the next run continues it."""


def search_plans(original, data, calibration: list, scale: Scale, seed: int, algorithms, *,
                 timeout_s: float | None = None, values: dict | None = None, storage: str | None = None,
                 spent: dict | None = None, estimates: dict | None = None,
                 strategy: str = tuning.COMPOSED) -> dict[str, Plan] | None:
    """The RUM plan and one tuned setting per baseline algorithm, each from a study of
    `scale.trials` trials on the calibration sets: the product's experiment
    (`experiment.select_plans`, the studies `main` runs, in the same order), each study run here in
    this seed's Optuna storage instead of an MLflow run, so a killed run resumes trial by trial.
    `composed` (default): the baselines' tunings first, then the per-tier coordinate search over
    their settings, with each tuned setting copied in; its cost is the composition's trials plus
    every tuning's. `joint`: the tunings, then one study over every tier's algorithm and
    hyperparameters. `values` (optional) receives each space's best calibration ToW (selection
    only, never reported as a result); `spent` what each space's trials cost in trainings, read from
    its study (`study_cost_passes`), and `estimates` the part of it that is an estimate. Returns
    None when `timeout_s` stopped a study early."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scorer = tuning.CalibrationScorer(original.model, data, [t.as_reference() for t in calibration], seed=seed,
                                      recipe=recipe(data, scale, seed), budget=original.budget(scale.budget))
    searched = ["none", *[a for a in algorithms if a != "none"]]  # the RUM space: none plus the compared algorithms
    n_trials = scale.trials
    if strategy == tuning.JOINT:  # the same budget for RUM and for every tuned baseline
        n_trials = max(scale.trials, len(tuning.rum_default_trials(TIERS, searched)))
    # `auto`: the product's default bound (candidates.budget_epochs), over the evaluated set's retain size
    max_epochs = (budget_epochs(original.budget(scale.budget).passes, len(data.train) - scale.forget)
                  if scale.max_epochs == AUTO_EPOCHS else scale.max_epochs)
    t0 = time.perf_counter()

    def _score_space(study, spec: experiment.Study, space: str, left: float | None) -> None:
        if spec.arms is not None:  # the composed RUM search: one arm per tier from the tunings
            compose.add_known_trials(study, list(spec.known))
            compose.compose_search(study, TIERS, spec.arms, scorer, n_trials=n_trials, observer=_PrintTrials(space),
                                  timeout_s=left)
        elif storage is None or counted(study) < n_trials:  # (optimize runs one trial before its budget check)
            tuning.optimize(study, spec.candidates, scorer, n_trials=n_trials + failed_stale(study),
                            enqueue=spec.enqueue, observer=_PrintTrials(space), timeout_s=left)

    def run(spec: experiment.Study) -> Searched:
        # this cache's study names (studies.db of earlier runs): the algorithm for a tuning
        space = spec.algorithm or spec.space
        study = tuning.make_study(None if storage is None else space, storage, seed=seed)
        stale = requeue_stale_trials(study)  # a trial a killed run left RUNNING: failed, its point queued again
        done = counted(study)
        if done:
            say(f"  search {space}: resuming, {done} trial(s) stored" + (f", {stale} stale re-queued" if stale else ""))
        if (storage is not None and timeout_s is not None and time.perf_counter() - t0 >= timeout_s
                and counted(study) < n_trials and not tuning.budget_spent(study, n_trials + failed_stale(study))):
            raise _Stopped(space)
        left = None if timeout_s is None else max(1.0, timeout_s - (time.perf_counter() - t0))
        if storage is None:
            left = None if timeout_s is None else timeout_s / (len(algorithms) + 1)
        try:
            _score_space(study, spec, space, left)
        finally:  # the cost so far, read from the study (a stopped or killed run loses nothing)
            if spent is not None:
                exact, estimated = study_cost_passes(study, original.budget(scale.budget).passes)
                spent[space] = (exact + estimated) / original.passes
                if estimated and estimates is not None:
                    estimates[space] = estimated / original.passes
        if (storage is not None and spec.arms is None and counted(study) < n_trials
                and not tuning.budget_spent(study, n_trials + failed_stale(study))):
            say(f"  search {space}: stopped with {counted(study)} of {n_trials} trials; run the same command again to "
                "continue")
            raise _Stopped(space)
        # the product's rule with no noise estimate: the best, the cheapest among equals (raises
        # NoCompletedTrial when every trial diverged: select_plans leaves that tuning out)
        plan, value, _ = tuning.cheapest_within(study)
        key = "rum" if spec.is_rum else space
        if values is not None:
            values[key] = value
        say(f"  search {space}: best calibration ToW {value:.4f} (selection only) after {counted(study)} scored plans "
            f"({len(study.trials)} trials, repeats free): {plan.to_compact()}")
        metrics = None if spec.is_rum else dict(tuning.completed_with_plan(study, plan.to_dict()).user_attrs["metrics"])
        return Searched(plan, value, metrics, space)

    try:
        selection = experiment.select_plans(TIERS, searched, run, baselines=list(algorithms), strategy=strategy,
                                            max_epochs=max_epochs, note=lambda line: say(f"  {line}"))
    except _Stopped:
        return None
    if strategy == tuning.COMPOSED and spent is not None:  # RUM's selection: its composition and every tuning
        spent["rum"] = spent.get("rum-composed", 0.0) + sum(spent.get(a, 0.0) for a in algorithms)
    return {"rum": selection.rum.best_plan, **selection.tuned_plans()}


# ------------------------------------------------------------------------------------------------
# Markdown


def fmt(v: float, digits: int = 4) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def scale_lines(args, scale: Scale, results: list[dict], machines: str) -> list[str]:
    n_train = results[0]["n_train"]
    steps = math.ceil(n_train / scale.batch_size) * scale.epochs
    accs = ", ".join(f"{r['train_acc']:.4f}" for r in results)
    tests = ", ".join(f"{r['test_acc']:.4f}" for r in results)
    return [
        f"- machine: {machines}",
        f"- data: CIFAR-10 JPEG copy ({Path(args.data).name}), {n_train} train images "
        f"({'all' if scale.subset is None else 'seeded subset'}), {results[0]['n_test']} test images",
        f"- model: {scale.model} (CIFAR stem) width {scale.width} (64 = standard), SGD lr {scale.lr} cosine, "
        f"batch {scale.batch_size}, {scale.epochs} epochs ({steps} steps), "
        f"{'crop+flip' if scale.augment else 'no augmentation'} (original and retrains; unlearning without, as the "
        f"papers' --no_aug)",
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
# The hook's acceptance gate at this scale (issue 11)


def never_seen_check(original: Original, data, target: Target, calibration: list[Target]) -> dict | None:
    """How close the acceptance gate's never-seen estimates (gate.py) come to the truth at this
    scale. The gate checks each tier's forget accuracy against what a model that never saw the
    examples gets on examples of that memorisation level; the truth here is the evaluated forget
    set's own retrained reference, per tier. Two estimates, as the hook builds them: the calibration
    references' correctness on their (disjoint) forget sets, and, without a search, the validation
    split matched to the train C-proxy by rank with the original's own correctness. `passes` =
    the exact retrain itself would pass that tier's check (a false reject where it is False).
    Calibration targets are only those already in the seed cache (nothing is retrained for this)."""
    c = np.asarray(original.c_proxy, dtype=np.float64)
    estimates = {}
    if calibration:
        estimates["calibration references"] = NeverSeen(
            np.concatenate([c[t.forget_ids] for t in calibration]),
            np.concatenate([t.reference_outputs["forget"].correct for t in calibration]).astype(np.float64))
    if original.heldout_c_proxy is not None:
        val = SplitOutputs(predict_logits(original.model, data, data.val), data.val.y)
        estimates["validation split by rank"] = heldout_never_seen(c, original.heldout_c_proxy, val.correct)
    if not estimates:
        return None
    out = {"truth": {t: float(a) for t, a in target.tier_acc.items()},
           "n": {t: int(len(ids)) for t, ids in target.tiers.items()}, "estimates": {}}
    for name, never_seen in estimates.items():
        per_tier = {}
        for tier, ids in target.tiers.items():
            expected, band = tier_expectation(never_seen, c[ids])
            per_tier[tier] = {"expected": expected, "band": band,
                              "passes": bool(abs(out["truth"][tier] - expected) <= band)}
        out["estimates"][name] = per_tier
        say(f"gate estimate ({name}) vs the evaluated reference, per tier: " + "; ".join(
            f"{t} {v['expected']:.2f} +- {v['band']:.2f} vs {out['truth'][t]:.2f}{'' if v['passes'] else ' (REJECT)'}"
            for t, v in per_tier.items()))
    return out


def never_seen_lines(checks: list[tuple[int, dict]]) -> list[str]:
    """Markdown for never_seen_check results ((seed, result) pairs; empty when there are none)."""
    if not checks:
        return []
    rows = []
    for seed, check in checks:
        for name, per_tier in check["estimates"].items():
            rows.append([str(seed), name] + [
                f"{v['expected']:.2f} +- {v['band']:.2f} vs {check['truth'][t]:.2f} ({'pass' if v['passes'] else 'reject'})"
                for t, v in per_tier.items()])
    tiers = list(checks[0][1]["truth"])
    return ["## The hook's acceptance gate at this scale", "",
            "Per tier: the gate's never-seen forget-accuracy estimate +- its accepted band (default thresholds: "
            "0.10 + 2 binomial SE) vs the evaluated set's own retrained reference; `reject` = the gate would refuse "
            "an exact retrain on that tier. Calibration references: the search's; validation split: matched to the "
            "train C-proxy by rank (the estimate the hook uses without a search).", "",
            table(["seed", "estimate"] + [f"{t} tier ({checks[0][1]['n'][t]} ex.)" for t in tiers], rows), ""]


# ------------------------------------------------------------------------------------------------
# Mode 1: every registered algorithm with its defaults


def mode_algorithms(args, scale: Scale, device) -> None:
    seed = scale.seeds[0]
    data = load(args, scale, seed, device)
    # With --results-dir naming a `--mode rum` run of the same configuration, its seed cache gives the
    # same original (its weights), forget set and both retrained references' outputs: no training
    # or retrain here when that seed got through its reporting half.
    cache = SeedCache(args.results_dir, seed, config_key(args, scale))
    original = cache.original(lambda: train_original(data, scale, seed), data, scale, seed, machine(device))
    forget, _ = cache.sets(lambda: forget_sets(original, scale.forget, seed, scale.calibration_sets))
    target = cache.target("evaluated", lambda: make_target("evaluated", data, original, forget, scale, seed), data)
    # `retrain` is the second retrain of the rum mode (the recipe replayed with another init seed):
    # retrain vs retrain, the row every other is read against, at a retrain's cost
    second = cache.target("evaluated (second retrain)", lambda: make_target(
        "evaluated (second retrain)", data, original, forget, scale, seed, init_seed=seed + 2000), data)
    calibration = [t for j in range(scale.calibration_sets)
                   if (t := cache.cached_target(f"calibration {j + 1} (pool)", data))]
    gate_check = never_seen_check(original, data, target, calibration)
    retrain_row = evaluate_unlearning(second.reference_outputs, target.reference_outputs, tiers=target.tier_positions(),
                                      seed=seed)
    retrain_row.update({"method": "retrain (a second seed)", "time/unlearn_s": second.retrain_s,
                        "cost/train_fraction": (len(data.train) - len(forget)) / len(data.train)})
    rows, skipped = [retrain_row], []
    for name in [n for n in ALGORITHMS.names() if n != "retrain"]:
        if args.stop_after_s is not None and time.perf_counter() - T0 > args.stop_after_s:
            skipped.append(name)
            continue
        report = tuning.report_plan(name, original.model, data, target.as_reference(), single_algorithm_plan(name),
                                    seeds=[seed], eval_seed=seed, recipe=recipe(data, scale, seed),
                                    budget=original.budget(scale.budget))
        rows.append(dict(report.per_seed[0], method=name + (" (unchanged)" if report.unchanged else "")))
        say(f"  {name}: {report.per_seed[0]['time/unlearn_s']:.1f} s")
    for r in rows:
        show(r)
    header = ["algorithm", "forget acc", "retain acc", "test acc", "ToW", "MIA efficacy", "MIA gap", "ToW-MIA",
              "ToW-PE", "gap high tier", "cost (trainings)", "seconds"]
    body = [[r["method"], fmt(r["forget/acc"], 3), fmt(r["retain/acc"], 3), fmt(r["test/acc"], 3), fmt(r["tow"]),
             fmt(r["mia/efficacy"], 3), fmt(r["mia/gap"], 3), fmt(r["tow_mia"]), fmt(r["tow_pe"]),
             fmt(r["tier/high/gap"], 3), fmt(r.get("cost/train_fraction"), 4), f"{r['time/unlearn_s']:.1f}"]
            for r in rows]
    cached = "" if target.retrained_here and second.retrained_here else " (in an earlier run; outputs from the seed cache)"
    text = "\n".join([
        "# Unlearning algorithms against retrain", "", f"`{command_line()}`", "",
        *scale_lines(args, scale, [{"n_train": len(data.train), "n_test": len(data.test),
                                    "train_acc": original.train_acc, "test_acc": original.test_acc}], machine(device)),
        f"- retrain (reference, same recipe on retain): {target.retrain_s:.1f} s{cached}; its forget "
        f"accuracy per tier low/mid/high {'/'.join(fmt(a, 2) for a in target.tier_acc.values())} (the original: "
        f"1.00 on all three if it fits); seed {seed}; every algorithm with its registered defaults on the whole "
        "forget set, one run each, all in this one run; `retrain (a second seed)`: the same recipe from another "
        "initialisation, scored like the others (the noise floor)",
        "- ToW, ToW-MIA, ToW-PE: 1 = retrain-equivalent; MIA gap = |MIA efficacy - that of retrain|; "
        f"gap high tier = forget-accuracy gap on the most memorised third; every algorithm within a budget of "
        f"{scale.budget:g} of the original training; cost = its example passes / the original's (a retrain: "
        "epochs x retain); seconds as measured on this machine, never divided by a retrain timed elsewhere",
        f"- load while it ran: 1-minute load average {LOAD0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end, on "
        f"{os.cpu_count()} cores (above about one per core, other processes shared the cores and the seconds are "
        "longer than idle ones; the cost column does not depend on it)", "",
        table(header, body), "",
        *([f"Not run (--stop-after-s {args.stop_after_s:g} reached): {', '.join(skipped)}", ""] if skipped else []),
        *never_seen_lines([(seed, gate_check)] if gate_check else []),
    ])
    say("\n" + text)
    write(args, "bench_algorithms.md", text)


# ------------------------------------------------------------------------------------------------
# Mode 2 (and 3): RUM with a searched plan vs the best single algorithm, vanilla vs per-tier


def run_seed(args, scale: Scale, seed: int, device, budget: "WallClock | None" = None) -> dict:
    """One seed: its own subset, original, forget and calibration sets, references and searches.
    Selection first (calibration sets, validation split), then reporting on the evaluated set."""
    say(f"\n=== seed {seed} ===")
    data = load(args, scale, seed, device)
    cache = SeedCache(args.results_dir, seed, config_key(args, scale), rerun=args.rerun)
    original = cache.original(lambda: train_original(data, scale, seed), data, scale, seed, machine(device))
    forget, calibration_ids = cache.sets(lambda: forget_sets(original, scale.forget, seed, scale.calibration_sets))
    plans, search_record, resumed, calibration = {}, None, False, []
    if scale.trials > 0:
        search_record = stored_search(args, scale, seed)
        resumed = search_record is not None
        if args.reverse and search_record is None:
            raise SystemExit(f"--reverse shares seed {seed}'s reporting half (its retrains and rows) with another "
                             f"process, but its selection half is not stored yet ({search_path(args, seed)}): run "
                             "the seed without --reverse until it is, then start the second process")
        if search_record is not None:  # selection done in an earlier run: only the reporting half runs now
            plans = {k: Plan.parse(v) for k, v in search_record["plans"].items()}
            say(f"  search: stored in {search_path(args, seed)} ({search_record.get('finished', '?')}); plans "
                + "; ".join(f"{k} `{v}`" for k, v in search_record["plans"].items()))
        else:
            calibration = calibration_targets(cache, data, original, calibration_ids, scale, seed)
            timeout = None if budget is None else max(min(args.search_s, budget.left() - 0.5 * args.search_s), 1.0)
            if args.stop_after_s is not None:  # a run cut to fit a session: stop starting trials in time
                left = args.stop_after_s - (time.perf_counter() - T0)
                timeout = max(1.0, left if timeout is None else min(timeout, left))
            values, spent, estimates = {}, {}, {}
            plans = search_plans(original, data, calibration, scale, seed, args.algorithms, timeout_s=timeout,
                                 values=values, storage=cache.storage(), spent=spent, estimates=estimates,
                                 strategy=args.strategy)
            if plans is None:  # stopped by --stop-after-s with trials left: the next run continues the studies
                return None
            search_record = save_search(args, scale, seed, plans, values, calibration, device, spent, estimates)
    references = {"evaluated": lambda: make_target("evaluated", data, original, forget, scale, seed),
                  "evaluated (second retrain)": lambda: make_target(
                      "evaluated (second retrain)", data, original, forget, scale, seed, init_seed=seed + 2000)}
    # --reverse (a second process on this seed) retrains them in the other order: each makes one
    made = {name: cache.target(name, make, data)
            for name, make in (reversed(references.items()) if args.reverse else references.items())}
    target, second = made["evaluated"], made["evaluated (second retrain)"]
    calibration = calibration or [t for j in range(scale.calibration_sets)
                                   if (t := cache.cached_target(f"calibration {j + 1} (pool)", data))]
    gate_check = never_seen_check(original, data, target, calibration)
    floor = tuning.noise_floor(second.as_reference(), target.as_reference(), data, seed=seed)
    say(f"noise floor (retrain vs retrain): ToW {floor['floor/tow']:.4f}, ToW-PE {floor['floor/tow_pe']:.4f}, "
        f"MIA gap {floor['floor/mia_gap']:.4f}")
    reference = target.as_reference()
    # Every method runs under a compute budget and reports its cost in trainings (example passes /
    # the original's): at the main budget for the table, and at each budget of the curve. `none`
    # costs nothing and runs once. Seconds are kept as measured, never divided by another run's.
    methods = experiment.compared_methods(plans.get("rum"), args.algorithms, plans)
    pairs = main_budget_first(experiment.method_budgets(methods, scale.budget, scale.curve), scale.budget)

    def row(method, fraction) -> dict | None:
        """The stored row (looked up now: another process on this seed may have stored it since
        this one started), else the row run and stored; None: skipped for the wall-clock budget."""
        label, plan = method.label, method.plan
        r = cache.reports().get((label, fraction, plan.to_compact()))
        settings = plan_settings(plan)
        if r is not None and r.get("settings", settings) != settings:
            say(f"  {label:<34} at budget {fraction:g}: the stored row ran other settings "
                f"({_settings_difference(r['settings'], settings)}); run again")
            r = None
        if r is None:
            if budget is not None and not budget.allows(target.retrain_s * fraction * 1.5):
                say(f"  {label:<34} at budget {fraction:g} skipped: {budget.left():.0f} s left")
                return None
            report = tuning.report_plan(label, original.model, data, reference, plan, seeds=[seed], eval_seed=seed,
                                        recipe=recipe(data, scale, seed), budget=original.budget(fraction))
            r = dict(report.per_seed[0], method=label, budget=fraction, plan=plan.to_compact(), settings=settings,
                     unchanged=report.unchanged, machine=machine(device))
            cache.save_report(r)
        if fraction == scale.budget:
            show(r)
        return r

    curve = walk_rows(pairs, row, reverse=args.reverse)
    rows = [r for r in curve if r["budget"] == scale.budget]
    retrain_fraction = (len(data.train) - len(forget)) / len(data.train)  # a retrain: epochs x retain
    union = np.unique(np.concatenate(calibration_ids)) if len(calibration_ids) else np.zeros(0, dtype=np.int64)
    spent = (search_record or {}).get("search_cost") or {}
    costs = {"calibration_reference": (len(data.train) - len(union)) / len(data.train),
             "rum_search": spent.get("rum", float("nan")), "rum_composition": spent.get("rum-composed"),
             # the part of those costs estimated for trials stored before each trial recorded its passes
             "estimated": (search_record or {}).get("search_cost_estimated") or {},
             "baseline_searches": {k: v for k, v in spent.items() if k not in ("rum", "rum-composed")},
             "retrain": retrain_fraction}
    return {"seed": seed, "machine": machine(device), "n_train": len(data.train), "n_test": len(data.test), "train_acc": original.train_acc,
            "test_acc": original.test_acc, "original_s": original.seconds, "retrain_s": target.retrain_s, "rows": rows,
            "curve": curve, "costs": costs, "budget": scale.budget, "original_passes": original.passes,
            "tier_acc": target.tier_acc, "floor": floor, "never_seen_check": gate_check,
            "plans": {k: v.to_compact() for k, v in plans.items()}, "strategy": args.strategy,
            "search": None if search_record is None else {k: search_record.get(k) for k in (
                "finished", "machine", "calibration_tow", "calibration", "original", "note")},
            "search_resumed": resumed}


def plan_settings(plan: Plan) -> list[dict]:
    """Every step of `plan` with every hyperparameter it runs with, the algorithm's defaults filled in.
    Report rows are cached by the compact plan, which names no defaults ("all=finetune"): a row keeps
    these settings so that a later run whose defaults changed scores it again instead of reusing a
    row that ran other settings. Rows stored without them (rum-cpu-auto's seed 1 and seed 0's first
    two, all written after the last change to these algorithms' defaults, 2026-12-06 15:16) are taken
    as they are."""
    return json.loads(json.dumps([{"tier": step.tier, "algorithm": step.algorithm,
                                   "hyperparameters": {**hyperparameters(step.algorithm), **step.hyperparameters}}
                                  for step in plan.steps], default=_jsonable))


def _settings_difference(stored: list[dict], current: list[dict]) -> str:
    if len(stored) != len(current):
        return f"{len(stored)} step(s) stored, {len(current)} now"
    out = []
    for a, b in zip(stored, current):
        ha, hb = a.get("hyperparameters", {}), b.get("hyperparameters", {})
        out += [f"{b['tier']} {b['algorithm']} {k} {ha.get(k)!r} here {hb.get(k)!r}"
                for k in sorted(set(ha) | set(hb)) if ha.get(k) != hb.get(k)]
        if a.get("algorithm") != b.get("algorithm"):
            out.append(f"{b['tier']} algorithm {a.get('algorithm')!r} here {b['algorithm']!r}")
    return ", ".join(out) or "the same values in another form"


def walk_rows(pairs: list[tuple], row, *, reverse: bool = False) -> list[dict]:
    """`row(*pair)` for every pair (it takes a stored row or runs and stores one; None: skipped),
    from the last pair with `reverse`; the rows come back in the pairs' order either way. Two
    processes on one seed, one of them reversed, share its rows and meet in the middle: each looks
    a row up just before running it, so at most the row both reach at once runs twice."""
    ran = {}
    for i in (reversed(range(len(pairs))) if reverse else range(len(pairs))):
        r = row(*pairs[i])
        if r is not None:
            ran[i] = r
    return [ran[i] for i in sorted(ran)]


def main_budget_first(pairs: list[tuple], budget: float) -> list[tuple]:
    """The reporting half's (method, budget) pairs with every method at the main budget first, then
    the cost-quality curve's other budgets, each group in the given method order. A CPU seed's rows
    take hours and a session may stop part way; rows are cached by (method, budget, plan), so this
    order only decides which rows a stopped run has: the main-budget comparison (the table and the
    target line) before the curve."""
    return sorted(pairs, key=lambda pair: pair[1] != budget)  # stable: method order kept within a group


# ------------------------------------------------------------------------------------------------
# Per-seed results on disk: a CPU seed takes hours, so seeds can run in separate sessions (or
# machines) and the table is assembled from every stored seed of the same configuration.


def config_key(args, scale: Scale) -> dict:
    """What must match for two seeds to share a table (everything but the seed itself)."""
    fields = {k: v for k, v in dataclasses.asdict(scale).items() if k != "seeds"}
    # as JSON reads it back (tuples become lists), so a stored key compares equal to this one
    return json.loads(json.dumps({"scale": fields, "algorithms": list(args.algorithms), "data": Path(args.data).name}))


def seed_path(args, seed: int) -> Path:
    return Path(args.results_dir) / f"seed{seed}.json"


def save_seed(args, scale: Scale, result: dict, device) -> None:
    if args.results_dir is None:
        return
    path = seed_path(args, result["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": config_key(args, scale), "machine": machine(device), "command": command_line(),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "result": result}
    path.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
    say(f"wrote {path}")


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def search_path(args, seed: int) -> Path:
    return Path(args.results_dir) / f"seed{seed}-search.json"


def save_search(args, scale: Scale, seed: int, plans: dict, values: dict, calibration: list, device,
                spent: dict | None = None, estimates: dict | None = None) -> dict:
    """The selection half of a seed (calibration references + studies: about two thirds of a CPU
    seed's hours), stored before the reporting half runs, so a run cut short resumes from it. The
    reporting half never reads anything but the plans."""
    record = {"config": config_key(args, scale), "seed": seed, "machine": machine(device), "command": command_line(),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "plans": {k: v.to_compact() for k, v in plans.items()},
              "calibration_tow": values, "search_cost": spent or {},
              "search_cost_estimated": estimates or {}, "strategy": args.strategy,
              "calibration": [{"retrain_s": t.retrain_s, "tier_acc": t.tier_acc} for t in calibration]}
    if args.results_dir is not None:
        path = search_path(args, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
        say(f"wrote {path}")
    return record


def stored_search(args, scale: Scale, seed: int) -> dict | None:
    """The stored selection half of this seed, if one of the same configuration exists (--rerun: never)."""
    if args.results_dir is None or args.rerun or not search_path(args, seed).is_file():
        return None
    record = json.loads(search_path(args, seed).read_text())
    if record.get("config") != config_key(args, scale):
        say(f"ignoring {search_path(args, seed)}: another configuration ({record.get('command', '?')})")
        return None
    if record.get("strategy", tuning.JOINT) != args.strategy:  # the studies stay: only the RUM search runs again
        say(f"{search_path(args, seed)} holds a {record.get('strategy', tuning.JOINT)} RUM search; running the "
            f"{args.strategy} one (stored studies are reused)")
        return None
    return record


def stored_seeds(args, scale: Scale) -> dict[int, dict]:
    """Every stored seed whose configuration matches this run's; a mismatching file is reported, not
    mixed into the table."""
    out = {}
    if args.results_dir is None or not Path(args.results_dir).is_dir():
        return out
    want = config_key(args, scale)
    for path in sorted(Path(args.results_dir).glob("seed*.json")):
        if not path.stem[len("seed"):].isdigit():  # seed<N>-search.json: a selection half, not a result
            continue
        record = json.loads(path.read_text())
        if record.get("config") != want:
            say(f"ignoring {path}: another configuration ({record.get('command', '?')})")
            continue
        strategy = record["result"].get("strategy", tuning.JOINT)  # seeds run before --strategy: joint
        if strategy != getattr(args, "strategy", tuning.COMPOSED):
            say(f"{path}: its RUM plan came from a {strategy} search; this run's seed is reported again with "
                f"--strategy {args.strategy} (its studies, references and baseline rows are reused)")
            continue
        out[int(record["result"]["seed"])] = record["result"]
    return out


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

    header = ["method", "n", "ToW", "MIA gap", "ToW-MIA", "ToW-PE", "forget acc", "cost (trainings)"]
    def label(m):  # a method whose predictions never differed from the original's is marked
        rows = [r for r in per[m] if r is not None]
        return m + (" (unchanged)" if rows and all(r.get("unchanged") for r in rows) else "")

    floors = [res["floor"] for res in results]
    body = [[label(m), str(sum(r is not None for r in per[m])), ci(m, "tow"), ci(m, "mia/gap", 3), ci(m, "tow_mia"),
             ci(m, "tow_pe"), ci(m, "forget/acc", 3), ci(m, "cost/train_fraction", 4)] for m in methods]
    floor_cell = lambda key, d=4: (fmt(mean_ci([f[key] for f in floors])[0], d) if len(floors) < 2 else
                                   "{} [{}, {}]".format(*(fmt(v, d) for v in mean_ci([f[key] for f in floors]))))
    retrain_cost = [res["costs"]["retrain"] for res in results if res.get("costs")]
    body.append(["retrain vs retrain (noise floor)", str(len(floors)), floor_cell("floor/tow"),
                 floor_cell("floor/mia_gap", 3), floor_cell("floor/tow_mia"), floor_cell("floor/tow_pe"), "-",
                 fmt(float(np.mean(retrain_cost)), 4) if retrain_cost else "-"])

    tests = []
    rum = experiment.RUM_LABEL
    pairs = [(rum, experiment.NONE_LABEL)]
    pairs += [(rum, name_of(a)) for a in args.algorithms for name_of in (experiment.tuned_label, experiment.defaults_label)]
    pairs += [(experiment.tuned_label(a), experiment.defaults_label(a)) for a in args.algorithms]
    for a, b in pairs:
        both = [(ra, rb) for ra, rb in zip(per.get(a, []), per.get(b, [])) if ra is not None and rb is not None]
        if not both:
            continue
        for key, better in (("tow", "higher"), ("mia/gap", "lower")):
            t = paired_test([ra[key] for ra, _ in both], [rb[key] for _, rb in both])
            tests.append([f"{a} - {b}", key, str(len(both)), f"{fmt(t['mean_diff'])} [{fmt(t['ci_low'])}, "
                          f"{fmt(t['ci_high'])}]", fmt(t["t"], 2), fmt(t["p"], 3), better])
    plans = [f"- seed {res['seed']}: " + "; ".join(f"{k} `{v}`" for k, v in res["plans"].items()) for res in results]
    for res in results:  # selection stored by an earlier run (cut short after it): say so, with where it ran
        search = res.get("search") or {}
        if res.get("search_resumed"):
            plans.append(f"  (seed {res['seed']}: selected in an earlier run, finished {search.get('finished')} on "
                         f"{search.get('machine')}, stored in seed{res['seed']}-search.json; reported by a later "
                         f"run from the same original (seed{res['seed']}-cache/original.pt); "
                         f"{search.get('note') or 'the stored plans were applied unchanged'})")
        if search.get("calibration_tow"):
            plans.append(f"  (seed {res['seed']} best calibration ToW, selection only: " + ", ".join(
                f"{k} {v:.4f}" for k, v in search["calibration_tow"].items()) + ")")
    retrain = ", ".join(f"{res['retrain_s']:.1f}" for res in results)
    tier_acc = "; ".join("/".join(fmt(a, 2) for a in res["tier_acc"].values()) for res in results)
    return "\n".join([
        f"# {title}", "", f"`{command_line()}`", "",
        *scale_lines(args, scale, results, "; ".join(dict.fromkeys(r.get("machine", machine(device)) for r in results))),
        f"- seeds {', '.join(str(res['seed']) for res in results)}: each seed has its own train subset, original "
        f"model, forget set, calibration forget sets, references and searches; retrain seconds per seed: {retrain}; "
        f"the reference's forget accuracy per tier low/mid/high, per seed: {tier_acc}",
        f"- selection: `mlflow_unlearn.tuning` (Optuna TPE, seeded, median pruner), objective mean ToW over "
        f"{scale.calibration_sets} calibration mix forget sets like the evaluated one (disjoint, neighbouring "
        f"memorisation ranks, all scored against ONE reference retrained without their union, as the product's "
        f"calibration reference), every trial within the budget {scale.budget:g}, the validation split "
        f"({scale.val_fraction:g} of the subset) "
        f"standing in for test; " + (
            f"each baseline tuned by its own study ({scale.trials} trials, its defaults first, median pruner), then "
            f"the RUM plan by the composed search (`--strategy composed`): one arm per tier among none and the "
            f"tuned {', '.join(args.algorithms)}, coordinate search, at most {scale.trials} plans, the tuned "
            f"whole-set settings competing as copied trials; max_epochs {scale.max_epochs}"
            if getattr(args, "strategy", tuning.COMPOSED) == tuning.COMPOSED else
            f"the RUM study (`--strategy joint`; space: none + {', '.join(args.algorithms)}; whole-set and per-tier "
            f"plans; its defaults first) and one study per tuned baseline get the same number of trials "
            f"(at least {scale.trials}), max_epochs {scale.max_epochs}"),
        "- reporting: every method on the evaluated forget set and the test split, which no selection touched; "
        "defaults = the algorithm's registered defaults on the whole forget set; (unchanged) = predictions equal "
        "the original's on every split; the noise floor is a second retrain (another seed) against the reference",
        "- cells: mean [95% Student-t interval] over seeds (one seed: its value, no interval); every method within "
        f"a budget of {scale.budget:g} of the original training (equal compute; `retrain` is exact); cost = its "
        "example passes / the original training's (the same on every machine; seconds stay in the seed JSONs)",
        "", table(header, body), "",
        "Paired tests over seeds (difference a - b; ToW: higher is better, MIA gap: lower is better):", "",
        (table(["a - b", "metric", "n", "mean diff [95% CI]", "t", "p", "better"], tests) if len(results) >= 2 else
         f"(none yet: a paired test needs at least 2 seeds, {len(results)} stored)"), "",
        *verdict_lines(per, pairs, floors), "",
        *curve_lines(args, results, floors), "",
        *cost_lines(results), "",
        "Searched plans:", "", *plans, "",
        *never_seen_lines([(res["seed"], res["never_seen_check"]) for res in results if res.get("never_seen_check")]),
    ])


def curve_table(results: list[dict]) -> tuple[list[float], dict[str, dict[float, list[float]]]]:
    """(budgets, method -> budget -> ToW per seed) from every stored seed's curve rows."""
    budgets = sorted({r["budget"] for res in results for r in res.get("curve", [])})
    by: dict[str, dict[float, list[float]]] = {}
    for res in results:
        for r in res.get("curve", []):
            by.setdefault(r["method"], {}).setdefault(r["budget"], []).append(r["tow"])
    return budgets, by


def curve_lines(args, results: list[dict], floors: list[dict]) -> list[str]:
    """The cost-quality curve: held-out ToW of every method at each budget (mean [95% interval] over
    seeds), with `none` at cost 0 and the retrain floor at about one training; also a plot."""
    budgets, by = curve_table(results)
    if not budgets:
        return []

    def cell(vals):
        if not vals:
            return "-"
        mean, lo, hi = mean_ci(vals)
        return fmt(mean) if len(vals) < 2 else f"{fmt(mean)} [{fmt(lo, 3)}, {fmt(hi, 3)}]"

    rows = [[m] + [cell(v.get(b, [])) for b in budgets] for m, v in by.items() if not m.startswith("none")]
    none = by.get(experiment.NONE_LABEL, {})
    rows.append([f"{experiment.NONE_LABEL}, cost 0"] + [cell(sum(none.values(), []))] * len(budgets))
    rows.append(["retrain vs retrain, about one training"] + [cell([f["floor/tow"] for f in floors])] * len(budgets))
    plot = write_curve_plot(args, budgets, by, floors)
    return ["Cost-quality curve (held-out ToW; each method run within each budget, as a fraction of the original "
            "training; plans selected at the main budget and applied at each, so a tuned row at another budget "
            "shows what the same settings do when cut to it or given more; the product runs a searched plan at its "
            "own budget when a request allows more, and refuses it when less: `request.at_plan_budget`):", "",
            table(["method"] + [f"budget {b:g}" for b in budgets], rows), "",
            *([f"![cost-quality curve]({plot})", ""] if plot else [])]


def write_curve_plot(args, budgets, by, floors) -> str | None:
    """docs/<bench>_curve.png (only with --out-dir): ToW against budget per method."""
    if args.out_dir is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for m, v in by.items():
        if m.startswith("none"):
            vals = sum(v.values(), [])
            ax.scatter([0.0], [np.mean(vals)], marker="x", color="black", label="none (cost 0)")
            continue
        xs = [b for b in budgets if v.get(b)]
        ax.plot(xs, [np.mean(v[b]) for b in xs], marker="o", label=m)
    if floors:
        ax.axhline(np.mean([f["floor/tow"] for f in floors]), color="grey", linestyle="--",
                   label="retrain vs retrain (about 1 training)")
    ax.set_xlabel("budget (fraction of the original training)")
    ax.set_ylabel("held-out ToW (1 = retrain)")
    ax.set_title("Cost-quality curve")
    ax.legend(fontsize=7)
    name = f"bench_{args.mode}_curve.png"
    path = Path(args.out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


def _estimated_note(costs: dict) -> str:
    estimated = costs.get("estimated") or {}
    if not estimated:
        return ""
    parts = ", ".join(f"{k} {fmt(v, 3)}" for k, v in estimated.items())
    return (f"; of the searches' cost, {parts} is estimated: pruned trials stored before trials recorded their "
            "passes, each calibration set they scored counted at the full budget")


def cost_lines(results: list[dict]) -> list[str]:
    """The first request's cost (the calibration reference + the RUM search + the request) and each
    later one's (the request alone), in trainings, and after how many requests unlearning costs less
    in total than retraining every time (compute.break_even_requests), per seed."""
    out = []
    for res in results:
        c = res.get("costs")
        rum = next((r for r in res["rows"] if r["method"] == experiment.RUM_LABEL), None)
        if not c or rum is None:
            continue
        request = float(rum.get("cost/train_fraction", float("nan")))
        first = c["calibration_reference"] + c["rum_search"] + request
        n = break_even_requests(first, request, c["retrain"])
        when = "never" if not math.isfinite(n) else f"from request {int(n)} on"
        searches = ', '.join(f'{k} {fmt(v, 3)}' for k, v in c['baseline_searches'].items()) or 'none'
        if c.get("rum_composition") is not None:  # composed: the tunings are part of RUM's search
            search = (f"RUM search {fmt(c['rum_search'], 3)}: the per-tier composition "
                      f"{fmt(c['rum_composition'], 3)} + the tunings it builds on ({searches})")
        else:
            search = (f"RUM search {fmt(c['rum_search'], 3)}; the tuned baselines' searches, for the comparison "
                      f"only: {searches}")
        out.append(f"- seed {res['seed']}: first request {fmt(first, 3)} trainings (calibration reference "
                   f"{fmt(c['calibration_reference'], 3)} + RUM search {fmt(c['rum_search'], 3)} + the request "
                   f"{fmt(request, 4)}); each later request {fmt(request, 4)}; a retrain {fmt(c['retrain'], 3)}; "
                   f"cheaper than retraining every time {when} ({search})" + _estimated_note(c))
    if out:  # the first request is what a smaller search trades against ToW: say where that is priced
        out.append("- smaller searches priced from these seeds' stored trials (defaults only, one tuning, the top m "
                   "tunings): `bench/bench_search_size_cifar.py --results-dir <this results dir>`, in bench/README.md")
    return ["Cost per request, in trainings (example passes / the original training's):", "", *out] if out else []


def verdict_lines(per: dict, pairs: list[tuple[str, str]], floors: list[dict]) -> list[str]:
    """Where RUM wins and where it does not, in words, read off the same paired differences as the
    tests table: a comparison is called only when the 95% interval of the mean ToW difference over
    seeds excludes 0; otherwise it says the seeds cannot tell (with how many seeds each side won).
    Several comparisons at a few seeds and no multiplicity correction: a call is a lead, not a proof."""
    rum = experiment.RUM_LABEL
    out = []
    for a, b in pairs:
        if a != rum:
            continue
        both = [(ra, rb) for ra, rb in zip(per.get(a, []), per.get(b, [])) if ra is not None and rb is not None]
        if not both:
            continue
        diffs = [ra["tow"] - rb["tow"] for ra, rb in both]
        wins = sum(d > 0 for d in diffs)
        n = len(diffs)
        mean, lo, hi = mean_ci(diffs)
        gap = mean_ci([ra["mia/gap"] - rb["mia/gap"] for ra, rb in both])[0]
        if n >= 2 and lo > 0:
            call = "RUM is better"
        elif n >= 2 and hi < 0:
            call = "RUM is worse"
        else:
            call = "no clear difference" if n >= 2 else "one seed, no call"
        interval = "" if n < 2 else f" [{fmt(lo)}, {fmt(hi)}]"
        out.append(f"- vs {b}: {call} on ToW (RUM - it = {fmt(mean)}{interval}; RUM higher in {wins} of {n} "
                   f"seeds); MIA gap {'lower' if gap < 0 else 'higher' if gap > 0 else 'equal'} by {fmt(abs(gap), 3)}")
    rum_tow = [r["tow"] for r in per.get(rum, []) if r is not None]
    if rum_tow and floors:
        floor = float(np.mean([f["floor/tow"] for f in floors]))
        out.append(f"- vs retraining: RUM's mean ToW {fmt(float(np.mean(rum_tow)))} against {fmt(floor)} for a second "
                   f"retrain (the noise floor: as close to the reference as retraining itself gets)")
    out += target_lines(per, pairs, floors)
    if not out:
        return []
    return [f"Where RUM wins and where it does not (ToW over {len(rum_tow)} seed(s); a call needs the 95% interval of "
            "the paired difference to exclude 0; several comparisons, no multiplicity correction):", "", *out]


def target_lines(per: dict, pairs: list[tuple[str, str]], floors: list[dict]) -> list[str]:
    """Issue 26's quality target in one line, read off the same per-seed rows: RUM's mean ToW within
    0.01 of the retrain-vs-retrain floor (paired by seed: each seed's floor is its own second
    retrain), and at least the best baseline's mean ToW at the same budget (the baseline with the
    highest mean; its paired difference says whether the seeds can tell them apart)."""
    rum = experiment.RUM_LABEL
    seeds = [(r, f) for r, f in zip(per.get(rum, []), floors) if r is not None]
    baselines = [b for a, b in pairs if a == rum and b != experiment.NONE_LABEL
                 and any(r is not None for r in per.get(b, []))]
    if not seeds or not baselines:
        return []
    to_floor = [r["tow"] - f["floor/tow"] for r, f in seeds]
    mean, lo, hi = mean_ci(to_floor)
    interval = "" if len(to_floor) < 2 else f" [{fmt(lo)}, {fmt(hi)}]"
    def best_of(names):
        return max(names, key=lambda b: np.mean([r["tow"] for r in per[b] if r is not None]))

    def versus(b) -> str:
        both = [(ra["tow"], rb["tow"]) for ra, rb in zip(per[rum], per[b]) if ra is not None and rb is not None]
        d = mean_ci([x - y for x, y in both])
        return (f"{b}, {'yes' if d[0] >= 0 else 'no'} (RUM - it = {fmt(d[0])}"
                + ("" if len(both) < 2 else f" [{fmt(d[1])}, {fmt(d[2])}]") + ")")

    # a baseline that ran RUM's own plan on every seed (the search registered a tuned whole-set
    # setting) differs from RUM only by run-to-run noise, so the best one with another plan is named too
    def same_plan(b):
        return all(ra is None or rb is None or ra["plan"] == rb["plan"] for ra, rb in zip(per[rum], per[b]))
    best = best_of(baselines)
    line = (f"- target (issue 26: RUM within 0.01 of the floor and at least the best baseline, at the same budget): "
            f"within 0.01 of the floor {'yes' if mean >= -0.01 else 'no'} (RUM - floor = {fmt(mean)}{interval} over "
            f"{len(to_floor)} seed(s)); at least the best baseline, {versus(best)}")
    others = [b for b in baselines if not same_plan(b)]
    if same_plan(best) and others:
        line += f"; that baseline ran RUM's own plan on every seed; the best with another plan: {versus(best_of(others))}"
    return [line]


def mode_rum(args, scale: Scale, device) -> None:
    t0 = time.perf_counter()
    stored = stored_seeds(args, scale)
    for seed in scale.seeds:
        if seed in stored and not args.rerun:
            say(f"seed {seed}: stored in {seed_path(args, seed)} (same configuration); --rerun to run it again")
            continue
        if (args.results_dir is not None and seed_path(args, seed).exists() and seed not in stored and not args.rerun
                and json.loads(seed_path(args, seed).read_text()).get("config") != config_key(args, scale)):
            raise SystemExit(f"{seed_path(args, seed)} holds seed {seed} of another configuration: pass "
                             "--results-dir DIR for this one, or --rerun to replace it")
        result = run_seed(args, scale, seed, device)
        if result is None:  # --stop-after-s: the selection half is kept in seed<N>-cache/, the table waits
            say(f"seed {seed}: selection not finished within --stop-after-s; its references and trials are kept in "
                f"{Path(args.results_dir) / f'seed{seed}-cache'}; run the same command again to continue")
            return
        stored[seed] = result
        save_seed(args, scale, stored[seed], device)
    results = [stored[s] for s in sorted(stored)]  # every stored seed of this configuration, not only this run's
    text = summary_text(args, scale, device, results, "RUM: searched per-tier plan vs the best single algorithm")
    text += f"\nthis run: {time.perf_counter() - t0:.0f} s; per seed: " + ", ".join(
        f"seed {r['seed']} original {r['original_s']:.0f} s" for r in results) + "\n"
    say("\n" + text)
    write(args, "bench_rum.md", text)


def mode_regime(args, scale: Scale, device) -> None:
    """Is the CPU scale in the memorisation regime? One original and the reference of its mix set."""
    seed = scale.seeds[0]
    data = load(args, scale, seed, device)
    original = train_original(data, scale, seed)
    forget, _ = forget_sets(original, scale.forget, seed, 1)
    target = make_target("evaluated", data, original, forget, scale, seed)
    checks = {"train acc >= 0.97": original.train_acc >= 0.97, "test acc >= 0.55": original.test_acc >= 0.55,
              "reference low-tier forget acc >= 0.8": target.tier_acc["low"] >= 0.8,
              "reference high-tier forget acc <= 0.35": target.tier_acc["high"] <= 0.35}
    say(f"regime: train acc {original.train_acc:.4f}, test acc {original.test_acc:.4f}, original {original.seconds:.0f} s, "
        f"retrain {target.retrain_s:.0f} s; reference forget acc per tier "
        + ", ".join(f"{t} {a:.3f}" for t, a in target.tier_acc.items()))
    for name, ok in checks.items():
        say(f"  {'ok  ' if ok else 'FAIL'} {name}")


def mode_paper(args, scale: Scale, device) -> None:
    t0 = time.perf_counter()
    results = []
    for seed in scale.seeds:
        budget = WallClock(args.budget_s)
        results.append(run_seed(args, scale, seed, device, budget))
        say(f"seed {seed}: {time.perf_counter() - budget.t0:.0f} s")
    text = summary_text(args, scale, device, results, "The RUM paper's setting" + (" (smoke)" if args.smoke else ""))
    text += f"\ntotal {time.perf_counter() - t0:.0f} s\n"
    say("\n" + text)
    write(args, "bench_paper.md", text)


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("algorithms", "rum", "paper", "regime"), required=True)
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
    p.add_argument("--max-epochs", type=lambda v: v if v == AUTO_EPOCHS else int(v),
                   help="search space: epochs per step at most, or auto (the product's default: the epochs over "
                        "retain the budget pays for)")
    p.add_argument("--algorithms", nargs="+", default=None, help="baselines, each at its defaults and tuned; the RUM "
                   f"search space is none plus these (default: {' '.join(COMPARED)}; smoke: neggrad_plus)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1: fastest on the shared 2-core machines)")
    p.add_argument("--budget-s", type=float, help="paper mode: seconds per seed; runs that would not fit are "
                   "skipped and say so (default 540 on CUDA, unlimited otherwise; 0: unlimited)")
    p.add_argument("--search-s", type=float, default=90.0, help="paper mode with a budget: seconds for the trials")
    p.add_argument("--out-dir", help="where the markdown goes (default docs/, or nothing with --smoke)")
    p.add_argument("--results-dir", help="rum mode: one JSON per seed, reused by later runs of the same "
                   "configuration and assembled into one table (default bench/results/rum-cpu-auto; none with --smoke); algorithms "
                   "mode: only when given, its seed cache's forget set and evaluated reference (same configuration)")
    p.add_argument("--stop-after-s", type=float, default=None, help="rum mode: start no new trial after this many "
                   "seconds of the run; what is done stays in --results-dir (seed<N>-cache/) and the same command "
                   "continues it (a CPU seed takes more hours than one session); algorithms mode: start no new "
                   "algorithm after it (the table lists those not run)")
    p.add_argument("--rerun", action="store_true", help="rum mode: run the requested seeds even if stored")
    p.add_argument("--reverse", action="store_true", help="rum mode: a second process on the same seeds (start it "
                   "beside the first once a seed's selection half is stored): it retrains the two references in the "
                   "other order and walks the report rows from the end, taking the rows and references the other "
                   "process stored, so the two share the seed's reporting half (about half the wall time on 2 cores)")
    p.add_argument("--strategy", choices=tuning.STRATEGIES, default=tuning.COMPOSED,
                   help="how the RUM plan is searched (as `mlflow-unlearn search --strategy`): composed (default: "
                        "the baselines' tunings, then one tuned algorithm per tier) or joint")
    p.add_argument("--budget", type=float, help="compute per request as a fraction of the original training: every "
                   "trial and every method of the main table runs within it (default 0.1; smoke 0.5)")
    p.add_argument("--curve", type=float, nargs="+", help="budgets of the cost-quality curve (default 0.02 0.05 0.1 0.2)")
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
            "budget": args.budget, "curve": tuple(args.curve) if args.curve else None,
            "augment": None if args.augment is None else args.augment == "on"}
    over = {k: (None if v == 0 and k in ("subset", "test_subset") else v) for k, v in over.items() if v is not None}
    scale = dataclasses.replace(base, **over)
    from mlflow_unlearn.compute import BudgetError, parse_budget

    try:
        for fraction in (scale.budget, *scale.curve):
            parse_budget(fraction, flag="--budget/--curve")
    except BudgetError as exc:
        p.error(str(exc))
    if args.out_dir is None and not args.smoke:
        args.out_dir = str(REPO / "docs")
    if args.results_dir is None and args.mode == "rum" and not args.smoke:
        # the budgeted configuration with the budget-bounded search space; rum-cpu-budget holds the
        # same with max_epochs 2 (seed 0 only), rum-cpu the earlier, unbudgeted one. Retrained
        # references do not depend on the search: target-*.npz of the same recipe can be copied across
        args.results_dir = str(REPO / "bench" / "results" / "rum-cpu-auto")
    if args.mode == "paper" and args.budget_s is None and device.type == "cuda" and not args.smoke:
        args.budget_s = 540.0
    if args.budget_s is not None and args.budget_s <= 0:
        args.budget_s = None  # --budget-s 0: no budget
    if args.algorithms is None:
        args.algorithms = ["neggrad_plus"] if args.smoke else list(COMPARED)
    unknown = [a for a in args.algorithms if a not in ALGORITHMS]
    if unknown:
        p.error(f"unknown algorithm(s) {unknown}; registered: {', '.join(ALGORITHMS.names())}")
    say(f"mode {args.mode}{' (smoke)' if args.smoke else ''}; {machine(device)}; {scale}")
    t0 = time.perf_counter()
    {"algorithms": mode_algorithms, "rum": mode_rum, "paper": mode_paper, "regime": mode_regime}[args.mode](args, scale, device)
    say(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

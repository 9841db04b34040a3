"""The Feldman-Zhang memorisation estimator: train K models on random subsets of the train set
and compare, per example, the accuracy of the models that saw it with the accuracy of those that did
not; and how well the free proxies (C-proxy, ...) track that estimate (Spearman).

It is resumable (one ``model_{k:04d}.npz`` per finished model in a work folder) and can train
models in parallel worker processes. Expensive and optional: the product runs on the C-proxy.

This is core code: torch/numpy/scipy only, never mlflow.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
import warnings
import zipfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .data import DatasetSpec, ImageData, load_dataset
from .memorization import MemorizationError, _seed_seq
from .models import build_model
from .progress import MetricLogger, NullLogger, ProgressBar
from .training import TrainConfig, predict_logits, train_model


@dataclass
class MemorizationEstimate:
    """The result of :func:`estimate_memorization`.

    `mem[i]` = mean correctness on train example i of the models trained with i minus that of the
    models trained without it (NaN where either side has no model). `masks[k, i]` says whether
    model k trained on example i; `correct[k, i]` whether it classified i correctly afterwards.
    """

    mem: np.ndarray  # float64 [n_train]
    n_models_done: int  # models in the estimate (loaded from the work folder + trained now)
    n_trained: int  # models trained by this call (the rest were loaded from the work folder)
    in_counts: np.ndarray  # int64 [n_train]: models that saw example i
    out_counts: np.ndarray  # int64 [n_train]: models that did not
    in_acc: np.ndarray  # float64 [n_train]: accuracy on i of the models that saw it (NaN if none)
    out_acc: np.ndarray  # float64 [n_train]: ... of the models that did not
    masks: np.ndarray = field(repr=False)  # bool [K, n_train]
    correct: np.ndarray = field(repr=False)  # bool [K, n_train]
    subset_fraction: float = 0.7
    seed: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        finite = self.mem[np.isfinite(self.mem)]
        return {
            "memorization/n_models": float(self.n_models_done),
            "memorization/coverage": float(len(finite) / max(len(self.mem), 1)),
            "memorization/mean": float(finite.mean()) if finite.size else float("nan"),
            "memorization/frac_above_0.5": float((finite > 0.5).mean()) if finite.size else float("nan"),
        }


def combine_memorization(masks: np.ndarray, correct: np.ndarray):
    """(mem, in_counts, out_counts, in_acc, out_acc) from per-model masks and correctness [K, n]."""
    masks = np.asarray(masks, dtype=bool)
    correct = np.asarray(correct, dtype=bool)
    if masks.shape != correct.shape or masks.ndim != 2:
        raise MemorizationError(f"masks {masks.shape} and correct {correct.shape} must both be [K, n_train]")
    in_counts = masks.sum(0).astype(np.int64)
    out_counts = (~masks).sum(0).astype(np.int64)
    in_hits = (masks & correct).sum(0)
    out_hits = (~masks & correct).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        in_acc = np.where(in_counts > 0, in_hits / np.maximum(in_counts, 1), np.nan)
        out_acc = np.where(out_counts > 0, out_hits / np.maximum(out_counts, 1), np.nan)
    return in_acc - out_acc, in_counts, out_counts, in_acc, out_acc


def subset_mask(n_train: int, subset_fraction: float, seed: int, k: int) -> np.ndarray:
    """Model k's training mask: round(p*n) examples drawn without replacement, seeded by (seed, k)
    only, so a model's subset does not depend on K, the order models finish in, or the workers."""
    size = int(round(subset_fraction * n_train))
    rng = np.random.default_rng(_seed_seq(seed, "fz-mask", k))
    mask = np.zeros(n_train, dtype=bool)
    mask[rng.choice(n_train, size=size, replace=False)] = True
    return mask


def _data_fingerprint(data: ImageData) -> str:
    """A hash of the train images and labels as they are in memory (catches edits such as relabelling)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(data.train.x.cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(data.train.y.cpu().numpy()).astype(np.int64).tobytes())
    return h.hexdigest()


def _settings_fingerprint(data_fp: str, model_name: str, model_kwargs: dict, train_config: TrainConfig,
                          subset_fraction: float, seed: int) -> str:
    d = {"data": data_fp, "model": model_name, "model_kwargs": model_kwargs, "train_config": train_config.to_dict(),
         "subset_fraction": subset_fraction, "seed": seed}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _train_one(data: ImageData, model_name: str, model_kwargs: dict, train_config: TrainConfig,
               mask: np.ndarray, model_seed: int) -> np.ndarray:
    """Train a fresh model on the masked ids; return bool correctness on every train example."""
    model = build_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape, seed=model_seed,
                        **model_kwargs)
    config = dataclasses.replace(train_config, seed=model_seed)
    ids = torch.from_numpy(np.flatnonzero(mask)).to(data.device)
    train_model(model, data, config, train_ids=ids, progress=False, eval_test=False)
    pred = predict_logits(model, data, data.train, amp=config.amp).argmax(1)
    return (pred == data.train.y).cpu().numpy().astype(bool)


# Worker-process state (spawn context): the dataset is loaded once per worker from its spec.
_WORKER: dict = {}


def _worker_init(spec_dict: dict) -> None:
    torch.set_num_threads(1)
    data = load_dataset(DatasetSpec.from_dict(spec_dict), device="cpu")
    _WORKER["data"] = data
    _WORKER["fingerprint"] = _data_fingerprint(data)


def _worker_train(k: int, model_name: str, model_kwargs: dict, train_config: TrainConfig, mask: np.ndarray,
                  model_seed: int):
    t0 = time.perf_counter()
    correct = _train_one(_WORKER["data"], model_name, model_kwargs, train_config, mask, model_seed)
    return k, correct, _WORKER["fingerprint"], time.perf_counter() - t0


def _model_path(workdir: Path, k: int) -> Path:
    return workdir / f"model_{k:04d}.npz"


def _save_model_result(workdir: Path, k: int, mask: np.ndarray, correct: np.ndarray, settings: str) -> None:
    path = _model_path(workdir, k)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buf = io.BytesIO()
    np.savez_compressed(buf, mask=mask, correct=correct, k=np.int64(k), settings=np.array(settings))
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_model_result(workdir: Path, k: int, expected_mask: np.ndarray, settings: str) -> np.ndarray | None:
    path = _model_path(workdir, k)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            mask, correct, saved = z["mask"], z["correct"], str(z["settings"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        warnings.warn(f"ignoring unreadable memorisation result {path} ({exc}); the model will be trained again")
        return None
    if saved != settings or mask.shape != expected_mask.shape or not np.array_equal(mask, expected_mask):
        raise MemorizationError(
            f"{path} was written with different settings (data, model, training config, subset_fraction or seed); "
            f"use a fresh workdir or delete the model_*.npz files in {workdir}"
        )
    return correct.astype(bool)


def _validate_estimator_args(n_models, subset_fraction, n_workers, n_train: int) -> None:
    if isinstance(n_models, bool) or not isinstance(n_models, (int, np.integer)) or n_models < 2:
        raise MemorizationError(f"n_models must be an integer >= 2 (models with and without each example are needed), got {n_models!r}")
    if isinstance(subset_fraction, bool) or not isinstance(subset_fraction, (int, float)) or not 0.0 < subset_fraction < 1.0:
        hint = " (a fraction, not a percentage: use 0.7 for 70%)" if isinstance(subset_fraction, (int, float)) and 1 <= subset_fraction <= 100 else ""
        raise MemorizationError(f"subset_fraction must be a fraction in (0, 1){hint}, got {subset_fraction!r}")
    size = int(round(subset_fraction * n_train))
    if not 0 < size < n_train:
        raise MemorizationError(
            f"subset_fraction={subset_fraction!r} of {n_train} train examples gives subsets of {size}; "
            f"each subset must hold at least one example and leave at least one out"
        )
    if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise MemorizationError(f"n_workers must be an integer >= 1, got {n_workers!r}")


def estimate_memorization(
    data: ImageData,
    *,
    model_name: str,
    model_kwargs: dict | None = None,
    train_config: TrainConfig,
    n_models: int,
    subset_fraction: float = 0.7,
    seed: int = 0,
    workdir: Path | str | None = None,
    n_workers: int = 1,
    progress: bool = False,
    log: MetricLogger | None = None,
) -> MemorizationEstimate:
    """Feldman & Zhang's memorisation estimate from `n_models` models trained on random subsets.

    Model k (k = 0..n_models-1) trains a fresh `model_name` on the train ids of
    ``subset_mask(n_train, subset_fraction, seed, k)`` with `train_config`, its initial weights,
    shuffling and augmentation all seeded by ``seed + k`` (``train_config.seed`` is not used), then
    records whether it classifies each train example correctly (eval mode). The estimate is
    ``mem_i = mean correctness on i of the models that trained on i - that of the models that did
    not``; it lies in [-1, 1] and is NaN where either side has no model (rare once K >= 10).

    `workdir`: each finished model's (mask, correctness) is saved atomically as
    ``model_{k:04d}.npz``; a later call with the same settings loads those instead of training
    them again, so an interrupted run continues, and a larger `n_models` adds models. Files written
    with other settings raise MemorizationError rather than being mixed in.

    `n_workers > 1` trains models in that many 'spawn' worker processes with one torch thread each.
    Each worker loads the dataset itself from ``data.spec`` on the CPU, so `data` must be what its
    spec loads (edits made in memory are detected and refused); results equal the serial ones for
    CPU data. On a GPU use ``n_workers=1``.

    `log.log_metrics` receives ``memorization/models_done`` and ``memorization/model_seconds`` as
    each model finishes (step = k); `progress` prints one line per model on stderr.
    """
    if not isinstance(data, ImageData):
        raise MemorizationError(f"data must be an ImageData (from mlflow_unlearn.data.load_dataset), got {type(data).__name__}")
    n_train = len(data.train)
    _validate_estimator_args(n_models, subset_fraction, n_workers, n_train)
    _seed_seq(seed)  # validates seed
    n_models, n_workers, subset_fraction, seed = int(n_models), int(n_workers), float(subset_fraction), int(seed)
    model_kwargs = dict(model_kwargs or {})
    log = log or NullLogger()
    t_start = time.perf_counter()

    data_fp = _data_fingerprint(data)
    settings = _settings_fingerprint(data_fp, model_name, model_kwargs, train_config, subset_fraction, seed)
    masks = np.stack([subset_mask(n_train, subset_fraction, seed, k) for k in range(n_models)])
    correct = np.zeros((n_models, n_train), dtype=bool)
    done = np.zeros(n_models, dtype=bool)

    if workdir is not None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        for k in range(n_models):
            loaded = _load_model_result(workdir, k, masks[k], settings)
            if loaded is not None:
                correct[k], done[k] = loaded, True
    todo = [k for k in range(n_models) if not done[k]]
    n_loaded = int(done.sum())

    bar = ProgressBar(len(todo), f"memorization ({n_loaded} of {n_models} models resumed)", enabled=progress,
                      unit="model")

    def finished(k: int, corr: np.ndarray, seconds: float) -> None:
        correct[k], done[k] = corr, True
        if workdir is not None:
            _save_model_result(workdir, k, masks[k], corr, settings)
        n_done = int(done.sum())
        log.log_metrics({"memorization/models_done": float(n_done), "memorization/model_seconds": float(seconds)}, step=k)
        bar.update(1, last_model_s=seconds)

    if todo and n_workers == 1:
        for k in todo:
            t0 = time.perf_counter()
            corr = _train_one(data, model_name, model_kwargs, train_config, masks[k], seed + k)
            finished(k, corr, time.perf_counter() - t0)
    elif todo:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(n_workers, len(todo)), mp_context=ctx, initializer=_worker_init,
                                 initargs=(data.spec.to_dict(),)) as pool:
            pending = {pool.submit(_worker_train, k, model_name, model_kwargs, train_config, masks[k], seed + k)
                       for k in todo}
            try:
                while pending:
                    finished_futs, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished_futs:
                        k, corr, worker_fp, seconds = fut.result()
                        if worker_fp != data_fp:
                            raise MemorizationError(
                                f"the worker processes loaded different train data from data.spec ({data.spec}) "
                                f"than the data passed in (was it modified in memory?); use n_workers=1"
                            )
                        finished(k, corr, seconds)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # finished models are already saved
                raise
    bar.close()

    mem, in_counts, out_counts, in_acc, out_acc = combine_memorization(masks, correct)
    return MemorizationEstimate(
        mem=mem, n_models_done=n_models, n_trained=len(todo), in_counts=in_counts, out_counts=out_counts,
        in_acc=in_acc, out_acc=out_acc, masks=masks, correct=correct, subset_fraction=subset_fraction, seed=seed,
        seconds=time.perf_counter() - t_start,
    )


def proxy_correlations(mem, proxies: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Spearman rank correlation of each proxy with the memorisation estimate, over the examples
    where both are finite (NaN when fewer than 3 such examples or either side is constant).

    Signs: C-proxy, max_conf and learning_events are confidences, so they should correlate
    *negatively* with memorisation (the paper reports about -0.9 for C-proxy on CIFAR-10);
    entropy should correlate positively.
    """
    from scipy.stats import spearmanr

    mem = np.asarray(mem, dtype=np.float64)
    if mem.ndim != 1:
        raise MemorizationError(f"mem must be a 1-d array, got shape {mem.shape}")
    out = {}
    for name, values in proxies.items():
        v = np.asarray(values, dtype=np.float64)
        if v.shape != mem.shape:
            raise MemorizationError(f"proxy {name!r} has shape {v.shape} but mem has {mem.shape}")
        ok = np.isfinite(mem) & np.isfinite(v)
        if ok.sum() < 3 or np.ptp(mem[ok]) == 0 or np.ptp(v[ok]) == 0:
            out[name] = float("nan")
            continue
        out[name] = float(spearmanr(v[ok], mem[ok])[0])
    return out

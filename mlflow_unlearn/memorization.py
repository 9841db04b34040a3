"""Memorisation: tiers, forget-set selection by memorisation rank, and the Feldman-Zhang estimator.

Definitions are in DESIGN.md section 2. Conventions used throughout this module:

- Memorisation *rank* order is ascending: position 0 is the least memorised example. With the
  C-proxy (mean true-class probability during training) the order is by decreasing C-proxy, since
  a low C-proxy means high memorisation. Exact ties are broken by id (the lower id counts as less
  memorised), so every function here is deterministic.
- Tier names go from least to most memorised: ``("low", "mid", "high")`` by default. Any number of
  tiers >= 1 works; names must be unique and free of '/' (they end up in metric keys).
- A "tier" of a forget set cuts the *forget set's own* ranking into equal groups
  (:func:`assign_tiers`, :func:`tiers_from_c_proxy`). A train-set *bin* cuts the ranking of the
  whole train set into equal groups; :func:`tier_histogram` counts a forget set's examples per bin
  (logged with every forget set) and :func:`tiered_forget_set` samples from the bins.
- Equal-size groups come from ``np.array_split`` on the sorted order, so when the count does not
  divide evenly the first (least memorised) groups are one larger.

The Feldman-Zhang estimator (:func:`estimate_memorization`) trains K models on random subsets of
the train set and compares, per example, the accuracy of the models that saw it with the accuracy
of those that did not. It is resumable (one ``model_{k:04d}.npz`` per finished model in a work
folder) and can train models in parallel worker processes.

This is core code: torch/numpy/scipy only, never mlflow.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
import warnings
import zipfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .data import DatasetSpec, ImageData, load_dataset
from .models import build_model
from .progress import MetricLogger, NullLogger, ProgressBar
from .training import TrainConfig, predict_logits, train_model
from .ids import train_ids

DEFAULT_TIERS = ("low", "mid", "high")


class MemorizationError(ValueError):
    """A bad setting for tiers, forget-set selection or the estimator; the message names the value."""


# ---------------------------------------------------------------------------------------------
# Tiers
# ---------------------------------------------------------------------------------------------


def validate_tier_names(names: Sequence[str]) -> tuple[str, ...]:
    """Return `names` as a tuple, or raise MemorizationError naming the bad value."""
    if isinstance(names, str):
        raise MemorizationError(f"tier names must be a sequence of names such as ('low', 'mid', 'high'), got the string {names!r}")
    names = tuple(names)
    if not names:
        raise MemorizationError(f"tier names must not be empty, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise MemorizationError(f"tier names must be non-empty strings, got {name!r} in {names!r}")
        if "/" in name:
            raise MemorizationError(f"tier name {name!r} contains '/', which is not allowed (names end up in metric keys)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MemorizationError(f"tier names must be unique, got {', '.join(map(repr, dupes))} more than once in {names!r}")
    return names


def _as_scores(scores, what: str) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise MemorizationError(f"{what} must be a 1-d array, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise MemorizationError(
            f"{what} has {bad.size} non-finite value(s) (first at position(s) {bad[:5].tolist()}); "
            f"every example needs a score (was every example seen during training?)"
        )
    return arr


def memorization_rank_order(mem_scores: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Positions of `mem_scores` from least to most memorised (higher score = more memorised),
    exact ties broken by id (then by position)."""
    mem_scores = np.asarray(mem_scores, dtype=np.float64)
    ids = np.arange(len(mem_scores)) if ids is None else np.asarray(ids)
    # np.lexsort sorts by the last key first.
    return np.lexsort((np.arange(len(mem_scores)), ids, mem_scores))


def assign_tiers(
    scores,
    *,
    ids=None,
    names: Sequence[str] = DEFAULT_TIERS,
    higher_is_more_memorised: bool,
) -> dict[str, np.ndarray]:
    """Cut a forget set into equal-size tiers by memorisation.

    `scores[j]` is the score of example `ids[j]` (`ids` defaults to 0..len-1). With
    `higher_is_more_memorised=True` the scores are memorisation estimates; with False they are
    confidences such as the C-proxy (low = memorised). The examples are ranked from least to most
    memorised (ties broken by id) and split with ``np.array_split`` into ``len(names)`` groups, the
    first name getting the least memorised group (the first groups are one larger when the count
    does not divide evenly). Returns ``{name: sorted int64 ids}`` in the order of `names`.
    """
    names = validate_tier_names(names)
    scores = _as_scores(scores, "scores")
    if ids is not None and len(np.asarray(ids).reshape(-1)) != len(scores):
        raise MemorizationError(f"ids ({len(np.asarray(ids).reshape(-1))}) and scores ({len(scores)}) differ in length")
    ids = np.arange(len(scores), dtype=np.int64) if ids is None else train_ids(
        ids, 2 ** 62, what="ids", allow_empty=True, error=MemorizationError)
    if len(ids) < len(names):
        raise MemorizationError(
            f"cannot cut {len(ids)} example(s) into {len(names)} tiers {names!r}: need at least one example per tier"
        )
    mem = scores if higher_is_more_memorised else -scores
    order = memorization_rank_order(mem, ids)
    return {name: np.sort(ids[part]) for name, part in zip(names, np.array_split(order, len(names)))}


def _c_proxy_array(c_proxy) -> np.ndarray:
    c = _as_scores(c_proxy, "c_proxy")
    if len(c) == 0:
        raise MemorizationError("c_proxy is empty; it must hold one value per train example")
    return c


def _forget_ids(forget_ids, n_train: int) -> np.ndarray:
    return train_ids(forget_ids, n_train, what="forget_ids", allow_empty=True, error=MemorizationError)


def tiers_from_c_proxy(forget_ids, c_proxy, names: Sequence[str] = DEFAULT_TIERS) -> dict[str, np.ndarray]:
    """Tiers of a forget set by C-proxy: `c_proxy` is indexed by train id (one value per train
    example). Low C-proxy = high memorisation, so the lowest-C-proxy group goes to the last name
    (``high``) and the highest-C-proxy group to the first (``low``)."""
    c = _c_proxy_array(c_proxy)
    ids = _forget_ids(forget_ids, len(c))
    return assign_tiers(c[ids], ids=ids, names=names, higher_is_more_memorised=False)


def train_bins_from_c_proxy(c_proxy, names: Sequence[str] = DEFAULT_TIERS) -> dict[str, np.ndarray]:
    """The train-set memorisation bins: every train id ranked by -C-proxy and cut into
    ``len(names)`` equal groups (train-set quantiles). Returns ``{name: sorted ids}``."""
    c = _c_proxy_array(c_proxy)
    return assign_tiers(c, names=names, higher_is_more_memorised=False)


def tier_cut_points(c_proxy, names: Sequence[str] = DEFAULT_TIERS) -> list[float]:
    """The C-proxy values between the train-set bins, ascending (between the most memorised bin and
    the next first): what a histogram of the C-proxy marks as tier boundaries."""
    c = _c_proxy_array(c_proxy)
    bins = train_bins_from_c_proxy(c, names)
    ordered = [bins[n] for n in reversed(validate_tier_names(names))]  # most memorised (lowest C) first
    return [float((c[a].max() + c[b].min()) / 2) for a, b in zip(ordered[:-1], ordered[1:]) if len(a) and len(b)]


def tier_histogram(forget_ids, c_proxy, names: Sequence[str] = DEFAULT_TIERS) -> dict[str, int]:
    """How many forget examples fall in each train-set memorisation bin (bins: the C-proxy rank of
    the whole train set cut into ``len(names)`` equal groups). Logged with every forget set, so a
    reader can tell at a glance whether it is a low, high or mixed memorisation forget set."""
    names = validate_tier_names(names)
    c = _c_proxy_array(c_proxy)
    ids = _forget_ids(forget_ids, len(c))
    bins = train_bins_from_c_proxy(c, names)
    bin_of = np.empty(len(c), dtype=np.int64)
    for b, name in enumerate(names):
        bin_of[bins[name]] = b
    counts = np.bincount(bin_of[np.unique(ids)], minlength=len(names))
    return {name: int(counts[b]) for b, name in enumerate(names)}


# ---------------------------------------------------------------------------------------------
# Forget-set selection
# ---------------------------------------------------------------------------------------------


def _check_forget_size(n, n_train: int, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise MemorizationError(f"{what} must be a whole number of examples, got {n!r}")
    n = int(n)
    if n <= 0:
        raise MemorizationError(f"{what} must be positive, got {n}")
    if n > n_train - 1:
        raise MemorizationError(
            f"{what}={n} is too large for a train set of {n_train} examples: at most {n_train - 1}, "
            f"so that the retain set is not empty"
        )
    return n


def _split_count(n: int, k: int) -> list[int]:
    """n split into k near-equal parts, the remainder going to the first parts."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _train_rank_order(c: np.ndarray, seed: int | None) -> np.ndarray:
    """Train ids from least to most memorised (decreasing C-proxy). With a seed, exact ties are
    broken by a seeded permutation instead of by id."""
    if seed is None:
        return memorization_rank_order(-c)
    tiebreak = np.random.default_rng(_seed_seq(seed, "tiebreak")).permutation(len(c))
    return np.lexsort((tiebreak, -c))


def _seed_seq(seed, *extra) -> np.random.SeedSequence:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MemorizationError(f"seed must be a non-negative integer, got {seed!r}")
    words = [int(seed)] + [int.from_bytes(hashlib.sha256(str(e).encode()).digest()[:4], "little") if isinstance(e, str) else int(e) for e in extra]
    return np.random.SeedSequence(words)


def mix_forget_set(c_proxy, n: int, *, names: Sequence[str] = DEFAULT_TIERS, seed: int = 0) -> np.ndarray:
    """The paper's "mix" forget set: the same number of examples from the least, the middle and the
    most memorised ranks of the whole train set (ranked by -C-proxy; `c_proxy` is indexed by id).

    With 3 tiers that is the n/3 highest-C-proxy examples, the n/3 around the median and the n/3
    lowest-C-proxy. With T tiers, window t (t = 0..T-1) is centred at rank position
    t*(N-1)/(T-1) of the N train examples (T=1: the median), so the first and last windows are the
    two extremes. When n is not divisible by T the remainder goes to the first (least memorised)
    windows, one each; when n < T the last windows are empty. Windows never overlap.
    `seed` only breaks exact ties in C-proxy (a seeded order instead of by id); with distinct
    C-proxy values the result does not depend on it. Returns sorted int64 ids.
    """
    names = validate_tier_names(names)
    c = _c_proxy_array(c_proxy)
    n_train = len(c)
    n = _check_forget_size(n, n_train)
    order = _train_rank_order(c, seed)
    sizes = _split_count(n, len(names))
    T = len(names)
    chosen = []
    prev_end = 0
    for t, k in enumerate(sizes):
        centre = (n_train - 1) / 2 if T == 1 else t * (n_train - 1) / (T - 1)
        start = int(math.floor(centre - (k - 1) / 2 + 0.5))
        later = sum(sizes[t + 1:])
        start = max(start, prev_end, 0)
        start = min(start, n_train - later - k)
        chosen.append(order[start:start + k])
        prev_end = start + k
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def tiered_forget_set(
    c_proxy,
    counts: Mapping[str, int],
    seed: int = 0,
    *,
    names: Sequence[str] = DEFAULT_TIERS,
) -> np.ndarray:
    """A forget set with ``counts[name]`` random examples from each train-set memorisation bin
    (``tiers:low=N,mid=N,high=N``). Bins are the train set's -C-proxy rank cut into ``len(names)``
    equal groups (see :func:`train_bins_from_c_proxy`); names missing from `counts` contribute 0.
    The draw is seeded: one ``numpy`` generator per (seed, tier name). Returns sorted int64 ids.
    """
    names = validate_tier_names(names)
    c = _c_proxy_array(c_proxy)
    if not isinstance(counts, Mapping) or not counts:
        raise MemorizationError(f"counts must be a non-empty mapping of tier name to count, got {counts!r}")
    unknown = [k for k in counts if k not in names]
    if unknown:
        raise MemorizationError(f"unknown tier name(s) {', '.join(map(repr, unknown))} in counts; valid: {', '.join(names)}")
    for name, k in counts.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise MemorizationError(f"count for tier {name!r} must be a non-negative whole number, got {k!r}")
    _check_forget_size(sum(int(k) for k in counts.values()), len(c), "the total count")
    bins = train_bins_from_c_proxy(c, names)
    chosen = []
    for name in names:
        k = int(counts.get(name, 0))
        pool = bins[name]
        if k > len(pool):
            raise MemorizationError(
                f"tier {name!r} asks for {k} examples but its train-set bin holds only {len(pool)} "
                f"(train set of {len(c)} cut into {len(names)} bins)"
            )
        if k:
            rng = np.random.default_rng(_seed_seq(seed, "tier", name))
            chosen.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def calibration_forget_sets(c_proxy, forget_ids, k: int, *, names: Sequence[str] = DEFAULT_TIERS,
                            seed: int = 0) -> list[np.ndarray]:
    """`k` calibration forget sets with the same memorisation composition as `forget_ids`, disjoint
    from it and from each other (DESIGN.md section 2: select on calibration, report on held-out).

    Every forget example gets one stand-in per calibration set: the unused train example nearest to
    it in the train-set memorisation rank (by -C-proxy, `seed` breaking exact ties), within the same
    train-set bin (the rank cut into ``len(names)`` equal groups). So each calibration set has the
    forget set's size, its bin histogram and, up to the neighbouring ranks, its C-proxy profile;
    its tiers (cut from its own ranking) match the forget set's tiers. A `mix` forget set gets the
    neighbouring ranks of each of its three windows, a `random` one a set spread like it.

    Raises MemorizationError naming the sizes when a bin cannot hold the forget set's examples plus
    `k` stand-ins for each (the fix: fewer calibration sets, or a smaller forget set).
    Returns `k` sorted int64 id arrays.
    """
    names = validate_tier_names(names)
    c = _c_proxy_array(c_proxy)
    n_train = len(c)
    ids = _forget_ids(forget_ids, n_train)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MemorizationError(f"the number of calibration sets must be a whole number >= 1, got {k!r}")
    order = _train_rank_order(c, seed)  # rank position -> id, least memorised first
    rank = np.empty(n_train, dtype=np.int64)
    rank[order] = np.arange(n_train)
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(n_train), len(names))])
    bin_of_rank = np.searchsorted(bounds, np.arange(n_train), side="right") - 1
    forget_ranks = np.sort(rank[ids])
    for b, name in enumerate(names):
        size = int(bounds[b + 1] - bounds[b])
        taken = int(np.sum(bin_of_rank[forget_ranks] == b))
        if taken * (k + 1) > size:
            fits = size // max(taken, 1) - 1  # calibration sets this bin can hold
            fix = (f"use --calibration-sets {fits} or a smaller forget set" if fits >= 1 else
                   f"use a smaller forget set (at most {size // 2} of its examples in this bin, for one calibration set)")
            raise MemorizationError(
                f"cannot draw {k} calibration forget set(s) of {len(ids)} examples with the same memorisation "
                f"composition: train-set bin {name!r} holds {size} examples, the forget set takes {taken} of them "
                f"and {k} calibration set(s) need {taken * k} more (train set of {n_train}, {len(names)} bins); "
                f"{fix}")
    used = np.zeros(n_train, dtype=bool)
    used[forget_ranks] = True
    sets = []
    for _ in range(int(k)):
        chosen = []
        for r in forget_ranks:
            lo_bound, hi_bound = bounds[bin_of_rank[r]], bounds[bin_of_rank[r] + 1] - 1
            for d in range(1, n_train):  # nearest unused rank, alternating below/above
                below, above = r - d, r + d
                if below < lo_bound and above > hi_bound:
                    raise MemorizationError(f"no unused train example left near rank {r}")  # excluded by the count check
                if below >= lo_bound and not used[below]:
                    pick = below
                    break
                if above <= hi_bound and not used[above]:
                    pick = above
                    break
            used[pick] = True
            chosen.append(order[pick])
        sets.append(np.sort(np.asarray(chosen, dtype=np.int64)))
    return sets


# ---------------------------------------------------------------------------------------------
# Feldman-Zhang estimator
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Proxies against the estimate
# ---------------------------------------------------------------------------------------------


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

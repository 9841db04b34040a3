"""Memorisation tiers: ranking examples by how strongly a model memorised them (the C-proxy, or an
estimate), cutting a forget set into tiers and counting it per train-set bin.

Definitions are in docs/design.md section 2. Conventions used throughout:

- Memorisation *rank* order is ascending: position 0 is the least memorised example. With the
  C-proxy (mean true-class probability during training) the order is by decreasing C-proxy, since
  a low C-proxy means high memorisation. Exact ties are broken by id (the lower id counts as less
  memorised), so every function here is deterministic.
- Tier names go from least to most memorised: ``("low", "mid", "high")`` by default. Any number of
  tiers >= 1 works; names must be unique and free of '/' (they end up in metric keys).
- A "tier" of a forget set cuts the *forget set's own* ranking into equal groups
  (:func:`assign_tiers`, :func:`tiers_from_c_proxy`). A train-set *bin* cuts the ranking of the
  whole train set into equal groups; :func:`tier_histogram` counts a forget set's examples per bin
  (logged with every forget set).
- Equal-size groups come from ``np.array_split`` on the sorted order, so when the count does not
  divide evenly the first (least memorised) groups are one larger.

Forget sets chosen by memorisation rank (`mix`, `tiers`, calibration sets) live in
`forget_sets.py`; the Feldman-Zhang estimator in `memorization_estimate.py`.

This is core code: numpy and torch only, never mlflow.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from .ids import train_ids

DEFAULT_TIERS = ("low", "mid", "high")


class MemorizationError(ValueError):
    """A bad setting for tiers, forget-set selection or the estimator; the message names the value."""


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
    names = validate_tier_names(names)
    if len(ids) < len(names):
        raise MemorizationError(
            f"cannot cut {len(ids)} example(s) into {len(names)} tiers {names!r}: need at least one example per tier")
    return cut_tiers(ids, c[ids], names)


def cut_tiers(ids: np.ndarray, c_proxy_of_ids: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """`tiers_from_c_proxy` without its checks, for ids a caller already checked (an
    `UnlearnTask`'s): at least `len(names)` unique train ids and their C-proxy values."""
    order = memorization_rank_order(-np.asarray(c_proxy_of_ids, dtype=np.float64), ids)
    return {name: np.sort(ids[part]) for name, part in zip(names, np.array_split(order, len(names)))}


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
    return train_bin_counts(_forget_ids(forget_ids, len(c)), c, names)


def train_bin_counts(ids: np.ndarray, c_proxy: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """`tier_histogram` without its checks, for checked ids and a checked C-proxy."""
    bins = train_bins_from_c_proxy(c_proxy, names)
    c = c_proxy
    bin_of = np.empty(len(c), dtype=np.int64)
    for b, name in enumerate(names):
        bin_of[bins[name]] = b
    counts = np.bincount(bin_of[np.unique(ids)], minlength=len(names))
    return {name: int(counts[b]) for b, name in enumerate(names)}


def _seed_seq(seed, *extra) -> np.random.SeedSequence:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MemorizationError(f"seed must be a non-negative integer, got {seed!r}")
    words = [int(seed)] + [int.from_bytes(hashlib.sha256(str(e).encode()).digest()[:4], "little") if isinstance(e, str) else int(e) for e in extra]
    return np.random.SeedSequence(words)

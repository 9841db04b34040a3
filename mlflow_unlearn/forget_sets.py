"""Forget sets, accepted everywhere in the same way (core; MLflow URIs are resolved at the edge).

A forget set is given as one of:
- a file of train ids: `.txt` (ids separated by whitespace or commas), `.json` (a list, or an
  object with an "ids" list), `.npy` (an integer array) or `.csv` (a column named `id`, else the
  first column; a header row is optional);
- a spec: `random:N` (N seeded random train ids), `class:K` (every train example of class K, by
  index or class name), `mix:N` (N/3 each from the lowest, middle and highest memorisation ranks of
  train, by C-proxy: the paper's benchmark set), `tiers:low=N,mid=N,high=N` (N random examples
  from each train-set memorisation bin);
- an MLflow artifact URI (`runs:/...`, `mlflow-artifacts:/...`, `models:/...`): the edge downloads
  it and hands the local file here.

Duplicates: an id given twice is an error naming the repeated ids. A deletion request that repeats
ids usually comes from a broken join upstream; silently dropping repeats would hide that, and the
digest (sha256 of the sorted ids) is only well defined for a set.
"""
from __future__ import annotations

import bisect
import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .ids import check_something_retained, train_ids
from .memorization import (
    DEFAULT_TIERS,
    MemorizationError,
    _c_proxy_array,
    _forget_ids,
    _seed_seq,
    memorization_rank_order,
    train_bins_from_c_proxy,
    validate_tier_names,
)

SPEC_PREFIXES = ("random:", "class:", "mix:", "tiers:")
FILE_SUFFIXES = (".txt", ".json", ".npy", ".csv")


class ForgetSetError(ValueError):
    """A forget set that cannot be used; the message names the bad value and the fix."""


@dataclass
class ForgetSet:
    """A checked forget set: sorted, unique train ids of one split with something left to retain.
    Made by `load_forget_set` (or `ForgetSet.checked`), which run the one id check; the plain
    constructor trusts its ids (for ids valid by construction, such as a calibration pool)."""

    ids: np.ndarray  # int64, sorted, unique train ids (read-only)
    source: str  # the spec, path or URI it came from
    digest: str = field(init=False)

    def __post_init__(self):
        self.ids = np.array(self.ids, dtype=np.int64)
        self.ids.setflags(write=False)  # shared by every layer below: nobody may edit it
        self.digest = forget_digest(self.ids)

    @classmethod
    def checked(cls, ids, n_train: int, *, source: str = "ids") -> "ForgetSet":
        """`ids` checked against a train split of `n_train` examples (`validate_ids`)."""
        return cls(validate_ids(ids, n_train, source="forget set" if source == "ids" else f"forget set {source!r}"),
                   source=source)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def forget_digest(ids) -> str:
    """sha256 of the sorted ids as comma-separated decimal text (docs/design.md section 4)."""
    return hashlib.sha256(",".join(str(int(i)) for i in sorted(int(i) for i in ids)).encode()).hexdigest()


def is_spec(text: str) -> bool:
    return isinstance(text, str) and text.startswith(SPEC_PREFIXES)


def validate_ids(ids, n_train: int, *, source: str = "forget set") -> np.ndarray:
    """A forget set's ids checked against a train split of `n_train` examples (`ids.train_ids`,
    the one id check; whole-valued floats from files accepted) with at least one example left to
    retain; returned sorted."""
    arr = train_ids(ids, n_train, what=source, from_file=True, error=ForgetSetError)
    check_something_retained(arr.size, n_train, what=source, error=ForgetSetError)
    return np.sort(arr)


def read_ids_file(path: str | Path) -> np.ndarray:
    """The ids in a forget-set file (see the module doc for the formats); not yet validated."""
    return read_ids_and_digest(path)[0]


def read_ids_and_digest(path: str | Path, *, label: str | None = None) -> tuple[np.ndarray, str | None]:
    """(ids, the digest the file records or None), reading and parsing the file once. A JSON
    object may record `digest` beside `ids` (what `attach` logs), so a changed artifact is caught.
    `label`: how messages name the file (default: its name; the registry hook passes a fixed label,
    since the name comes from an untrusted tag and the folder is the worker's)."""
    path = Path(path)
    name = label or f"forget-set file {path.name!r}"
    if not path.exists():
        raise ForgetSetError(f"{label or f'forget-set file {str(path)!r}'} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)  # object arrays (pickles) raise ValueError: never loaded
            if arr.ndim != 1 or arr.dtype.kind not in "iuf":
                raise ForgetSetError(f"{name} holds a {arr.ndim}-d array of dtype kind "
                                     f"{arr.dtype.kind!r}; a forget set is a 1-d array of whole numbers")
            return arr, None
        if suffix == ".json":
            obj = json.loads(path.read_text())
            recorded = None
            if isinstance(obj, dict):
                if "ids" not in obj:
                    raise ForgetSetError(f"{name} is a JSON object without an 'ids' list "
                                         f"({len(obj)} other key(s)); give {{\"ids\": [...]}} or a plain list")
                recorded = obj.get("digest") if isinstance(obj.get("digest"), str) else None
                obj = obj["ids"]
            return np.asarray(obj), recorded
        if suffix == ".csv":
            rows = list(csv.reader(path.read_text().splitlines()))
            rows = [r for r in rows if r and any(c.strip() for c in r)]
            if not rows:
                return np.asarray([], dtype=np.int64), None
            header = [c.strip().lower() for c in rows[0]]
            has_header = not re.fullmatch(r"-?\d+", header[0])
            col = header.index("id") if has_header and "id" in header else 0
            values = [r[col] if col < len(r) else "" for r in rows[1 if has_header else 0:]]
            return _integers(values, name, "row"), None
        if suffix in (".txt", ""):
            tokens = [t for t in re.split(r"[\s,]+", path.read_text()) if t]
            return _integers(tokens, name, "value"), None
    except ForgetSetError:
        raise
    except (ValueError, OSError) as exc:
        # the exception type only: a parser's message can quote the file, and these messages end up
        # in public tags (the registry hook's mlflow_unlearn.error)
        raise ForgetSetError(f"cannot read {name}: {type(exc).__name__}") from None
    raise ForgetSetError(f"{name} has an unknown suffix; use one of {', '.join(FILE_SUFFIXES)}")


def _integers(tokens: list[str], name: str, unit: str) -> np.ndarray:
    """Whole numbers from text tokens; a bad one is named by position, never quoted (it could be
    any file's content)."""
    out = []
    for i, token in enumerate(tokens):
        if not re.fullmatch(r"\s*-?\d+\s*", token):
            raise ForgetSetError(f"{name}: {unit} {i + 1} is not an integer train id "
                                 f"(a forget set is whole numbers, one per line or comma-separated)")
        out.append(int(token))
    return np.asarray(out, dtype=np.int64)


def _positive_int(text: str, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ForgetSetError(f"{what} needs a whole number, got {text!r}") from None
    if n <= 0:
        raise ForgetSetError(f"{what} needs a positive number, got {n}")
    return n


def from_spec(spec: str, *, labels: np.ndarray, c_proxy: np.ndarray | None = None, classes: list[str] | None = None,
              tier_names=DEFAULT_TIERS, seed: int = 0) -> np.ndarray:
    """Turn a `random:`, `class:`, `mix:` or `tiers:` spec into train ids."""
    labels = np.asarray(labels)
    n_train = len(labels)
    kind, _, arg = spec.partition(":")
    if kind == "random":
        n = _positive_int(arg, "random:N")
        if n >= n_train:
            raise ForgetSetError(f"random:{n} asks for at least all {n_train} train examples; use N < {n_train}")
        return np.sort(np.random.RandomState(seed).choice(n_train, size=n, replace=False))
    if kind == "class":
        if classes and arg in classes:
            k = classes.index(arg)
        else:
            try:
                k = int(arg)
            except ValueError:
                raise ForgetSetError(f"class:{arg} names no class; valid: 0..{labels.max()} or {classes}") from None
        ids = np.flatnonzero(labels == k)
        if ids.size == 0:
            raise ForgetSetError(f"class:{arg} has no train examples (classes: 0..{labels.max()})")
        return ids
    if kind in ("mix", "tiers"):
        if c_proxy is None:
            raise ForgetSetError(f"{spec} needs the C-proxy of the source model; it has no confidences/ artifact")
        try:
            if kind == "mix":
                return mix_forget_set(c_proxy, _positive_int(arg, "mix:N"), names=tier_names, seed=seed)
            counts = {}
            for part in filter(None, arg.split(",")):
                name, eq, value = part.partition("=")
                if not eq:
                    raise ForgetSetError(f"tiers spec part {part!r} is not name=N (e.g. tiers:low=10,mid=10,high=10)")
                counts[name.strip()] = int(value)
            names = tuple(counts) if set(counts) - set(tier_names) else tier_names
            return tiered_forget_set(c_proxy, counts, names=names, seed=seed)
        except ForgetSetError:
            raise
        except ValueError as exc:
            raise ForgetSetError(f"{spec}: {exc}") from None
    raise ForgetSetError(f"unknown forget-set spec {spec!r}; use random:N, class:K, mix:N or tiers:low=N,mid=N,high=N, a file of ids, or an MLflow artifact URI")


def load_forget_set(source, *, labels: np.ndarray, c_proxy: np.ndarray | None = None, classes: list[str] | None = None,
                    tier_names=DEFAULT_TIERS, seed: int = 0) -> ForgetSet:
    """The one entry point: a spec, a local file, or a sequence of ids -> a validated ForgetSet."""
    n_train = len(labels)
    if isinstance(source, (list, tuple, np.ndarray)):
        return ForgetSet.checked(source, n_train)
    source = str(source)
    if is_spec(source):
        ids = from_spec(source, labels=labels, c_proxy=c_proxy, classes=classes, tier_names=tier_names, seed=seed)
    else:
        ids = read_ids_file(source)
    return ForgetSet.checked(ids, n_train, source=source)


# --------------------------------------------------------------------------------------------------
# Forget sets chosen by memorisation rank (the paper's `mix`, per-bin `tiers`, calibration sets)


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
                            seed: int = 0, pool=None) -> list[np.ndarray]:
    """`k` calibration forget sets with the same memorisation composition as `forget_ids`, disjoint
    from it and from each other (select on calibration, report on held-out).

    Every forget example gets one stand-in per calibration set: the unused candidate nearest to it
    in the train-set memorisation rank (by -C-proxy, `seed` breaking exact ties; the lower rank wins
    a tie in distance), within the same train-set bin (the rank cut into ``len(names)`` equal
    groups). Candidates are every train example outside the forget set, or, with `pool`, the pool's
    members outside it (`calibration_pool`: the ids one calibration reference was retrained
    without). So each calibration set has the forget set's size and bin histogram and, up to the
    nearest candidate ranks, its C-proxy profile; its tiers (cut from its own ranking) match the
    forget set's tiers.

    Raises MemorizationError naming the counts when a bin holds fewer candidates than `k` stand-ins
    for each of the forget set's examples there.
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
    candidate = np.ones(n_train, dtype=bool) if pool is None else np.zeros(n_train, dtype=bool)
    if pool is not None:
        candidate[rank[_forget_ids(pool, n_train)]] = True
    candidate[forget_ranks] = False
    for b, name in enumerate(names):
        size = int(bounds[b + 1] - bounds[b])
        taken = int(np.sum(bin_of_rank[forget_ranks] == b))
        available = int(candidate[bounds[b]:bounds[b + 1]].sum())
        if taken * k > available:
            where = (f"train-set bin {name!r} holds {size} examples, the forget set takes {taken} of them" if pool is None
                     else f"the calibration pool holds {available} examples in train-set bin {name!r} outside the "
                          f"forget set, which has {taken} examples there")
            fits = available // max(taken, 1)
            fix = (f"use --calibration-sets {fits} or a smaller forget set" if fits >= 1 else
                   "use a smaller forget set" + ("" if pool is None else " or a larger calibration pool"))
            raise MemorizationError(
                f"cannot draw {k} calibration forget set(s) of {len(ids)} examples with the same memorisation "
                f"composition: {where}, and {k} calibration set(s) need {taken * k} "
                f"(train set of {n_train}, {len(names)} bins); {fix}")
    # per bin, the candidate ranks still unused, sorted: the nearest is found by bisection
    free = [list(np.flatnonzero(candidate[bounds[b]:bounds[b + 1]]) + bounds[b]) for b in range(len(names))]
    sets = []
    for _ in range(int(k)):
        chosen = []
        for r in forget_ranks:
            pool_b = free[bin_of_rank[r]]
            i = bisect.bisect_left(pool_b, r)
            if i == len(pool_b) or (i > 0 and r - pool_b[i - 1] <= pool_b[i] - r):
                i -= 1
            chosen.append(order[pool_b.pop(i)])
        sets.append(np.sort(np.asarray(chosen, dtype=np.int64)))
    return sets


def calibration_pool(c_proxy, size: int, k: int, *, names: Sequence[str] = DEFAULT_TIERS, seed: int = 0) -> np.ndarray:
    """The ids one calibration reference is retrained without, for every request of a model: the
    `k` calibration sets of the canonical request `mix:size` (the least, the median and the most
    memorised ranks, the extreme tail included), not that request itself. A request's calibration
    sets are then drawn inside it (`calibration_forget_sets(..., pool=...)`), so one retrain serves
    every request whose bins it can match; it depends only on the C-proxy, `size`, `k`, the tier
    names and `seed`, so its digest, and the cached retrain, are the same for every request.
    Raises MemorizationError with the counts when the train set cannot hold it.
    Returns sorted int64 ids (k x size of them)."""
    canonical = mix_forget_set(c_proxy, size, names=names, seed=seed)
    return np.sort(np.concatenate(calibration_forget_sets(c_proxy, canonical, k, names=names, seed=seed)))


def default_calibration_size(n_train: int, tiers: int = 3) -> int:
    """The canonical request a calibration pool is built for when none is given: 2% of the train set
    per tier (a mix of 6%; k = 2 calibration sets then withhold 12% of train from the reference)."""
    return int(tiers) * max(1, math.ceil(0.02 * int(n_train)))

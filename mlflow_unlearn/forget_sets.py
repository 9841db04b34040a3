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

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ids import check_something_retained, train_ids

from . import memorization

SPEC_PREFIXES = ("random:", "class:", "mix:", "tiers:")
FILE_SUFFIXES = (".txt", ".json", ".npy", ".csv")


class ForgetSetError(ValueError):
    """A forget set that cannot be used; the message names the bad value and the fix."""


@dataclass
class ForgetSet:
    ids: np.ndarray  # int64, sorted, unique train ids
    source: str  # the spec, path or URI it came from
    digest: str = field(init=False)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.digest = forget_digest(self.ids)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def forget_digest(ids) -> str:
    """sha256 of the sorted ids as comma-separated decimal text (DESIGN.md section 4)."""
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
    path = Path(path)
    if not path.exists():
        raise ForgetSetError(f"forget-set file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".json":
            obj = json.loads(path.read_text())
            if isinstance(obj, dict):
                if "ids" not in obj:
                    raise ForgetSetError(f"{path} is a JSON object without an 'ids' list (keys: {sorted(obj)})")
                obj = obj["ids"]
            return np.asarray(obj)
        if suffix == ".csv":
            rows = list(csv.reader(path.read_text().splitlines()))
            rows = [r for r in rows if r and any(c.strip() for c in r)]
            if not rows:
                return np.asarray([], dtype=np.int64)
            header = [c.strip().lower() for c in rows[0]]
            has_header = not re.fullmatch(r"-?\d+", header[0])
            col = header.index("id") if has_header and "id" in header else 0
            return np.asarray([int(r[col]) for r in rows[1 if has_header else 0:]])
        if suffix in (".txt", ""):
            tokens = [t for t in re.split(r"[\s,]+", path.read_text()) if t]
            return np.asarray([int(t) for t in tokens])
    except ForgetSetError:
        raise
    except (ValueError, OSError) as exc:
        raise ForgetSetError(f"cannot read forget-set file {str(path)!r}: {exc}") from None
    raise ForgetSetError(f"forget-set file {str(path)!r} has an unknown suffix; use one of {', '.join(FILE_SUFFIXES)}")


def _positive_int(text: str, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ForgetSetError(f"{what} needs a whole number, got {text!r}") from None
    if n <= 0:
        raise ForgetSetError(f"{what} needs a positive number, got {n}")
    return n


def from_spec(spec: str, *, labels: np.ndarray, c_proxy: np.ndarray | None = None, classes: list[str] | None = None,
              tier_names=memorization.DEFAULT_TIERS, seed: int = 0) -> np.ndarray:
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
                return memorization.mix_forget_set(c_proxy, _positive_int(arg, "mix:N"), names=tier_names, seed=seed)
            counts = {}
            for part in filter(None, arg.split(",")):
                name, eq, value = part.partition("=")
                if not eq:
                    raise ForgetSetError(f"tiers spec part {part!r} is not name=N (e.g. tiers:low=10,mid=10,high=10)")
                counts[name.strip()] = int(value)
            names = tuple(counts) if set(counts) - set(tier_names) else tier_names
            return memorization.tiered_forget_set(c_proxy, counts, names=names, seed=seed)
        except ForgetSetError:
            raise
        except ValueError as exc:
            raise ForgetSetError(f"{spec}: {exc}") from None
    raise ForgetSetError(f"unknown forget-set spec {spec!r}; use random:N, class:K, mix:N or tiers:low=N,mid=N,high=N, a file of ids, or an MLflow artifact URI")


def load_forget_set(source, *, labels: np.ndarray, c_proxy: np.ndarray | None = None, classes: list[str] | None = None,
                    tier_names=memorization.DEFAULT_TIERS, seed: int = 0) -> ForgetSet:
    """The one entry point: a spec, a local file, or a sequence of ids -> a validated ForgetSet."""
    n_train = len(labels)
    if isinstance(source, (list, tuple, np.ndarray)):
        return ForgetSet(validate_ids(source, n_train, source="forget set"), source="ids")
    source = str(source)
    if is_spec(source):
        ids = from_spec(source, labels=labels, c_proxy=c_proxy, classes=classes, tier_names=tier_names, seed=seed)
    else:
        ids = read_ids_file(source)
    return ForgetSet(validate_ids(ids, n_train, source=f"forget set {source!r}"), source=source)

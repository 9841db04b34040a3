"""Train ids: positions in the train split (`data.train`), the one way examples are named
(docs/design.md section 2). `train_ids` is the one check every layer runs on ids it is given (forget
sets, tiers, calibration sets, UnlearnData, metrics), so a bad id gets the same message wherever it
is caught; each layer passes its own exception class so its callers keep catching what they catch.

`train_ids` returns a `TrainIds`: an int64 array that remembers the split size it was checked
against. A layer given one for the same split trusts it (the check returns it as it is), so a
request validated once at the edge is not re-checked at every layer below; an array derived from it
(a slice, `ids + 1`, `np.setdiff1d`) is a plain array again and is checked where it is used.
Core: numpy and torch only.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class IdError(ValueError):
    """Ids that are not usable train ids; the message names them and the fix."""


class TrainIds(np.ndarray):
    """Train ids checked by `train_ids` against a split of `n_train` examples (1-D int64, in range,
    each once). Only the array `train_ids` returned carries `n_train`; views and results computed
    from it have `n_train = None` and are checked again. Treat it as immutable: writing into it
    would void the check."""

    n_train: int | None = None

    def __array_finalize__(self, obj) -> None:
        self.n_train = None  # a view or slice of checked ids is not itself checked

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        # ufunc and reduction results (ids + 1, ids.max()) are plain arrays and numpy scalars
        arr = arr.view(np.ndarray)
        return arr[()] if return_scalar else arr

    def __reduce__(self):  # pickled (multiprocessing) as a plain array: the other side checks again
        return np.asarray(self).__reduce__()


def checked(ids: np.ndarray, n_train: int) -> TrainIds:
    """Mark ids that are valid by construction (a subset of checked ids, `np.flatnonzero` of a mask
    over the train split) as checked, without checking them: for the layers that build them."""
    out = np.asarray(ids, dtype=np.int64).view(TrainIds)
    out.n_train = int(n_train)
    return out


def is_checked(ids: Any, n_train: int) -> bool:
    """True for a `TrainIds` that `train_ids` (or `checked`) made for a split of at most `n_train`
    examples (ids valid for a smaller split are in range for a larger one)."""
    return isinstance(ids, TrainIds) and ids.n_train is not None and ids.n_train <= int(n_train)


def train_ids(ids: Any, n_train: int, *, what: str = "ids", allow_empty: bool = False, from_file: bool = False,
              error: type[Exception] = IdError) -> np.ndarray:
    """`ids` as a 1-D int64 array (same order), checked against a train split of `n_train`
    examples: integers (bools, fractions, NaN and strings are not; whole-valued floats only
    `from_file`, where a CSV or JSON reader produced them), in 0..n_train-1, each at most once, and
    at least one unless `allow_empty`. Accepts lists, numpy arrays and torch tensors (any
    device). Raises `error`. A `TrainIds` already checked for this split is returned as it is.
    """
    if is_checked(ids, n_train):
        if ids.size == 0 and not allow_empty:
            raise error(f"{what} is empty: give at least one train id")
        return ids
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):  # a torch tensor, without importing torch here
        ids = ids.detach().cpu().numpy()
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} must be integer train ids, got {type(ids).__name__}: {exc}") from None
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        if allow_empty:
            return checked(arr.astype(np.int64), n_train)
        raise error(f"{what} is empty: give at least one train id")
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        if arr.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                       for v in arr.tolist()):
            arr = arr.astype(np.int64)
        else:
            # counted and placed, never quoted: the values may be any file's content
            kind = "mixed values" if arr.dtype.kind == "O" else str(arr.dtype)
            raise error(f"{what} has ids that are not integers ({kind}, {arr.size} of them); train ids are whole numbers")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any() or not from_file:
            where = (f"{int(bad.sum())} of {arr.size}, the first at position {int(np.flatnonzero(bad)[0])}" if bad.any()
                     else f"a {arr.dtype} array")
            raise error(f"{what} has ids that are not integers: {where}; train ids are whole numbers")
    arr = arr.astype(np.int64)
    out = arr[(arr < 0) | (arr >= n_train)]
    if out.size:
        raise error(f"{what} has ids out of range: {sorted(set(out.tolist()))[:10]} (valid train ids are "
                    f"0..{n_train - 1})")
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != arr.size:
        raise error(f"{what} repeats ids {uniq[counts > 1][:10].tolist()}; give each id once (e.g. `sort -un`)")
    return checked(arr, n_train)


def check_something_retained(n_forget: int, n_train: int, *, what: str = "the forget set",
                             error: type[Exception] = IdError) -> None:
    """Unlearning needs at least one train example left to retain."""
    if n_forget >= n_train:
        raise error(f"{what} covers all {n_train} train examples, so nothing would be retained; train a new "
                    f"model instead")

"""Train ids: positions in the train split (`data.train`), the one way examples are named
(docs/design.md section 2). `train_ids` is the one id check: every public function that takes ids
from a caller runs it (forget sets, tiers, UnlearnData, metrics), so a bad id gets the same message
wherever it is caught; each passes its own exception class so its callers keep catching what they
catch. A request's ids are checked once, where its typed value is built (`forget_sets.ForgetSet`,
`task.UnlearnTask`); what is derived from those values is trusted by type, never re-checked.
Core: numpy only.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class IdError(ValueError):
    """Ids that are not usable train ids; the message names them and the fix."""


def train_ids(ids: Any, n_train: int, *, what: str = "ids", allow_empty: bool = False, from_file: bool = False,
              error: type[Exception] = IdError) -> np.ndarray:
    """`ids` as a 1-D int64 array (same order), checked against a train split of `n_train`
    examples: integers (bools, fractions, NaN and strings are not; whole-valued floats only
    `from_file`, where a CSV or JSON reader produced them), in 0..n_train-1, each at most once, and
    at least one unless `allow_empty`. Accepts lists, numpy arrays and torch tensors (any
    device). Raises `error`.
    """
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
            return arr.astype(np.int64)
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
    check_no_repeats(arr, what=what, error=error)
    return arr


def check_no_repeats(ids: np.ndarray, *, what: str = "ids", error: type[Exception] = IdError) -> None:
    """Each id at most once (part of `train_ids`; alone where ids are merged before the train split
    is known: the hook's union of several requests would hide a request's own repeats)."""
    uniq, counts = np.unique(ids, return_counts=True)
    if uniq.size != np.size(ids):
        raise error(f"{what} repeats ids {uniq[counts > 1][:10].tolist()}; give each id once (e.g. `sort -un`)")


def check_something_retained(n_forget: int, n_train: int, *, what: str = "the forget set",
                             error: type[Exception] = IdError) -> None:
    """Unlearning needs at least one train example left to retain."""
    if n_forget >= n_train:
        raise error(f"{what} covers all {n_train} train examples, so nothing would be retained; train a new "
                    f"model instead")

"""Checked numeric inputs: the validation every metric and statistic runs on what it is given, in
one place, with errors that name the argument and quote the bad value (never a whole array)."""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch


class MetricInputError(ValueError):
    """An input a metric cannot use; the message names the argument and quotes the bad value."""




def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _array(name: str, x: Any, *, ndim: int = 1, allow_empty: bool = False) -> np.ndarray:
    """`x` as a numeric numpy array of `ndim` dimensions with only finite values."""
    a = _to_numpy(x)
    if a.dtype.kind not in "biuf":
        raise MetricInputError(f"{name} must be numeric, got dtype {a.dtype} (first value {a.flat[0]!r})"
                               if a.size else f"{name} must be numeric, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise MetricInputError(f"{name} must be a {ndim}-D array, got shape {tuple(a.shape)}")
    if a.size == 0 and not allow_empty:
        raise MetricInputError(f"{name} is empty (shape {tuple(a.shape)}); a metric needs at least one example")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            where = pos[0] if len(pos) == 1 else pos
            raise MetricInputError(f"{name} contains {float(a[pos])!r} at position {where}; only finite values are allowed")
    return a


def _same_length(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise MetricInputError(f"{name_a} has {len(a)} elements but {name_b} has {len(b)}; they must match")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, (np.ndarray, torch.Tensor)) and np.ndim(value) == 0:
            value = float(value)
        else:
            raise MetricInputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise MetricInputError(f"{name} must be finite, got {value!r}")
    return value


def _fraction(name: str, value: Any) -> float:
    v = _number(name, value)
    if not 0.0 <= v <= 1.0:
        hint = " (fractions, not percentages)" if 1.0 < v <= 100.0 else ""
        raise MetricInputError(f"{name} must be a fraction in [0, 1]{hint}, got {value!r}")
    return v


def _int_labels(name: str, x: Any, *, allow_empty: bool = False) -> np.ndarray:
    a = _array(name, x, allow_empty=allow_empty)
    if a.dtype.kind == "f":
        frac = a != np.round(a)
        if frac.any():
            i = int(np.argmax(frac))
            raise MetricInputError(f"{name} must hold integer class indices, got {float(a[i])!r} at position {i}")
    return a.astype(np.int64)

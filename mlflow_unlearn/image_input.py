"""What a served model accepts: images as a user sends them, checked and turned into uint8 NHWC.

A logged model is called with whatever a client holds: uint8 pixels from PIL, floats in [0, 1] from
a data pipeline, or scikit-learn's digits in their native 0-16 range. Cast blindly, the last two
become near-black images and every prediction the same class (10% accuracy, HTTP 200). So the
contract is explicit and enforced here, the same through `pyfunc.predict` and over REST:

- integer arrays are pixel values in [0, 255] (read as uint8);
- float arrays are intensities in [0, 1] (converted with `round(x * 255)`); any float outside
  [0, 1], NaN or infinity is refused, since no rescaling rule can be guessed safely;
- the shape is [N, H, W, C] (channels last), or [N, H, W] for one channel.

Errors name the expected dtype, range and shape, what was wrong and how to convert; they quote the
input's shape and dtype, never its values. An integer batch whose values all lie in 0-16 is legal
but almost surely scikit-learn digits not converted: it is answered, with a warning.
"""
from __future__ import annotations

import numpy as np

DIGITS_MAX = 16  # scikit-learn's load_digits() pixel range is 0..16


class ImageInputError(ValueError):
    """Input a served model cannot read as images; the message says what it expects and how to convert."""


def expected_input(shape: tuple[int, int, int]) -> str:
    """The contract in words, for errors and docs. `shape` is the model's (C, H, W)."""
    c, h, w = shape
    one = f" (or [N, {h}, {w}])" if c == 1 else ""
    return (f"images as an array of shape [N, {h}, {w}, {c}] (channels last){one}: uint8 (or any integer type) "
            f"with values in [0, 255], or float with values in [0, 1]")


def to_uint8_images(values, shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """`values` as uint8 [N, H, W, C] for a model trained on images of `shape` (C, H, W), and the
    warnings to pass on. Raises ImageInputError for anything else."""
    c, h, w = shape
    x = _as_numeric_array(values, shape)
    sent = tuple(x.shape)
    if x.ndim == 3 and c == 1 and sent[1:] == (h, w):
        x = x[..., None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
        raise ImageInputError(f"wrong input shape {sent}; expected {expected_input(shape)}. " + _shape_hint(sent, shape))
    warnings: list[str] = []
    if x.size == 0:
        return np.zeros((0, h, w, c), dtype=np.uint8), warnings
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            side = "below 0" if lo < 0 else "above 255"
            raise ImageInputError(f"integer images must be pixel values in [0, 255]; this input has values {side}. "
                                  f"Expected {expected_input(shape)}. Rescale to [0, 255] and send uint8, "
                                  f"or send floats in [0, 1].")
        if hi <= DIGITS_MAX:
            warnings.append(f"every value lies in 0-{DIGITS_MAX}: read as pixels in [0, 255] these are nearly black "
                            f"images. If they are scikit-learn digits (0-16), send "
                            f"np.rint(x * 255 / 16).astype(np.uint8) instead.")
        return x.astype(np.uint8, copy=False), warnings
    if not np.isfinite(x).all():
        raise ImageInputError(f"float images must be finite intensities in [0, 1]; this input has NaN or infinite "
                              f"values. Expected {expected_input(shape)}.")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        side = "below 0" if lo < 0.0 else "above 1"
        raise ImageInputError(
            f"float images must be intensities in [0, 1]; this input has values {side}. Expected "
            f"{expected_input(shape)}. Pixel values in [0, 255]: send them as uint8 (x.astype(np.uint8)) or divide "
            f"by 255; scikit-learn digits (0-{DIGITS_MAX}): np.rint(x * 255 / {DIGITS_MAX}).astype(np.uint8) or "
            f"x / {DIGITS_MAX}; normalised (mean/std) tensors: undo the normalisation first.")
    return np.rint(x * 255.0).astype(np.uint8), warnings


def _as_numeric_array(values, shape) -> np.ndarray:
    """A numeric ndarray from `values`. JSON over REST arrives as an object array of Python numbers:
    numpy re-infers its type (int64 if every number is whole-typed, float64 if any is a float), so
    16 and 16.0 stay distinguishable, as they are through pyfunc.predict."""
    try:
        x = np.asarray(values)
        if x.dtype == object:
            x = np.array(x.tolist())
    except (ValueError, TypeError):  # ragged nesting, mixed types
        raise ImageInputError(f"the input is not a rectangular array of numbers; expected {expected_input(shape)}") \
            from None
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ImageInputError(f"the input is an array of {_kind(x.dtype)}, not numbers; expected "
                              f"{expected_input(shape)}")
    return x


def _kind(dtype: np.dtype) -> str:
    if dtype == bool:
        return "booleans"
    if dtype.kind in "US":
        return "strings"
    if dtype == object:
        return "mixed or nested values"
    return f"dtype {dtype}"


def _shape_hint(got: tuple, shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    n_values = h * w * c
    if len(got) == 2 and got[1] == n_values:
        return f"Flattened images: x.reshape(-1, {h}, {w}, {c})."
    if len(got) == 3 and tuple(got) == (h, w, c):
        return "One image: add the batch axis, x[None]."
    if len(got) == 4 and tuple(got[1:]) == (c, h, w):
        return "Channels first: x.transpose(0, 2, 3, 1)."
    return f"Reshape each image to ({h}, {w}, {c})."

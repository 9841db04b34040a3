"""Search spaces that algorithms declare when they are registered.

    @ALGORITHMS.register("finetune", search_space={"lr": FloatRange(1e-3, 0.2, log=True), "epochs": EPOCHS},
                         default_search=True)
    def finetune(model, data, *, lr=0.1, epochs=10, ...): ...

A plugin registered through an entry point declares the same on its function:

    @declare_algorithm(search_space={"ascent_lr": FloatRange(1e-3, 0.3, log=True)})
    def ascent_then_repair(model, data, *, ascent_lr=0.05, ...): ...

`search_space(name)` is what the search (`mlflow_unlearn.tuning`) samples from: only the declared
hyperparameters are searched, the others stay at their defaults. An algorithm that declares no
space is tried at its defaults only. `default_search=True` puts an algorithm into the search space
used when none is given (`default_search_algorithms()`); `none` is always in it.

The ranges are checked against the algorithm when they are read (each key is one of its
hyperparameters, each bound is a valid value of it), so a plugin with a bad declaration fails with
its name in the message, not deep inside a trial. No optuna and no mlflow here: the search turns
these ranges into Optuna suggestions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from ._base import ALGORITHMS, HyperparameterError, validate_hyperparameters
from .._registry import declare


@dataclass(frozen=True)
class FloatRange:
    """A real hyperparameter searched in [low, high] (log-uniform when `log`)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"FloatRange needs finite low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale FloatRange needs low > 0, got {self.low}")

    def bounds(self, max_epochs: int) -> tuple[float, float]:
        return self.low, self.high


@dataclass(frozen=True)
class IntRange:
    """An integer hyperparameter searched in [low, high]. `high=None` means the search's
    `max_epochs` (a cost cap: a step that costs a retrain has lost its point)."""

    low: int
    high: int | None = None
    log: bool = False

    def __post_init__(self):
        if not isinstance(self.low, int) or (self.high is not None and (not isinstance(self.high, int)
                                                                         or self.high < self.low)):
            raise ValueError(f"IntRange needs integers low <= high, got [{self.low}, {self.high}]")

    def bounds(self, max_epochs: int) -> tuple[int, int]:
        return self.low, max(self.low, max_epochs) if self.high is None else self.high


@dataclass(frozen=True)
class Choice:
    """A hyperparameter searched over a few values."""

    values: tuple

    def __init__(self, *values: Any):
        if not values:
            raise ValueError("Choice needs at least one value")
        object.__setattr__(self, "values", tuple(values))

    def bounds(self, max_epochs: int) -> tuple:
        return self.values


Range = Union[FloatRange, IntRange, Choice]
EPOCHS = IntRange(1)  # epochs from 1 up to the search's max_epochs


class SearchSpaceError(TypeError):
    """An algorithm declared a search space that does not fit its hyperparameters."""


def declare_algorithm(*, search_space: Mapping[str, Range] | None = None,
                      default_search: bool = False) -> Callable[[Callable], Callable]:
    """Decorator for algorithm functions registered by an entry point (a plugin): the same
    declarations `ALGORITHMS.register(name, search_space=..., default_search=...)` takes."""
    return declare(search_space=dict(search_space or {}), default_search=bool(default_search))


def search_space(name: str) -> dict[str, Range]:
    """The searched hyperparameters of algorithm `name` with their ranges ({}: defaults only),
    checked against the algorithm's hyperparameters and their validity rules."""

    space = dict(ALGORITHMS.declared(name).get("search_space") or {})
    defaults = validate_hyperparameters(name, {})
    for key, rng in space.items():
        if key not in defaults:
            raise SearchSpaceError(f"algorithm {name!r} declares a search range for {key!r}, which is not one of its "
                                   f"hyperparameters ({', '.join(sorted(defaults)) or 'none'})")
        if not isinstance(rng, (FloatRange, IntRange, Choice)):
            raise SearchSpaceError(f"algorithm {name!r}: the search range of {key!r} must be a FloatRange, IntRange or "
                                   f"Choice, got {rng!r}")
        ends = rng.values if isinstance(rng, Choice) else [v for v in (rng.low, rng.high) if v is not None]
        for value in ends:
            try:
                validate_hyperparameters(name, {key: value})
            except HyperparameterError as exc:
                raise SearchSpaceError(f"algorithm {name!r}: the search range of {key!r} includes an invalid value: "
                                       f"{exc}") from None
    return space


def default_search_algorithms() -> tuple[str, ...]:
    """The search space used when none is given: `none`, then every registered algorithm (built-in
    or plugin) that declared `default_search=True`, in registration order."""

    names = [n for n in ALGORITHMS.registered() if n != "none" and ALGORITHMS.declared(n).get("default_search")]
    return ("none", *names) if "none" in ALGORITHMS else tuple(names)

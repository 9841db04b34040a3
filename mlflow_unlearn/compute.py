"""Compute in the units of training, and the budget a request may spend.

An *example pass* is one example through the network with gradients (forward and backward: what
training does to each example of each batch); an *eval pass* is one example forward only (guards,
checks, a frozen teacher). The original training's example passes (epochs x n_train for this
package's trainer) are the unit: a run's `cost/train_fraction` is its example passes divided by
the original's, a number that means the same on every machine, unlike seconds.

The *budget* is the most compute a request may use, as a fraction of the original training
(`DEFAULT_BUDGET` = 0.1). The papers' own protocols spend about 5% of a retrain (SalUn: 10
unlearning epochs against a 182-epoch training); 0.1 leaves room for a plan over three tiers and
still pays for itself from the first request, against a retrain that costs about 1.

A `ComputeMeter` counts both kinds of pass for one run and enforces its limit on example passes
(eval passes are counted and reported, not limited). Built-in algorithms plan their optimiser
steps to fit the limit before they start (`mlflow_unlearn.algorithms.fit_steps`); for any other
algorithm the meter is the backstop: a forward pass with gradients that would go over the limit
raises `BudgetExhausted`, and `run_algorithm` returns the model as it stood after the last
completed step. A run therefore never exceeds its budget.

No mlflow here: this is core.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

DEFAULT_BUDGET = 0.1


class BudgetError(ValueError):
    """A budget that is not a fraction in (0, 1], or one too small to pay for a single optimiser
    step. `needed` (example passes), when set, is what the smallest working budget must pay for."""

    def __init__(self, message: str, *, needed: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.needed, self.limit = needed, limit


class BudgetExhausted(Exception):
    """Raised by a meter's hook when a forward pass with gradients would go over the run's limit.
    Not a ValueError or RuntimeError on purpose: algorithms that catch those must not swallow it."""


def parse_budget(value: Any, *, flag: str = "--budget") -> float:
    """A budget given by a user (a number or its text) as a float in (0, 1]; `flag` names where it
    came from in the error."""
    want = (f"{flag} must be a number in (0, 1]: the most compute a request may use, as a fraction of the "
            f"original training (default {DEFAULT_BUDGET})")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, bool):
        raise BudgetError(f"{want}; got {shown}")
    try:
        fraction = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise BudgetError(f"{want}; got {shown}") from None
    if not math.isfinite(fraction) or fraction <= 0.0 or fraction > 1.0:
        raise BudgetError(f"{want}; got {shown}")
    return fraction


@dataclass(frozen=True)
class Budget:
    """A validated budget: `fraction` of the original training, whose example passes are
    `original_passes`. Build it with `Budget.of` at the edge; the core takes it as it is."""

    fraction: float
    original_passes: int

    @classmethod
    def of(cls, fraction: Any, original_passes: int, *, flag: str = "--budget") -> "Budget":
        if not isinstance(original_passes, int) or original_passes <= 0:
            raise BudgetError(f"the original training's example passes must be a positive integer, got {original_passes!r}")
        return cls(parse_budget(fraction, flag=flag), original_passes)

    @property
    def passes(self) -> int:
        """Example passes this budget pays for (rounded down: never more than the fraction)."""
        return int(math.floor(self.fraction * self.original_passes + 1e-9))

    def fraction_of(self, passes: int) -> float:
        return passes / self.original_passes


def original_train_passes(train_config: dict, n_train: int, recorded: Any = None) -> int:
    """The original training's example passes: the count the train step recorded, or (sources
    trained before it recorded one) epochs x n_train, which is exactly what `train_model` does
    (every train example once per epoch, the last batch included)."""
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and recorded > 0:
        return int(recorded)
    return int(train_config["epochs"]) * int(n_train)


class ComputeMeter:
    """Counts one run's example passes (`train_passes`) and eval passes (`eval_passes`), and holds
    its `limit` on example passes (None: unlimited). `unit` (optional) is the original training's
    example passes, so messages can speak in fractions of it.

    `watching(model)` counts every forward call of `model` (and of deep copies made while watched,
    such as a frozen teacher) by its batch size: with gradients enabled an example pass, otherwise
    an eval pass. Code that computes gradients another way (vmap, functional calls) counts them
    itself with `paused()` and `charge`."""

    def __init__(self, limit: int | None = None, *, unit: int | None = None):
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a number of example passes >= 0 or None, got {limit!r}")
        self.limit, self.unit = limit, unit
        self.train_passes = 0
        self.eval_passes = 0
        self.stopped_at_limit = False  # set by run_algorithm when the backstop stopped a run
        self._paused = 0
        self._enforced = True

        def hook(module: nn.Module, args: tuple) -> None:  # a plain function: deepcopy keeps it as is,
            self._count_forward(module, args)              # so a copied teacher counts into this meter

        self._hook = hook

    # counting -------------------------------------------------------------------------------------
    @property
    def remaining(self) -> int | None:
        """Example passes left under the limit (None: unlimited)."""
        if self.limit is None or not self._enforced:
            return None
        return max(self.limit - self.train_passes, 0)

    def charge(self, n: int, *, gradient: bool) -> None:
        n = int(n)
        if gradient:
            if self._enforced and self.limit is not None and self.train_passes + n > self.limit:
                raise BudgetExhausted(f"{n} more example passes would exceed the limit of {self.limit} "
                                      f"({self.train_passes} spent)")
            self.train_passes += n
        else:
            self.eval_passes += n

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward calls are not counted by the hook inside (the caller charges them itself)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextlib.contextmanager
    def unlimited(self) -> Iterator[None]:
        """Count without enforcing the limit (the exact `retrain`: the reference, never cut short)."""
        was, self._enforced = self._enforced, False
        try:
            yield
        finally:
            self._enforced = was

    def _count_forward(self, module: nn.Module, args: tuple) -> None:
        if self._paused:
            return
        x = args[0] if args else None
        n = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        gradient = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
        self.charge(n, gradient=gradient)

    @contextlib.contextmanager
    def watching(self, model: nn.Module) -> Iterator[None]:
        """Count `model`'s forward calls while inside. Deep copies of `model` made inside carry the
        hook too (copy.deepcopy copies a module's hooks); `strip` removes it from what outlives the run."""
        self.attach(model)
        try:
            yield
        finally:
            self.strip(model)

    def attach(self, model: nn.Module) -> nn.Module:
        """Count `model`'s forward calls from now on, until `strip(model)`; returns the model (for a
        model built inside someone else's code, e.g. a retrain's fresh network)."""
        model.register_forward_pre_hook(self._hook)
        return model

    def strip(self, model: nn.Module) -> None:
        """Remove this meter's hook from `model` and its submodules (also from deep copies of a watched model)."""
        for module in model.modules():
            hooks = module._forward_pre_hooks  # torch keeps no public way to list a module's hooks
            for key in [k for k, h in hooks.items() if h is self._hook]:
                del hooks[key]

    # reporting ------------------------------------------------------------------------------------
    def fraction(self, passes: int | None = None) -> float:
        """`passes` (default: the example passes spent) as a fraction of the unit; NaN without a unit."""
        passes = self.train_passes if passes is None else passes
        return passes / self.unit if self.unit else float("nan")

    def describe(self, passes: int) -> str:
        """'N example passes (F of the original training)', the fraction only when a unit is known."""
        if self.unit:
            return f"{passes} example passes ({passes / self.unit:.4g} of the original training)"
        return f"{passes} example passes"


def break_even_requests(first_request: float, later_request: float, retrain: float = 1.0) -> float:
    """After how many requests unlearning has cost less in total than retraining for each one.

    Costs in training fractions: the first request (reference + search + request), each later one,
    and a retrain (about 1). Unlearning n requests costs first + (n - 1) * later; retraining them
    n * retrain. Returns the smallest whole n >= 1 where unlearning is strictly cheaper, or inf when
    it never is (a later request that costs a retrain or more)."""
    for name, v in (("first_request", first_request), ("later_request", later_request), ("retrain", retrain)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite cost >= 0 (a fraction of the original training), got {v!r}")
    if first_request < retrain:
        return 1
    if later_request >= retrain:
        return math.inf
    # first + (n - 1) * later < n * retrain  <=>  n > (first - later) / (retrain - later)
    n = (first_request - later_request) / (retrain - later_request)
    return int(math.floor(n)) + 1


__all__ = ["Budget", "BudgetError", "BudgetExhausted", "ComputeMeter", "DEFAULT_BUDGET", "break_even_requests",
           "original_train_passes", "parse_budget"]

"""The algorithm interface: the data an algorithm sees, the registry, hyperparameter validation and
`run_algorithm`, plus the small training helpers the built-in algorithms share.

No mlflow here (docs/design.md section 3): progress goes to a `MetricLogger`.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .._registry import Registry, keyword_defaults
from ..compute import BudgetError, BudgetExhausted, ComputeMeter
from ..ids import check_something_retained, train_ids
from ..data import ImageData, Split, augment_batch
from ..progress import MetricLogger, NullLogger, ProgressBar
from ..training import TrainConfig, cosine_schedule, make_generator, sgd, use_amp

ALGORITHMS = Registry("algorithm", "mlflow_unlearn.algorithms")

# Parameters of an algorithm function that are not hyperparameters.
NOT_HYPERPARAMETERS = ("seed", "log", "meter")

PROGRESS_ENV = "MLFLOW_UNLEARN_PROGRESS"  # set to 1 to draw per-epoch progress bars on stderr


class HyperparameterError(ValueError):
    """A hyperparameter that an algorithm does not take, or a value of the wrong type or out of range.
    The message names the algorithm, the parameter, the value and what is valid."""


# --------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class TrainRecipe:
    """How the source model was made: `build(seed)` returns a freshly initialised model of the
    source's architecture (same module types and shapes, new weights drawn from `seed`), and
    `config` is the `TrainConfig` the source was trained with. The `retrain` algorithm replays it
    on the retain set with the seed replaced, exactly as the retrained reference does."""

    build: Callable[[int], nn.Module]
    config: TrainConfig

    def __post_init__(self):
        if not callable(self.build):
            raise TypeError(f"TrainRecipe.build must be a callable seed -> nn.Module, got {type(self.build).__name__}")
        if not isinstance(self.config, TrainConfig):
            raise TypeError(f"TrainRecipe.config must be a TrainConfig, got {type(self.config).__name__}")


@dataclass
class UnlearnData:
    """What an unlearning algorithm works on: the dataset and two disjoint sets of train ids.

    Ids are positions in `data.train` (docs/design.md section 2). `retain_ids` is usually train minus
    forget (`from_forget`); RUM's "shrinking retain" option passes a different retain set, so the
    constructor accepts any retain set disjoint from the forget set.

    Duplicate ids are an error at this level (a forget *request* may repeat an id; whoever turns
    requests into a forget set de-duplicates first, so that a digest of the set is well defined).

    `recipe` (optional): how the source model was trained (`TrainRecipe`); `retrain` uses it.
    `augment`: whether unlearning batches are augmented (crop + flip). Off by default, whatever the
    dataset's own `augment` says: RUM's per-tier unlearning commands (`main_rum.py`,
    `main_rum_proxy.py` in github.com/kairanzhao/RUM) pass `--no_aug`.
    """

    data: ImageData
    forget_ids: torch.Tensor
    retain_ids: torch.Tensor
    recipe: TrainRecipe | None = None
    augment: bool = False

    def __post_init__(self):
        if self.recipe is not None and not isinstance(self.recipe, TrainRecipe):
            raise TypeError(f"recipe must be a TrainRecipe or None, got {type(self.recipe).__name__}")
        self.augment = bool(self.augment)
        n = len(self.data.train)
        self.forget_ids = _as_ids(self.forget_ids, "forget_ids", n, self.data.device)
        self.retain_ids = _as_ids(self.retain_ids, "retain_ids", n, self.data.device)
        if len(self.forget_ids) == 0:
            raise ValueError("the forget set is empty: give at least one train id to forget")
        if len(self.retain_ids) == 0:
            raise ValueError("the retain set is empty: unlearning needs at least one train example to keep")
        both = torch.isin(self.forget_ids, self.retain_ids)
        if bool(both.any()):
            ids = self.forget_ids[both][:10].tolist()
            raise ValueError(f"ids {ids} are in both the forget and the retain set; the two must be disjoint")

    @classmethod
    def trusted(cls, data: ImageData, forget_ids: torch.Tensor, retain_ids: torch.Tensor, *,
                recipe: TrainRecipe | None = None, augment: bool = False) -> "UnlearnData":
        """Ids derived from a checked task (`task.UnlearnTask.unlearn_data`): long tensors on the
        data's device, disjoint, neither empty. Nothing is checked again."""
        out = cls.__new__(cls)
        out.data, out.forget_ids, out.retain_ids, out.recipe, out.augment = data, forget_ids, retain_ids, recipe, augment
        return out

    @classmethod
    def from_forget(cls, data: ImageData, forget_ids, *, recipe: TrainRecipe | None = None,
                    augment: bool = False) -> "UnlearnData":
        """Forget `forget_ids` (positions in `data.train`); retain = every other train example."""
        n = len(data.train)
        forget = _as_ids(forget_ids, "forget_ids", n, data.device)
        if len(forget) == 0:
            raise ValueError("the forget set is empty: give at least one train id to forget")
        check_something_retained(len(forget), n, error=ValueError)
        keep = torch.ones(n, dtype=torch.bool, device=data.device)
        keep[forget] = False
        return cls(data, forget, torch.nonzero(keep).flatten(), recipe=recipe, augment=augment)

    @property
    def forget(self) -> Split:
        return self.data.train.subset(self.forget_ids)

    @property
    def retain(self) -> Split:
        return self.data.train.subset(self.retain_ids)

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def num_classes(self) -> int:
        return self.data.num_classes


def _as_ids(ids, what: str, n: int, device) -> torch.Tensor:
    """Train ids as a long tensor on `device` (`ids.train_ids`, the one id check)."""
    return torch.from_numpy(train_ids(ids, n, what=what, allow_empty=True, error=ValueError)).to(device)


# --------------------------------------------------------------------------------------------------
# Hyperparameters


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyperparameters of algorithm `name` with their defaults (its keyword-only parameters)."""
    fn = ALGORITHMS.get(name)
    params = keyword_defaults(fn, skip=NOT_HYPERPARAMETERS)
    missing = [k for k, v in params.items() if v is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"algorithm {name!r}: hyperparameter(s) {', '.join(missing)} have no default; "
                        f"every hyperparameter of an algorithm needs one")
    return params


def _positive_int(v):
    return isinstance(v, int) and v >= 1


def _rule(name: str):
    """(check, description of the valid range) for a hyperparameter name, or None (any value)."""
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
    if name == "lr" or name.endswith("_lr"):
        return (lambda v: finite(v) and v > 0), "a positive finite number"
    if name == "epochs" or name.endswith("_epochs"):
        return _positive_int, "an integer >= 1"
    if name == "batch_size" or name.endswith("_batch_size"):
        return _positive_int, "an integer >= 1"
    if name == "alpha":
        return (lambda v: finite(v) and 0.0 <= v <= 1.0), "a fraction in [0, 1]"
    if name.endswith("fraction"):
        return (lambda v: finite(v) and 0.0 < v <= 1.0), "a fraction in (0, 1]"
    if name == "momentum":
        return (lambda v: finite(v) and 0.0 <= v < 1.0), "in [0, 1)"
    if name in ("temperature", "damping") or name.endswith("_temperature"):
        return (lambda v: finite(v) and v > 0), "a positive finite number"
    if name.endswith("_drop"):
        return (lambda v: finite(v) and 0.0 <= v <= 1.0), "a fraction in [0, 1] (1 turns the check off)"
    if name.endswith("steps"):
        return (lambda v: isinstance(v, int) and v >= 0), "an integer >= 0"
    if name.endswith("_samples"):
        return _positive_int, "an integer >= 1"
    if (name in ("weight_decay", "scale", "beta", "gamma") or name.startswith("alpha_")
            or name.endswith(("_weight", "_decay", "_scale"))):
        return (lambda v: finite(v) and v >= 0), "a finite number >= 0"
    return None


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _coerce(value, default):
    """`value` as the type of `default` (so "0.01" from a command line works); raises ValueError."""
    if default is None or default is inspect.Parameter.empty:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("a boolean (true/false)")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ValueError("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    value = float(value.strip())
                except ValueError:
                    raise ValueError("an integer") from None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if hasattr(value, "__index__"):  # numpy integers
            return int(value)
        raise ValueError("an integer")
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError("a number")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError("a number") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError("a number") from None
        if not math.isfinite(value):
            raise ValueError("a finite number")
        return value
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ValueError("a string")
    return value


def validate_hyperparameters(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check `params` against algorithm `name` and return the full set (defaults filled in), each
    value converted to the type of its default. The one place hyperparameters are validated."""
    defaults = hyperparameters(name)
    params = dict(params or {})
    unknown = [k for k in params if k not in defaults]
    if unknown:
        hint = ""
        if any(k in NOT_HYPERPARAMETERS for k in unknown):
            hint = " (seed, log and meter are arguments of run_algorithm, not hyperparameters)"
        valid = ", ".join(sorted(defaults)) or "(none)"
        raise HyperparameterError(
            f"algorithm {name!r} has no hyperparameter {', '.join(map(repr, unknown))}{hint}; valid: {valid}")
    out = dict(defaults)
    for key, given in params.items():
        rule = _rule(key)
        try:
            value = _coerce(given, defaults[key])
        except ValueError as exc:
            want = rule[1] if rule else str(exc)
            raise HyperparameterError(
                f"algorithm {name!r}: hyperparameter {key}={given!r} is not valid; it must be {want}") from None
        if rule is not None and not rule[0](value):
            raise HyperparameterError(
                f"algorithm {name!r}: hyperparameter {key}={given!r} is out of range; it must be {rule[1]}")
        out[key] = value
    for key, value in out.items():  # defaults must obey the rules too (catches plugin mistakes early)
        rule = _rule(key)
        if key not in params and value is not None and rule is not None and not rule[0](value):
            raise HyperparameterError(
                f"algorithm {name!r}: the default {key}={value!r} is out of range; it must be {rule[1]}")
    return out


# --------------------------------------------------------------------------------------------------
# Running


def _accepts(fn: Callable, param: str) -> bool:
    sig = inspect.signature(fn)
    return param in sig.parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


@contextlib.contextmanager
def seeded(seed: int, device) -> Iterator[None]:
    """Run with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _device_of(model: nn.Module, default) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(default)


def is_exact(name: str) -> bool:
    """Whether algorithm `name` is declared exact (`retrain`): the reference every result is measured
    against, never cut short by a budget (its cost is counted and logged like any other)."""
    return bool(ALGORITHMS.declared(name).get("exact", False))


def run_algorithm(name: str, model: nn.Module, data: UnlearnData, hyperparameters: Mapping[str, Any] | None = None,
                  *, seed: int = 0, log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """Unlearn `data.forget_ids` from a copy of `model` with algorithm `name`.

    Validates the hyperparameters, deep-copies the model (the caller's model never changes), runs on
    `data.device` and returns the new model on the device the caller's model was on, in the caller's
    train/eval mode. Reproducible for a given seed on a given device.

    `meter` (a `ComputeMeter`, optional) counts the run's example and eval passes and holds its
    budget: an algorithm that takes a `meter` argument plans its steps to fit the limit; for any
    other, a forward pass with gradients past the limit stops the run and the model as of the last
    completed step is returned (`meter.stopped_at_limit`). Exact algorithms (`retrain`) are counted
    but not limited.
    """
    params = validate_hyperparameters(name, hyperparameters)
    if not isinstance(data, UnlearnData):
        raise TypeError(f"data must be an UnlearnData (see UnlearnData.from_forget), got {type(data).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return run_validated(name, model, data, params, seed=seed, log=log, meter=meter)


def run_validated(name: str, model: nn.Module, data: UnlearnData, params: Mapping[str, Any], *, seed: int = 0,
                  log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """`run_algorithm` for hyperparameters already validated and completed (a `rum.ValidatedPlan`'s
    step) on data from a checked task: nothing is checked again."""
    fn = ALGORITHMS.get(name)
    meter = meter if meter is not None else ComputeMeter()
    home = _device_of(model, data.device)
    was_training = model.training
    work = copy.deepcopy(model).to(data.device)
    kwargs = dict(params)
    if _accepts(fn, "seed"):
        kwargs["seed"] = int(seed)
    if _accepts(fn, "log"):
        kwargs["log"] = log
    if _accepts(fn, "meter"):
        kwargs["meter"] = meter
    limit = meter.unlimited() if is_exact(name) else contextlib.nullcontext()
    with seeded(seed, data.device), limit, meter.watching(work):
        try:
            out = fn(work, data, **kwargs)
        except BudgetExhausted:
            out, meter.stopped_at_limit = work, True
    if not isinstance(out, nn.Module):
        raise TypeError(f"algorithm {name!r} returned {type(out).__name__}, not a torch.nn.Module")
    meter.strip(out)
    out = out.to(home)
    out.train(was_training)
    return out


def fit_steps(natural: int, per_step: int, meter: ComputeMeter | None, *, algorithm: str, reserved: int = 0) -> int:
    """The optimiser steps a run takes: `natural` (what its hyperparameters ask for), cut to what the
    meter's remaining example passes pay for at `per_step` passes a step (an upper bound: the last
    batch of a pass may be smaller), after `reserved` passes the run spends besides its steps
    (a mask, the forget passes of scrub). Raises BudgetError, with the passes one step needs, when
    the budget pays for no step at all."""
    natural, per_step, reserved = int(natural), max(int(per_step), 1), max(int(reserved), 0)
    remaining = None if meter is None else meter.remaining
    if remaining is None:
        return natural
    afford = (remaining - reserved) // per_step
    if afford < 1:
        needed = reserved + per_step + (meter.limit - remaining)
        raise BudgetError(f"{algorithm}: its budget of {meter.describe(meter.limit)} pays for no optimiser step "
                          f"(one step costs {per_step} example passes"
                          f"{f' after {reserved} for its fixed work' if reserved else ''}); the smallest budget that "
                          f"gives it one step is {meter.describe(needed)}", needed=needed, limit=meter.limit)
    return min(natural, afford)


def ensure_passes(needed: int, meter: ComputeMeter | None, *, algorithm: str, what: str) -> None:
    """BudgetError unless the meter's remaining example passes cover `needed` (for `what`)."""
    remaining = None if meter is None else meter.remaining
    if remaining is not None and needed > remaining:
        total = needed + (meter.limit - remaining)
        raise BudgetError(f"{algorithm}: its budget of {meter.describe(meter.limit)} does not pay for {what} "
                          f"({needed} example passes); the smallest budget that would is {meter.describe(total)}",
                          needed=total, limit=meter.limit)


# --------------------------------------------------------------------------------------------------
# Helpers shared by iterative algorithms


def progress_enabled() -> bool:
    return os.environ.get(PROGRESS_ENV, "").strip().lower() in _TRUE


class Loop:
    """One SGD optimiser with a per-step cosine schedule over `total_steps`, a seeded generator for
    shuffling, labels and augmentation, bf16 autocast on CUDA, per-epoch metrics and a progress bar.

    The optimiser is `mlflow_unlearn.training.sgd`: Nesterov momentum whenever momentum > 0 (the
    papers' code used plain momentum SGD). Batches are augmented only when `data.augment`
    (`UnlearnData.augment`, off by default), not when the dataset's own `augment` is on.

    The algorithms in this package and plugins can use it; it is a convenience, not a requirement.
    """

    def __init__(self, model: nn.Module, data: UnlearnData, *, lr: float, total_steps: int, momentum: float = 0.9,
                 weight_decay: float = 5e-4, seed: int = 0, log: MetricLogger | None = None, desc: str = "unlearn",
                 params=None):
        self.model, self.data, self.desc = model, data, desc
        self.device = data.device
        self.gen = make_generator(seed, self.device)
        self.amp = use_amp(None, self.device)
        self.augment = bool(data.augment)
        if params is None:
            self.opt = sgd(model, lr, momentum, weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                       nesterov=momentum > 0)
        self.sched = cosine_schedule(self.opt, total_steps)
        self.log = log or NullLogger()
        self.total_steps = max(int(total_steps), 1)
        self.step_count = 0
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._bar: ProgressBar | None = None

    # batches --------------------------------------------------------------------------------------
    def order(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen, device=self.gen.device).to(self.device)

    def batches(self, n: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Positions 0..n-1 in a fresh seeded order, `batch_size` at a time."""
        order = self.order(n)
        for i in range(0, n, batch_size):
            yield order[i:i + batch_size]

    @staticmethod
    def epochs(total_steps: int, steps_per_epoch: int) -> Iterator[tuple[int, int, int]]:
        """(epoch, number of epochs, steps in this epoch) for a run of `total_steps` optimiser steps
        cut into epochs of `steps_per_epoch` (the last one may be shorter): how a budget-cut run
        still logs per-epoch metrics."""
        total, per = max(int(total_steps), 0), max(int(steps_per_epoch), 1)
        n_epochs = max(math.ceil(total / per), 1) if total else 0
        for epoch in range(n_epochs):
            yield epoch, n_epochs, min(per, total - epoch * per)

    def cycle(self, n: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Endless batches of positions 0..n-1, reshuffled on every pass (fresh batches, not cached)."""
        while True:
            yield from self.batches(n, batch_size)

    def inputs(self, split: Split, positions: torch.Tensor, *, augment: bool | None = None) -> torch.Tensor:
        x = self.data.data.normalize(split.x[positions])
        if self.augment if augment is None else augment:
            x = augment_batch(x, generator=self.gen)
        return x

    def forward(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return (model or self.model)(x).float()

    # steps ----------------------------------------------------------------------------------------
    def step(self, loss: torch.Tensor, *, before_step: Callable[[], None] | None = None) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:
            before_step()
        self.opt.step()
        self.sched.step()
        self.step_count += 1
        if self._bar is not None:
            self._bar.update()

    def progress(self) -> float:
        """Fraction of the run's optimiser steps done, in [0, 1]."""
        return min(self.step_count / self.total_steps, 1.0)

    def record(self, key: str, value: torch.Tensor, n: int = 1) -> None:
        """Accumulate a per-example mean for the epoch's metrics (no host sync until the epoch ends)."""
        v = value.detach().float() * n
        self._sums[key] = self._sums[key] + v if key in self._sums else v
        self._counts[key] = self._counts.get(key, 0) + n

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.model.train()
        self._sums, self._counts = {}, {}
        self._bar = ProgressBar(steps, f"{self.desc} epoch {epoch + 1}/{epochs}", enabled=progress_enabled())

    def end_epoch(self, epoch: int) -> dict[str, float]:
        metrics = {f"unlearn/{k}": (self._sums[k] / max(self._counts[k], 1)).item() for k in self._sums}
        metrics["unlearn/lr"] = float(self.opt.param_groups[0]["lr"])
        if self._bar is not None:
            self._bar.close(**{k.split("/", 1)[1]: v for k, v in metrics.items()})
            self._bar = None
        self.log.log_metrics(metrics, step=epoch)
        return metrics


"""Argument types shared by the `mlflow-unlearn` command line and the hook's subcommands: each
parses one command-line value (MLproject passes every parameter as text: `none`, `15.0`) or raises
`argparse.ArgumentTypeError` naming the bad value."""
from __future__ import annotations

import argparse


def none_or(cast):
    def parse(value: str):
        if value is None or value.strip().lower() in ("", "none", "null"):
            return None
        return cast(value)

    parse.__name__ = cast.__name__
    return parse


def whole_number(value: str) -> int:
    """An integer; MLproject passes float parameters as '15.0', which is accepted when whole."""
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if f != int(f):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}")
    return int(f)


whole_number.__name__ = "int"


def positive_whole_number(value: str) -> int:
    """A whole number >= 1 (a count or a size)."""
    n = whole_number(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return n


positive_whole_number.__name__ = "int"


def max_epochs(value: str) -> int | str:
    """`auto` (the bound the budget sets) or a whole number >= 1."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return positive_whole_number(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 1, got {value!r}") from None


max_epochs.__name__ = "max_epochs"


def budget(value: str) -> float:
    """A budget: a fraction in (0, 1] of the original training's compute."""
    from .compute import BudgetError, parse_budget

    try:
        return parse_budget(value, flag="the budget")
    except BudgetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


budget.__name__ = "budget"


def dataset(value: str) -> str:
    """A dataset name (`digits`, `digits-noisy[:<rate>]`, `cifar10`, ...), checked before any work."""
    from .data import DatasetError, validate_dataset_name

    try:
        validate_dataset_name(value)
    except DatasetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


dataset.__name__ = "dataset"


def model_name(value: str) -> str:
    """A registered model name (built-in or plugin), checked before any work."""
    from .models import ModelError, validate_model_name

    try:
        validate_model_name(value)
    except ModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


model_name.__name__ = "model"


def dataset_help() -> str:
    """The registered dataset names as `--dataset` help writes them (plugins included)."""
    from .data import dataset_forms

    return " | ".join(dataset_forms())


def model_help() -> str:
    from .models import MODELS

    return " | ".join(MODELS.registered())


def strategy(value: str) -> str:
    """A RUM search strategy (`composed` or `joint`), checked before any work."""
    from .tuning import SearchError, check_strategy

    try:
        return check_strategy(value)
    except SearchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


strategy.__name__ = "strategy"


def boolean(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def algorithm_list(value: str) -> list[str] | None:
    """`default` (or empty) -> None; otherwise registered algorithm names, comma-separated."""
    from .algorithms import ALGORITHMS

    if value is None or value.strip().lower() in ("", "default"):
        return None
    names = [x.strip() for x in value.split(",") if x.strip()]
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        raise argparse.ArgumentTypeError(ALGORITHMS.unknown_message(unknown))
    return names


algorithm_list.__name__ = "algorithm list"


def device(value: str) -> str:
    """auto | cpu | cuda | cuda:N | mps"""
    v = str(value).strip().lower()
    if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise argparse.ArgumentTypeError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")


device.__name__ = "device"

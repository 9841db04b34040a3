"""Plans: what RUM runs, as plain data (docs/design.md section 2). A plan is an ordered list of
(tier, algorithm, hyperparameters) steps and a retain mode; `Plan.validate` checks it once and
returns the `ValidatedPlan` the executor (`rum.execute_plan`) takes. Also here: its forms (JSON,
YAML, the compact command-line grammar) and the plans the system builds (`default_plan`,
`stronger_plan`, `single_algorithm_plan`).
A plan is plain data, the same in every form:

- a mapping (JSON or YAML, in a file or a string)::

      {"retain_mode": "exclude_all", "name": "my-plan",
       "steps": [{"tier": "low", "algorithm": "none", "hyperparameters": {}},
                 {"tier": "mid", "algorithm": "finetune", "hyperparameters": {"lr": 0.01, "epochs": 3}}]}

- the compact command-line form, steps separated by ``;``, hyperparameters in parentheses::

      low=none;mid=finetune(lr=0.01,epochs=3);high=neggrad_plus(alpha=0.9)

  A segment ``retain_mode=<mode>`` sets the retain mode (so no tier can be called ``retain_mode``
  there); string values may be quoted with ``"..."`` or ``'...'``.

A plan may also say the compute ``budget`` its hyperparameters were chosen under (a fraction in
(0, 1] of the original training; JSON and YAML only, the compact form does not carry it). `search`
records it on the plan it attaches, because the budget is part of what was scored: an algorithm cuts
its steps to the budget, so the same hyperparameters under another budget are another run (on the
CPU CIFAR benchmark, seed 1, the plan searched at 0.1 held out ToW 0.972 there and 0.829 at 0.2). How a request
uses it is `request.resolve_plan`'s rule: at its own budget when that is within the request's,
refused when it is above.

Retain modes (the retain set an algorithm sees at each step):

- ``exclude_all`` (the default): train minus the *whole* forget set at every step. Every tier will
  be forgotten, so training on a later tier's examples while unlearning an earlier one would only
  reinforce what the later step has to remove.
- ``shrinking`` (the RUM paper's code): train minus the tiers unlearned so far, the current one
  included; the later tiers stay in the retain set until their turn. Kept so the two can be compared.

Completeness: every tier of the forget set must appear in the plan exactly once (map a tier to
``none`` to leave it explicitly as it is). A tier silently left out would mean part of a deletion
request was never unlearned, so a missing tier is an error, as is a tier with no examples.

No mlflow and no torch training here: a plan is data.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ._registry import UnknownComponentError
from .algorithms import HyperparameterError, validate_hyperparameters
from .memorization import DEFAULT_TIERS
from .task import ALL_TIER  # the one tier of a whole-set plan

RETAIN_MODES = ("exclude_all", "shrinking")
DEFAULT_RETAIN_MODE = "exclude_all"
PLAN_SUFFIXES = (".json", ".yaml", ".yml")

_PLAN_KEYS = ("name", "retain_mode", "budget", "steps")
_STEP_KEYS = ("tier", "algorithm", "hyperparameters")


class PlanError(ValueError):
    """A plan that cannot run (or cannot be read); the message lists every problem found."""


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass
class PlanStep:
    """Unlearn tier `tier` with algorithm `algorithm` and these hyperparameters (missing ones take
    the algorithm's defaults)."""

    tier: str
    algorithm: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "algorithm": self.algorithm,
                "hyperparameters": {k: plain_value(v) for k, v in self.hyperparameters.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "step") -> "PlanStep":
        if not isinstance(d, Mapping):
            raise PlanError(f"{where} must be a mapping with keys {', '.join(_STEP_KEYS)}, got {_short(d)}")
        unknown = [k for k in d if k not in _STEP_KEYS]
        if unknown:
            raise PlanError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(_STEP_KEYS)}")
        missing = [k for k in ("tier", "algorithm") if d.get(k) in (None, "")]
        if missing:
            raise PlanError(f"{where} needs {' and '.join(missing)}, got {_short(dict(d))}")
        tier, algorithm = d["tier"], d["algorithm"]
        if not isinstance(tier, str) or not isinstance(algorithm, str):
            raise PlanError(f"{where}: tier and algorithm must be strings, got tier={tier!r}, algorithm={algorithm!r}")
        params = d.get("hyperparameters") or {}
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            raise PlanError(f"{where} (tier {tier!r}): hyperparameters must be a mapping of names to values, "
                            f"got {_short(params)}")
        return cls(tier, algorithm, dict(params))


@dataclass
class Plan:
    """An ordered list of steps (tier, algorithm, hyperparameters) and the retain mode.

    Plain data: `validate` checks it against the algorithms and a forget set's tiers; `run_rum`
    executes it. Forms: `from_dict`/`to_dict`, `load`/`dump` (.json, .yaml, .yml), `parse` (a
    path, a JSON/YAML string or the compact form) and `to_compact`.
    """

    steps: list[PlanStep]
    retain_mode: str = DEFAULT_RETAIN_MODE
    name: str | None = None
    budget: float | None = None  # the budget the hyperparameters were chosen under (module docstring)

    # forms ----------------------------------------------------------------------------------------
    @property
    def tiers(self) -> list[str]:
        return [s.tier for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        out["retain_mode"] = self.retain_mode
        if self.budget is not None:
            out["budget"] = self.budget
        out["steps"] = [s.to_dict() for s in self.steps]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> "Plan":
        """From the plain-data schema; a bare list is taken as the steps (retain mode: default)."""
        if isinstance(d, (list, tuple)):
            d = {"steps": list(d)}
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a mapping with keys {', '.join(_PLAN_KEYS)} (or a list of steps), "
                            f"got {_short(d)}")
        unknown = [k for k in d if k not in _PLAN_KEYS]
        if unknown:
            raise PlanError(f"plan has unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(_PLAN_KEYS)}")
        steps = d.get("steps")
        if not isinstance(steps, (list, tuple)):
            raise PlanError(f"plan 'steps' must be a list of {{tier, algorithm, hyperparameters}}, got {_short(steps)}")
        retain_mode = d.get("retain_mode") or DEFAULT_RETAIN_MODE
        name = d.get("name")
        if not isinstance(retain_mode, str):
            raise PlanError(f"plan retain_mode must be a string, one of {', '.join(RETAIN_MODES)}; got {retain_mode!r}")
        if name is not None and not isinstance(name, str):
            name = str(name)
        budget = d.get("budget")
        if budget is not None:
            if (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget)
                    or not 0 < budget <= 1):
                raise PlanError(f"plan budget must be a number in (0, 1], the fraction of the original training its "
                                f"hyperparameters were chosen under, got {_short(budget)}; drop the key for a plan "
                                f"that runs under any budget")
            budget = float(budget)
        return cls([PlanStep.from_dict(s, f"plan step {i + 1}") for i, s in enumerate(steps)], retain_mode, name,
                   budget)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """From JSON text only (never a file name, never YAML tags): how a plan stored in a registry
        tag is read, since a tag is untrusted input."""
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise PlanError(f"the stored plan {_short(text)} is not valid JSON: {exc}") from None
        return cls.from_dict(d)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_compact(self, digits: int | None = None) -> str:
        """The one-line form `parse` reads back (a non-default retain mode comes first). `digits`:
        floats to that many significant digits, for people (a verdict, a description); the plan
        itself, in tags and files, keeps every digit."""
        parts = [] if self.retain_mode == DEFAULT_RETAIN_MODE else [f"retain_mode={self.retain_mode}"]
        show = (lambda v: f"{v:.{digits}g}" if isinstance(v, float) else _compact_value(v)) if digits else _compact_value
        for s in self.steps:
            args = ",".join(f"{k}={show(v)}" for k, v in s.hyperparameters.items())
            parts.append(f"{s.tier}={s.algorithm}" + (f"({args})" if args else ""))
        return ";".join(parts)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read a plan file: .json, .yaml or .yml."""
        path = Path(path)
        if path.suffix.lower() not in PLAN_SUFFIXES:
            raise PlanError(f"plan file {str(path)!r} must end in {', '.join(PLAN_SUFFIXES)}")
        if not path.is_file():
            raise PlanError(f"plan file {str(path)!r} does not exist")
        text = path.read_text()
        try:
            if path.suffix.lower() == ".json":
                d = json.loads(text)
            else:
                import yaml

                d = yaml.safe_load(text)
        except ValueError as exc:  # json.JSONDecodeError
            raise PlanError(f"plan file {str(path)!r} is not valid JSON: {exc}") from None
        except Exception as exc:  # yaml.YAMLError
            raise PlanError(f"plan file {str(path)!r} is not valid YAML: {exc}") from None
        try:
            return cls.from_dict(d)
        except PlanError as exc:
            raise PlanError(f"plan file {str(path)!r}: {exc}") from None

    def dump(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON or YAML, by the file's suffix; returns the path."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in PLAN_SUFFIXES:
            raise PlanError(f"plan file {str(path)!r} must end in {', '.join(PLAN_SUFFIXES)}")
        path.write_text(self.to_json() + "\n" if suffix == ".json" else self.to_yaml())
        return path

    @classmethod
    def parse(cls, source: "Plan | str | os.PathLike | Mapping | Sequence") -> "Plan":
        """A plan from a file path, a JSON or YAML string, the compact form, or plain data."""
        if isinstance(source, Plan):
            return source
        if isinstance(source, (Mapping, list, tuple)):
            return cls.from_dict(source)
        if isinstance(source, os.PathLike):
            return cls.load(source)
        if not isinstance(source, str):
            raise PlanError(f"cannot read a plan from {type(source).__name__}")
        text = source.strip()
        if not text:
            raise PlanError("the plan is empty; " + _FORMS)
        if "\n" not in text and (text.lower().endswith(PLAN_SUFFIXES) or os.path.isfile(text)):
            return cls.load(text)
        if text[0] not in "{[" and "\n" not in text and _COMPACT_START.match(text):
            return _parse_compact(text)
        import yaml  # JSON is YAML, so one parser reads both

        try:
            d = yaml.safe_load(text)
        except Exception as exc:
            raise PlanError(f"could not read the plan {_short(text)}: {exc}; {_FORMS}") from None
        if not isinstance(d, (Mapping, list)):
            raise PlanError(f"could not read the plan {_short(text)}; {_FORMS}")
        return cls.from_dict(d)

    # validation -----------------------------------------------------------------------------------
    def validate(self, tiers: Iterable[str] | Mapping[str, Any] | None = None) -> "ValidatedPlan":
        """Check the plan in one place and return a `ValidatedPlan`: a copy with every step's
        hyperparameters complete (defaults filled in, values converted to the defaults' types), the
        type `execute_plan` takes.

        `tiers`: the forget set's tier names, or a mapping tier -> ids (then an empty tier is an
        error too). Checked: a known retain mode, at least one step, no tier twice, known algorithms
        and valid hyperparameters, and with `tiers`: no unknown tier and no tier left out. A plan
        whose only step is on tier "all" fits any tiers (it unlearns their union; see `run_rum`).
        Every problem found is listed in one `PlanError`.
        """
        if tiers is not None:
            tiers = whole_set_tiers(self, tiers)
        problems: list[str] = []
        if self.retain_mode not in RETAIN_MODES:
            problems.append(f"unknown retain_mode {self.retain_mode!r}; valid: {', '.join(RETAIN_MODES)}")
        if not self.steps:
            problems.append("the plan has no steps")
        names: list[str] | None = None
        if tiers is not None:
            names = [str(t) for t in tiers]
        seen: set[str] = set()
        resolved: list[PlanStep] = []
        for i, step in enumerate(self.steps):
            where = f"step {i + 1} (tier {step.tier!r})"
            if step.tier in seen:
                problems.append(f"{where}: tier {step.tier!r} appears more than once in the plan; give each tier one step")
            seen.add(step.tier)
            if names is not None and step.tier not in names:
                problems.append(f"{where}: unknown tier {step.tier!r}; the forget set's tiers are: "
                                f"{', '.join(names) or '(none)'}")
            try:
                params = validate_hyperparameters(step.algorithm, step.hyperparameters)
            except UnknownComponentError as exc:
                problems.append(f"{where}: {exc}")
                params = dict(step.hyperparameters)
            except (HyperparameterError, TypeError) as exc:
                problems.append(f"{where}: {exc}")
                params = dict(step.hyperparameters)
            resolved.append(PlanStep(step.tier, step.algorithm, params))
        if names is not None:
            missing = [t for t in names if t not in seen]
            if missing:
                problems.append(f"tier(s) {', '.join(map(repr, missing))} of the forget set are not in the plan; every "
                                f"tier must be mapped (use algorithm 'none' to leave one explicitly as it is)")
        if isinstance(tiers, Mapping):
            empty = [t for t, ids in tiers.items() if _count(ids) == 0]
            if empty:
                problems.append(f"tier(s) {', '.join(map(repr, empty))} have no examples; drop them from the tiers "
                                f"or cut the forget set into fewer tiers")
        if problems:
            head = f"plan {self.name!r}" if self.name else "the plan"
            raise PlanError(f"{head} is not valid:\n  - " + "\n  - ".join(problems))
        return ValidatedPlan(resolved, self.retain_mode, self.name, self.budget,
                             for_tiers=None if names is None else tuple(names))


@dataclass
class ValidatedPlan(Plan):
    """A plan `Plan.validate` checked: known algorithms with complete, typed hyperparameters and,
    when it was given tiers, exactly those tiers (`for_tiers`). What `execute_plan` runs; made only
    by `validate` (validate the plan again after editing it)."""

    for_tiers: tuple[str, ...] | None = None


_FORMS = ("give a path to a .json/.yaml file, a JSON or YAML mapping {retain_mode, steps: [{tier, algorithm, "
          "hyperparameters}]}, or the compact form 'low=none;mid=finetune(lr=0.01,epochs=3);high=neggrad_plus'")


# --------------------------------------------------------------------------------------------------
# The compact form

_COMPACT_START = re.compile(r"^\s*[A-Za-z0-9_.\-]+\s*=\s*[A-Za-z_]")
_SEGMENT = re.compile(r"^\s*(?P<tier>[A-Za-z0-9_.\-]+)\s*=\s*(?P<algo>[A-Za-z_][\w.\-]*)\s*(?:\((?P<args>.*)\))?\s*$", re.S)
_ARG = re.compile(r"^\s*(?P<key>[A-Za-z_]\w*)\s*=\s*(?P<value>.*?)\s*$", re.S)
_BARE = re.compile(r"^[A-Za-z_][\w.\-+]*$")


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quotes and parentheses."""
    parts, buf, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if quote or depth:
        raise PlanError(f"unbalanced {'quote' if quote else 'parentheses'} in the plan {_short(text)}")
    parts.append("".join(buf))
    return parts


def _scalar(text: str) -> Any:
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        if t[0] == "'":
            return t[1:-1]
        try:
            return json.loads(t)
        except ValueError:
            raise PlanError(f"could not read the quoted value {t}") from None
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def _parse_compact(text: str) -> Plan:
    steps, retain_mode = [], DEFAULT_RETAIN_MODE
    for seg in _split_top(text, ";"):
        if not seg.strip():
            continue
        m = _SEGMENT.match(seg)
        if m is None:
            raise PlanError(f"could not read plan segment {seg.strip()!r}: expected tier=algorithm or "
                            f"tier=algorithm(name=value,...); {_FORMS}")
        tier, algo, args = m["tier"], m["algo"], m["args"]
        if tier == "retain_mode":
            if args is not None:
                raise PlanError(f"retain_mode takes a plain value ({', '.join(RETAIN_MODES)}), got {seg.strip()!r}")
            retain_mode = algo
            continue
        params: dict[str, Any] = {}
        if args is not None and args.strip():
            for arg in _split_top(args, ","):
                a = _ARG.match(arg)
                if a is None:
                    raise PlanError(f"tier {tier!r}: could not read hyperparameter {arg.strip()!r}; expected name=value")
                if a["key"] in params:
                    raise PlanError(f"tier {tier!r}: hyperparameter {a['key']!r} is given twice")
                params[a["key"]] = _scalar(a["value"])
        steps.append(PlanStep(tier, algo, params))
    if not steps:
        raise PlanError(f"the plan {_short(text)} has no steps; {_FORMS}")
    return Plan(steps, retain_mode)


def _compact_value(v: Any) -> str:
    v = plain_value(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str) and _BARE.match(v) and isinstance(_scalar(v), str):
        return v
    return json.dumps(v if isinstance(v, str) else str(v))


def plain_value(v: Any) -> Any:
    """numpy scalars -> Python scalars (so JSON and YAML can write them)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _short(v: Any, n: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def whole_set_tiers(plan: "Plan", tiers):
    """The tiers `plan` runs on: `tiers` itself, except for a plan whose only step is on tier "all"
    (a whole-set candidate of the search, a vanilla run), which applies to the union of the tiers
    however the request was cut. Names in, names out; a mapping of ids in, one merged tier out."""
    if plan.tiers != [ALL_TIER]:
        return tiers
    if isinstance(tiers, Mapping):
        if ALL_TIER in tiers:
            return tiers
        parts = [np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v).reshape(-1) for v in tiers.values()]
        return {ALL_TIER: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)}
    return [ALL_TIER]


def _count(ids: Any) -> int:
    if isinstance(ids, torch.Tensor):
        return int(ids.numel())
    if isinstance(ids, np.ndarray):
        return int(ids.size)
    return len(ids)


# --------------------------------------------------------------------------------------------------
# Plans the system builds


def default_plan(tier_names: Sequence[str] = DEFAULT_TIERS) -> Plan:
    """The fallback plan used when no searched plan is registered. `tier_names` go from the lowest
    to the highest memorisation (the order tiers are cut in), and the plan applies them in that order.

    - every tier but the highest: `finetune` for 1 epoch on retain. The RUM paper found that low- and
      mid-memorisation examples need little (`none` or light fine-tuning did best there): the model
      predicts them from what it learned from similar examples, and so does the retrained reference.
      A short retain-only pass costs little and keeps every tier of a request under an active step.
    - highest tier: `neggrad_plus` with lr 0.03 and alpha 0.99, a gentle forget term: the examples the
      model may have memorised, moved without the damage to retain and test accuracy a stronger
      setting does.
    - a single tier (mixed memorisation): the same gentle `neggrad_plus`.

    Why gentle: it is what the registry hook runs when nothing was searched, and its result must pass
    the acceptance gate (retain and test within 0.05 of the source, each tier's forget accuracy near
    what a model that never saw it gets); where that needs more, the hook escalates (stronger plan,
    then an exact retrain). Chosen on selection data only; the selection and the reported pass rates
    are in docs/hook.md ("The acceptance gate, and escalation"). The retain mode is the default
    `exclude_all`. These are heuristics, not searched values: a plan searched on the model's own data
    (the search step) replaces them.
    """
    names = [str(t) for t in tier_names]
    if not names:
        raise PlanError("default_plan needs at least one tier name")
    if len(set(names)) != len(names):
        raise PlanError(f"tier names must be distinct, got {names}")
    gentle = {"lr": 0.03, "alpha": 0.99}
    if len(names) == 1:
        return Plan([PlanStep(names[0], "neggrad_plus", dict(gentle))], DEFAULT_RETAIN_MODE, "default")
    steps = [PlanStep(tier, "finetune", {"epochs": 1}) for tier in names[:-1]]
    steps.append(PlanStep(names[-1], "neggrad_plus", dict(gentle)))
    return Plan(steps, DEFAULT_RETAIN_MODE, "default")


def stronger_plan(plan: Plan) -> Plan:
    """The registry hook's first escalation when a result fails the acceptance gate: the same plan
    with every step twice as long (`epochs` doubled where the algorithm has it) and a `none` step
    replaced by the default plan's step for a tier in that position (`neggrad_plus`). Validated."""
    tiers = [s.tier for s in plan.steps]
    fallback = {s.tier: s for s in default_plan(tiers).steps} if ALL_TIER not in tiers else {
        ALL_TIER: PlanStep(ALL_TIER, "neggrad_plus", {})}
    steps = []
    for s in plan.validate().steps:
        if s.algorithm == "none":
            steps.append(fallback[s.tier])
            continue
        hp = dict(s.hyperparameters)
        if isinstance(hp.get("epochs"), int):
            hp["epochs"] = 2 * hp["epochs"]
        steps.append(PlanStep(s.tier, s.algorithm, hp))
    return Plan(steps, plan.retain_mode, f"{plan.name or 'plan'}-stronger").validate()


def single_algorithm_plan(algorithm: str, hyperparameters: Mapping[str, Any] | None = None,
                          tier_names: Sequence[str] = (ALL_TIER,), *, retain_mode: str = DEFAULT_RETAIN_MODE) -> Plan:
    """The same algorithm and hyperparameters on every tier, in the given order. With the default
    single tier "all" (see `all_tier`) this is the vanilla baseline, run by the same executor as RUM;
    with the memorisation tiers it is the paper's sequential variant of one algorithm."""
    names = [str(t) for t in tier_names]
    params = dict(hyperparameters or {})
    name = algorithm if names == [ALL_TIER] else f"{algorithm}-per-tier"
    return Plan([PlanStep(t, algorithm, dict(params)) for t in names], retain_mode, name)


def algorithm_plan(algorithm: str, hyperparameters: Mapping[str, Any] | None = None) -> ValidatedPlan:
    """One algorithm on the whole forget set (tier "all"), validated: its hyperparameters checked
    once by `validate_hyperparameters`, whose own errors (HyperparameterError, an unknown algorithm)
    reach the caller as they are. What `unlearn` runs."""
    params = validate_hyperparameters(algorithm, hyperparameters or {})
    return ValidatedPlan([PlanStep(ALL_TIER, algorithm, params)], DEFAULT_RETAIN_MODE, algorithm, for_tiers=(ALL_TIER,))


def all_tier(forget_ids) -> dict[str, Any]:
    """The whole forget set as one tier named "all" (for `single_algorithm_plan`)."""
    return {ALL_TIER: forget_ids}

"""The experiment `main` and the CIFAR benchmark (`bench/bench_unlearning.py`) both run, as data and
one driver, without MLflow: which studies the selection half runs and in what order (each compared
algorithm tuned, then the RUM search over them), and which methods the reporting half compares on
the request. The callers keep what differs: `mlflow_unlearn.search` runs each study inside an
MLflow run; the benchmark runs it in its per-seed cache (resumable across sessions).

    selection = select_plans(tiers, ["none", *baselines], run_study, baselines=baselines)
    for method in compared_methods(selection.rum.best_plan, baselines, selection.tuned_plans()):
        ...  # tuning.report_plan on the request, at the budget
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Mapping, Protocol, Sequence, TypeVar

from .candidates import (
    COMPOSED,
    JOINT,
    algorithm_candidates,
    algorithm_default_trials,
    check_strategy,
    rum_candidates,
    rum_default_trials,
)
from .compose import KnownTrial, compose_arms
from .plans import Plan, PlanStep, single_algorithm_plan
from .tuning import NoCompletedTrial

# The method labels of every comparison table (main's summary, the benchmark's tables).
RUM_LABEL = "RUM (searched plan)"
NONE_LABEL = "none (no unlearning)"


def defaults_label(algorithm: str) -> str:
    return f"{algorithm} (defaults)"


def tuned_label(algorithm: str) -> str:
    return f"{algorithm} (tuned)"


@dataclass(frozen=True)
class Study:
    """One study of the selection half, as the caller must run it: Optuna over `candidates` (a trial
    -> Plan) with `enqueue` first, or, for a composed RUM search (`arms` set, `candidates` None), the
    coordinate search over `arms` with `known` copied in as scored trials (compose.compose_search)."""

    space: str  # "tuned-<algorithm>", "rum-composed" or "rum" (joint)
    algorithm: str | None  # the algorithm a tuning tunes; None for the RUM search
    candidates: Callable | None
    enqueue: list = field(default_factory=list)
    arms: Mapping[str, PlanStep] | None = None
    known: tuple[KnownTrial, ...] = ()

    @property
    def is_rum(self) -> bool:
        return self.algorithm is None


class StudyResult(Protocol):
    """What a caller's study runner returns (search.SearchResult is one)."""

    best_plan: Plan
    metrics: Mapping[str, float] | None  # the selected plan's mean calibration metrics
    study_name: str


R = TypeVar("R", bound=StudyResult)


@dataclass
class Selection(Generic[R]):
    """The selection half's result: the RUM search's and every tuning's, in the caller's own type."""

    rum: R
    tuned: dict[str, R]  # algorithm -> its tuning (an algorithm whose every trial diverged is absent)
    strategy: str
    rum_algorithms: tuple[str, ...]

    def tuned_plans(self) -> dict[str, Plan]:
        return {a: r.best_plan for a, r in self.tuned.items()}

    def rum_tunings(self) -> dict[str, R]:
        """The tunings the RUM search built on (composed: those of its algorithms; joint: none)."""
        return {a: r for a, r in self.tuned.items() if a in self.rum_algorithms} if self.strategy == COMPOSED else {}


def tuning_study(algorithm: str, *, max_epochs: int) -> Study:
    """One algorithm on the whole forget set, its defaults the first trial: a tuned baseline."""
    return Study(f"tuned-{algorithm}", algorithm, algorithm_candidates(algorithm, max_epochs=max_epochs),
                 algorithm_default_trials(algorithm))


def rum_study(strategy: str, tiers: Sequence[str], algorithms: Sequence[str], tuned: Mapping[str, StudyResult], *,
              max_epochs: int, retain_mode: str = "exclude_all") -> Study:
    """The RUM search over `algorithms`: composed (one arm per tier from each tuned setting, the tuned
    whole-set settings copied in with their scores) or joint (every tier's algorithm and
    hyperparameters sampled together, the defaults enqueued)."""
    if check_strategy(strategy) == JOINT:
        return Study("rum", None, rum_candidates(tiers, algorithms, max_epochs=max_epochs, retain_mode=retain_mode),
                     rum_default_trials(tiers, algorithms))
    mine = {a: r for a, r in tuned.items() if a in algorithms}
    arms = compose_arms(algorithms, {a: r.best_plan for a, r in mine.items()})
    known = tuple(KnownTrial(r.best_plan, r.metrics, r.study_name) for r in mine.values() if r.metrics)
    return Study("rum-composed", None, None, [], arms, known)


def select_plans(tiers: Sequence[str], algorithms: Sequence[str], run: Callable[[Study], R], *,
                 baselines: Sequence[str] = (), strategy: str = COMPOSED, max_epochs: int,
                 retain_mode: str = "exclude_all", tuned: Mapping[str, R] | None = None,
                 note: Callable[[str], None] = print) -> Selection[R]:
    """Run the selection half through `run` (the caller's study runner): every baseline's tuning,
    then (composed) every other algorithm of the RUM space `algorithms` but `none`, each once
    (`tuned`: tunings already run on these calibration sets), then the RUM search. A tuning whose
    every trial diverged (`NoCompletedTrial`) is left out, with a `note`: the composition then
    offers that algorithm at its defaults only, and the comparison has no tuned row for it. A RUM
    search without a completed trial raises."""
    check_strategy(strategy)
    done: dict[str, R] = dict(tuned or {})
    wanted = list(dict.fromkeys([*baselines, *(a for a in algorithms if strategy == COMPOSED and a != "none")]))
    for algorithm in wanted:
        if algorithm in done:
            continue
        try:
            done[algorithm] = run(tuning_study(algorithm, max_epochs=max_epochs))
        except NoCompletedTrial as exc:
            note(f"tuning {algorithm}: {exc}; it is offered at its defaults only")
    rum = run(rum_study(strategy, tiers, algorithms, done, max_epochs=max_epochs, retain_mode=retain_mode))
    return Selection(rum, done, strategy, tuple(algorithms))


@dataclass(frozen=True)
class Method:
    """One row of the comparison on the request: a label, the plan it runs, the algorithm it is
    tagged with (`rum` for the searched plan)."""

    label: str
    plan: Plan
    algorithm: str

    @property
    def runs_once(self) -> bool:
        """`none` costs nothing at any budget: reported once, not per budget of a cost curve."""
        return self.algorithm == "none"


def compared_methods(rum_plan: Plan | None, baselines: Sequence[str], tuned: Mapping[str, Plan]) -> list[Method]:
    """RUM's searched plan, doing nothing, and every baseline at its defaults and tuned (a baseline
    without a tuned plan, e.g. every trial diverged, has only its defaults row)."""
    out = [] if rum_plan is None else [Method(RUM_LABEL, rum_plan, "rum")]
    out.append(Method(NONE_LABEL, single_algorithm_plan("none"), "none"))
    for algorithm in baselines:
        out.append(Method(defaults_label(algorithm), single_algorithm_plan(algorithm), algorithm))
        if tuned.get(algorithm) is not None:
            out.append(Method(tuned_label(algorithm), tuned[algorithm], algorithm))
    return out


def method_budgets(methods: Sequence[Method], budget: float, curve: Sequence[float] = ()) -> list[tuple[Method, float]]:
    """Every (method, budget) the reporting half runs: each method at `budget` and at each budget of
    the cost-quality `curve`; `none` once, at `budget`."""
    budgets = sorted({float(budget), *map(float, curve)})
    return [(m, b) for m in methods for b in ([float(budget)] if m.runs_once else budgets)]


__all__ = ["Method", "NONE_LABEL", "RUM_LABEL", "Selection", "Study", "StudyResult", "compared_methods",
           "defaults_label", "method_budgets", "rum_study", "select_plans", "tuned_label", "tuning_study"]

"""The experiment `main` and the CIFAR benchmark share (mlflow_unlearn.experiment): the order of the
selection half's studies, what the RUM search is built from, and the compared methods. The studies
here are run by a recording runner (the caller's half: `search` runs each in an MLflow run, the
benchmark in its seed cache, both tested where they live)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from mlflow_unlearn import experiment
from mlflow_unlearn.candidates import COMPOSED, JOINT
from mlflow_unlearn.plans import Plan, PlanStep
from mlflow_unlearn.task import ALL_TIER
from mlflow_unlearn.tuning import NoCompletedTrial, SearchError

TIERS = ["low", "mid", "high"]


@dataclass
class Done:
    best_plan: Plan
    metrics: dict | None
    study_name: str


class Runner:
    """Records the studies in the order asked; a tuning's plan is its algorithm at lr=0.5."""

    def __init__(self, diverging=()):
        self.studies: list[experiment.Study] = []
        self.diverging = set(diverging)

    def __call__(self, study: experiment.Study) -> Done:
        self.studies.append(study)
        if study.algorithm in self.diverging:
            raise NoCompletedTrial(f"study {study.space!r} has no completed trial")
        if study.is_rum:
            return Done(Plan([PlanStep(ALL_TIER, "none", {})]), None, study.space)
        return Done(Plan([PlanStep(ALL_TIER, study.algorithm, {"lr": 0.5})]), {"tow": 0.9}, study.space)


def test_composed_tunes_the_baselines_then_the_rest_of_the_space_once_each_then_composes():
    run = Runner()
    selection = experiment.select_plans(TIERS, ["none", "finetune", "neggrad_plus"], run,
                                        baselines=["salun", "finetune"], max_epochs=2)
    assert [s.space for s in run.studies] == ["tuned-salun", "tuned-finetune", "tuned-neggrad_plus", "rum-composed"]
    rum = run.studies[-1]
    assert rum.candidates is None and rum.algorithm is None
    # one arm per algorithm of the RUM space, at its tuned setting; salun (a baseline only) is not an arm
    assert {name: (a.algorithm, a.hyperparameters) for name, a in rum.arms.items()} == {
        "none": ("none", {}), "finetune": ("finetune", {"lr": 0.5}), "neggrad_plus": ("neggrad_plus", {"lr": 0.5})}
    assert [k.source for k in rum.known] == ["tuned-finetune", "tuned-neggrad_plus"]
    assert set(selection.tuned) == {"salun", "finetune", "neggrad_plus"}
    assert set(selection.rum_tunings()) == {"finetune", "neggrad_plus"}  # what RUM's selection cost counts
    assert selection.tuned_plans()["salun"].steps[0].algorithm == "salun"


def test_tunings_passed_in_are_not_run_again():
    run = Runner()
    given = {"finetune": Done(Plan([PlanStep(ALL_TIER, "finetune", {"lr": 0.1})]), {"tow": 0.8}, "earlier")}
    selection = experiment.select_plans(TIERS, ["none", "finetune"], run, tuned=given, max_epochs=2)
    assert [s.space for s in run.studies] == ["rum-composed"]
    assert run.studies[0].arms["finetune"].hyperparameters == {"lr": 0.1}
    assert selection.tuned["finetune"] is given["finetune"]


def test_a_tuning_with_no_completed_trial_is_left_out_with_a_note():
    notes = []
    run = Runner(diverging={"neggrad_plus"})
    selection = experiment.select_plans(TIERS, ["none", "finetune", "neggrad_plus"], run, max_epochs=2,
                                        note=notes.append)
    assert "neggrad_plus" not in selection.tuned
    assert notes and "tuning neggrad_plus" in notes[0] and "defaults only" in notes[0]
    rum = run.studies[-1]
    assert rum.arms["neggrad_plus"].hyperparameters == {}  # offered at its defaults
    assert [k.source for k in rum.known] == ["tuned-finetune"]


def test_joint_tunes_only_the_baselines_and_samples_the_rum_space():
    run = Runner()
    selection = experiment.select_plans(TIERS, ["none", "finetune"], run, baselines=["finetune"], strategy=JOINT,
                                        max_epochs=2)
    assert [s.space for s in run.studies] == ["tuned-finetune", "rum"]
    assert run.studies[-1].candidates is not None and run.studies[-1].enqueue
    assert selection.rum_tunings() == {}  # a joint RUM search does not build on the tunings
    with pytest.raises(SearchError, match="unknown search strategy 'greedy'"):
        experiment.select_plans(TIERS, ["none"], run, strategy="greedy", max_epochs=2)


def test_compared_methods_and_their_budgets():
    tuned = {"finetune": Plan([PlanStep(ALL_TIER, "finetune", {"lr": 0.5})])}
    rum = Plan([PlanStep("low", "none", {}), PlanStep("high", "finetune", {})])
    methods = experiment.compared_methods(rum, ["finetune", "salun"], tuned)
    assert [m.label for m in methods] == [experiment.RUM_LABEL, experiment.NONE_LABEL, "finetune (defaults)",
                                          "finetune (tuned)", "salun (defaults)"]  # salun has no tuned plan
    assert [m.algorithm for m in methods] == ["rum", "none", "finetune", "finetune", "salun"]
    pairs = experiment.method_budgets(methods, 0.1, [0.05, 0.2, 0.1])
    assert [(m.label, b) for m, b in pairs if m.algorithm == "none"] == [(experiment.NONE_LABEL, 0.1)]
    assert [b for m, b in pairs if m.label == experiment.RUM_LABEL] == [0.05, 0.1, 0.2]
    assert len(pairs) == 4 * 3 + 1

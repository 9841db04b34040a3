"""The MLflow-free selection core: candidates, known-good first trials, calibration scoring,
divergence, the noise floor and held-out reporting (digits, tiny models)."""
import optuna
import pytest
import torch

from mlflow_unlearn import tuning
from mlflow_unlearn.algorithms import ALGORITHMS
from mlflow_unlearn.confidences import ConfidenceRecorder
from mlflow_unlearn.data import DatasetSpec, load_dataset
from mlflow_unlearn.memorization import tiers_from_c_proxy
from mlflow_unlearn.forget_sets import calibration_forget_sets, mix_forget_set
from mlflow_unlearn.models import build_model
from mlflow_unlearn.rum import Plan, PlanStep, single_algorithm_plan
from mlflow_unlearn.training import TrainConfig, train_model


@pytest.fixture(scope="module")
def setup():
    data = load_dataset(DatasetSpec("digits", subset=300, val_fraction=0.1))
    config = TrainConfig(epochs=5, lr=0.05, batch_size=32)
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed, width=8)
    model = build(0)
    rec = ConfidenceRecorder(len(data.train))
    train_model(model, data, config, recorder=rec, progress=False, eval_test=False)
    c = rec.proxies()["c_proxy"]
    forget = mix_forget_set(c, 30)
    (cal_ids,) = calibration_forget_sets(c, forget, 1)
    ref_model, seconds = tuning.train_reference(build, config, data, cal_ids, seed=0)
    calibration = tuning.Reference.build(ref_model, data, cal_ids, tiers_from_c_proxy(cal_ids, c), seconds=seconds,
                                         heldout=data.val)
    return data, build, config, model, c, forget, calibration


def test_default_trials_come_first_and_cover_every_algorithm():
    trials = tuning.rum_default_trials(["low", "mid", "high"], ["none", "finetune", "salun"])
    assert trials[0] == {"shape": "per_tier", "low.algorithm": "none", "mid.algorithm": "none", "high.algorithm": "none"}
    assert [t.get("whole.algorithm") for t in trials[1:3]] == ["finetune", "salun"]
    assert all(t["whole.finetune.defaults"] for t in trials[1:2])
    assert trials[3]["low.algorithm"] == trials[3]["high.algorithm"] == "finetune" and trials[3]["mid.finetune.defaults"]
    assert len(trials) == 5


def test_candidates_build_valid_plans_from_enqueued_params():
    study = optuna.create_study()
    cands = tuning.rum_candidates(["low", "mid", "high"], ["none", "finetune", "neggrad"], max_epochs=2)
    for params in tuning.rum_default_trials(["low", "mid", "high"], ["none", "finetune", "neggrad"]):
        study.enqueue_trial(params)
    plans = [cands(study.ask()) for _ in range(6)]
    assert plans[0].to_compact() == "low=none;mid=none;high=none"
    assert plans[1].to_compact() == "all=finetune" and plans[2].to_compact() == "all=neggrad"
    assert plans[3].to_compact() == "low=finetune;mid=finetune;high=finetune"  # defaults: no hyperparameters
    for plan in plans:
        plan.validate()


def test_scorer_uses_the_validation_split_and_detects_divergence(setup):
    data, build, config, model, c, forget, calibration = setup
    assert len(calibration.outputs["test"]) == len(data.val)  # the held-out term is validation, not test
    scorer = tuning.CalibrationScorer(model, data, [calibration], seed=0)
    m = scorer.run(single_algorithm_plan("none"))
    assert 0 < m["tow"] <= 1 and m["calibration/0/tow"] == m["tow"]

    def nan_out(model, data, *, seed=0, log=None):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return model

    ALGORITHMS.add("test_nan", nan_out)
    try:
        with pytest.raises(tuning.Diverged):
            scorer.run(single_algorithm_plan("test_nan"))
    finally:
        ALGORITHMS._items.pop("test_nan", None)


def test_noise_floor_of_two_retrains(setup):
    data, build, config, model, c, forget, calibration = setup
    second_model, _ = tuning.train_reference(build, config, data, calibration.forget_ids, seed=1)
    second = tuning.Reference.build(second_model, data, calibration.forget_ids, calibration.tiers, heldout=data.val)
    floor = tuning.noise_floor(second, calibration, data)
    from mlflow_unlearn.metrics import floor_key, objectives

    assert set(floor) == {floor_key(k) for k in objectives()}  # every declared score key, plugins' included
    assert {"floor/tow", "floor/tow_pe", "floor/tow_mia", "floor/mia_gap"} <= set(floor)
    assert 0 < floor["floor/tow"] <= 1 and floor["floor/tow_pe"] < 1  # two retrains never agree on everything
    assert tuning.noise_floor(calibration, calibration, data)["floor/tow"] == 1.0


def test_report_plan_over_seeds_flags_methods_that_change_nothing(setup):
    data, build, config, model, c, forget, _ = setup
    ref_model, seconds = tuning.train_reference(build, config, data, forget, seed=0)
    held_out = tuning.Reference.build(ref_model, data, forget, tiers_from_c_proxy(forget, c), seconds=seconds)
    nothing = tuning.report_plan("none", model, data, held_out, single_algorithm_plan("none"), seeds=[0, 1])
    assert nothing.unchanged and len(nothing.per_seed) == 2
    moved = tuning.report_plan("rl", model, data, held_out, single_algorithm_plan("random_label", {"epochs": 2}), seeds=[0, 1])
    assert not moved.unchanged
    mean, lo, hi = moved.summary("tow")
    assert lo <= mean <= hi and moved.per_seed[0]["tow"] != moved.per_seed[1]["tow"]  # seeds differ


def test_optimize_refuses_a_budget_below_the_known_good_points(setup):
    data, build, config, model, c, forget, calibration = setup
    enqueue = tuning.rum_default_trials(["low", "mid", "high"], ["none", "finetune"])
    with pytest.raises(tuning.SearchError, match=">= 3"):
        tuning.optimize(optuna.create_study(direction="maximize"), tuning.rum_candidates(["low", "mid", "high"],
                        ["none", "finetune"], max_epochs=1), tuning.CalibrationScorer(model, data, [calibration]),
                        n_trials=2, enqueue=enqueue)


def test_duplicate_enqueued_points_do_not_eat_the_budget(setup):
    """Two workers joining a fresh study may both enqueue the starting points (the check is not
    atomic); the budget counts trials that ran, so the study still runs n_trials of them."""
    data, build, config, model, c, forget, calibration = setup
    tiers, algorithms = ["low", "mid", "high"], ["none", "neggrad"]  # neggrad: ascent on forget only, quick
    enqueue = tuning.rum_default_trials(tiers, algorithms)
    study = optuna.create_study(direction="maximize")
    for params in enqueue:  # what the other worker left behind
        study.enqueue_trial(params)
    tuning.optimize(study, tuning.rum_candidates(tiers, algorithms, max_epochs=1),
                    tuning.CalibrationScorer(model, data, [calibration]), n_trials=3, enqueue=enqueue)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 3


def test_a_registered_metric_key_is_an_objective_in_its_declared_direction(setup, monkeypatch):
    """A plugin metric declares `higher_is_better`; its key becomes a search objective, the study
    runs in that direction, and the scorer computes the metric although nobody listed it."""
    from mlflow_unlearn._registry import declare
    from mlflow_unlearn.metrics import METRICS, objectives

    data, build, config, model, c, forget, calibration = setup

    @declare(higher_is_better={"forget_confidence": False})
    def forget_confidence(unlearned, reference=None):
        return {"forget_confidence": float(unlearned["forget"].signal("confidence").mean())}

    monkeypatch.setitem(METRICS._items, "forget_confidence", forget_confidence)
    assert objectives()["forget_confidence"] == ("forget_confidence", False)
    assert objectives()["tow"] == ("accuracy", True) and objectives()["mia/gap"] == ("mia", False)
    study = tuning.make_study(None, None, seed=0, objective="forget_confidence")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    cands = tuning.algorithm_candidates("neggrad", max_epochs=1)
    tuning.optimize(study, cands, tuning.CalibrationScorer(model, data, [calibration]), n_trials=3,
                    objective="forget_confidence", enqueue=tuning.algorithm_default_trials("neggrad"))
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert values and study.best_value == min(values) and 0 < study.best_value < 1


def test_unknown_objective_lists_the_declared_ones(setup):
    with pytest.raises(tuning.SearchError, match="unknown objective 'accuracy'.*tow, tow_mia, mia/gap, tow_pe.*tow\\+cost"):
        tuning.make_study(None, None, objective="accuracy")


def test_a_plan_drawn_again_is_not_scored_again(setup):
    """Scoring is deterministic, so a trial whose plan an earlier complete trial already scored copies
    its metrics (`repeat_of`) instead of unlearning twice; a different plan is scored."""
    data, build, config, model, c, forget, calibration = setup
    scorer = tuning.CalibrationScorer(model, data, [calibration])
    scored = []

    class Counting:
        metrics = None

        def run(self, plan, report=None):
            scored.append(plan.to_compact())
            return scorer.run(plan, report=report)

    plans = ["all=none", "all=none", "all=neggrad(epochs=1)", "all=none", "all=neggrad(epochs=2)", "all=finetune"]
    candidates = lambda trial: tuning.Plan.parse(plans[trial.number])
    study = optuna.create_study(direction="maximize")
    tuning.optimize(study, candidates, Counting(), n_trials=3)
    # the budget is 3 plans scored, not 3 trials: the two repeats are free, and the study stops there
    assert scored == ["all=none", "all=neggrad(epochs=1)", "all=neggrad(epochs=2)"]
    trials = study.trials
    assert [t.user_attrs.get("repeat_of") for t in trials] == [None, 0, None, 0, None]
    assert trials[1].value == trials[3].value == trials[0].value != trials[2].value
    assert trials[1].user_attrs.get("metrics") is None  # only the scored trial holds the metrics
    assert [tuning.counts_against_budget(t) for t in trials] == [True, False, True, False, True]
    tuning.optimize(study, candidates, Counting(), n_trials=3)  # resumed at its budget: runs nothing
    assert len(study.trials) == 5


class _PruneAfterFirstSet(optuna.pruners.BasePruner):
    """Cut every trial but the first after its first calibration set."""

    def prune(self, study, trial):
        return trial.number > 0


def test_every_trial_records_what_scoring_it_cost_so_a_study_holds_its_search_cost(setup):
    """The cost of a search is read from its study (a resumed or shared study, a bench stopped
    mid-run): a complete trial records its passes over every set, a pruned one those of the sets
    it ran before the cut, a repeat nothing; the sum is what the scorer spent."""
    data, build, config, model, c, forget, calibration = setup
    scorer = tuning.CalibrationScorer(model, data, [calibration, calibration])
    plans = ["all=finetune(epochs=1)", "all=neggrad(epochs=1)", "all=finetune(epochs=1)", "all=neggrad(epochs=2)"]
    study = optuna.create_study(direction="maximize", pruner=_PruneAfterFirstSet())
    tuning.optimize(study, lambda trial: tuning.Plan.parse(plans[trial.number]), scorer, n_trials=3)
    complete, pruned, repeat, _ = sorted(study.trials, key=lambda t: t.number)
    assert (complete.state, pruned.state, "repeat_of" in repeat.user_attrs) == (
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, True)
    spent = [t.user_attrs[tuning.SPENT_PASSES_ATTR] for t in (complete, pruned, repeat)]
    # finetune for one epoch over retain, once per calibration set (the same set twice here)
    assert spent[0] == 2 * complete.user_attrs["metrics"]["cost/train_passes"] > 0
    assert spent[1] > 0 and spent[2] == 0
    assert tuning.spent_train_passes(study) == scorer.spent_passes > sum(spent)  # + the last pruned trial


def test_a_space_smaller_than_the_budget_stops_after_its_repeat_allowance(setup):
    """A space with one plan can never reach 3 scored plans: the study stops once it holds
    REPEAT_ALLOWANCE x n_trials repeats, having scored the plan once."""
    data, build, config, model, c, forget, calibration = setup
    scored = []
    scorer = tuning.CalibrationScorer(model, data, [calibration])

    class Counting:
        metrics = None

        def run(self, plan, report=None):
            scored.append(plan.to_compact())
            return scorer.run(plan, report=report)

    study = optuna.create_study(direction="maximize")
    tuning.optimize(study, lambda trial: tuning.Plan.parse("all=none"), Counting(), n_trials=3)
    assert scored == ["all=none"]
    assert len(study.trials) == 1 + tuning.REPEAT_ALLOWANCE * 3


@pytest.mark.parametrize("when", ["while_scoring", "before_tell"])
def test_a_trial_another_worker_finished_first_does_not_stop_the_search(setup, when):
    """On SQLite two workers can pop the same enqueued trial (no row lock); the one that finishes
    second cannot record it, whether the other finished while it scored or just before its tell.
    That worker goes on to the next trial instead of failing the whole search (CI saw `Cannot tell
    a COMPLETE trial` end a worker of tests/test_search.py's two-worker test)."""
    data, build, config, model, c, forget, calibration = setup
    scorer = tuning.CalibrationScorer(model, data, [calibration])
    study = tuning.make_study(None, None, seed=0)
    finished = []

    def other_worker_records_the_running_trial(metrics):
        (running,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        study._storage.set_trial_user_attr(running._trial_id, "metrics", dict(metrics))
        study.tell(running.number, 0.123)

    class Scorer:
        metrics = None

        def run(self, plan, report=None):
            metrics = scorer.run(plan, report=report)
            if when == "while_scoring" and not finished:
                other_worker_records_the_running_trial(metrics)
            return metrics

    class Observer:
        def trial_finished(self, trial, plan, metrics, state, reason=""):
            if when == "before_tell" and not finished:
                other_worker_records_the_running_trial(metrics)
            finished.append((trial.number, state))

    cands = tuning.algorithm_candidates("neggrad", max_epochs=1)
    tuning.optimize(study, cands, Scorer(), n_trials=3, observer=Observer(),
                    enqueue=tuning.algorithm_default_trials("neggrad"))
    assert finished[0] == (0, "duplicate" if when == "while_scoring" else "complete")
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE and study.trials[0].value == 0.123  # theirs stands
    assert sum(tuning.counts_against_budget(t) for t in study.trials) == 3  # the search went on to its budget
    assert all(state == "complete" for _, state in finished[1:])


class _DefaultsScoreBest:
    """A stand-in scorer (no unlearning): a plan at the algorithm's defaults scores 0.9, any searched
    setting less, as on seed 2 of the CPU benchmark where TPE then kept drawing the defaults."""
    metrics = None

    def __init__(self):
        self.scored = []

    def run(self, plan, report=None):
        self.scored.append(plan.to_compact())
        hp = plan.steps[0].hyperparameters
        return {"tow": 0.9 if not hp else 0.5 + 0.3 * min(1.0, hp["lr"] * 10), "time/unlearn_s": 0.0}


def test_a_study_whose_defaults_score_best_still_scores_its_budget_of_plans():
    """After a repeat the sampler draws at random (searched branch), so a study whose defaults win
    reaches its budget of distinct plans instead of redrawing the defaults until it stops short."""
    scorer = _DefaultsScoreBest()
    study = tuning.make_study(None, None, seed=2)
    tuning.optimize(study, tuning.algorithm_candidates("neggrad_plus", max_epochs=2), scorer, n_trials=8,
                    enqueue=tuning.algorithm_default_trials("neggrad_plus"))
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(scorer.scored) == len(set(scorer.scored)) == 8 and tuning.budget_spent(study, 8)
    repeats = [t.number for t in trials if "repeat_of" in t.user_attrs]
    assert all(n + 1 not in repeats for n in repeats), f"a repeat followed a repeat: trials {repeats}"
    assert study.best_trial.number == 0 and study.best_value == 0.9


def test_budget_spent_counts_scored_plans_or_repeats_in_a_row():
    study = optuna.create_study(direction="maximize")
    for repeat in [False, True, False, True, True]:
        t = study.ask()
        if repeat:
            t.set_user_attr("repeat_of", 0)
        study.tell(t, 0.5)
    assert not tuning.budget_spent(study, 3)  # 2 scored, 2 repeats in a row (3 needed)
    assert tuning.budget_spent(study, 2)  # 2 scored
    t = study.ask()
    t.set_user_attr("repeat_of", 0)
    study.tell(t, 0.5)
    assert tuning.budget_spent(study, 3)  # 3 repeats in a row: a space with fewer plans than the budget


def _study_of(points, direction="maximize"):
    """A study holding finished trials (objective, cost) with plans p0, p1, ... as the search records them."""
    study = optuna.create_study(direction=direction)
    for i, (value, cost) in enumerate(points):
        plan = Plan([PlanStep("all", "finetune", {"epochs": i + 1})], "exclude_all", f"p{i}")
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={
            "plan": plan.to_dict(), "metrics": {"cost/train_fraction": cost}}))
    return study


def test_the_registered_plan_is_the_cheapest_within_the_calibration_noise_of_the_best():
    study = _study_of([(0.95, 0.10), (0.94, 0.03), (0.95, 0.06), (0.90, 0.0)])
    plan, value, best = tuning.cheapest_within(study, 0.0)  # no noise estimate: the best, cheapest among equals
    assert plan.name == "p2" and value == best == 0.95
    plan, value, best = tuning.cheapest_within(study, 0.015)  # 0.94 is within 0.015 of 0.95 and costs half
    assert plan.name == "p1" and value == 0.94 and best == 0.95
    plan, _, _ = tuning.cheapest_within(study, 0.05)  # doing nothing is within the noise: it is the answer
    assert plan.name == "p3"
    low = _study_of([(0.02, 0.1), (0.025, 0.01)], direction="minimize")  # e.g. mia/gap: lower is better
    assert tuning.cheapest_within(low, 0.01)[0].name == "p1" and tuning.cheapest_within(low, 0.0)[0].name == "p0"
    with pytest.raises(tuning.SearchError, match="tolerance must be a finite number >= 0, got -0.1"):
        tuning.cheapest_within(study, -0.1)


def test_budget_epochs_is_the_retain_passes_a_budget_pays_for_rounded_up():
    from mlflow_unlearn.candidates import budget_epochs, check_max_epochs

    # the demo: 0.1 of 30 epochs x 1,294 train images = 3,882 example passes over a retain set of 1,204
    assert budget_epochs(3882, 1204) == 4
    assert budget_epochs(2408, 1204) == 2 and budget_epochs(10, 1204) == 1
    # the CPU CIFAR benchmark: 0.1 of 40 x 2,700 over 2,400 retain images (its fixed bound was 2)
    assert budget_epochs(10800, 2400) == 5
    with pytest.raises(tuning.SearchError, match="retain set's size must be a whole number >= 1, got 0"):
        budget_epochs(100, 0)
    assert check_max_epochs("auto") == "auto" and check_max_epochs(2) == 2
    for bad in (0, 2.5, True, "many"):
        with pytest.raises(tuning.SearchError, match="max_epochs must be 'auto'"):
            check_max_epochs(bad)

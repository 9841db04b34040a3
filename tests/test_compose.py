"""The composed RUM search: arms from tuned settings, the coordinate path, copied trials, the end
when nothing scores (stand-in scores where the path is the point; digits where a real scorer is)."""
import optuna
import pytest

from mlflow_unlearn import compose, tuning
from mlflow_unlearn.rum import Plan, single_algorithm_plan


@pytest.fixture(scope="module")
def setup():
    from mlflow_unlearn.confidences import ConfidenceRecorder
    from mlflow_unlearn.data import DatasetSpec, load_dataset
    from mlflow_unlearn.forget_sets import calibration_forget_sets, mix_forget_set
    from mlflow_unlearn.memorization import tiers_from_c_proxy
    from mlflow_unlearn.models import build_model
    from mlflow_unlearn.training import TrainConfig, train_model

    data = load_dataset(DatasetSpec("digits", subset=300, val_fraction=0.1))
    config = TrainConfig(epochs=5, lr=0.05, batch_size=32)
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed, width=8)
    model = build(0)
    rec = ConfidenceRecorder(len(data.train))
    train_model(model, data, config, recorder=rec, progress=False, eval_test=False)
    c = rec.proxies()["c_proxy"]
    (cal_ids,) = calibration_forget_sets(c, mix_forget_set(c, 30), 1)
    ref_model, seconds = tuning.train_reference(build, config, data, cal_ids, seed=0)
    calibration = tuning.Reference.build(ref_model, data, cal_ids, tiers_from_c_proxy(cal_ids, c), seconds=seconds,
                                         heldout=data.val)
    return data, model, calibration


def test_composed_arms_are_none_and_each_tuned_setting():
    tuned = {"finetune": Plan.parse("all=finetune(lr=0.02,epochs=2)"), "salun": single_algorithm_plan("salun")}
    arms = compose.compose_arms(["none", "finetune", "salun", "neggrad"], tuned)
    assert list(arms) == ["none", "finetune", "salun", "neggrad"]  # neggrad was not tuned: its defaults
    assert arms["finetune"].hyperparameters == {"lr": 0.02, "epochs": 2} and arms["neggrad"].hyperparameters == {}
    first = compose.compose_default_trials(["low", "high"], arms)
    assert first == [{"low.arm": a, "high.arm": a} for a in ("none", "finetune", "salun", "neggrad")]
    study = optuna.create_study()
    study.enqueue_trial(first[1])
    plan = compose.compose_candidates(["low", "high"], arms)(study.ask())
    assert plan.to_compact() == "low=finetune(lr=0.02,epochs=2);high=finetune(lr=0.02,epochs=2)"
    plan.validate(["low", "high"])
    with pytest.raises(tuning.SearchError, match="unknown search strategy 'greedy'; valid: composed, joint"):
        tuning.check_strategy("greedy")


class _TableScorer:
    """Stand-in scores for a composed search: a fixed ToW per assignment (cost: one unit per
    non-`none` step), so the coordinate path is checked without training."""
    metrics = None

    def __init__(self, tow):
        self.tow, self.scored = tow, []

    def run(self, plan, report=None):
        key = tuple(s.algorithm for s in plan.steps)
        self.scored.append(key)
        return {"tow": self.tow(key), "cost/train_fraction": sum(a != "none" for a in key) / 100}


def test_composed_search_changes_one_tier_at_a_time_most_memorised_first():
    arms = compose.compose_arms(["none", "a", "b"], {})
    # the best plan: `b` on the high tier only; `a` everywhere is the best uniform start
    tow = lambda key: {("a", "a", "a"): 0.6, ("a", "a", "b"): 0.8, ("a", "none", "b"): 0.8,
                       ("none", "none", "b"): 0.9}.get(key, 0.1)
    scorer = _TableScorer(tow)
    study = tuning.make_study(None, None)
    study.pruner = optuna.pruners.NopPruner()
    compose.compose_search(study, ["low", "mid", "high"], arms, scorer, n_trials=20)
    assert scorer.scored[:3] == [("none",) * 3, ("a",) * 3, ("b",) * 3]
    assert scorer.scored[3:5] == [("a", "a", "none"), ("a", "a", "b")]  # high first, from the best uniform
    assert scorer.scored[5:7] == [("a", "none", "b"), ("a", "b", "b")]  # mid: `none` ties at lower cost
    assert scorer.scored[7:9] == [("none", "none", "b"), ("b", "none", "b")]
    plan, value, _ = tuning.cheapest_within(study)
    assert plan.to_compact() == "low=none;mid=none;high=b" and value == 0.9
    # a second pass changes nothing new: it scores only assignments not seen, then stops
    assert len(scorer.scored) == len(set(scorer.scored)) <= 20
    small = _TableScorer(tow)
    compose.compose_search(tuning.make_study(None, None), ["low", "mid", "high"], arms, small, n_trials=4)
    assert len(small.scored) == 4  # the budget caps the scored plans


def test_known_trials_compete_for_selection_without_being_scored_or_spending_budget(setup):
    """A composed study copies each tuned baseline's selected plan with its calibration metrics: the
    scorer never runs it, it spends none of the study's budget, a sampled repeat of it is free, and
    it is selected when nothing the study scores beats it."""
    data, model, calibration = setup
    scorer = tuning.CalibrationScorer(model, data, [calibration])
    whole = Plan.parse("all=finetune(lr=0.02,epochs=1)")
    whole.name = "tuned-finetune"
    known = compose.KnownTrial(whole, {"tow": 0.999, "cost/train_fraction": 0.05}, "tuned-finetune-study")
    scored = []

    class Counting:
        metrics = None

        def run(self, plan, report=None):
            scored.append(plan.to_compact())
            return scorer.run(plan, report=report)

    plans = ["all=none", "all=neggrad(epochs=1)"]
    study = tuning.make_study(None, None)
    assert compose.add_known_trials(study, [known]) == 1
    assert compose.add_known_trials(study, [known]) == 0  # a resumed study holds it already
    tuning.optimize(study, lambda t: Plan.parse(plans[t.number - 1]), Counting(), n_trials=2)
    assert scored == plans  # the copied plan was never run; both trials of the budget were scored
    assert [tuning.counts_against_budget(t) for t in study.trials] == [False, True, True]
    plan, value, best = tuning.cheapest_within(study)
    assert plan.to_dict() == whole.to_dict() and value == best == 0.999
    counts = tuning.trial_counts(study)
    assert counts["n_copied"] == 1 and counts["n_scored_sampled"] == 2 and counts["n_scored_enqueued"] == 0


def test_composed_search_ends_when_every_plan_is_pruned_or_diverged():
    arms = compose.compose_arms(["none", "a", "b"], {})

    class Diverging(_TableScorer):
        def run(self, plan, report=None):
            self.scored.append(tuple(s.algorithm for s in plan.steps))
            raise tuning.Diverged("non-finite weights")

    scorer = Diverging(None)
    study = tuning.make_study(None, None)
    compose.compose_search(study, ["low", "mid", "high"], arms, scorer, n_trials=50)
    # three starts and one pass of single-tier changes (6), then no change: it stops, budget left
    assert len(scorer.scored) == 9 == len(set(scorer.scored))
    with pytest.raises(tuning.NoCompletedTrial):
        tuning.cheapest_within(study)


def test_a_trial_behind_the_best_after_a_set_is_pruned_one_ahead_is_not():
    study = optuna.create_study(direction="maximize", pruner=compose.BehindBestPruner())
    best = study.ask()
    best.report(0.90, 0)  # after calibration set 1
    study.tell(best, 0.85)  # its mean over both sets
    worse_final = study.ask()
    worse_final.report(0.95, 0)
    study.tell(worse_final, 0.80)  # a better first set does not make it the best
    behind, ahead = study.ask(), study.ask()
    behind.report(0.89, 0)
    ahead.report(0.91, 0)
    assert behind.should_prune() and not ahead.should_prune()  # compared with the best plan's first set
    empty = optuna.create_study(direction="maximize", pruner=compose.BehindBestPruner()).ask()
    empty.report(0.1, 0)
    assert not empty.should_prune()  # nothing complete yet: nothing to be behind

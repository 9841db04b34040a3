"""bench/bench_reference_free.py re-ranks a seed's stored trials by ToW against reference accuracies
estimated without a retrain: the choice follows the estimate, the reported score is the stored one."""
import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench = pytest.importorskip("bench_reference_free")


def plan(algorithm, **hp):
    return {"name": f"tuned-{algorithm}", "retain_mode": "exclude_all",
            "steps": [{"tier": "all", "algorithm": algorithm, "hyperparameters": hp}]}


def test_the_estimate_chooses_and_the_stored_calibration_tow_scores_the_choice(tmp_path):
    truth = bench.ReferenceAccuracies(forget=0.60, retain=0.98, validation=0.64)
    estimate = bench.ReferenceAccuracies(forget=0.80, retain=0.98, validation=0.64)  # too optimistic on forget
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="finetune", storage=storage, direction="maximize")
    for lr, forget in ((0.01, 0.60), (0.02, 0.80), (0.03, 0.95)):
        metrics = {"forget/acc": forget, "retain/acc": 0.98, "test/acc": 0.64}
        metrics["tow"] = bench.tow_against(metrics, truth)  # what the search stored: against the real reference
        study.add_trial(optuna.trial.create_trial(value=metrics["tow"], user_attrs={"plan": plan("finetune", lr=lr),
                                                                                   "metrics": metrics}))
    pruned = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"plan": plan("finetune", lr=9.0)})
    study.add_trial(pruned)

    trials = bench.complete_trials(tmp_path / "studies.db")
    assert [t["plan"]["steps"][0]["hyperparameters"]["lr"] for t in trials] == [0.01, 0.02, 0.03]  # pruned left out

    r = bench.compare(trials, estimate, truth)
    assert r["best"]["plan"] == plan("finetune", lr=0.01) and r["best_tow"] == pytest.approx(1.0)
    assert r["chosen"]["plan"] == plan("finetune", lr=0.02)  # the estimate's optimum, forget 0.80
    assert r["chosen_tow"] == pytest.approx(0.8) and r["chosen_rank"] == 2  # scored against the truth
    assert r["chosen_estimate"] == pytest.approx(1.0)
    assert r["recomputed_error"] == pytest.approx(0.0)
    assert r["spearman"] == pytest.approx(-0.5)  # estimated ranks 1, 3, 2 against stored ranks 3, 2, 1

    assert bench.compare(trials, truth, truth)["chosen"]["plan"] == r["best"]["plan"]  # an exact estimate agrees


def test_the_rank_matched_mean_of_correctness_is_the_gates_estimate_and_probabilities_soften_it():
    import numpy as np

    from mlflow_unlearn.gate import heldout_never_seen, tier_expectation

    rng = np.random.default_rng(0)
    train_c = rng.uniform(0, 1, 500)
    held_c = rng.uniform(0, 0.8, 120)  # another scale: matched by rank
    prob = np.clip(held_c + rng.normal(0, 0.1, 120), 0, 1)  # the original's true-class probability
    correct = (prob > 0.5).astype(float)
    tier = np.sort(train_c)[200:260]  # a middle tier
    gate = tier_expectation(heldout_never_seen(train_c, held_c, correct), tier)[0]
    assert bench.rank_matched_mean(train_c, held_c, correct, tier) == pytest.approx(gate)
    soft = bench.rank_matched_mean(train_c, held_c, prob, tier)
    assert abs(soft - 0.5) < abs(gate - 0.5)  # probabilities near 0.5 in the middle: less sharp than 0/1
    with pytest.raises(ValueError):
        bench.rank_matched_mean(train_c, held_c, prob[:10], tier)  # one value per held-out example

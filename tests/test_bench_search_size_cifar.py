"""bench/bench_search_size_cifar.py prices smaller searches from a CIFAR seed's stored trials and
reports: the choice reads calibration scores only, the ToW is the held-out row, the cost adds up."""
import json
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench = pytest.importorskip("bench_search_size_cifar")


def plan(algorithm, **hp):
    return {"name": f"tuned-{algorithm}", "retain_mode": "exclude_all",
            "steps": [{"tier": "all", "algorithm": algorithm, "hyperparameters": hp}]}


def store_seed(tmp_path, seed=1):
    cache = tmp_path / f"seed{seed}-cache"
    cache.mkdir()
    # 100 train examples; calibration sets of 10 that share 2 ids: the 2-set union is 18
    np.savez(cache / "sets.npz", forget=np.arange(10), k=np.array(2), calibration_0=np.arange(20, 30),
             calibration_1=np.arange(28, 38))
    storage = f"sqlite:///{cache / 'studies.db'}"
    # on calibration set 0 finetune's defaults lead, on the mean of both salun's do
    scores = {"finetune": (0.80, 0.60), "salun": (0.70, 0.90)}
    for algorithm, (c0, c1) in scores.items():
        study = optuna.create_study(study_name=algorithm, storage=storage, direction="maximize")
        metrics = {"calibration/0/tow": c0, "calibration/1/tow": c1, "cost/train_fraction": 0.05}
        study.add_trial(optuna.trial.create_trial(value=(c0 + c1) / 2, user_attrs={"plan": plan(algorithm),
                                                                                 "metrics": metrics}))
        tuned = dict(metrics, **{"calibration/0/tow": 0.99, "calibration/1/tow": 0.99})
        study.add_trial(optuna.trial.create_trial(value=0.99, user_attrs={"plan": plan(algorithm, lr=0.5),
                                                                          "metrics": tuned}))
    rows = [{"method": "RUM (searched plan)", "budget": 0.1, "tow": 0.95, "cost/train_fraction": 0.09,
             "plan": "all=salun(lr=0.5)"},
            {"method": "none (no unlearning)", "budget": 0.1, "tow": 0.6, "cost/train_fraction": 0.0, "plan": "all=none"},
            {"method": "finetune (defaults)", "budget": 0.1, "tow": 0.70, "cost/train_fraction": 0.1, "plan": "all=finetune"},
            {"method": "finetune (tuned)", "budget": 0.1, "tow": 0.90, "cost/train_fraction": 0.1,
             "plan": "all=finetune(lr=0.5)"},
            {"method": "salun (defaults)", "budget": 0.1, "tow": 0.85, "cost/train_fraction": 0.08, "plan": "all=salun"},
            {"method": "salun (tuned)", "budget": 0.1, "tow": 0.95, "cost/train_fraction": 0.09,
             "plan": "all=salun(lr=0.5)"}]
    result = {"seed": seed, "n_train": 100, "rows": rows, "floor": {"floor/tow": 0.97},
              "search": {"calibration_tow": {"finetune": 0.99, "salun": 0.95}},
              "costs": {"rum_search": 3.0, "baseline_searches": {"finetune": 1.0, "salun": 1.2},
                        "estimated": {"finetune": 0.25}}}
    (tmp_path / f"seed{seed}.json").write_text(json.dumps({"result": result}))


def test_smaller_searches_choose_on_calibration_and_report_held_out(tmp_path):
    store_seed(tmp_path)
    result = json.loads((tmp_path / "seed1.json").read_text())["result"]
    sizes = {s["size"]: s for s in bench.seed_sizes(result, tmp_path / "seed1-cache", 0.1)}
    one, two = sizes["defaults, 1 calibration set"], sizes["defaults, 2 calibration sets"]
    # one set: finetune's defaults win on calibration (0.80 > 0.70) and report their held-out row,
    # not salun's better held-out 0.85; reference without 10 of 100 + 2 defaults x 1 set + the request
    assert one["choice"].startswith("finetune (defaults)") and one["tow"] == 0.70
    assert one["first"] == pytest.approx(0.90 + 2 * 0.05 + 0.1)
    # two sets: salun's mean 0.80 beats finetune's 0.70; the reference lacks the union of 18 ids
    assert two["choice"].startswith("salun (defaults)") and two["tow"] == 0.85
    assert two["first"] == pytest.approx(0.82 + 2 * 2 * 0.05 + 0.08)
    assert sizes["tune finetune only"]["first"] == pytest.approx(0.82 + 1.0 + 0.1)
    assert "0.25 of it estimated" in sizes["tune finetune only"]["choice"]
    assert sizes["tune salun only"]["tow"] == 0.95
    assert sizes["full search (what ran)"]["first"] == pytest.approx(0.82 + 3.0 + 0.09)
    # the defaults rank salun first (mean 0.80): tuning it alone; tuning both registers finetune,
    # the better tuned one on calibration (0.99 > 0.95), whose held-out row is worse
    top1, top2 = sizes["tune the top 1 by defaults"], sizes["tune the top 2 by defaults (all, no composition)"]
    # the ranking scored finetune's defaults on both calibration sets too (2 x 0.05)
    assert top1["tow"] == 0.95 and top1["first"] == pytest.approx(0.82 + 1.2 + 2 * 0.05 + 0.09)
    assert top2["tow"] == 0.90 and top2["first"] == pytest.approx(0.82 + 1.2 + 1.0 + 0.1)
    text = bench.report(tmp_path, 0.1)
    assert "| defaults, 1 calibration set | 1.100 | 0.700 |" in text and "noise floor) 0.970" in text


def test_a_results_dir_without_a_complete_seed_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="no complete seed"):
        bench.report(tmp_path, 0.1)

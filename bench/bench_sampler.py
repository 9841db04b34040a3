"""How many random start-up trials a tuning should spend before TPE models the scores (core only).

    .venv/bin/python bench/bench_sampler.py                                   # the demo's setting
    .venv/bin/python bench/bench_sampler.py --startup 10 4 2 --seeds 0 1 2 3 --algorithms finetune salun

At the trial budgets the product runs (`main` 16 per study, the CPU benchmark 10) Optuna's TPE
draws its first 10 trials at random (`n_startup_trials`, its default), so a tuning is mostly random
search. This measures what fewer start-up trials buy on the demo's data: the digits-noisy original
(small_cnn, 30 epochs, as `main` trains it), its `mix:90` request's two calibration sets drawn
inside the calibration pool and scored against one reference retrained without the pool (as
`search.prepare_calibration` does), then, per algorithm, start-up count and sampler seed, one
tuning (`tuning.optimize`, the defaults enqueued first, epochs bounded by the budget as
`--max-epochs auto` bounds them) at the default budget 0.1. It prints the best mean calibration
ToW each tuning reached and what its trials cost in trainings. These are selection scores: they
compare optimisers on the objective they optimise, not unlearning quality on held-out data.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlflow_unlearn import tuning  # noqa: E402
from mlflow_unlearn.algorithms import TrainRecipe  # noqa: E402
from mlflow_unlearn.candidates import algorithm_candidates, algorithm_default_trials, budget_epochs  # noqa: E402
from mlflow_unlearn.compute import DEFAULT_BUDGET, Budget, ComputeMeter  # noqa: E402
from mlflow_unlearn.confidences import ConfidenceRecorder  # noqa: E402
from mlflow_unlearn.data import DatasetSpec, load_dataset  # noqa: E402
from mlflow_unlearn.forget_sets import calibration_forget_sets, calibration_pool, mix_forget_set  # noqa: E402
from mlflow_unlearn.memorization import tiers_from_c_proxy  # noqa: E402
from mlflow_unlearn.metrics import outputs_for  # noqa: E402
from mlflow_unlearn.models import build_model  # noqa: E402
from mlflow_unlearn.training import TrainConfig, train_model  # noqa: E402
from mlflow_unlearn.statistics import mean_ci  # noqa: E402

TIERS = ("low", "mid", "high")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--startup", type=int, nargs="+", default=[10, 4], help="start-up trial counts to compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds per count")
    p.add_argument("--algorithms", nargs="+", default=["finetune", "salun"])
    p.add_argument("--trials", type=int, default=16, help="trials per tuning (main's default)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()

    data = load_dataset(DatasetSpec("digits-noisy", val_fraction=0.1))
    config = TrainConfig(epochs=30, lr=0.05, batch_size=64, seed=0)
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed)
    model, recorder, counted = build(0), ConfidenceRecorder(len(data.train)), ComputeMeter()
    with counted.watching(model):
        train_model(model, data, config, recorder=recorder, progress=False, eval_test=False)
    counted.strip(model)
    model.eval()
    unit = counted.train_passes
    c_proxy = recorder.proxies()["c_proxy"]
    request = mix_forget_set(c_proxy, 90, names=TIERS, seed=0)
    pool = calibration_pool(c_proxy, 90, 2, names=TIERS, seed=0)
    sets = calibration_forget_sets(c_proxy, request, 2, names=TIERS, seed=0, pool=pool)
    union = np.unique(np.concatenate(sets))
    reference, _ = tuning.train_reference(build, config, data, union, seed=1000)
    reference.eval()
    retain = np.setdiff1d(np.arange(len(data.train)), union)
    references = [tuning.Reference(np.sort(ids), tiers_from_c_proxy(np.sort(ids), c_proxy, TIERS), reference,
                                   outputs_for(reference, data, np.sort(ids), retain, heldout=data.val), float("nan"),
                                   heldout=data.val, retain_ids=retain)
                  for ids in sets]
    budget = Budget(DEFAULT_BUDGET, unit)
    max_epochs = budget_epochs(budget.passes, len(data.train) - len(request))
    print(f"setup: {len(data.train)} train, original {unit} example passes, 2 calibration sets of "
          f"{len(sets[0])}, max_epochs auto = {max_epochs}; {time.perf_counter() - t0:.0f} s", flush=True)

    rows = []
    for algorithm in a.algorithms:
        for startup in a.startup:
            best, cost = [], []
            for seed in a.seeds:
                scorer = tuning.CalibrationScorer(model, data, references, seed=0, recipe=TrainRecipe(build, config),
                                                  budget=budget)
                study = tuning.make_study(None, None, seed=seed, startup_trials=startup)
                tuning.optimize(study, algorithm_candidates(algorithm, max_epochs=max_epochs), scorer,
                                n_trials=a.trials, enqueue=algorithm_default_trials(algorithm))
                best.append(tuning.best_plan(study)[1])
                cost.append(scorer.spent_passes / unit)
                print(f"  {algorithm} startup {startup} seed {seed}: best calibration ToW {best[-1]:.4f}, "
                      f"cost {cost[-1]:.2f} trainings", flush=True)
            rows.append((algorithm, startup, best, cost))

    print(f"\n`{' '.join(['python', *sys.argv])}`\n")
    print(f"- machine: {torch.get_num_threads()} torch thread(s), {platform.processor() or platform.machine()}; "
          f"{time.perf_counter() - t0:.0f} s in all")
    print(f"- {a.trials} trials per tuning, budget {DEFAULT_BUDGET}, sampler seeds {a.seeds}; best mean "
          f"calibration ToW per tuning (selection scores), mean [95% interval] over sampler seeds\n")
    print("| algorithm | start-up trials | best calibration ToW | per seed | cost (trainings) |")
    print("|---|---|---|---|---|")
    for algorithm, startup, best, cost in rows:
        m, lo, hi = mean_ci(best)
        print(f"| {algorithm} | {startup} | {m:.4f} [{lo:.4f}, {hi:.4f}] | {', '.join(f'{b:.4f}' for b in best)} | "
              f"{np.mean(cost):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

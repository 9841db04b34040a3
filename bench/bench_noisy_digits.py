"""Does the demo's data have something to unlearn? The noisy-digits regime, measured (core only).

    .venv/bin/python bench/bench_noisy_digits.py                       # digits-noisy (10%), 30 epochs: the demo
    .venv/bin/python bench/bench_noisy_digits.py --dataset digits --epochs 15
    .venv/bin/python bench/bench_noisy_digits.py --atypical 0.2        # plus 20% of clean train images shifted 2 px

Trains the demo's original (small_cnn, lr 0.05, batch 64, 10% validation split, seed 0) with the
C-proxy recorder, draws the `mix:90` request and two calibration sets inside the calibration pool
(as `main` does), retrains one reference without the request and one without the calibration
sets' union, and prints: train/test accuracy, how well the C-proxy separates the flipped examples
(ROC AUC, low C-proxy = flipped), and for the request and each calibration set the original's and
the reference's accuracy per tier with the flipped (and shifted) examples per tier. The request
has something to unlearn where the reference gets a tier wrong that the original gets right; the
calibration sets are useful for selection where they show the same pattern.

`--atypical F` shifts a seeded F of the clean train images by 2 pixels (a diagonal roll): correctly
labelled but atypical images, tried to give the middle tier something to do (bench/README.md: it did not).
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlflow_unlearn.confidences import ConfidenceRecorder  # noqa: E402
from mlflow_unlearn.data import DatasetSpec, load_dataset  # noqa: E402
from mlflow_unlearn.forget_sets import calibration_forget_sets, calibration_pool, mix_forget_set  # noqa: E402
from mlflow_unlearn.memorization import tiers_from_c_proxy  # noqa: E402
from mlflow_unlearn.models import build_model  # noqa: E402
from mlflow_unlearn.training import TrainConfig, predict_logits, train_model  # noqa: E402

TIERS = ("low", "mid", "high")


def shift_some(data, fraction: float, seed: int = 7) -> np.ndarray:
    """Roll a seeded `fraction` of the clean train images by 2 pixels (in place); their ids."""
    rng = np.random.RandomState(seed)
    flipped = data.flipped_ids if data.flipped_ids is not None else np.zeros(0, dtype=np.int64)
    clean = np.setdiff1d(np.arange(len(data.train)), flipped)
    ids = np.sort(rng.choice(clean, int(round(fraction * len(data.train))), replace=False))
    for i in ids:
        dy, dx = (int(v) for v in rng.choice([-2, 2], size=2))
        data.train.x[i] = torch.roll(data.train.x[i], (dy, dx), (1, 2))
    return ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits-noisy")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--atypical", type=float, default=0.0, help="share of clean train images shifted by 2 px")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    data = load_dataset(DatasetSpec(a.dataset, val_fraction=0.1))
    shifted = shift_some(data, a.atypical) if a.atypical > 0 else np.zeros(0, dtype=np.int64)
    flipped = data.flipped_ids if data.flipped_ids is not None else np.zeros(0, dtype=np.int64)
    config = lambda seed: TrainConfig(epochs=a.epochs, lr=0.05, batch_size=64, seed=seed)
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed)

    def train(train_ids, seed, recorder=None):
        subset = dataclasses.replace(data, train=data.train.subset(train_ids)) if recorder is None else data
        model = build(seed)
        t0 = time.perf_counter()
        train_model(model, subset, config(seed), recorder=recorder, progress=False, eval_test=False)
        return model.eval(), time.perf_counter() - t0

    def accuracy(model, ids) -> float:
        split = data.train.subset(ids) if ids is not None else data.test
        return float((predict_logits(model, data, split).argmax(1) == split.y).float().mean())

    recorder = ConfidenceRecorder(len(data.train))
    original, seconds = train(None, 0, recorder)
    c = recorder.proxies()["c_proxy"]
    print(f"{a.dataset}, {a.epochs} epochs, {len(data.train)} train: {len(flipped)} flipped labels, {len(shifted)} "
          f"shifted images; original train acc {accuracy(original, np.arange(len(data.train))):.3f}, test acc "
          f"{accuracy(original, None):.3f} ({seconds:.1f} s per training)")
    if len(flipped):
        label = np.isin(np.arange(len(c)), flipped)
        print(f"C-proxy vs flipped: ROC AUC {roc_auc_score(label, -c):.3f} (1 = every flipped example below every clean one)")
    request = mix_forget_set(c, 90, names=TIERS, seed=0)
    pool = calibration_pool(c, 90, 2, names=TIERS, seed=0)
    calibration = calibration_forget_sets(c, request, 2, names=TIERS, seed=0, pool=pool)
    everything = np.arange(len(data.train))
    for label, sets in (("request", [request]), ("calibration", calibration)):
        union = np.unique(np.concatenate(sets))
        reference, _ = train(np.setdiff1d(everything, union), 1000)
        for j, ids in enumerate(sets):
            tiers = tiers_from_c_proxy(np.sort(ids), c, TIERS)
            cell = lambda model: "/".join(f"{accuracy(model, v):.2f}" for v in tiers.values())
            count = lambda marked: "/".join(str(int(np.isin(v, marked).sum())) for v in tiers.values())
            name = label if len(sets) == 1 else f"{label} set {j + 1}"
            print(f"  {name:<18} per tier low/mid/high: original {cell(original)}, reference {cell(reference)}; "
                  f"flipped {count(flipped)}, shifted {count(shifted)}")
    print(f"{time.perf_counter() - t_start:.0f} s on {platform.machine()} ({torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

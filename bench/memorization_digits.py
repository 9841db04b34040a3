"""How well do the cheap memorisation proxies track the Feldman-Zhang estimate on digits?

Trains the original small_cnn on the full digits train split (1437 examples) with a
ConfidenceRecorder, then estimates memorisation with K models on random 70% subsets
(`mlflow_unlearn.memorization_estimate.estimate_memorization`) and prints the Spearman correlation of
C-proxy, max_conf, entropy and learning_events with the estimate. The RUM paper reports about -0.9
for C-proxy on CIFAR-10 (confidences correlate negatively with memorisation).

    .venv/bin/python bench/memorization_digits.py --models 20 --workers 2 [--workdir DIR] [--out result.json]

With --workdir the models are saved as they finish and a rerun continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from mlflow_unlearn.confidences import ConfidenceRecorder
from mlflow_unlearn.data import load_dataset
from mlflow_unlearn.memorization_estimate import estimate_memorization, proxy_correlations
from mlflow_unlearn.models import build_model
from mlflow_unlearn.training import TrainConfig, accuracy, train_model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20, help="number of subset models K (default 20)")
    ap.add_argument("--fraction", type=float, default=0.7, help="subset fraction p (default 0.7)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the original model (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="save/resume the subset models here")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=15, lr=0.05, batch_size=64, seed=args.seed)
    data = load_dataset("digits")
    print(f"digits: {len(data.train)} train, {len(data.test)} test; small_cnn, {config}", flush=True)

    t0 = time.perf_counter()
    recorder = ConfidenceRecorder(len(data.train))
    model = build_model("small_cnn", num_classes=data.num_classes, input_shape=data.input_shape, seed=args.seed)
    train_model(model, data, config, recorder=recorder, progress=False, eval_test=False)
    proxies = recorder.proxies()
    original = {"train_acc": accuracy(model, data, data.train), "test_acc": accuracy(model, data, data.test),
                "seconds": time.perf_counter() - t0}
    print(f"original model: train acc {original['train_acc']:.4f}, test acc {original['test_acc']:.4f} "
          f"({original['seconds']:.1f}s)", flush=True)

    est = estimate_memorization(data, model_name="small_cnn", train_config=config, n_models=args.models,
                                subset_fraction=args.fraction, seed=args.seed, workdir=args.workdir,
                                n_workers=args.workers, progress=True)
    mem = est.mem
    finite = np.isfinite(mem)
    corr = proxy_correlations(mem, proxies)

    # How the estimate spreads over the C-proxy bins of the train set (thirds by -C-proxy).
    order = np.argsort(-proxies["c_proxy"], kind="stable")
    by_bin = {name: float(np.nanmean(mem[part])) for name, part in zip(("low", "mid", "high"), np.array_split(order, 3))}
    lowest_c = order[-len(order) // 10:]  # the 10% lowest C-proxy
    # On an easy data set almost every estimate is exactly 0, so Spearman is dominated by ties.
    # Two tie-robust views: how well each proxy separates mem > 0 from mem <= 0 (ROC AUC, 1 = every
    # memorised example scores as more memorised), and Spearman among the examples with mem != 0.
    pos = finite & (mem > 0)
    neg = finite & (mem <= 0)
    sign = {"c_proxy": -1, "max_conf": -1, "entropy": 1, "learning_events": -1}
    auc = {}
    for name, values in proxies.items():
        if pos.any() and neg.any():
            u = mannwhitneyu(sign.get(name, 1) * values[pos], sign.get(name, 1) * values[neg]).statistic
            auc[name] = float(u / (pos.sum() * neg.sum()))
    overlap = float(np.isin(np.flatnonzero(pos), lowest_c).mean()) if pos.any() else float("nan")
    nonzero = finite & (mem != 0)
    corr_nonzero = proxy_correlations(np.where(nonzero, mem, np.nan), proxies)

    result = {
        "n_train": len(data.train), "n_models": est.n_models_done, "n_trained": est.n_trained,
        "subset_fraction": args.fraction, "estimator_seconds": est.seconds,
        "mem_coverage": float(finite.mean()), "mem_mean": float(np.nanmean(mem)),
        "mem_frac_above_0.5": float(np.mean(mem[finite] > 0.5)), "mem_frac_zero": float(np.mean(mem[finite] == 0)),
        "mean_out_models": float(est.out_counts.mean()),
        "n_mem_positive": int(pos.sum()), "auc_mem_positive": auc, "spearman_nonzero": corr_nonzero,
        "original": original, "spearman": corr, "mean_mem_by_c_proxy_bin": by_bin,
        "mem_positive_in_lowest10pct_c_proxy": overlap,
    }
    print(f"\nFeldman-Zhang: K={est.n_models_done} at p={args.fraction} ({est.n_trained} trained now, "
          f"{est.seconds:.0f}s); finite for {finite.mean():.1%} of train, mean {np.nanmean(mem):.3f}, "
          f"{np.mean(mem[finite] > 0.5):.1%} above 0.5, {np.mean(mem[finite] == 0):.1%} exactly 0")
    print("Spearman correlation with the estimate (confidences should be negative):")
    for name, value in corr.items():
        print(f"  {name:16s} {value:+.3f}")
    print(f"{int(pos.sum())} examples with mem > 0; ROC AUC of each proxy (oriented as memorisation) for mem > 0 "
          f"vs mem <= 0, and Spearman among the {int(nonzero.sum())} with mem != 0:")
    for name in proxies:
        print(f"  {name:16s} AUC {auc.get(name, float('nan')):.3f}   Spearman(nonzero) {corr_nonzero[name]:+.3f}")
    print("mean estimate per train C-proxy third: " + ", ".join(f"{k} {v:.3f}" for k, v in by_bin.items()))
    print(f"of the {int(pos.sum())} examples with mem > 0, {overlap:.0%} are among the 10% lowest C-proxy")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

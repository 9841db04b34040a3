"""Could the search choose without its calibration reference? Read from the CPU CIFAR benchmark's
stored trials: no unlearning, no retraining (about a minute a seed: the data and one forward pass of
the original over the train and validation images).

    .venv/bin/python bench/bench_reference_free.py                      # bench/results/rum-cpu-auto
    .venv/bin/python bench/bench_reference_free.py --results-dir DIR --seeds 1 0

Why: issue 26's first request (calibration reference + search + request) is to cost at most 1.5
trainings, and the calibration reference alone is a retrain without the calibration sets, 0.78 of
a training on this benchmark (docs/bench_rum.md). A search that scored plans without it could spend
that share on trials instead. Every calibration score today is ToW against that reference:
(1 - |forget acc - the reference's|) x (1 - |retain acc - the reference's|) x (1 - |validation acc -
the reference's|). Without a retrain the three reference accuracies can be estimated from the
original model alone:

- forget: the acceptance gate's never-seen estimate (gate.heldout_never_seen): each calibration
  tier's expected accuracy from validation examples of the same C-proxy rank, which the original
  never trained on, weighted by the tier sizes;
- retain: the original's own accuracy on the same retain ids (a retrain fits retain about as well);
- validation: the original's own validation accuracy.

This script puts those estimates beside the truth (the stored calibration reference's outputs) and
re-ranks every complete trial of every stored study by the estimated ToW: how well the estimate
orders the trials (Spearman) and what the plan it would choose scores against the real reference,
beside the plan the reference chose. Scores are the trials' own stored metrics (each the mean over
the calibration sets); the estimated score applies the formula to those means, and so does the
"recomputed" column (the same formula with the true reference's accuracies), which shows how far
the formula on means sits from the stored mean of per-set ToW. Everything here is calibration
data: the held-out rows of docs/bench_rum.md are not read, so nothing reported there is chosen
here.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


@dataclass(frozen=True)
class ReferenceAccuracies:
    """The three accuracies ToW compares against, each the mean over the calibration sets."""

    forget: float
    retain: float
    validation: float


def tow_against(metrics: dict, ref: ReferenceAccuracies) -> float:
    """ToW (metrics.tow) of one trial's mean accuracies against reference accuracies."""
    from mlflow_unlearn.metrics import tow

    return tow(abs(metrics["forget/acc"] - ref.forget), abs(metrics["retain/acc"] - ref.retain),
               abs(metrics["test/acc"] - ref.validation))


def complete_trials(studies_db: Path) -> list[dict]:
    """Every complete trial of every study with its plan and metrics (read-only: stored results)."""
    con = sqlite3.connect(f"file:{studies_db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT s.study_name, t.number, p.value_json, m.value_json FROM trials t "
            "JOIN studies s USING (study_id) "
            "JOIN trial_user_attributes p ON p.trial_id = t.trial_id AND p.key = 'plan' "
            "JOIN trial_user_attributes m ON m.trial_id = t.trial_id AND m.key = 'metrics' "
            "WHERE t.state = 'COMPLETE' ORDER BY s.study_name, t.number").fetchall()
    finally:
        con.close()
    return [{"study": study, "number": number, "plan": json.loads(plan), "metrics": json.loads(metrics)}
            for study, number, plan, metrics in rows]


def plan_text(plan: dict) -> str:
    def step(s):
        hp = ",".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["hyperparameters"].items())
        return f"{s['tier']}={s['algorithm']}" + (f"({hp})" if hp else "")
    return ";".join(step(s) for s in plan["steps"])


def rank_correlation(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def compare(trials: list[dict], estimate: ReferenceAccuracies, truth: ReferenceAccuracies) -> dict:
    """The trials ranked by the stored calibration ToW (what the search used) and by the estimate."""
    stored = np.array([t["metrics"]["tow"] for t in trials])
    estimated = np.array([tow_against(t["metrics"], estimate) for t in trials])
    recomputed = np.array([tow_against(t["metrics"], truth) for t in trials])
    best, chosen = int(np.argmax(stored)), int(np.argmax(estimated))
    return {"n": len(trials), "spearman": rank_correlation(estimated, stored),
            "recomputed_error": float(np.max(np.abs(recomputed - stored))),
            "best": trials[best], "best_tow": float(stored[best]),
            "chosen": trials[chosen], "chosen_tow": float(stored[chosen]), "chosen_estimate": float(estimated[chosen]),
            "chosen_rank": int(np.sum(stored > stored[chosen])) + 1}


def rank_matched_mean(train_c_proxy, heldout_c_proxy, heldout_values, c_values, neighbours: int = 50) -> float:
    """The gate's never-seen expectation for examples with C-proxy `c_values` (gate.heldout_never_seen
    + tier_expectation): held-out example j at quantile q of the held-out C-proxy stands for a train
    example at quantile q of the train C-proxy, and each example takes the mean of `heldout_values`
    over its `neighbours` nearest stand-ins. With the original's 0/1 correctness it is what the gate
    uses today (`hard`); with its true-class probability, the `soft` variant."""
    from mlflow_unlearn.gate import GateThresholds, heldout_never_seen, tier_expectation

    never_seen = heldout_never_seen(train_c_proxy, heldout_c_proxy, heldout_values)
    return tier_expectation(never_seen, c_values, GateThresholds(neighbours=neighbours))[0]


ESTIMATES = {
    "hard": "the gate's: the original's 0/1 correctness on rank-matched validation examples",
    "soft": "the original's true-class probability on rank-matched validation examples",
}


def seed_references(results_dir: Path, seed: int, data_path: str):
    """({estimate name: ReferenceAccuracies}, truth, per-tier lines) for one stored seed: the
    original from `original.pt`, the calibration references' outputs from their cached targets.
    Both estimates take retain and validation as the original's own accuracies; they differ in the
    forget estimate (ESTIMATES)."""
    import torch

    import bench_unlearning as bu
    from mlflow_unlearn.training import predict_logits

    cache_dir = results_dir / f"seed{seed}-cache"
    key = json.loads((cache_dir / "config.json").read_text())
    scale = bu.Scale(**{**key["scale"], "seeds": (seed,), "curve": tuple(key["scale"]["curve"])})
    cache = bu.SeedCache(str(results_dir), seed, key)
    data = bu.load(argparse.Namespace(data=data_path), scale, seed, torch.device("cpu"))

    def untrained():
        raise SystemExit(f"{cache_dir / 'original.pt'} is missing or from another recipe: run bench_unlearning.py --mode rum first")
    original = cache.original(untrained, data, scale, seed, where="")
    if original.heldout_c_proxy is None:
        raise SystemExit(f"{cache_dir / 'original.pt'} has no validation C-proxy: the estimate needs one")
    c = np.asarray(original.c_proxy, dtype=np.float64)
    val_logits = predict_logits(original.model, data, data.val)
    val_y = data.val.y
    per_example = {"hard": (val_logits.argmax(1) == val_y).double().cpu().numpy(),
                   "soft": torch.softmax(val_logits.double(), 1)[torch.arange(len(val_y)), val_y].cpu().numpy()}
    targets = [t for j in range(scale.calibration_sets) if (t := cache.cached_target(f"calibration {j + 1} (pool)", data))]
    if len(targets) != scale.calibration_sets:
        raise SystemExit(f"{cache_dir}: {len(targets)} of {scale.calibration_sets} calibration references stored")
    est_f = {name: [] for name in per_example}
    est_r, true_f, true_r, true_v, lines = [], [], [], [], []
    for j, target in enumerate(targets):
        n = sum(len(ids) for ids in target.tiers.values())
        tier_text = []
        for name, values in per_example.items():
            expected = {tier: rank_matched_mean(c, original.heldout_c_proxy, values, c[ids]) for tier, ids in target.tiers.items()}
            est_f[name].append(sum(expected[tier] * len(ids) for tier, ids in target.tiers.items()) / n)
            tier_text.append(f"{name} " + "/".join(f"{expected[t]:.2f}" for t in target.tiers))
        true_f.append(float(target.reference_outputs["forget"].correct.mean()))
        retain = data.train.subset(torch.as_tensor(target.retain_ids))
        est_r.append(float((predict_logits(original.model, data, retain).argmax(1) == retain.y).float().mean()))
        true_r.append(float(target.reference_outputs["retain"].correct.mean()))
        true_v.append(float(target.reference_outputs["test"].correct.mean()))
        lines.append(f"- seed {seed}, calibration set {j + 1}: forget accuracy per tier (low/mid/high) estimated "
                     + ", ".join(tier_text) + "; the reference " + "/".join(f"{a:.2f}" for a in target.tier_acc.values()))
    evaluated = cache.cached_target("evaluated", data)
    if evaluated is not None:  # the gate's own question on the request: would it refuse an exact retrain?
        from mlflow_unlearn.gate import heldout_never_seen, tier_expectation

        parts = []
        for name, values in per_example.items():
            never_seen = heldout_never_seen(c, original.heldout_c_proxy, values)
            cells = []
            for tier, ids in evaluated.tiers.items():
                expected, band = tier_expectation(never_seen, c[ids])
                ok = abs(evaluated.tier_acc[tier] - expected) <= band
                cells.append(f"{expected:.2f} +- {band:.2f}{'' if ok else ' (reject)'}")
            parts.append(f"{name} " + " / ".join(cells))
        lines.append(f"- seed {seed}, the evaluated set (the gate's check of its exact retrain, per tier low/mid/high): "
                     + "; ".join(parts) + "; the retrain " + "/".join(f"{a:.2f}" for a in evaluated.tier_acc.values()))
    validation = float(per_example["hard"].mean())
    estimates = {name: ReferenceAccuracies(float(np.mean(f)), float(np.mean(est_r)), validation) for name, f in est_f.items()}
    truth = ReferenceAccuracies(float(np.mean(true_f)), float(np.mean(true_r)), float(np.mean(true_v)))
    return estimates, truth, lines


def report(results_dir: Path, seeds: list[int], data_path: str) -> str:
    out = [f"Read from `{results_dir}` (seeds {', '.join(map(str, seeds))}): every complete trial of every "
           "stored study; calibration data only. Forget estimates: "
           + "; ".join(f"{name}, {what}" for name, what in ESTIMATES.items()) + ".", ""]
    acc_rows, sel_rows, tier_lines = [], [], []
    for seed in seeds:
        trials = complete_trials(results_dir / f"seed{seed}-cache" / "studies.db")
        if not trials:
            raise SystemExit(f"{results_dir}/seed{seed}-cache/studies.db: no complete trial")
        estimates, truth, lines = seed_references(results_dir, seed, data_path)
        tier_lines += lines
        acc_rows.append(f"| {seed} | " + " / ".join(f"{e.forget:.3f}" for e in estimates.values()) + f" / {truth.forget:.3f} "
                        f"| {estimates['hard'].retain:.3f} / {truth.retain:.3f} "
                        f"| {estimates['hard'].validation:.3f} / {truth.validation:.3f} |")
        groups = {"every study": trials, **{s: [t for t in trials if t["study"] == s] for s in sorted({t["study"] for t in trials})}}
        for group_name, group in groups.items():
            for name, estimate in estimates.items():
                r = compare(group, estimate, truth)
                sel_rows.append(f"| {seed} | {group_name} | {name} | {r['n']} | {r['spearman']:+.2f} | "
                                f"`{plan_text(r['best']['plan'])}` {r['best_tow']:.3f} | `{plan_text(r['chosen']['plan'])}` "
                                f"{r['chosen_tow']:.3f} (rank {r['chosen_rank']}) | {r['best_tow'] - r['chosen_tow']:.3f} | "
                                f"{r['recomputed_error']:.3f} |")
    out += ["Reference accuracies, estimated from the original alone / the calibration reference's (mean over "
            "the calibration sets; forget: " + " / ".join(ESTIMATES) + " / the reference):", "",
            "| seed | forget | retain | validation |", "|---|---|---|---|", *acc_rows, "", *tier_lines, "",
            "Choosing by the estimate: Spearman = rank correlation of the estimated ToW with the stored "
            "calibration ToW over the group's trials; the reference's choice and the estimate's choice, each "
            "with its stored calibration ToW (against the real reference); loss = the difference; recomputed "
            "= the largest distance between the formula on mean accuracies with the true reference and the "
            "stored mean of per-set ToW (how exact the re-scoring is).", "",
            "| seed | trials of | estimate | n | Spearman | the reference chose | the estimate would choose | loss | recomputed |",
            "|---|---|---|---|---|---|---|---|---|", *sel_rows]
    return "\n".join(out)


def main(argv=None) -> int:
    import bench_unlearning as bu

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results" / "rum-cpu-auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds to read (default: every seed whose selection half is stored, seed<N>-search.json)")
    parser.add_argument("--data", default=bu.DEFAULT_DATA, help="the CIFAR-10 JPEG archive the benchmark ran on")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    seeds = args.seeds or sorted(int(p.stem[len("seed"):-len("-search")]) for p in args.results_dir.glob("seed*-search.json"))
    if not seeds:
        raise SystemExit(f"{args.results_dir}: no seed with a stored selection half (seed<N>-search.json)")
    print(report(args.results_dir, seeds, args.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

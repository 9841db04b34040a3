"""What a smaller search would have cost and chosen on the CPU CIFAR benchmark, read from its stored
trials and reports: no training, no new scoring (seconds, any machine).

    .venv/bin/python bench/bench_search_size_cifar.py                      # bench/results/rum-cpu-auto
    .venv/bin/python bench/bench_search_size_cifar.py --results-dir DIR

Issue 26's target for the first request (calibration reference + search + request) is 1.5
trainings; the CPU benchmark's default search costs about 7 (docs/bench_rum.md). bench_search_size.py
measures smaller searches on the demo by running them; a CIFAR seed takes hours, so this reads what
`bench_unlearning.py --mode rum` already stored for each complete seed (`seed<N>.json`, and in
`seed<N>-cache/`: the studies, the calibration sets, the reporting rows) and prices three smaller
searches that are subsets of the one that ran:

- `defaults, k calibration sets`: every algorithm at its registered defaults (each tuning's
  enqueued first trial), scored on the first k calibration sets, the best mean calibration ToW
  chosen; cost = a calibration reference retrained without those k sets + each default's scoring
  on them + the request; held-out ToW = that algorithm's `(defaults)` row. The stored scores are
  against the reference retrained without both sets: with k = 1 the product would score against
  one retrained without the first set only, so the choice is read approximately (a second retrain
  moves ToW by about 1 - the noise floor).
- `tune <a> only`: the stored tuning of one algorithm, nothing else; cost = the 2-set reference +
  that study's cost + the request; held-out ToW = `<a> (tuned)`. Every algorithm is listed: which
  one to tune alone is itself a choice the first request cannot make without a search.
- `tune the top m by defaults`: rank the algorithms by their defaults' mean calibration ToW (the
  first trial of every tuning), tune only the m best, register the tuned plan with the best
  calibration ToW among them (the study's best, `seed<N>.json` search.calibration_tow); cost = the
  2-set reference + the m studies' costs + the other algorithms' defaults on each calibration set
  (the ranking needs them) + the request. m = all is the four tunings without the
  per-tier composition. A candidate for a cheaper default search, priced on data no choice of m saw.
- `full search`: what ran (the four tunings and the per-tier composition): RUM's row and cost.

Selection read calibration scores only; every ToW printed is on the evaluated forget set and the
test split, which no selection touched. Costs are example passes / the original training's (the
same on every machine); a study's cost includes the part estimated for trials stored before
trials recorded their passes (`seed<N>.json` costs.estimated, shown): each such pruned trial is
counted at the full budget for every calibration set it scored, so a study's cost is at most that
part too high, never too low.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlflow_unlearn.statistics import mean_ci  # noqa: E402

RUM = "RUM (searched plan)"


def defaults_trials(studies_db: Path) -> dict[str, dict]:
    """Per study (algorithm): the metrics of its complete trial at the registered defaults (an empty
    hyperparameter set, the enqueued first trial). Opened read-only: the stored studies are results."""
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
    out: dict[str, dict] = {}
    for study, _, plan_json, metrics_json in rows:
        steps = json.loads(plan_json).get("steps", [])
        if (study not in out and len(steps) == 1 and steps[0].get("algorithm") == study
                and not steps[0].get("hyperparameters")):
            out[study] = json.loads(metrics_json)
    return out


def reference_cost(n_train: int, calibration_ids: list[np.ndarray]) -> float:
    """A calibration reference retrained without the union of these sets: epochs x its retain, in trainings."""
    union = np.unique(np.concatenate(calibration_ids)) if calibration_ids else np.zeros(0)
    return (n_train - len(union)) / n_train


def seed_sizes(result: dict, cache: Path, budget: float) -> list[dict]:
    """The smaller searches of one complete seed, each {size, choice, first, tow}."""
    rows = {r["method"]: r for r in result["rows"] if r.get("budget", budget) == budget}
    costs = result["costs"]
    sets = np.load(cache / "sets.npz")
    calibration = [sets[f"calibration_{j}"] for j in range(int(sets["k"]))]
    defaults = defaults_trials(cache / "studies.db")
    algorithms = sorted(costs["baseline_searches"])
    missing = [a for a in algorithms if a not in defaults]
    if missing:
        raise SystemExit(f"{cache / 'studies.db'}: no complete trial at the defaults for {missing}; "
                         "is the seed's selection half complete?")
    out = []
    for k in range(1, len(calibration) + 1):
        score = {a: float(np.mean([defaults[a][f"calibration/{j}/tow"] for j in range(k)])) for a in algorithms}
        chosen = max(algorithms, key=lambda a: (score[a], -defaults[a]["cost/train_fraction"]))
        row = rows[f"{chosen} (defaults)"]
        search = sum(k * defaults[a]["cost/train_fraction"] for a in algorithms)
        out.append({"size": f"defaults, {k} calibration set{'s' if k > 1 else ''}",
                    "choice": f"{chosen} (defaults), calibration ToW {score[chosen]:.3f}",
                    "first": reference_cost(result["n_train"], calibration[:k]) + search + row["cost/train_fraction"],
                    "tow": row["tow"]})
    full_reference = reference_cost(result["n_train"], calibration)
    for a in algorithms:
        row = rows[f"{a} (tuned)"]
        estimated = costs.get("estimated", {}).get(a, 0.0)
        out.append({"size": f"tune {a} only", "choice": f"`{row['plan']}`"
                    + (f" (study cost {costs['baseline_searches'][a]:.2f}, {estimated:.2f} of it estimated)"
                       if estimated else ""),
                    "first": full_reference + costs["baseline_searches"][a] + row["cost/train_fraction"],
                    "tow": row["tow"]})
    # successive halving over algorithms: the defaults' calibration ranks them, only the top m are tuned
    by_defaults = sorted(algorithms, key=lambda a: -np.mean([defaults[a][f"calibration/{j}/tow"]
                                                             for j in range(len(calibration))]))
    tuned_score = (result.get("search") or {}).get("calibration_tow") or {}
    for m in range(1, len(algorithms) + 1):
        top = by_defaults[:m]
        if not all(a in tuned_score for a in top):
            break  # a seed stored before its search recorded each tuning's best calibration ToW
        chosen = max(top, key=lambda a: tuned_score[a])
        row = rows[f"{chosen} (tuned)"]
        out.append({"size": f"tune the top {m} by defaults" + (" (all, no composition)" if m == len(algorithms) else ""),
                    "choice": f"tuned {', '.join(top)}; {chosen} chosen (calibration ToW {tuned_score[chosen]:.3f})",
                    # ranking needs every algorithm's defaults scored: the tuned ones' are their studies'
                    # first trials; the others' cost one run per calibration set each
                    "first": full_reference + sum(costs["baseline_searches"][a] for a in top) + sum(
                        len(calibration) * defaults[a]["cost/train_fraction"] for a in algorithms if a not in top)
                    + row["cost/train_fraction"],
                    "tow": row["tow"]})
    rum = rows[RUM]
    out.append({"size": "full search (what ran)", "choice": f"`{rum['plan']}`",
                "first": full_reference + costs["rum_search"] + rum["cost/train_fraction"], "tow": rum["tow"]})
    return out


def report(results_dir: Path, budget: float) -> str:
    per_seed: dict[int, list[dict]] = {}
    floors, nones = {}, {}
    for path in sorted(results_dir.glob("seed*.json")):
        if not path.stem[len("seed"):].isdigit():
            continue
        result = json.loads(path.read_text())["result"]
        seed = int(result["seed"])
        per_seed[seed] = seed_sizes(result, results_dir / f"seed{seed}-cache", budget)
        floors[seed] = result["floor"]["floor/tow"]
        nones[seed] = next(r["tow"] for r in result["rows"] if r["method"].startswith("none"))
    if not per_seed:
        raise SystemExit(f"{results_dir}: no complete seed (seed<N>.json); run bench_unlearning.py --mode rum first")
    seeds = sorted(per_seed)
    lines = [f"Read from `{results_dir}` (seeds {', '.join(map(str, seeds))}), budget {budget:g}; "
             "first request = calibration reference + search + request, in trainings.", "",
             "| search | first request (trainings) | held-out ToW | per seed: choice, first request, ToW |",
             "|---|---|---|---|"]
    for i, size in enumerate(r["size"] for r in per_seed[seeds[0]]):
        got = [per_seed[s][i] for s in seeds]

        def cell(key):
            vals = [g[key] for g in got]
            mean, lo, hi = mean_ci(vals)
            return f"{mean:.3f}" if len(vals) < 2 else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
        lines.append(f"| {size} | {cell('first')} | {cell('tow')} | " + "; ".join(
            f"{s}: {g['choice']}, {g['first']:.2f}, {g['tow']:.3f}" for s, g in zip(seeds, got)) + " |")
    lines += ["", "For scale, per seed: no unlearning " + ", ".join(f"{nones[s]:.3f}" for s in seeds)
              + "; a second retrain (the noise floor) " + ", ".join(f"{floors[s]:.3f}" for s in seeds) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results" / "rum-cpu-auto")
    parser.add_argument("--budget", type=float, default=0.1, help="the reporting rows' budget (default 0.1)")
    args = parser.parse_args(argv)
    print(report(args.results_dir, args.budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())

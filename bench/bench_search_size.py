"""What a smaller search saves on the first request, and what it costs in held-out ToW (the demo).

    .venv/bin/python bench/bench_search_size.py                   # 3 search sizes x seeds 0 1 2, ~15 min idle
    .venv/bin/python bench/bench_search_size.py --seeds 0 --sizes default t4k1

The first request pays for the calibration reference, the search and the request; `main`'s default
search (16 trials per tuning of four algorithms, then the per-tier composition, two calibration
sets) makes it 9-11 trainings on the demo, against the issue's target of 1.5. The search's size is
the lever (`--n-trials`, `--calibration-sets`, `--baselines`: the composed RUM search builds on one
tuning per baseline). This runs `mlflow-unlearn main` at the demo's defaults but for those flags,
once per size and `--seed` (the seed draws the data split, the original's training, the request and
the sampler, so each seed is another world), each in its own fresh SQLite store, and reads back
from it the main run's `cost/first_request_train_fraction` and `floor/tow` and the RUM run's
held-out `tow` (the evaluated request, which no selection touched). It prints per seed and the mean
over seeds with its 95% interval, and each smaller size minus the default, paired by seed.
Sizes are runs of the same code at other flags, side by side on one machine; wall seconds are shown
but only compare within one run of this script.
"""
from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlflow_unlearn.statistics import mean_ci  # noqa: E402

# name -> `main` flags; `default` is main's own defaults (16 trials, 2 calibration sets, 4 baselines)
SIZES = {
    "default": [],
    "t4k1": ["--n-trials", "4", "--calibration-sets", "1"],
    "t2k1b2": ["--n-trials", "2", "--calibration-sets", "1", "--baselines", "finetune,neggrad_plus"],
}
RUM_RUN = "RUM (searched plan)"


def run_main(flags: list[str], seed: int, workdir: Path) -> dict:
    """One `main` at these flags in a fresh store; what it logged (first request, floor, RUM's ToW)."""
    workdir.mkdir(parents=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    exe = Path(sys.executable).with_name("mlflow-unlearn")
    t0 = time.perf_counter()
    done = subprocess.run([str(exe), "main", "--seed", str(seed), *flags], cwd=workdir, env=env,
                          stdout=open(workdir / "out.log", "w"), stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"main --seed {seed} {' '.join(flags)} failed (rc {done.returncode}); see {workdir / 'out.log'}")
    return {**read_store(workdir / "mlflow.db"), "seconds": seconds}


def read_store(path: Path) -> dict:
    """From a store holding one `main` run: its first and later request cost, the noise floor, and
    the RUM run's held-out ToW and plan."""
    with sqlite3.connect(path) as db:
        def metrics_of(run_name: str) -> dict:
            rows = db.execute("select m.key, m.value from latest_metrics m join tags t on t.run_uuid = m.run_uuid "
                              "where t.key = 'mlflow.runName' and t.value = ?", (run_name,)).fetchall()
            return dict(rows)

        main_m, rum_m = metrics_of("main"), metrics_of(RUM_RUN)
        plan = db.execute("select p.value from params p join tags t on t.run_uuid = p.run_uuid where "
                          "t.key = 'mlflow.runName' and t.value = ? and p.key = 'plan'", (RUM_RUN,)).fetchone()
    return {"first": main_m["cost/first_request_train_fraction"], "later": main_m["cost/later_request_train_fraction"],
            "floor": main_m["floor/tow"], "tow": rum_m["tow"], "plan": plan[0] if plan else "?"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt_ci(values: list[float], digits: int = 3) -> str:
    m, lo, hi = mean_ci(values)
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if len(values) > 1 else f"{m:.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="search sizes to run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--keep", help="keep each run's store and log under this folder (default: a temporary one)")
    a = p.parse_args(argv)
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="search-size-"))
    t0 = time.perf_counter()
    results = {size: {} for size in a.sizes}
    for seed in a.seeds:
        for size in a.sizes:
            r = run_main(SIZES[size], seed, root / f"{size}-seed{seed}")
            results[size][seed] = r
            print(f"seed {seed} {size:<8} first request {r['first']:.2f} trainings, RUM held-out ToW {r['tow']:.4f} "
                  f"(floor {r['floor']:.4f}), {r['seconds']:.0f} s: {r['plan']}", flush=True)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores; {time.perf_counter() - t0:.0f} s; "
          f"runs kept in {root}\n")
    print("| search | flags | first request (trainings) | RUM held-out ToW | minus default, paired by seed | "
          "per seed (ToW / first) |")
    print("|---|---|---|---|---|---|")
    for size in a.sizes:
        rows = results[size]
        tows, firsts = [rows[s]["tow"] for s in a.seeds], [rows[s]["first"] for s in a.seeds]
        if size != "default" and "default" in results:
            diff = fmt_ci([rows[s]["tow"] - results["default"][s]["tow"] for s in a.seeds])
        else:
            diff = "-"
        per_seed = "; ".join(f"{s}: {rows[s]['tow']:.3f} / {rows[s]['first']:.2f}" for s in a.seeds)
        print(f"| {size} | `{' '.join(SIZES[size]) or '(main defaults)'}` | {fmt_ci(firsts, 2)} | {fmt_ci(tows)} | "
              f"{diff} | {per_seed} |")
    floors = [results[a.sizes[0]][s]["floor"] for s in a.seeds]
    print(f"\nnoise floor (a second retrain), per seed: {', '.join(f'{f:.3f}' for f in floors)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The cost-quality curve on digits: every registered algorithm at its defaults, at several budgets,
against the retrained reference, with `none` at cost 0 and retrain vs retrain (the noise floor) at
about 1. Nothing is selected here (defaults only), so every number is a held-out result.

    .venv/bin/python bench/bench_budget.py --out docs/bench_budget.md   # about 2-4 minutes on 2 cores
    .venv/bin/python bench/bench_budget.py --seeds 0 1 2 --budgets 0.02 0.05 0.1 0.2

The setup is the one the algorithms' defaults were measured on (the full digits train split with a
0.1 validation split, small_cnn trained 15 epochs at lr 0.05, batch 64; forget set
`mix_forget_set(c_proxy, 90)`). `--noise` flips a seeded fraction of train labels first (the
`digits-noisy` regime: mislabelled examples are what a network memorises). Each row is the mean over
unlearning seeds (one source model and one reference); cost is `cost/train_fraction`, example passes
counted by the meter over the original training's, the same number on every machine.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow_unlearn.algorithms import ALGORITHMS, TrainRecipe, UnlearnData, is_exact, run_algorithm  # noqa: E402
from mlflow_unlearn.compute import Budget, ComputeMeter  # noqa: E402
from mlflow_unlearn.confidences import ConfidenceRecorder  # noqa: E402
from mlflow_unlearn.data import DatasetSpec, load_dataset  # noqa: E402
from mlflow_unlearn.forget_sets import mix_forget_set  # noqa: E402
from mlflow_unlearn.memorization import tiers_from_c_proxy  # noqa: E402
from mlflow_unlearn.models import build_model  # noqa: E402
from mlflow_unlearn.training import TrainConfig, predict_logits, train_model  # noqa: E402
from mlflow_unlearn.tuning import Reference, noise_floor  # noqa: E402


def _cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="unlearning seeds (mean over them)")
    p.add_argument("--algorithms", nargs="+", default=None, help="default: every registered one but retrain")
    p.add_argument("--noise", type=float, default=0.0, help="fraction of train labels flipped (seeded), 0 = clean")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the table as markdown here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    data = load_dataset(DatasetSpec("digits", val_fraction=0.1))
    if a.noise > 0:
        gen = torch.Generator().manual_seed(12345)
        flip = torch.rand(len(data.train), generator=gen) < a.noise
        shift = torch.randint(1, data.num_classes, (len(data.train),), generator=gen)
        data.train.y[flip] = (data.train.y[flip] + shift[flip]) % data.num_classes
    config = TrainConfig(epochs=15, lr=0.05, batch_size=64, seed=0)
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed)
    model = build(0)
    recorder = ConfidenceRecorder(len(data.train))
    unit_meter = ComputeMeter()
    with unit_meter.watching(model):
        train_model(model, data, config, recorder=recorder, progress=False, eval_test=False)
    model.eval()
    unit = unit_meter.train_passes
    c_proxy = recorder.proxies()["c_proxy"]
    forget = mix_forget_set(c_proxy, 90)
    tiers = tiers_from_c_proxy(np.asarray(forget), c_proxy)
    udata = UnlearnData.from_forget(data, forget, recipe=TrainRecipe(build, config))

    references = []
    for seed in (0, 1):  # the reference, and a second retrain for the noise floor
        meter = ComputeMeter(unit=unit)
        ref_model = run_algorithm("retrain", model, udata, seed=seed, meter=meter)
        references.append((Reference.build(ref_model, data, forget, tiers), meter.fraction()))
    (reference, retrain_cost), (second, _) = references
    floor = noise_floor(second, reference, data)
    before = predict_logits(model, data, udata.forget).argmax(1)
    ref_flips = int((predict_logits(reference.model, data, udata.forget).argmax(1) != before).sum())

    names = a.algorithms or [n for n in ALGORITHMS.names() if not is_exact(n)]
    rows = []
    for name in names:
        for budget in ([0.0] if name == "none" else a.budgets):
            per_seed = []
            for seed in a.seeds:
                meter = ComputeMeter(None if name == "none" else Budget(budget, unit).passes, unit=unit)
                out = run_algorithm(name, model, udata, seed=seed, meter=meter)
                m = reference.evaluate(out, data, seed=0)
                flips = int((predict_logits(out, data, udata.forget).argmax(1) != before).sum())
                per_seed.append({"cost": meter.fraction(), "tow": m["tow"], "tow_pe": m["tow_pe"],
                                 "mia_gap": m["mia/gap"], "flips": flips, "retain": m["retain/acc"],
                                 "test": m["test/acc"]})
            mean = {k: float(np.mean([r[k] for r in per_seed])) for k in per_seed[0]}
            rows.append({"method": name, "budget": budget, **mean})
            print(f"{name:28s} budget {budget:<5g} cost {mean['cost']:.4f}  ToW {mean['tow']:.4f}  "
                  f"ToW-PE {mean['tow_pe']:.4f}  flips {mean['flips']:.1f}  retain {mean['retain']:.4f}", flush=True)

    head = (f"Digits, small_cnn trained 15 epochs ({unit} example passes = 1 training), forget set mix:90"
            f"{f', {a.noise:.0%} of train labels flipped' if a.noise else ''}; defaults only (nothing selected), mean "
            f"over unlearning seeds {a.seeds}. The reference changes {ref_flips} of the 90 forget predictions; "
            f"retrain vs retrain (the noise floor): ToW {floor['floor/tow']:.4f}, ToW-PE {floor['floor/tow_pe']:.4f} "
            f"at cost {retrain_cost:.4f}. Machine: {_cpu_name()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}; {time.perf_counter() - t_start:.0f} s.")
    table = ["| method | budget | cost (trainings) | ToW | ToW-PE | MIA gap | flips of 90 | retain acc | test acc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {r['budget']:g} | {r['cost']:.4f} | {r['tow']:.4f} | {r['tow_pe']:.4f} | "
                     f"{r['mia_gap']:.4f} | {r['flips']:.1f} | {r['retain']:.4f} | {r['test']:.4f} |")
    table.append(f"| retrain vs retrain | - | {retrain_cost:.4f} | {floor['floor/tow']:.4f} | {floor['floor/tow_pe']:.4f} | "
                 f"{floor['floor/mia_gap']:.4f} | - | - | - |")
    text = "\n".join(["# Cost-quality on digits: every algorithm at its defaults under a budget", "",
                      f"Command: `.venv/bin/python bench/bench_budget.py {' '.join(argv or sys.argv[1:])}`", "",
                      head, "", *table, ""])
    print()
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

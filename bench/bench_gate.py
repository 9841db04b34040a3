"""How often does the hook's acceptance gate (mlflow_unlearn/gate.py) agree with a retrained reference?

    .venv/bin/python bench/bench_gate.py [--requests 24] [--out bench/out/gate.json]

Core only (no MLflow), on digits (small_cnn trained 15 epochs with the C-proxy recorded, a 0.1
validation split). The gate's never-seen estimate comes, as in the hook, from two calibration
references: retrains without calibration forget sets drawn around a `mix:90` request (what
`mlflow-unlearn search` logs). Then, for each of `--requests` deletion requests of mixed kinds
(mix, low-only, mid-only, high-only, random; 20 to 90 ids) its own reference is retrained (the
truth), and several candidate results are unlearned from the source: `none`, the default plan, the
stronger plan the hook escalates to, one fine-tuning epoch, and a destructive gradient ascent
(neggrad at lr 0.05 with its retain guard off).

Each candidate gets verdicts with the same thresholds (gate.py's defaults):
- gate (calibration): `check_result` with the calibration estimate (what the hook decides after a
  search, no retrain);
- gate (held-out): with the estimate from validation examples of the same C-proxy rank
  (`gate.heldout_never_seen`, what the hook decides for a model that was never searched);
- gate (held-out soft): the same with the source's true-class probabilities in place of its 0/1
  correctness (bench_reference_free.py; not what the hook uses: docs/hook.md says why);
- gate (none): with no estimate (per-tier checks not checked, MIA against 0.5), what the hook did
  for an unsearched model before the held-out estimate;
- truth: the same checks with the request's own reference as the never-seen model (its per-tier
  forget accuracy and its MIA AUC), i.e. what the gate would decide if it could afford a retrain.
Retain and held-out checks are identical in both, so disagreements measure the never-seen estimate.
A false accept: gate passes, truth fails; a false reject: gate fails, truth passes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow_unlearn.algorithms import TrainRecipe  # noqa: E402
from mlflow_unlearn.confidences import ConfidenceRecorder, heldout_c_proxy  # noqa: E402
from mlflow_unlearn.data import DatasetSpec, load_dataset  # noqa: E402
from mlflow_unlearn.forget_sets import calibration_forget_sets, load_forget_set, mix_forget_set  # noqa: E402
from mlflow_unlearn.gate import GateThresholds, NeverSeen, check_result, heldout_never_seen  # noqa: E402
from mlflow_unlearn.memorization import tiers_from_c_proxy  # noqa: E402
from mlflow_unlearn.metrics import evaluate_unlearning, mia_auc, outputs_for  # noqa: E402
from mlflow_unlearn.models import build_model  # noqa: E402
from mlflow_unlearn.rum import Plan, default_plan, run_rum, stronger_plan  # noqa: E402
from mlflow_unlearn.training import TrainConfig, retrain_from_scratch, train_model  # noqa: E402

KINDS = ("mix:{n}", "tiers:low={n}", "tiers:mid={n}", "tiers:high={n}", "random:{n}")
SIZES = (20, 45, 90)


def retrain_without(data, ids, config, build, seed):
    keep = np.setdiff1d(np.arange(len(data.train)), ids)
    return retrain_from_scratch(build, config, data, keep, seed=seed).eval()


def metrics_of(model, data, ids, tiers):
    outputs = outputs_for(model, data, ids)
    positions = {t: np.searchsorted(ids, v) for t, v in tiers.items()}
    return evaluate_unlearning(outputs, None, tiers=positions), outputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "gate.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    data = load_dataset(DatasetSpec("digits", val_fraction=0.1))
    config = TrainConfig(epochs=15, lr=0.05, batch_size=64, seed=0)
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed)
    source = build(0)
    recorder = ConfidenceRecorder(len(data.train))
    heldout_recorder = ConfidenceRecorder(len(data.val))
    train_model(source, data, config, recorder=recorder, progress=False, eval_test=False,
                heldout=data.val, heldout_recorder=heldout_recorder)
    source.eval()
    c_proxy = recorder.proxies()["c_proxy"]
    source_out = outputs_for(source, data, np.arange(1), heldout=data.val)  # forget is a placeholder here
    source_test = outputs_for(source, data, np.arange(1))["test"]
    estimates = {"held-out": heldout_never_seen(c_proxy, heldout_c_proxy(heldout_recorder.true_class_prob()),
                                                source_out["test"].correct, heldout_conf=source_out["test"].true_conf,
                                                test_conf=source_test.true_conf),
                 # the same examples with the source's true-class probability in place of its 0/1
                 # correctness (bench_reference_free.py: less optimistic in the middle tier on CIFAR)
                 "held-out soft": heldout_never_seen(c_proxy, heldout_c_proxy(heldout_recorder.true_class_prob()),
                                                     source_out["test"].true_conf, heldout_conf=source_out["test"].true_conf,
                                                     test_conf=source_test.true_conf),
                 "none": None}
    labels = data.train.y.cpu().numpy()
    recipe = TrainRecipe(build, config)
    print(f"source trained in {time.perf_counter() - t0:.0f} s; {len(data.train)} train / {len(data.test)} test", flush=True)

    # the gate's estimate: calibration references around a mix:90 request, as the search draws them
    anchor = mix_forget_set(c_proxy, 90, seed=0)
    cal_c, cal_y, cal_auc, cal_conf, cal_held = [], [], [], [], []
    for j, ids in enumerate(calibration_forget_sets(c_proxy, anchor, 2, seed=0)):
        ids = np.sort(ids)
        ref = retrain_without(data, ids, config, build, seed=100 + j)
        out = outputs_for(ref, data, ids, heldout=data.val)
        cal_c.append(c_proxy[ids])
        cal_y.append(out["forget"].correct.astype(float))
        cal_auc.append(mia_auc(out["forget"].true_conf, out["test"].true_conf))
        cal_conf.append(out["forget"].true_conf)
        cal_held.append(out["test"].true_conf)
    estimate = NeverSeen(np.concatenate(cal_c), np.concatenate(cal_y), float(np.mean(cal_auc)),
                         conf=np.concatenate(cal_conf), heldout_conf=np.concatenate(cal_held))
    estimates = {"calibration": estimate, **estimates}
    thresholds = GateThresholds()
    print(f"calibration references ready ({len(estimate.c_proxy)} examples, AUC {estimate.auc:.3f})", flush=True)

    rows = []
    rng = np.random.default_rng(0)
    for r in range(a.requests):
        kind = KINDS[r % len(KINDS)].format(n=SIZES[(r // len(KINDS)) % len(SIZES)])
        fs = load_forget_set(kind, labels=labels, c_proxy=c_proxy, seed=1000 + r)
        ids = np.sort(fs.ids)
        tiers = tiers_from_c_proxy(ids, c_proxy)
        reference = retrain_without(data, ids, config, build, seed=200 + r)
        ref_out = outputs_for(reference, data, ids)
        truth_seen = NeverSeen(c_proxy[ids], ref_out["forget"].correct.astype(float),
                               mia_auc(ref_out["forget"].true_conf, ref_out["test"].true_conf), source="the reference")
        before, _ = metrics_of(source, data, ids, tiers)
        base = default_plan(tuple(tiers)).validate(tiers)
        candidates = {"none": Plan.parse("all=none"), "default": base, "stronger": stronger_plan(base),
                      "finetune-1": Plan.parse("all=finetune(epochs=1)"),
                      "ascent-wreck": Plan.parse("all=neggrad(lr=0.05,epochs=5,max_retain_drop=1.0)")}
        for name, plan in candidates.items():
            model = run_rum(source, data, tiers, plan, seed=int(rng.integers(1 << 30)), recipe=recipe).model.eval()
            finite = all(bool(torch.isfinite(q).all()) for q in model.parameters())
            verdicts, failed = {}, {}
            if not finite:
                truth_ok = False
                verdicts = {e: False for e in estimates}
                failed = {e: ["finite"] for e in estimates}
            else:
                after, _ = metrics_of(model, data, ids, tiers)
                truth = check_result(before, after, tiers, c_proxy, n_heldout=len(data.test), never_seen=truth_seen,
                                     thresholds=GateThresholds(neighbours=1))
                truth_ok = truth.passed
                for e, seen in estimates.items():
                    gate = check_result(before, after, tiers, c_proxy, n_heldout=len(data.test), never_seen=seen,
                                        thresholds=thresholds)
                    verdicts[e], failed[e] = gate.passed, [c.name for c in gate.failed]
            rows.append({"request": r, "kind": kind, "candidate": name, "gate": verdicts["calibration"],
                         "gates": verdicts, "truth": truth_ok, "gate_failed": failed["calibration"], "failed": failed})
            print(f"request {r:2d} {kind:15s} {name:12s} truth {'pass' if truth_ok else 'FAIL':4s} " +
                  " ".join(f"{e} {'pass' if v else 'FAIL'}{'' if v == truth_ok else '*'}" for e, v in verdicts.items()),
                  flush=True)

    n = len(rows)
    bad = sum(1 for x in rows if not x["truth"])
    good = n - bad
    summary = {"requests": a.requests, "results": n, "truth_acceptable": good, "truth_unacceptable": bad,
               "seconds": time.perf_counter() - t0, "threads": a.threads, "cpus": os.cpu_count(), "by_estimate": {}}
    for e in estimates:
        fa = sum(1 for x in rows if x["gates"][e] and not x["truth"])
        fr = sum(1 for x in rows if not x["gates"][e] and x["truth"])
        summary["by_estimate"][e] = {"false_accepts": fa, "false_rejects": fr,
                                     "false_accept_rate": fa / bad if bad else None,
                                     "false_reject_rate": fr / good if good else None}
    summary.update(summary["by_estimate"]["calibration"])  # the headline: what the hook decides after a search
    by_candidate = {}
    for x in rows:
        d = by_candidate.setdefault(x["candidate"], {"truth_pass": 0, "n": 0, **{f"{e}_pass": 0 for e in estimates}})
        d["n"] += 1
        d["truth_pass"] += int(x["truth"])
        for e in estimates:
            d[f"{e}_pass"] += int(x["gates"][e])
    summary["by_candidate"] = by_candidate
    print(json.dumps(summary, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

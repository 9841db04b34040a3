"""bench/bench_unlearning.py's seed cache: a retrained reference stored under another recipe (a
45-epoch run's file copied into a 40-epoch run's cache) is never scored against; report rows resume."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench = pytest.importorskip("bench_unlearning")


def key(epochs: int) -> dict:
    scale = {f: 1 for f in bench.SeedCache.RECIPE_FIELDS} | {"epochs": epochs}
    return {"scale": scale, "algorithms": ["finetune"], "data": "cifar.tar.gz"}


def stored_target(name: str) -> "bench.Target":
    from mlflow_unlearn.metrics import SplitOutputs

    outputs = {k: SplitOutputs(np.zeros((3, 10), dtype=np.float32), np.zeros(3, dtype=np.int64))
               for k in ("forget", "retain", "test")}
    return bench.Target(np.arange(3), {"low": np.arange(3)}, None, outputs, 1.0, name=name, eval_batch=8, tier_acc={"low": 0.5})


def test_a_reference_from_another_recipe_is_retrained_not_used(tmp_path):
    cache = bench.SeedCache(str(tmp_path), 0, key(40))
    made = []
    cache.target("evaluated", lambda: made.append(1) or stored_target("evaluated"), data=None)
    assert made == [1] and cache.cached_target("evaluated", None) is not None  # stored, with its recipe
    path = tmp_path / "seed0-cache" / "target-evaluated.npz"
    with np.load(path) as z:  # as if copied from a 45-epoch run's cache
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    meta["recipe"]["epochs"] = 45
    np.savez_compressed(path, meta=json.dumps(meta), **arrays)
    assert cache.cached_target("evaluated", None) is None
    cache.target("evaluated", lambda: made.append(2) or stored_target("evaluated"), data=None)
    assert made == [1, 2]  # retrained under this recipe


def test_report_rows_resume(tmp_path):
    cache = bench.SeedCache(str(tmp_path), 0, key(40))
    assert cache.reports() == {}
    cache.save_report({"method": "finetune (tuned)", "budget": 0.1, "plan": "all=finetune", "tow": np.float64(0.9)})
    rows = bench.SeedCache(str(tmp_path), 0, key(40)).reports()
    assert rows[("finetune (tuned)", 0.1, "all=finetune")]["tow"] == 0.9


def test_a_studys_search_cost_is_read_from_its_trials_and_old_pruned_ones_are_estimated():
    """The bench reads what a seed's searches cost from the stored studies (a stopped or killed run
    loses nothing): a trial's recorded passes; an older complete trial's mean cost times its sets;
    an older pruned trial's finished sets at the full budget (estimated); repeats and copies free."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from mlflow_unlearn import tuning

    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}

    def add(state, user_attrs, steps=()):
        study.add_trial(create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                     params={"x": 0.1}, distributions=dist, user_attrs=user_attrs,
                                     intermediate_values={j: 0.5 for j in steps}))

    add(TrialState.COMPLETE, {tuning.SPENT_PASSES_ATTR: 700, "metrics": {"cost/train_passes": 1.0}})
    add(TrialState.PRUNED, {tuning.SPENT_PASSES_ATTR: 300}, steps=[0])
    add(TrialState.COMPLETE, {"metrics": {"cost/train_passes": 250.0, "calibration/0/tow": 0.9,
                                          "calibration/1/tow": 0.8}}, steps=[0, 1])  # older: 2 sets x 250
    add(TrialState.PRUNED, {}, steps=[0])  # older, pruned after one set: counted at the budget
    add(TrialState.FAIL, {}, steps=[])  # killed before finishing a set: nothing known, nothing counted
    add(TrialState.COMPLETE, {"repeat_of": 0, "metrics": {"cost/train_passes": 1e6}})
    add(TrialState.COMPLETE, {"copied_from": "finetune#3", "metrics": {"cost/train_passes": 1e6,
                                                                       "calibration/0/tow": 0.9}})
    assert bench.study_cost_passes(study, budget_passes=400) == (700 + 300 + 500, 400)


def test_rows_are_walked_either_way_and_come_back_in_table_order():
    """`--reverse` walks a seed's report rows from the end; each row is looked up just before it
    runs, so a row another process stored meanwhile is taken, not run again."""
    pairs = [("a", 0.1), ("b", 0.1), ("c", 0.2), ("d", 0.2)]
    stored = {("c", 0.2): {"method": "c", "budget": 0.2, "by": "other"}}
    calls = []

    def row(method, fraction):
        calls.append(method)
        if (method, fraction) in stored:
            return stored[(method, fraction)]
        if method == "b":  # skipped (the paper mode's wall clock)
            return None
        stored[(method, fraction)] = {"method": method, "budget": fraction, "by": "me"}
        if method == "d":  # the other process stores `a` while this one runs `d`
            stored[("a", 0.1)] = {"method": "a", "budget": 0.1, "by": "other"}
        return stored[(method, fraction)]

    out = bench.walk_rows(pairs, row, reverse=True)
    assert calls == ["d", "c", "b", "a"]
    assert [(r["method"], r["by"]) for r in out] == [("a", "other"), ("c", "other"), ("d", "me")]
    calls.clear()
    assert [r["method"] for r in bench.walk_rows(pairs, row)] == ["a", "c", "d"] and calls == ["a", "b", "c", "d"]


MAKER = """
import sys, time
sys.path.insert(0, {bench!r})
import numpy as np
import bench_unlearning as bench
from mlflow_unlearn.metrics import SplitOutputs

def make():
    time.sleep(2.0)
    outputs = {{k: SplitOutputs(np.zeros((3, 10), dtype=np.float32), np.zeros(3, dtype=np.int64))
               for k in ("forget", "retain", "test")}}
    return bench.Target(np.arange(3), {{"low": np.arange(3)}}, None, outputs, 123.0, name="evaluated",
                        eval_batch=8, tier_acc={{"low": 0.5}})

key = {key!r}
bench.SeedCache({root!r}, 0, key).target("evaluated", make, None)
"""


def test_a_reference_another_process_is_retraining_is_waited_for_not_retrained(tmp_path, monkeypatch):
    import subprocess
    import time

    root = str(tmp_path)
    maker = subprocess.Popen([sys.executable, "-c", MAKER.format(bench=str(Path(bench.__file__).parent),
                                                                 key=key(40), root=root)])
    claim = tmp_path / "seed0-cache" / "target-evaluated.npz.claim"
    deadline = time.time() + 120
    while not claim.exists():  # the other process imports torch, then claims the file and "retrains"
        assert maker.poll() is None and time.time() < deadline, "the maker process never claimed the reference"
        time.sleep(0.05)
    monkeypatch.setattr(bench, "CLAIM_POLL_S", 0.05)
    made = []
    got = bench.SeedCache(root, 0, key(40)).target("evaluated", lambda: made.append(1) or stored_target("x"), None)
    assert maker.wait(timeout=60) == 0
    assert made == [] and got.retrain_s == 123.0  # the other process's reference, loaded
    assert not claim.exists()


def test_a_claim_left_by_a_killed_run_is_taken_over(tmp_path):
    import platform
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    cache = bench.SeedCache(str(tmp_path), 0, key(40))
    claim = tmp_path / "seed0-cache" / "target-evaluated.npz.claim"
    claim.write_text(f"{platform.node()} {gone.pid}")
    made = []
    cache.target("evaluated", lambda: made.append(1) or stored_target("evaluated"), data=None)
    assert made == [1] and not claim.exists()
    assert cache.cached_target("evaluated", None) is not None

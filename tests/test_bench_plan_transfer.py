"""bench/bench_plan_transfer.py runs each seed's searched plans on every *other* seed's request and
sets them beside the target seed's own rows: which pairs run, and what the table compares."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench = pytest.importorskip("bench_plan_transfer")


def write_search(root: Path, seed: int, plans: dict) -> None:
    (root / f"seed{seed}-search.json").write_text(json.dumps({"seed": seed, "plans": plans}))


def write_reports(root: Path, seed: int, rows: list[dict]) -> None:
    (root / f"seed{seed}-cache").mkdir(parents=True, exist_ok=True)
    (root / f"seed{seed}-cache" / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_every_other_seeds_plans_and_never_a_seeds_own(tmp_path):
    write_search(tmp_path, 0, {"rum": "all=salun(lr=0.02)", "finetune": "all=finetune(lr=0.06)",
                               "salun": "all=salun(lr=0.02)"})
    write_search(tmp_path, 1, {"rum": "all=neggrad_plus(lr=0.01)"})
    write_search(tmp_path, 12, {"rum": "all=finetune(lr=0.07)"})  # two digits: parsed as 12, sorted as a number
    plans = bench.stored_plans(tmp_path)
    assert sorted(plans) == [0, 1, 12]
    assert bench.pairs(plans, [0, 1], ["rum"]) == [
        (0, 1, "rum", "all=neggrad_plus(lr=0.01)"), (0, 12, "rum", "all=finetune(lr=0.07)"),
        (1, 0, "rum", "all=salun(lr=0.02)"), (1, 12, "rum", "all=finetune(lr=0.07)")]
    # a key a source did not store is skipped for that source only
    assert bench.pairs(plans, [1], ["finetune"]) == [(1, 0, "finetune", "all=finetune(lr=0.06)")]
    # two keys naming one plan (the search registered its tuned salun) run once
    assert bench.pairs(plans, [1], ["rum", "salun", "finetune"]) == [
        (1, 0, "rum, salun", "all=salun(lr=0.02)"), (1, 0, "finetune", "all=finetune(lr=0.06)"),
        (1, 12, "rum", "all=finetune(lr=0.07)")]


def test_the_table_sets_a_transferred_plan_beside_the_targets_own_rows(tmp_path):
    write_reports(tmp_path, 0, [
        {"method": "RUM (searched plan)", "budget": 0.1, "tow": 0.95, "plan": "all=salun(lr=0.02)"},
        {"method": "RUM (searched plan)", "budget": 0.05, "tow": 0.90},  # another budget: not compared
        {"method": "none (no unlearning)", "budget": 0.1, "tow": 0.70},
        {"method": "salun (tuned)", "budget": 0.1, "tow": 0.95, "plan": "all=salun(lr=0.02)"},  # RUM's own run
        {"method": "finetune (tuned)", "budget": 0.1, "tow": 0.93, "plan": "all=finetune(lr=0.06)"},
        {"method": "finetune (defaults)", "budget": 0.1, "tow": 0.86, "plan": "all=finetune"},
        {"method": "salun (defaults)", "budget": 0.1, "tow": 0.74, "plan": "all=salun"}])
    own = bench.own_rows(tmp_path, 0, 0.1)
    assert own["RUM (searched plan)"]["tow"] == 0.95
    assert bench.best_of(own, "tuned") == ("finetune", 0.93)  # salun tuned ran RUM's own plan: left out
    assert bench.best_of(own, "defaults") == ("finetune", 0.86)
    row = {"target": 0, "source": 1, "key": "rum", "plan": "all=neggrad_plus(lr=0.01)", "budget": 0.1,
           "tow": 0.9123, "cost/train_fraction": 0.0944}
    [line] = bench.comparison_rows(tmp_path, [row], {0: 0.9511})
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["0", "1 (rum)", "`all=neggrad_plus(lr=0.01)`", "0.9123", "0.094", "0.9500", "-0.0377",
                     "finetune 0.9300", "finetune 0.8600", "+0.0523", "0.7000", "0.9511"]


def test_cached_rows_are_keyed_by_target_source_plan_and_budget(tmp_path):
    path = tmp_path / "transfer.jsonl"
    assert bench.cached_rows(path) == {}
    rows = [{"target": 0, "source": 1, "plan": "all=salun", "budget": 0.1, "tow": 0.9},
            {"target": 0, "source": 1, "plan": "all=salun", "budget": 0.05, "tow": 0.8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.cached_rows(path)[(0, 1, "all=salun", 0.05)]["tow"] == 0.8
    assert len(bench.cached_rows(path)) == 2


def test_fewer_than_two_searched_seeds_is_refused_naming_the_directory(tmp_path):
    write_search(tmp_path, 0, {"rum": "all=salun"})
    import argparse

    with pytest.raises(SystemExit, match="1 seed"):
        bench.run(argparse.Namespace(results_dir=tmp_path, plans=["rum"], targets=None, data=""))

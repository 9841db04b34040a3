"""bench/bench_search_size.py reads what `main` logged back from its store: the first and later
request's cost and the floor from the `main` run, the held-out ToW and plan from the RUM run."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench = pytest.importorskip("bench_search_size")


def test_the_first_request_cost_and_rums_held_out_tow_are_read_from_the_store(tracking, tmp_path):
    import mlflow

    with mlflow.start_run(run_name="main"):
        mlflow.log_metrics({"cost/first_request_train_fraction": 9.5, "cost/later_request_train_fraction": 0.093,
                            "floor/tow": 0.994})
        with mlflow.start_run(run_name=bench.RUM_RUN, nested=True):
            mlflow.log_param("plan", "all=finetune(lr=0.0244,epochs=3)")
            mlflow.log_metric("tow", 0.5)
            mlflow.log_metric("tow", 0.989)  # the latest value is the one reported
        with mlflow.start_run(run_name="finetune (tuned)", nested=True):
            mlflow.log_metric("tow", 0.7)
    got = bench.read_store(tmp_path / "mlflow.db")
    assert got == {"first": 9.5, "later": 0.093, "floor": 0.994, "tow": 0.989,
                   "plan": "all=finetune(lr=0.0244,epochs=3)"}

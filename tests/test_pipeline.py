"""The `main` pipeline end to end (pipeline.py): selection on calibration sets, reporting on the
request, equal budgets for every baseline, the summary table, plots and the registered RUM version."""
import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_unlearn import pipeline, search


def runs(filter_string=""):
    return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")


@pytest.mark.integration
def test_main_pipeline_selects_on_calibration_and_reports_on_the_request(tracking):
    out = pipeline.main_step(subset=300, width=8, epochs=6, forget="mix:30", n_trials=5, max_epochs=1, unlearn_seeds=2,
                             baselines=("finetune", "neggrad"), registered_model_name="main-digits")
    table = out["table"]
    for row in ("RUM (searched plan)", "none (no unlearning)", "finetune (defaults)", "finetune (tuned)",
                "neggrad (defaults)", "neggrad (tuned)", "retrain vs retrain (noise floor)"):
        assert row in table
    assert "none (no unlearning) (unchanged)" in table  # doing nothing is flagged as such
    assert "does NOT beat" in out["verdict"] or "beats doing nothing" in out["verdict"]
    assert str(out["rum"].version) == "2"
    mv = MlflowClient().get_model_version("main-digits", out["rum"].version)
    assert mv.tags["mlflow_unlearn.algorithm"] == "rum"
    rum = next(r for r in out["reports"] if r.name == "RUM (searched plan)")
    assert len(rum.per_seed) == 2 and all(0 < m["tow"] <= 1 for m in rum.per_seed)
    # selection and reporting saw different forget sets
    search_runs = runs("tags.`mlflow_unlearn.role` = 'search'")
    assert len(search_runs) == 3  # RUM and one per baseline, with the same budget
    target = out["ctx"].forget.digest
    for r in search_runs:
        assert int(r.data.params["n_trials"]) == 5
        assert target not in r.data.tags[search.CALIBRATION_TAG]
    assert 0 < out["floor"]["floor/tow"] <= 1
    parent = runs("tags.`mlflow_unlearn.role` = 'pipeline'")[0]
    assert parent.data.metrics["time/pipeline_s"] > 0 and "floor/tow" in parent.data.metrics
    assert "entanglement" in parent.data.metrics
    method = runs("attributes.run_name = 'finetune (tuned)'")[0]
    assert method.data.params["algorithm"] == "finetune" and "tow" in method.data.metrics
    client = MlflowClient()
    assert "plots/methods.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    table = mlflow.load_table("summary_table.json", run_ids=[parent.info.run_id])
    assert "RUM (searched plan)" in set(table["method"]) and "tow ci95_low" in table.columns
    assert "RUM (searched plan)" in parent.data.tags["mlflow.note.content"]  # the description on the run page
    rum_search = next(r for r in search_runs if r.data.tags["mlflow_unlearn.search_space"] == "rum")
    plots = [a.path for a in client.list_artifacts(rum_search.info.run_id, "plots")]
    assert "plots/optimization_history.png" in plots and "plots/param_importances.png" in plots
    for run in (method, runs("tags.`mlflow_unlearn.role` = 'rum'")[0]):  # per-tier charts on every method and on RUM
        assert "plots/tiers.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    original = runs("tags.`mlflow_unlearn.role` = 'original'")[0]
    assert "plots/c_proxy.png" in [a.path for a in client.list_artifacts(original.info.run_id, "plots")]

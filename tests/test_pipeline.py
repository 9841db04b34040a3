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
                             baselines=("finetune", "neggrad"), registered_model_name="main-digits",
                             calibration_noise=True)
    table = out["table"]
    for row in ("RUM (searched plan)", "none (no unlearning)", "finetune (defaults)", "finetune (tuned)",
                "neggrad (defaults)", "neggrad (tuned)", "retrain vs retrain (noise floor)"):
        assert row in table
    assert "none (no unlearning) (unchanged)" in table  # doing nothing is flagged as such
    assert "does NOT beat" in out["verdict"] or "beats doing nothing" in out["verdict"]
    # every method at the same budget, cost in trainings, and the break-even in the summary
    for r in out["reports"]:
        assert all(0 <= c <= 0.1 for c in r.values("cost/train_fraction")), (r.name, r.values("cost/train_fraction"))
    assert "cost (trainings)" in table and "x retrain time" not in table
    parent_note = runs("tags.`mlflow_unlearn.role` = 'pipeline'")[0].data.tags["mlflow.note.content"]
    assert "the first request" in parent_note and "- vs finetune (tuned): ToW" in parent_note
    assert str(out["rum"].version) == "2"
    mv = MlflowClient().get_model_version("main-digits", out["rum"].version)
    assert mv.tags["mlflow_unlearn.algorithm"] == "rum"
    rum = next(r for r in out["reports"] if r.name == "RUM (searched plan)")
    assert len(rum.per_seed) == 2 and all(0 < m["tow"] <= 1 for m in rum.per_seed)
    # selection and reporting saw different forget sets
    search_runs = runs("tags.`mlflow_unlearn.role` = 'search'")
    assert len(search_runs) == 3  # RUM and one per baseline, with the same budget
    # the composed RUM search builds on the baselines' tunings (not run twice), and its cost counts them
    by_space = {r.data.tags["mlflow_unlearn.search_space"]: r for r in search_runs}
    assert set(by_space) == {"rum-composed", "tuned-finetune", "tuned-neggrad"}
    assert set(by_space["rum-composed"].data.params["tuned_studies"].split(",")) == {
        by_space["tuned-finetune"].data.params["study_name"], by_space["tuned-neggrad"].data.params["study_name"]}
    search_cost = sum(r.data.metrics["cost/train_fraction"] for r in search_runs)
    pipeline_metrics = runs("tags.`mlflow_unlearn.role` = 'pipeline'")[0].data.metrics
    calibration_reference = pipeline_metrics["cost/first_request_train_fraction"] - search_cost - rum.summary(
        "cost/train_fraction")[0]  # first request = reference + every search + the request
    n_train, pool = len(out["ctx"].data.train), len(out["calibration"].union_ids)
    # two retrains without the calibration pool (the second measures the calibration noise, on here)
    assert calibration_reference == pytest.approx(2 * (n_train - pool) / n_train, abs=1e-3), pipeline_metrics
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
    note = parent.data.tags["mlflow.note.content"]  # the description on the run page: the verdict first
    assert note.startswith("Verdict: on the held-out request") and "RUM (searched plan)" in note
    assert "flipped labels per tier" in note and "the retrained reference" in note  # noisy digits, the tiers
    # the UI view of the methods: its filter finds exactly one run per method, with the columns' metrics
    import json

    from mlflow_unlearn import runs as run_views
    tags = MlflowClient().get_experiment(parent.info.experiment_id).tags
    state = json.loads(tags[f"{run_views.VIEW_TAG_PREFIX}methods-{parent.info.run_id}"])
    listed = runs(state["searchFilter"])
    assert sorted(r.info.run_name for r in listed) == sorted(r.name for r in out["reports"])
    assert all({"tow", "mia/gap", "forget/acc", "cost/train_fraction"} <= set(r.data.metrics) for r in listed)
    assert all(len(repr(v)) <= 8 for r in listed for k, v in r.data.metrics.items() if k == "tow")  # rounded
    saved = json.loads(tags[run_views.VIEW_TAG_PREFIX + run_views.LATEST_METHODS_VIEW])
    assert json.loads(saved["state"]) == state and saved["name"].startswith("mlflow-unlearn")
    assert f"viewStateShareKey=methods-{parent.info.run_id}" in note
    rum_search = next(r for r in search_runs if r.data.tags["mlflow_unlearn.search_space"] == "rum-composed")
    plots = [a.path for a in client.list_artifacts(rum_search.info.run_id, "plots")]
    assert "plots/optimization_history.png" in plots and "plots/param_importances.png" in plots
    assert "plots/pareto.png" in plots  # calibration ToW against cost, every scored plan
    assert rum_search.data.metrics["cost/train_fraction"] > 0  # scoring the trials cost compute, counted
    assert rum_search.data.tags["mlflow_unlearn.best_kind"] in ("tuned", "uniform", "per-tier")  # composed
    assert rum_search.data.metrics["n_scored_enqueued"] >= 1
    # the calibration noise was measured (a second calibration reference) and set the selection tolerance
    assert rum_search.data.metrics["calibration/noise_tow"] == pytest.approx(out["calibration"].noise["tow"])
    assert "a second retrain against the first" in rum_search.data.tags["mlflow_unlearn.selection"]
    for run in (method, runs("tags.`mlflow_unlearn.role` = 'rum'")[0]):  # per-tier charts on every method and on RUM
        assert "plots/tiers.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    original = runs("tags.`mlflow_unlearn.role` = 'original'")[0]
    assert "plots/c_proxy.png" in [a.path for a in client.list_artifacts(original.info.run_id, "plots")]


def test_the_cost_summary_on_fixed_inputs():
    """The arithmetic the summary states: first = reference + search + request; later = the request;
    break-even against a retrain on retain."""
    text, metrics = pipeline.cost_summary(reference=0.93, search=1.2, request=0.09, retrain=0.93)
    assert metrics["cost/first_request_train_fraction"] == pytest.approx(2.22)
    assert metrics["cost/later_request_train_fraction"] == 0.09
    # 2.22 + (n - 1) 0.09 < 0.93 n  <=>  n > 2.5357: from request 3 on
    assert metrics["cost/break_even_requests"] == 3 and "from request 3 on" in text
    assert "2.220 (calibration reference(s) 0.930 + RUM search 1.200 + the request 0.0900)" in text
    _, never = pipeline.cost_summary(reference=0.9, search=0.5, request=0.95, retrain=0.93)
    assert never["cost/break_even_requests"] == -1.0
    text, cheap = pipeline.cost_summary(reference=0.0, search=0.0, request=0.1, retrain=0.93)
    assert cheap["cost/break_even_requests"] == 1 and "from the first request on" in text
    text, _ = pipeline.cost_summary(reference=0.86, search=7.7, request=0.09, retrain=0.93, tunings=6.0)
    assert "RUM search 7.700 [the tunings it builds on 6.000 + the per-tier search 1.700] + the request" in text


class _Report:
    """A method's per-seed ToW and cost, as verdict() reads a MethodReport."""

    def __init__(self, name, plan, tows, cost=0.09):
        from mlflow_unlearn.plans import Plan

        self.name, self.plan, self.tows, self.cost = name, Plan.parse(plan), tows, cost

    def values(self, key):
        return self.tows if key == "tow" else [self.cost] * len(self.tows)

    def summary(self, key):
        from mlflow_unlearn.statistics import mean_ci

        return mean_ci(self.values(key))


def test_the_verdict_says_when_rum_kept_a_baselines_plan_and_compares_with_the_best_other_plan():
    rum_plan = "all=finetune(lr=0.0244,epochs=3)"
    reports = [_Report("RUM (searched plan)", rum_plan, [0.98, 0.985, 0.975]),
               _Report("none (no unlearning)", "all=none", [0.66, 0.66, 0.66]),
               _Report("finetune (tuned)", rum_plan, [0.98, 0.985, 0.975]),
               _Report("salun (tuned)", "all=salun", [0.96, 0.965, 0.962])]
    text = pipeline.verdict(reports, {"floor/tow": 0.989}, plan=rum_plan)
    assert "not distinguishable from the best baseline, finetune (tuned)" in text
    assert "That baseline runs the RUM plan itself" in text
    assert "it is better than salun (tuned) (ToW 0.962" in text and "+0.018" in text
    # a RUM plan of its own: no such sentence
    reports[2] = _Report("finetune (tuned)", "all=finetune(lr=0.01,epochs=2)", [0.95, 0.955, 0.95])
    assert "runs the RUM plan itself" not in pipeline.verdict(reports, {"floor/tow": 0.989}, plan=rum_plan)

"""RUM as an MLflow step, the Optuna search, shared studies, and the main pipeline."""
import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

from mlflow_unlearn import request

from mlflow_unlearn import references, search, steps, tuning
from mlflow_unlearn.algorithms import ALGORITHMS
from mlflow_unlearn.candidates import budget_epochs
from mlflow_unlearn.rum import Plan
from mlflow_unlearn.tags import Tag

FORGET = "mix:30"


def runs(filter_string=""):
    return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")


@pytest.fixture
def oracle_algorithm():
    """A test-only algorithm that is the *only* way to unlearn a calibration set's `high` tier: given
    exactly that tier and a model still untouched, it copies that set's retrained reference; anywhere
    else it damages the model. So the one plan with mean calibration ToW 1 is
    low=none;mid=none;high=test_oracle. With `state["anywhere"]` it copies the reference whatever
    ran before (a separable problem: what a one-tier-at-a-time search can solve)."""
    state = {"references": {}, "anywhere": False}

    def untouched(model):
        return all(torch.equal(v.cpu(), state["original"][k]) for k, v in model.state_dict().items())

    def oracle(model, data, *, seed=0, log=None):
        ids = frozenset(data.forget_ids.tolist())
        if ids in state["references"] and (state["anywhere"] or untouched(model)):
            model.load_state_dict(state["references"][ids])
        else:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
        return model

    ALGORITHMS.add("test_oracle", oracle)
    yield state
    ALGORITHMS._items.pop("test_oracle", None)


@pytest.fixture
def diverging_algorithm():
    """A test-only algorithm whose output has NaN weights (a diverged trial)."""

    def diverge(model, data, *, seed=0, log=None):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return model

    ALGORITHMS.add("test_diverge", diverge)
    yield
    ALGORITHMS._items.pop("test_diverge", None)


@pytest.mark.integration  # the whole search step: calibration retrains, trials as runs, the plan on the model
def test_search_selects_on_calibration_sets_and_attaches_the_plan(source_model, oracle_algorithm, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 2)
    for c, ref in zip(calibration.contexts, calibration.runs):
        oracle_algorithm["references"][frozenset(c.tiers["high"].tolist())] = {k: v.clone() for k, v in ref.model.state_dict().items()}
    oracle_algorithm["original"] = {k: v.detach().cpu().clone() for k, v in ctx.source.model.state_dict().items()}
    found = search.search(ctx, calibration, n_trials=16, algorithms=("none", "test_oracle"), storage=f"sqlite:///{tmp_path}/o.db",
                          trial_runs=True, strategy="joint")
    assert found.best_plan.to_compact() == "low=none;mid=none;high=test_oracle"
    assert found.best_value == pytest.approx(1.0)
    registered = MlflowClient().get_registered_model("digits-src")
    tags = registered.tags
    assert "low=none; mid=none; high=test_oracle" in registered.description  # readable, beside the JSON tag
    # the plan travels with the budget its trials were cut to (request.at_plan_budget)
    assert json.loads(tags[Tag.SEARCHED_PLAN]) == dict(found.best_plan.to_dict(), budget=ctx.budget.fraction)
    assert f"at budget {ctx.budget.fraction:g}" in registered.description
    resolved = request.resolve_plan(ctx, "registered")
    assert resolved.plan.steps == found.best_plan.validate(ctx.tiers).steps and resolved.budget is None
    trials = runs(f"tags.`mlflow_unlearn.role` = 'trial' and tags.`mlflow_unlearn.study` = '{found.study_name}'")
    assert not [t for t in trials if t.info.status == "FAILED"], "pruned trials must not look like crashes"
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    assert len(trials) == len(study.trials)  # every trial is a nested run, pruned ones and repeats included
    # the budget is 16 plans scored (a pruned plan drawn again is scored again: pruning depends on the
    # trials before it); this space has 9 plans, so it may instead stop after 16 repeats in a row
    scored = sum(tuning.counts_against_budget(t) for t in study.trials)
    assert scored <= 16 and tuning.budget_spent(study, 16)
    # the known-good points ran first: none everywhere, then the oracle whole-set and per tier
    search_run = MlflowClient().get_run(found.run_id)
    # the winner is not one of the enqueued defaults: the sampler found it, and the run says so
    assert search_run.data.tags[Tag.BEST_KIND] == "sampled"
    assert search_run.data.metrics["n_scored_enqueued"] == 3 and search_run.data.metrics["n_scored_sampled"] >= 1
    # what scoring the trials cost, in trainings: nothing here (none, and an oracle that copies weights)
    assert search_run.data.metrics["cost/train_fraction"] == 0.0
    table = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/trials.json")  # the trials as a table, too
    assert len(table["data"]) == len(study.trials)
    first = [t.user_attrs["plan"] for t in study.trials[:3]]
    assert [s["algorithm"] for s in first[0]["steps"]] == ["none"] * 3
    assert first[1]["steps"][0]["tier"] == "all"


@pytest.mark.integration
def test_a_composed_search_tunes_each_algorithm_then_picks_an_arm_per_tier(source_model, oracle_algorithm, tmp_path):
    """The default strategy: every algorithm is tuned on the whole calibration sets (its own search
    run), its selected setting is copied into the per-tier study (scored once, never again), and
    the per-tier study finds the oracle on the high tier only; the search run says what it built on."""
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 2)
    for c, ref in zip(calibration.contexts, calibration.runs):
        oracle_algorithm["references"][frozenset(c.tiers["high"].tolist())] = {k: v.clone() for k, v in ref.model.state_dict().items()}
    oracle_algorithm["original"] = {k: v.detach().cpu().clone() for k, v in ctx.source.model.state_dict().items()}
    oracle_algorithm["anywhere"] = True
    found = search.search(ctx, calibration, n_trials=8, algorithms=("none", "test_oracle", "finetune"), max_epochs=1,
                          storage=f"sqlite:///{tmp_path}/c.db", attach=False)
    assert found.best_plan.steps[-1].algorithm == "test_oracle" and found.best_value == pytest.approx(1.0)
    assert found.tuning_cost_train_fraction > 0  # finetune's tuning ran here, and its cost is reported
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    copied = [t for t in study.trials if tuning.is_copied(t)]
    assert sorted(Plan.from_dict(t.user_attrs["plan"]).steps[0].algorithm for t in copied) == ["finetune", "test_oracle"]
    assert all(t.user_attrs["copied_from"].startswith("tuned-") for t in copied)
    ran = [Plan.from_dict(t.user_attrs["plan"]).to_compact() for t in study.trials if not tuning.is_copied(t)]
    # every arm on every tier first (`none` first), then one tier at a time (tests/test_tuning.py has the path)
    assert ran[0] == "low=none;mid=none;high=none" and ran[1] == "low=test_oracle;mid=test_oracle;high=test_oracle"
    assert ran[2].startswith("low=finetune(")
    assert len(ran) <= 8
    run = MlflowClient().get_run(found.run_id)
    assert run.data.params["strategy"] == "composed" and run.data.tags[Tag.BEST_KIND] in ("uniform", "per-tier")
    assert run.data.metrics["n_copied"] == 2 and run.data.metrics["cost/tuning_train_fraction"] > 0
    assert run.data.params["arms"].startswith("none=none; test_oracle=test_oracle; finetune=finetune(")
    tuned_runs = runs("tags.`mlflow_unlearn.search_space` LIKE 'tuned-%'")
    assert {r.data.params.get("algorithm") for r in tuned_runs} >= {"test_oracle", "finetune"}
    table = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/trials.json")
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sum(r["copied_from"] is not None for r in rows) == 2


@pytest.mark.integration
def test_trials_are_a_table_on_the_search_run_not_runs_by_default(source_model, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 2)
    before = len(runs(""))
    found = search.search_algorithm(ctx, calibration, "finetune", n_trials=4, max_epochs=1,
                                    storage=f"sqlite:///{tmp_path}/t.db")
    assert len(runs("")) == before + 1  # the search run alone
    assert not runs(f"tags.`mlflow_unlearn.study` = '{found.study_name}' and tags.`mlflow_unlearn.role` = 'trial'")
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    table = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/trials.json")
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["trial"] for r in rows] == [t.number for t in study.trials]
    assert rows[0]["enqueued"] and rows[0]["plan"] == "all=finetune" and rows[0]["state"] == "complete"
    scored = [r for r in rows if r["state"] == "complete" and r["repeat_of"] is None]
    assert scored and all(0 <= r["calibration tow"] <= 1 and r["calibration cost/train_fraction"] > 0 for r in scored)


@pytest.mark.integration
def test_calibration_sets_are_disjoint_from_the_request_and_logged(source_model, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    before = {r.info.run_id for r in runs("tags.`mlflow_unlearn.role` = 'retrain'")}
    found = search.search_step(uri, FORGET, n_trials=3, algorithms=("none", "finetune"), max_epochs=1,
                               storage=f"sqlite:///{tmp_path}/c.db")
    assert len(found.calibration_digests) == 2 and ctx.forget.digest not in found.calibration_digests
    assert len(set(found.calibration_digests)) == 2
    run = MlflowClient().get_run(found.run_id)
    assert run.data.tags[search.CALIBRATION_TAG].split(",") == found.calibration_digests
    cal = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/calibration.json")
    sets = [set(c["ids"]) for c in cal["calibration_sets"]]
    assert not (sets[0] & sets[1]) and not (sets[0] & set(ctx.forget.ids.tolist()))
    assert all(len(x) == len(ctx.forget) for x in sets)
    # what a model that never saw each calibration set gets on it: the acceptance gate's estimate
    for c in cal["calibration_sets"]:
        seen = c["never_seen"]
        assert seen["ids"] == sorted(c["ids"]) and len(seen["correct"]) == len(c["ids"]) and set(seen["correct"]) <= {0, 1}
        assert 0 <= seen["auc"] <= 1 and len(seen["conf"]) == len(c["ids"]) and len(seen["heldout_conf"]) > 0
    estimate = references.calibration_never_seen(ctx)  # the search registered its plan run on the model
    assert estimate is not None and len(estimate.correct) == sum(len(x) for x in sets)
    assert estimate.auc == pytest.approx(np.mean([c["never_seen"]["auc"] for c in cal["calibration_sets"]]))
    assert estimate.conf is not None and 0 <= estimate.expected_auc(ctx.source.proxies["c_proxy"][ctx.forget.ids]) <= 1
    # the request's own reference was never trained by the search: only the calibration sets' were
    new = [r for r in runs("tags.`mlflow_unlearn.role` = 'retrain'") if r.info.run_id not in before]
    assert ctx.forget.digest not in {r.data.tags["mlflow_unlearn.forget_digest"] for r in new}


@pytest.mark.integration  # one calibration retrain
def test_one_calibration_reference_serves_k_sets_and_later_requests(source_model, monkeypatch):
    """Three calibration sets cost one retrain (the retrain function is called once, on the source's
    calibration pool); each set lies inside the pool, disjoint from the request, and is scored
    against that reference with retain compared on train minus the pool (what it saw). Another
    request of the same source reuses it: no new training."""
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calls = []
    real = references.retrain

    def spy(c, **kw):
        calls.append(np.asarray(c.forget.ids).copy())
        return real(c, **kw)

    monkeypatch.setattr(search.references, "retrain", spy)
    calibration = search.prepare_calibration(ctx, 3)
    assert len(calls) == 1
    pool = calibration.union_ids
    assert np.array_equal(calls[0], pool) and calibration.pool.k == 3 and len(pool) == 3 * calibration.pool.size
    for c in calibration.contexts:
        assert np.isin(c.forget.ids, pool).all() and not np.isin(c.forget.ids, ctx.forget.ids).any()
        assert len(c.forget) == len(ctx.forget)
    assert len({r.run_id for r in calibration.runs}) == 1
    for ref in calibration.references:
        assert ref.model is calibration.runs[0].model
        assert len(ref.outputs["retain"].labels) == len(ctx.data.train) - len(pool)
    assert 0 <= calibration.quantile_distance < 0.1  # mix requests sit next to the pool's windows
    other = request.prepare(uri, "mix:21")  # another request: the same reference, from the cache
    again = search.prepare_calibration(other, 3)
    assert len(calls) == 2 and again.runs[0].run_id == calibration.runs[0].run_id and again.runs[0].cached
    assert not np.isin(np.concatenate([c.forget.ids for c in again.contexts]), other.forget.ids).any()


def test_a_request_larger_than_the_pool_names_the_counts_and_the_fix(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, "mix:45")
    with pytest.raises(search.SearchError) as e:
        search.prepare_calibration(ctx, 2, size=15)  # a pool of 2 x 15; the request needs 2 x 45
    msg = str(e.value)
    assert "calibration pool holds" in msg and "mix:15" in msg and "--calibration-size 30" in msg


@pytest.mark.integration  # two calibration retrains and a short search
def test_the_calibration_noise_sets_how_close_to_the_best_a_cheaper_plan_may_be(source_model, tmp_path):
    """With noise, a second reference (seed + 1) of the same union measures how far retraining itself
    lands from the first on the calibration sets; the search registers the cheapest plan within that
    of the best and says so on its run."""
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 2, noise=True)
    noise = calibration.noise
    assert 0 <= noise["tow"] < 0.5 and 0 <= noise["mia/gap"] <= 1 and noise["tow_pe"] > 0  # retrains disagree somewhere
    found = search.search(ctx, calibration, n_trials=3, algorithms=("none", "finetune"), max_epochs=1, attach=False,
                          storage=f"sqlite:///{tmp_path}/n.db")
    run = MlflowClient().get_run(found.run_id)
    assert run.data.metrics["calibration/noise_tow"] == pytest.approx(noise["tow"])
    assert run.data.metrics["calibration/selected_tow"] >= run.data.metrics["calibration/best_tow"] - noise["tow"] - 1e-9
    assert "cheapest plan within" in run.data.tags[Tag.SELECTION]


@pytest.mark.integration  # the search step with a calibration retrain (the core's check: test_tuning)
def test_a_diverged_trial_fails_and_the_study_goes_on(source_model, diverging_algorithm, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 1)
    found = search.search(ctx, calibration, n_trials=4, algorithms=("none", "test_diverge"), attach=False,
                          storage=f"sqlite:///{tmp_path}/d.db")
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    states = [t.state for t in study.trials]
    scored = sum(tuning.counts_against_budget(t) for t in study.trials)  # a diverged trial spends budget
    assert scored <= 4 and tuning.budget_spent(study, 4) and optuna.trial.TrialState.FAIL in states
    assert optuna.trial.TrialState.COMPLETE in states
    assert "test_diverge" not in found.best_plan.to_compact()
    table = mlflow.artifacts.load_dict(f"runs:/{found.run_id}/trials.json")  # the table says so (no trial runs)
    assert "fail" in [dict(zip(table["columns"], row))["state"] for row in table["data"]]
    again = search.search(ctx, calibration, n_trials=4, algorithms=("none", "test_diverge"), attach=False,
                          storage=f"sqlite:///{tmp_path}/d2.db", trial_runs=True)
    failed = [r for r in runs(f"tags.`mlflow_unlearn.study` = '{again.study_name}'") if r.info.status == "FAILED"]
    assert failed and all("mlflow_unlearn.diverged" in r.data.tags for r in failed)


def test_search_refuses_a_source_without_a_validation_split(tracking):
    trained = steps.train_step(subset=200, width=4, epochs=1, val_fraction=0.0, registered_model_name="noval", progress=False)
    with pytest.raises(search.SearchError, match="--val-fraction"):
        search.search_step(trained.model_uri, "mix:30", n_trials=3, algorithms=("none", "finetune"))


def test_a_request_too_large_for_calibration_names_sizes_and_fix(source_model):
    _, uri = source_model
    ctx = request.prepare(uri, "mix:150")
    with pytest.raises(search.SearchError) as e:
        search.prepare_calibration(ctx, 2)
    assert "bin" in str(e.value) and "--calibration-sets 1" in str(e.value)


@pytest.mark.parametrize("kw,needle", [({"n_trials": 0}, "n_trials"), ({"objective": "accuracy"}, "accuracy"),
                                       ({"algorithms": ("none", "frob")}, "frob"), ({"n_trials": 2, "strategy": "joint"}, "known-good"),
                                       ({"strategy": "greedy"}, "composed, joint"), ({"max_epochs": 0}, "max_epochs"),
                                       ({"max_epochs": "most"}, "'auto' (bounded by the budget)"),
                                       ({"storage": "notadb://x"}, "notadb://x")])
def test_bad_search_settings(source_model, kw, needle):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.Calibration([], [], [])
    before = len(runs())
    kw = {"algorithms": ("none", "finetune"), **kw}
    with pytest.raises(search.SearchError) as e:
        search.search(ctx, calibration, **kw)
    assert needle in str(e.value)
    assert len(runs()) == before


def _worker(uri, tracking_uri, storage, study):
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlflow_unlearn.cli", "search", "--model-uri", uri, "--forget", FORGET,
                             "--n-trials", "4", "--calibration-sets", "1", "--max-epochs", "1", "--storage", storage,
                             "--study-name", study, "--algorithms", "none,neggrad", "--strategy", "joint"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_workers_share(uri, tracking_uri, storage):
    search.prepare_calibration(request.prepare(uri, FORGET), 1)  # both workers then hit the cached reference
    procs = [_worker(uri, tracking_uri, storage, "shared") for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    scored = sum(tuning.counts_against_budget(t) for t in finished)  # repeats are free (tuning.optimize)
    # the budget is the study's; two racing workers may each start the last one
    assert scored <= 5 and tuning.budget_spent(study, 4)
    ran = [t for t in finished if not tuning.is_copied(t)]  # copied trials (tuned settings) ran in no worker
    assert len({t.user_attrs["worker"] for t in ran}) == 2, "both workers ran trials"


@pytest.mark.integration
def test_two_workers_share_one_study_on_sqlite(source_model, tmp_path):
    tracking_uri, uri = source_model
    _two_workers_share(uri, tracking_uri, f"sqlite:///{tmp_path}/shared.db")


@pytest.mark.postgres
def test_two_workers_share_one_study_on_postgres(source_model, postgres_db):
    tracking_uri, uri = source_model
    _two_workers_share(uri, tracking_uri, postgres_db())


@pytest.mark.integration  # the search step with a calibration retrain
def test_multi_objective_search_returns_a_pareto_plan(source_model, tmp_path):
    _, uri = source_model
    ctx = request.prepare(uri, FORGET)
    calibration = search.prepare_calibration(ctx, 1)
    found = search.search(ctx, calibration, n_trials=4, objective="tow+cost", algorithms=("none", "neggrad"), max_epochs=1,
                          storage=f"sqlite:///{tmp_path}/mo.db", attach=False)
    study = optuna.load_study(study_name=found.study_name, storage=found.storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    # the second objective is compute in trainings, under the request's budget; doing nothing costs 0
    costs = [t.values[1] for t in study.trials if t.values]
    assert costs and all(0 <= c <= ctx.budget.fraction for c in costs), costs
    assert 0.0 in costs and max(costs) > 0
    assert found.best_value == max(t.values[0] for t in study.best_trials)


def test_max_epochs_auto_is_the_epochs_over_retain_the_budget_pays_for(source_model, tmp_path):
    """The default bound on searched epochs comes from the request's budget: every study of the
    search logs it, no trial asks for more, and a tuned setting may reach it."""
    _, uri = source_model
    ctx = request.prepare(uri, FORGET, budget=0.5)
    bound = budget_epochs(ctx.budget.passes, len(ctx.retain_ids))
    assert bound == -(-ctx.budget.passes // len(ctx.retain_ids)) and bound > 3  # more than the old fixed bound
    calibration = search.prepare_calibration(ctx, 1)
    found = search.search(ctx, calibration, n_trials=3, algorithms=("none", "finetune"), attach=False,
                          storage=f"sqlite:///{tmp_path}/auto.db")
    tuning_run = MlflowClient().get_run(found.tunings["finetune"].run_id)
    assert tuning_run.data.params["max_epochs"] == str(bound)
    study = optuna.load_study(study_name=found.tunings["finetune"].study_name, storage=f"sqlite:///{tmp_path}/auto.db")
    epochs = [t.params["finetune.epochs"] for t in study.trials if "finetune.epochs" in t.params]
    assert epochs and max(epochs) <= bound

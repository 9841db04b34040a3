"""The typed task (task.py): built and checked once, trusted below; and the counting spy that holds
it: one request's forget ids are checked exactly once on the CLI path and once on the hook path."""
import sys
import traceback

import numpy as np
import pytest

from mlflow_unlearn.data import DatasetSpec, load_dataset
from mlflow_unlearn.task import UnlearnTask


@pytest.fixture(scope="module")
def data():
    return load_dataset(DatasetSpec("digits", subset=50))


def test_build_is_the_one_check_and_names_each_problem(data):
    task = UnlearnTask.build(data, {"low": [4, 1], "high": [7]}, forgotten=[30, 31])
    assert task.forget_ids.tolist() == [1, 4, 7] and task.tiers["low"].tolist() == [4, 1]  # order kept
    assert len(task.retain_ids()) == 50 - 3 - 2 and not set(task.retain_ids()) & {1, 4, 7, 30, 31}
    with pytest.raises(ValueError):
        task.tiers["low"][0] = 9  # shared by every layer below: read-only
    with pytest.raises(KeyError, match=r"out of range: \[50\]"):
        UnlearnTask.build(data, {"low": [1, 50]}, error=KeyError)
    with pytest.raises(ValueError, match=r"tiers 'a' and 'b' share ids \[2\]"):
        UnlearnTask.build(data, {"a": [1, 2], "b": [2, 3]})
    with pytest.raises(ValueError, match=r"ids \[4\] were forgotten by an earlier request"):
        UnlearnTask.build(data, {"a": [4, 5]}, forgotten=[4])
    with pytest.raises(ValueError, match="nothing would be retained"):
        UnlearnTask.build(data, {"a": list(range(50))})
    with pytest.raises(ValueError, match="every tier is empty"):
        UnlearnTask.build(data, {"a": []})


def test_derived_values_need_no_second_check(data):
    c_proxy = np.linspace(0.0, 1.0, 50)
    task = UnlearnTask.from_forget_set(data, np.array([2, 10, 20, 30, 40, 45]), c_proxy, forgotten=np.array([10]))
    assert list(task.tiers) == ["low", "mid", "high"] and task.forget_ids.tolist() == [2, 20, 30, 40, 45]
    assert task.tiers["high"].tolist() == [2]  # the lowest C-proxy is the most memorised
    whole = task.merged()
    assert list(whole.tiers) == ["all"] and sorted(whole.tiers["all"].tolist()) == task.forget_ids.tolist()
    ud = task.unlearn_data()
    assert ud.forget_ids.tolist() == task.forget_ids.tolist() and len(ud.retain_ids) == 50 - 5 - 1


def spy_on_forget_checks(monkeypatch, forget) -> list:
    """Every `ids.train_ids` call, from any module, on exactly the ids of `forget`."""
    from mlflow_unlearn import ids as ids_module

    original, target, calls = ids_module.train_ids, sorted(set(int(i) for i in forget)), []

    def spy(ids, n_train, **kw):
        arr = np.asarray(ids.detach().cpu() if hasattr(ids, "detach") else ids).reshape(-1)
        if len(arr) == len(target) and sorted(arr.tolist()) == target:
            calls.append((kw.get("what"), traceback.extract_stack(limit=2)[0].name))
        return original(ids, n_train, **kw)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("mlflow_unlearn") and getattr(module, "train_ids", None) is original:
            monkeypatch.setattr(module, "train_ids", spy)
    return calls


PLAN = "low=finetune(epochs=1);mid=none;high=finetune(epochs=1)"


@pytest.mark.integration
def test_the_cli_path_checks_a_requests_ids_once(source_model, monkeypatch):
    """`mlflow-unlearn rum` (steps.rum_step): load, tier, unlearn, log, evaluate against a retrain."""
    from mlflow_unlearn import steps

    _, model_uri = source_model
    forget = list(range(40, 70))
    calls = spy_on_forget_checks(monkeypatch, forget)
    steps.rum_step(model_uri, forget, plan=PLAN, device="cpu", evaluate_against_retrain=True)
    assert len(calls) == 1, calls  # was 4 (the forget set, tiers twice, the histogram) before UnlearnTask


@pytest.mark.integration
def test_the_hook_path_checks_a_requests_ids_once(source_model, monkeypatch, tmp_path):
    """A registry request answered by a hook worker (jobs.run_job): read, merge, tier, unlearn, gate,
    evaluate, register."""
    import mlflow

    from mlflow_unlearn.hook import jobs
    from mlflow_unlearn.hook.attach import attach
    from mlflow_unlearn.hook.config import HookConfig
    from mlflow_unlearn.rum import Plan
    from mlflow_unlearn.tags import Tag

    tracking_uri, model_uri = source_model
    name, version = model_uri.split("/")[-2:]
    mlflow.MlflowClient().set_registered_model_tag(name, Tag.SEARCHED_PLAN, Plan.parse(PLAN).to_json(indent=None))
    jobs.configure(HookConfig(tracking_uri=tracking_uri, queue=str(tmp_path / "jobs.db"), models=[name],
                              reconcile_interval_s=0, device="cpu",
                              gate={"retain_drop": 0.5, "heldout_drop": 0.5, "mia_tolerance": 0.5}))
    forget = list(range(70, 100))
    attach(name, version, forget, tracking_uri=tracking_uri)  # the attach command checks at its own edge
    calls = spy_on_forget_checks(monkeypatch, forget)
    assert jobs.run_job(name, version).startswith("done -> version ")
    assert len(calls) == 1, calls  # was 9 (the union, tiers twice, the histogram, five outputs) before UnlearnTask


@pytest.mark.integration
def test_the_unlearn_path_checks_hyperparameters_once(source_model, monkeypatch):
    """`mlflow-unlearn unlearn --hyperparameters ...`: checked once, before any work (was 3 times:
    the step, `unlearn`, and the plan's validation)."""
    from mlflow_unlearn import steps
    from mlflow_unlearn.algorithms import _base

    original, calls = _base.validate_hyperparameters, []

    def spy(name, hyperparameters=None, *args, **kwargs):
        calls.append(traceback.extract_stack(limit=2)[0].name)
        return original(name, hyperparameters, *args, **kwargs)

    for module in list(sys.modules.values()):
        if (getattr(module, "__name__", "").startswith("mlflow_unlearn")
                and getattr(module, "validate_hyperparameters", None) is original):
            monkeypatch.setattr(module, "validate_hyperparameters", spy)
    _, model_uri = source_model
    steps.unlearn_step(model_uri, list(range(40, 70)), "finetune", {"lr": "0.05", "epochs": "1"}, device="cpu")
    assert calls == ["algorithm_plan"], calls

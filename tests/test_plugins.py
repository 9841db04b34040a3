"""Algorithm plugins through entry points: the example package in plugins/ installs, is found by name
in a fresh interpreter and runs through run_algorithm; a broken plugin only warns."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlflow_unlearn import _registry
from mlflow_unlearn._registry import Registry, UnknownComponentError
from mlflow_unlearn.algorithms import ALGORITHMS

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugins" / "mlflow-unlearn-example"
GROUP = "mlflow_unlearn.algorithms"
NAME = "example_ascent_then_repair"


def _installed() -> bool:
    """Installed (editable) from this checkout's plugins/ folder, as a fresh interpreter sees it."""
    code = textwrap.dedent(f"""
        import importlib.metadata as md, importlib.util, pathlib, sys
        eps = [ep for ep in md.entry_points(group={GROUP!r}) if ep.name == {NAME!r}]
        spec = importlib.util.find_spec("mlflow_unlearn_example")
        ok = bool(eps) and spec is not None and pathlib.Path(spec.origin).resolve().is_relative_to(
            pathlib.Path({str(PLUGIN_DIR)!r}).resolve())
        sys.exit(0 if ok else 1)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def example_plugin():
    """The example plugin, installed by `make venv` (editable, from this checkout), never by a test:
    the contract tests collected over `ALGORITHMS` must be the same on every run."""
    assert _installed(), (f"the example plugin is not installed in this environment; run `make venv` (it runs "
                          f"`pip install -e {PLUGIN_DIR.relative_to(ROOT)}`)")
    return NAME


@pytest.mark.integration
def test_example_plugin_is_found_by_name_and_runs(example_plugin, tmp_path):
    code = textwrap.dedent(f"""
        import json, torch
        from mlflow_unlearn.algorithms import ALGORITHMS, UnlearnData, hyperparameters, run_algorithm
        from mlflow_unlearn.data import DatasetSpec, load_dataset
        from mlflow_unlearn.models import build_model
        from mlflow_unlearn.progress import ListLogger

        torch.set_num_threads(1)  # tiny tensors; threads only spin on a busy machine
        fn = ALGORITHMS.get({example_plugin!r})
        data = load_dataset(DatasetSpec("digits", subset=120))
        model = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=0, width=4)
        before = {{k: v.clone() for k, v in model.state_dict().items()}}
        udata = UnlearnData.from_forget(data, list(range(12)))
        log = ListLogger()
        out = run_algorithm({example_plugin!r}, model, udata, {{"ascent_steps": "2", "repair_lr": "0.05"}},
                            seed=0, log=log)
        again = run_algorithm({example_plugin!r}, model, udata, {{"ascent_steps": "2", "repair_lr": "0.05"}}, seed=0)
        try:
            run_algorithm({example_plugin!r}, model, udata, {{"ascent_lr": -1}})
            bad = None
        except ValueError as exc:
            bad = str(exc)
        print(json.dumps({{
            "module": fn.__module__,
            "names": ALGORITHMS.names(),
            "hyperparameters": hyperparameters({example_plugin!r}),
            "cls": type(out).__name__,
            "caller_unchanged": all(torch.equal(before[k], v) for k, v in model.state_dict().items()),
            "changed": any(not torch.equal(before[k], v) for k, v in out.state_dict().items()),
            "reproducible": all(torch.equal(v, again.state_dict()[k]) for k, v in out.state_dict().items()),
            "logged": [k for _, m in log.records for k in m],
            "bad": bad,
        }}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["module"] == "mlflow_unlearn_example"
    assert example_plugin in res["names"] and "neggrad_plus" in res["names"]
    assert res["hyperparameters"] == {"ascent_steps": 16, "ascent_lr": 0.05, "repair_epochs": 1, "repair_lr": 0.01,
                                      "batch_size": 128}
    assert res["cls"] == "SmallCNN"
    assert res["caller_unchanged"] and res["changed"] and res["reproducible"]
    assert "unlearn/forget_loss" in res["logged"] and "unlearn/retain_loss" in res["logged"]
    assert res["bad"] and example_plugin in res["bad"] and "ascent_lr=-1" in res["bad"]


def _fake_entry_points(*eps):
    def entry_points(*, group=None, **_):
        return [ep for ep in eps if group is None or ep.group == group]
    return entry_points


def test_broken_plugin_warns_and_registry_still_works(monkeypatch):
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz:fn", group=GROUP)
    not_callable = importlib.metadata.EntryPoint(name="not_callable", value="math:pi", group=GROUP)
    good = importlib.metadata.EntryPoint(name="good", value="copy:deepcopy", group=GROUP)
    monkeypatch.setattr(_registry, "entry_points", _fake_entry_points(broken, not_callable, good))

    reg = Registry("algorithm", GROUP)
    reg.add("builtin", lambda model, data: model)
    with pytest.warns(RuntimeWarning) as record:
        names = reg.names()
    messages = " ".join(str(w.message) for w in record)
    assert "broken" in messages and "no_such_module_xyz" in messages and "not_callable" in messages
    assert names == ["builtin", "good"]
    with pytest.raises(UnknownComponentError, match="builtin, good"):
        reg.get("broken")


def test_broken_plugin_does_not_break_the_algorithm_registry(monkeypatch):
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz:fn", group=GROUP)
    monkeypatch.setattr(_registry, "entry_points", _fake_entry_points(broken))
    monkeypatch.setattr(ALGORITHMS, "_plugins_loaded", False)
    with pytest.warns(RuntimeWarning, match="broken"):
        names = ALGORITHMS.names()
    assert {"finetune", "salun", "retrain", "none"} <= set(names) and "broken" not in names
    assert callable(ALGORITHMS.get("neggrad_plus"))


def test_example_plugin_declares_its_search_space_and_is_searched_like_a_builtin(example_plugin):
    """The plugin's `declare_algorithm(search_space=...)` reaches the search through the entry point:
    its trials sample the declared hyperparameters (and only those), its defaults come first, and the
    best plan it returns runs."""
    import optuna

    from mlflow_unlearn import tuning
    from mlflow_unlearn.algorithms import FloatRange, IntRange, search_space
    from mlflow_unlearn.confidences import ConfidenceRecorder
    from mlflow_unlearn.data import DatasetSpec, load_dataset
    from mlflow_unlearn.memorization import tiers_from_c_proxy
    from mlflow_unlearn.forget_sets import calibration_forget_sets, mix_forget_set
    from mlflow_unlearn.models import build_model
    from mlflow_unlearn.training import TrainConfig, train_model

    space = search_space(example_plugin)
    assert space == {"ascent_steps": IntRange(1, 32, log=True), "ascent_lr": FloatRange(1e-3, 0.3, log=True),
                     "repair_lr": FloatRange(1e-3, 0.1, log=True)}
    data = load_dataset(DatasetSpec("digits", subset=200, val_fraction=0.1))
    config = TrainConfig(epochs=3, lr=0.05, batch_size=32)
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed, width=4)
    model = build(0)
    rec = ConfidenceRecorder(len(data.train))
    train_model(model, data, config, recorder=rec, progress=False, eval_test=False)
    c = rec.proxies()["c_proxy"]
    (cal_ids,) = calibration_forget_sets(c, mix_forget_set(c, 12), 1)
    ref_model, seconds = tuning.train_reference(build, config, data, cal_ids, seed=0)
    ref = tuning.Reference.build(ref_model, data, cal_ids, tiers_from_c_proxy(cal_ids, c), seconds=seconds,
                                 heldout=data.val)
    study = tuning.make_study(None, None, seed=0)
    tuning.optimize(study, tuning.algorithm_candidates(example_plugin, max_epochs=1),
                    tuning.CalibrationScorer(model, data, [ref], seed=0), n_trials=4,
                    enqueue=tuning.algorithm_default_trials(example_plugin))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert trials[0].params == {f"{example_plugin}.defaults": True}  # its defaults are the first trial
    searched = [t.params for t in trials if not t.params[f"{example_plugin}.defaults"]]
    assert searched, "no trial sampled the plugin's declared space"
    for params in searched:
        assert set(params) == {f"{example_plugin}.defaults", *(f"{example_plugin}.{k}" for k in space)}
        assert 1 <= params[f"{example_plugin}.ascent_steps"] <= 32
        assert 1e-3 <= params[f"{example_plugin}.ascent_lr"] <= 0.3
    plan, value = tuning.best_plan(study)
    assert plan.steps[0].algorithm == example_plugin and 0.0 <= value <= 1.0


@pytest.mark.integration
def test_a_plugin_dataset_model_algorithm_and_metric_reach_mains_summary(example_plugin, tracking):
    """Each extension is one function and one entry point (plugins/mlflow-unlearn-example/pyproject.toml):
    `main` trains the plugin's model on the plugin's dataset, tunes and reports the plugin's algorithm
    beside the built-ins, shows the plugin's metric where it declared (a summary column, a noise-floor
    value), and registers the result under the dataset's and model's names."""
    import mlflow
    from mlflow import MlflowClient

    from mlflow_unlearn import pipeline
    from mlflow_unlearn.data import DATASETS, dataset_forms
    from mlflow_unlearn.models import MODELS

    assert "example-bars" in DATASETS.names() and "example-bars[:<rate>]" in dataset_forms()
    assert "example_mlp" in MODELS.names()
    out = pipeline.main_step(dataset="example-bars", model="example_mlp", width=32, epochs=8, forget="mix:30",
                             n_trials=3, max_epochs=1, unlearn_seeds=1, baselines=(example_plugin,))
    assert f"{example_plugin} (defaults)" in out["table"] and f"{example_plugin} (tuned)" in out["table"]
    assert "RUM (searched plan)" in out["table"]
    header = out["table"].splitlines()[0]
    assert "| forget conf gap |" in header and header.index("test acc") < header.index("forget conf gap")
    assert 0 <= out["floor"]["floor/example_conf_gap"] <= 1  # a score key: the noise floor has it too
    floor_row = next(line for line in out["table"].splitlines() if line.startswith("| retrain vs retrain"))
    assert floor_row.count("|") == header.count("|")  # one cell per column, the plugin's included
    parent = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string="tags.`mlflow_unlearn.role` = 'pipeline'")[0]
    summary = mlflow.load_table("summary_table.json", run_ids=[parent.info.run_id])
    assert summary["example/conf_gap"].notna().all()  # every method and the floor have a value
    method = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"attributes.run_name = '{example_plugin} (tuned)'")[0]
    assert 0 <= method.data.metrics["example/conf_gap"] <= 1
    assert len(out["ctx"].data.train) == 630 and len(out["ctx"].data.flipped_ids) == 63  # 700 - 10% val; 10% noise
    original = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string="tags.`mlflow_unlearn.role` = 'original'")[0]
    assert original.data.tags["mlflow_unlearn.dataset"] == "example-bars"
    assert original.data.tags["mlflow_unlearn.model"] == "example_mlp"
    mv = MlflowClient().get_model_version("example-bars-example_mlp", out["rum"].version)
    assert mv.tags["mlflow_unlearn.algorithm"] == "rum"


def test_plugin_dataset_names_are_checked_by_the_plugins_own_rule(example_plugin):
    from mlflow_unlearn.data import DatasetError, DatasetSpec, label_noise_rate

    with pytest.raises(DatasetError, match=r"fraction in \[0, 0.5\).*got '0.7'"):
        DatasetSpec("example-bars:0.7")
    with pytest.raises(DatasetError, match=r"did you mean 'example-bars'\?.*example-bars\[:<rate>\]"):
        DatasetSpec("example-bar")
    assert label_noise_rate("example-bars:0.2") is None  # the digits-noisy rule is digits-noisy's only

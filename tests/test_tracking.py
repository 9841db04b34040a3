"""The train step, the registry round trip and bad input, through the real MLflow API."""
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from conftest import free_port
from mlflow_unlearn import tracking as tr
from mlflow_unlearn.data import DatasetError
from mlflow_unlearn.models import ModelError
from mlflow_unlearn.steps import train_step
from mlflow_unlearn.training import TrainConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", model="small_cnn", epochs=2, width=8, subset=200, progress=False)


def assert_nothing_created():
    client = MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs == [], f"a run was created: {[r.info.run_id for r in runs]}"
    assert client.search_registered_models() == []


def test_train_log_register_load_round_trip(tracking):
    result = train_step(**TINY, registered_model_name="digits-tiny")
    src = tracking_load(result.model_uri)
    assert type(src.model) is type(result.model)
    want = {k: v.cpu() for k, v in result.model.state_dict().items()}
    got = src.model.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    # 200 digits minus the default 10% validation split (held out for selection, docs/design.md section 2)
    assert src.manifest["ids"] == list(range(180)) and src.manifest["n_train"] == 180
    assert src.true_class_prob.shape == (2, 180) and src.true_class_prob.dtype == np.float16
    assert set(src.proxies) == {"c_proxy", "max_conf", "entropy", "learning_events"}
    np.testing.assert_allclose(src.proxies["c_proxy"], src.true_class_prob.astype(np.float32).mean(0), atol=2e-3)
    assert src.tags["mlflow_unlearn.role"] == "original"
    assert src.tags["mlflow_unlearn.dataset_digest"] == src.manifest["dataset_digest"]
    assert src.load_data().digest == src.manifest["dataset_digest"]

    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["mlflow_unlearn.role"] == "original"
    assert {"train/loss", "train/acc", "test/acc", "time/epoch_s"} <= set(run.data.metrics)
    history = MlflowClient().get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1]
    assert run.data.params["epochs"] == "2"

    # The registered version stands alone: raw uint8 images in (channels last), its own normalisation,
    # the test accuracy the run logged out; a signature, an input example, a meaningful name.
    data = src.load_data()
    served = mlflow.pyfunc.load_model(result.model_uri)
    labels = served.predict(tr.raw_images(data, data.test))
    assert labels.dtype == np.int64 and labels.shape == (len(data.test),)
    assert np.mean(labels == data.test.y.numpy()) == pytest.approx(run.data.metrics["test/acc"], abs=1e-9)
    probs = served.predict(tr.raw_images(data, data.test, 3), params={"output": "probabilities"})
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # an object tensor: MLflow passes the input as sent and the model checks it (image_input), the same
    # through pyfunc and REST; the contract in words is in the model's metadata
    assert served.metadata.get_input_schema().inputs[0].type == np.dtype(object)
    assert served.metadata.metadata["input"].startswith("images as an array of shape [N, 8, 8, 1]")
    assert np.array_equal(served.predict(tr.raw_images(data, data.test, 5).astype(np.float32) / 255), labels[:5])
    (logged,) = mlflow.search_logged_models(filter_string=f"source_run_id = '{result.run_id}'", output_format="list")
    assert logged.name == "original"
    assert served.metadata.saved_input_example_info is not None

    # alias resolution goes through the same loader
    MlflowClient().set_registered_model_alias("digits-tiny", "champion", result.version)
    assert tracking_load("models:/digits-tiny@champion").version == result.version


def tracking_load(uri):
    return tr.load_source(uri)


def test_unknown_version_lists_the_registered_ones(tracking):
    result = train_step(**TINY, registered_model_name="m")
    with pytest.raises(tr.ModelURIError, match=r"registered versions of 'm': \[1\]"):
        tracking_load("models:/m/7")
    with pytest.raises(tr.ModelURIError, match="models:/<name>/<version>"):
        tracking_load("runs:/abc/model")
    assert result.version == "1"


def test_version_without_manifest_is_a_clear_error(tracking):
    model = torch.nn.Linear(2, 2)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"])
    mv = mlflow.register_model(info.model_uri, "plain")
    with pytest.raises(tr.MissingArtifactError, match="training manifest"):
        tracking_load(f"models:/plain/{mv.version}")


@pytest.mark.parametrize("kw,error,needle", [
    ({"dataset": "mnist"}, DatasetError, "mnist"),
    ({"model": "resnet19"}, ModelError, "resnet19"),
    ({"dataset": "imagefolder:/no/such/tree"}, DatasetError, "/no/such/tree"),
    ({"epochs": 0}, TrainConfigError, "epochs"),
    ({"lr": -1.0}, TrainConfigError, "-1.0"),
])
def test_bad_input_names_the_value_and_creates_nothing(tracking, kw, error, needle):
    with pytest.raises(error) as e:
        train_step(**{**TINY, **kw})
    assert needle in str(e.value)
    assert_nothing_created()


def test_tracking_server_that_does_not_answer(tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    t0 = time.time()
    with pytest.raises(tr.TrackingError, match="does not answer"):
        train_step(**TINY)
    assert time.time() - t0 < 15


def test_remote_tracking_server_works_the_same(tracking, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = train_step(**TINY, registered_model_name="remote-tiny")
    src = tracking_load(result.model_uri)
    for k, v in result.model.state_dict().items():
        assert torch.equal(v.cpu(), src.model.state_dict()[k])
    assert src.true_class_prob.shape == (2, 180)


def run_cli(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "mlflow_unlearn.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_step_params_next_to_mlflow_run_spellings(tracking):
    """Values MLflow logged in the user's spelling are kept; a resolved value lands beside them."""
    with mlflow.start_run() as run:
        mlflow.log_params({"subset": "none", "epochs": "15.0", "plan": "auto", "register": "False"})
        tr.log_params({"subset": None, "epochs": 15, "plan": "low=none;mid=none;high=none", "register": False,
                       "seed": 3})
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert params == {"subset": "none", "epochs": "15.0", "plan": "auto", "register": "False", "seed": "3",
                      "plan.resolved": "low=none;mid=none;high=none"}

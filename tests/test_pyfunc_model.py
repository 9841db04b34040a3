"""pyfunc_model.py: the served model (models-from-code) without a tracking store: raw uint8 images
in, labels or probabilities out, in any batch size, and a bad `output` named. The round trip through
`mlflow.pyfunc.load_model` of a registered version is test_tracking's."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mlflow_unlearn.models import build_model, save_classifier
from mlflow_unlearn.pyfunc_model import RawImageModel


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    net = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8), seed=0, width=8)
    path = save_classifier(tmp_path_factory.mktemp("clf") / "classifier", net, name="small_cnn", kwargs={"width": 8},
                           num_classes=10, input_shape=(1, 8, 8), mean=[0.3], std=[0.4])
    model = RawImageModel()
    model.load_context(SimpleNamespace(artifacts={"classifier": str(path)}))
    return model, net.eval()


def test_labels_and_probabilities_match_the_network_on_normalised_input(served):
    model, net = served
    images = np.random.default_rng(0).integers(0, 256, size=(7, 8, 8), dtype=np.uint8)  # one channel: NHW
    expected = net((torch.from_numpy(images).float().div(255).unsqueeze(1) - 0.3) / 0.4).detach()
    labels = model.predict(None, images)
    probs = model.predict(None, images, params={"output": "probabilities"})
    assert labels.dtype == np.int64 and labels.tolist() == expected.argmax(1).tolist()
    assert probs.dtype == np.float32 and probs.shape == (7, 10)
    np.testing.assert_allclose(probs, expected.softmax(1).numpy(), atol=1e-5)


def test_large_inputs_are_chunked_with_the_same_answer(served):
    model, _ = served
    images = np.random.default_rng(1).integers(0, 256, size=(2500, 8, 8, 1), dtype=np.uint8)  # 3 chunks of <= 1024
    whole = model.predict(None, images, params={"output": "probabilities"})
    parts = np.concatenate([model.predict(None, images[i:i + 100], params={"output": "probabilities"})
                            for i in range(0, 2500, 100)])
    np.testing.assert_allclose(whole, parts, atol=1e-5)


def test_empty_input_gives_empty_outputs_of_the_right_shape(served):
    model, _ = served
    empty = np.zeros((0, 8, 8, 1), dtype=np.uint8)
    assert model.predict(None, empty).shape == (0,)
    assert model.predict(None, empty, params={"output": "probabilities"}).shape == (0, 10)


def test_unknown_output_and_wrong_layout_are_named(served):
    model, _ = served
    images = np.zeros((2, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown output 'logits'"):
        model.predict(None, images, params={"output": "logits"})
    with pytest.raises(ValueError, match=r"channels last.*\(2, 3, 8, 8\)"):
        model.predict(None, np.zeros((2, 3, 8, 8), dtype=np.uint8))

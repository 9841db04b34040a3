"""pyfunc_model.py: the served model (models-from-code) without a tracking store: raw uint8 images
in, labels or probabilities out, in any batch size, and a bad `output` named. The round trip through
`mlflow.pyfunc.load_model` of a registered version is test_tracking's."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mlflow_unlearn.models import build_model, save_classifier
from mlflow_unlearn.pyfunc_model import RawImageModel, ServingInputError


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
    with pytest.raises(ServingInputError, match="unknown output 'logits'"):
        model.predict(None, images, params={"output": "logits"})
    for shape, hint in (((2, 1, 8, 8), "Channels first: x.transpose(0, 2, 3, 1)"),
                        ((2, 64), "Flattened images: x.reshape(-1, 8, 8, 1)"),  # scikit-learn's digits.data
                        ((8, 8, 1), "One image: add the batch axis, x[None]"),
                        ((2, 3, 8, 8), "Reshape each image to (8, 8, 1)")):
        with pytest.raises(ServingInputError) as e:
            model.predict(None, np.zeros(shape, dtype=np.uint8))
        assert f"wrong input shape {shape}" in e.value.message and "[N, 8, 8, 1] (channels last)" in e.value.message
        assert hint in e.value.message
    for bad in (np.array([["a"] * 8] * 8), [[1, 2], [3]], np.zeros((2, 8, 8), dtype=bool)):
        with pytest.raises(ServingInputError, match=r"not (numbers|a rectangular array)"):
            model.predict(None, bad)


def test_floats_in_unit_range_are_read_as_pixels_and_integers_of_any_type_as_uint8(served):
    model, _ = served
    images = np.random.default_rng(2).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    expected = model.predict(None, images)
    assert model.predict(None, images.astype(np.float32) / 255.0).tolist() == expected.tolist()
    assert model.predict(None, images.astype(np.int64)).tolist() == expected.tolist()
    # JSON over REST reaches the model as an object array of Python numbers
    assert model.predict(None, np.array(images.tolist(), dtype=object)).tolist() == expected.tolist()


@pytest.mark.parametrize("values, words", [
    (np.full((2, 8, 8, 1), 16.0), "above 1"),  # scikit-learn digits sent as floats
    (np.full((2, 8, 8, 1), -0.5), "below 0"),
    (np.full((2, 8, 8, 1), np.nan), "NaN"),
    (np.full((2, 8, 8, 1), 300), "above 255"),
    (np.full((2, 8, 8, 1), -1), "below 0"),
])
def test_values_outside_the_contract_are_refused_without_echoing_them(served, values, words):
    model, _ = served
    values = values.copy()
    values.flat[7] = values.flat[7]  # the data: the error must not contain any of it
    with pytest.raises(ServingInputError) as e:
        model.predict(None, values)
    msg = e.value.message
    assert words in msg and "[0, 255]" in msg and "[0, 1]" in msg and "[N, 8, 8, 1]" in msg
    e.value.message = "Failed to predict data '<the request>'"  # what MLflow's scoring server does to it
    assert e.value.message == msg and "<the request>" not in e.value.serialize_as_json()
    assert e.value.get_http_status_code() == 400


def test_digits_in_their_native_range_are_answered_with_a_warning_in_the_log(served, caplog):
    model, _ = served
    digits = np.random.default_rng(3).integers(0, 17, size=(3, 8, 8, 1))
    with caplog.at_level("WARNING", logger="mlflow_unlearn.serving"):
        assert model.predict(None, digits).shape == (3,)
    assert "np.rint(x * 255 / 16).astype(np.uint8)" in caplog.text

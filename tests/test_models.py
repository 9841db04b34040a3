import pytest
import torch

from mlflow_unlearn.models import MODELS, ModelError, build_model


@pytest.mark.parametrize("name", MODELS.names())  # the built-ins and every installed plugin model
def test_every_model_maps_cifar_images_to_class_logits(name):
    kw = {"width": 8} if name in ("small_cnn", "resnet18", "resnet50") else {}
    model = build_model(name, num_classes=7, input_shape=(3, 32, 32), seed=0, **kw)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
        emb = model.embed(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and emb.ndim == 2


def test_resnet18_has_the_cifar_stem():
    m = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert not any(isinstance(x, torch.nn.MaxPool2d) for x in m.modules())
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(11.17e6, rel=0.01)  # the paper's 11M


def test_seed_makes_weights_reproducible_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8), seed=4)
    after = torch.rand(1)
    b = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8), seed=4)
    assert torch.equal(before, after)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match="resnet18") as err:
        build_model("resnet19", num_classes=10, input_shape=(3, 32, 32))
    assert "did you mean 'resnet18'?" in str(err.value) and "small_cnn" in str(err.value)


def test_vgg_rejects_images_too_small():
    with pytest.raises(ModelError, match="8x8"):
        build_model("vgg16_bn", num_classes=10, input_shape=(1, 8, 8))


# --------------------------------------------------------------------------------------------------
# The saved format: weights + a checked JSON spec, preprocessing inside, never unpickled


def _saved(tmp_path, digits):
    from mlflow_unlearn.models import save_classifier

    net = build_model("small_cnn", num_classes=10, input_shape=digits.input_shape, seed=0, width=8).eval()
    path = save_classifier(tmp_path / "classifier", net, name="small_cnn", kwargs={"width": 8}, num_classes=10,
                           input_shape=digits.input_shape, mean=digits.mean, std=digits.std, classes=digits.classes)
    return net, path


def test_saved_classifier_round_trip_and_raw_input(tmp_path, digits):
    from mlflow_unlearn.models import RawImageClassifier, load_classifier

    net, path = _saved(tmp_path, digits)
    x = digits.test.x[:16]
    with torch.no_grad():
        want = net(digits.normalize(x))
        bare = load_classifier(path)
        raw = load_classifier(path, raw_input=True)
        assert isinstance(raw, RawImageClassifier) and not raw.training
        torch.testing.assert_close(bare(digits.normalize(x)), want)
        nhwc = x.permute(0, 2, 3, 1).contiguous()
        torch.testing.assert_close(raw(nhwc), want, rtol=1e-5, atol=1e-5)  # uint8 [0, 255]
        torch.testing.assert_close(raw(nhwc.float() / 255), want, rtol=1e-5, atol=1e-5)  # float [0, 1]
        torch.testing.assert_close(raw(nhwc[..., 0]), want, rtol=1e-5, atol=1e-5)  # one channel: NHW
        with pytest.raises(ValueError, match=r"\[N, H, W, 1\].*\(16, 1, 8, 8\)"):
            raw(x)  # channels first is refused, not silently misread


@pytest.mark.parametrize("field, value, needle", [
    ("name", "os.system", "os.system"),
    ("kwargs", {"width": 8, "block": "evil"}, "builder options"),
    ("num_classes", "10", "num_classes"),
    ("mean", [0.5, 0.5], "mean"),
    ("format", 0, "format"),
])
def test_a_forged_spec_is_refused_by_name(tmp_path, digits, field, value, needle):
    import json

    from mlflow_unlearn.models import SPEC_FILE, ModelError, load_classifier

    _, path = _saved(tmp_path, digits)
    spec = json.loads((path / SPEC_FILE).read_text())
    spec[field] = value
    (path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ModelError, match=needle):
        load_classifier(path)


def test_pickled_weights_are_not_loaded(tmp_path, digits):
    """weights.pt is read with weights_only=True: a pickle that would run code is refused."""
    import pickle

    from mlflow_unlearn.models import WEIGHTS_FILE, ModelError, load_classifier

    _, path = _saved(tmp_path, digits)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, path / WEIGHTS_FILE, pickle_module=pickle)
    with pytest.raises(ModelError, match=r"weights.pt is not a plain state_dict of tensors \(it calls print\).*never unpickled"):
        load_classifier(path)

import pytest
import torch

from mlflow_unlearn.models import MODEL_BUILDERS, ModelError, build_model


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
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
    with pytest.raises(ModelError, match="resnet18"):
        build_model("resnet19", num_classes=10, input_shape=(3, 32, 32))


def test_vgg_rejects_images_too_small():
    with pytest.raises(ModelError, match="8x8"):
        build_model("vgg16_bn", num_classes=10, input_shape=(1, 8, 8))

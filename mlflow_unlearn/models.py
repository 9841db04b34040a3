"""Models by name (the `MODELS` registry; plugins add theirs through the entry-point group
`mlflow_unlearn.models`). Class count, input channels and image size come from the dataset.

- `small_cnn`: three conv blocks and a linear head; for tests and digits (8x8).
- `resnet18`, `resnet50`: torchvision's residual blocks with the CIFAR stem used by the RUM paper
  (3x3 stride-1 first conv, no max-pool), for images of 32x32 up to 64x64. `width` scales every
  stage (64 is the standard network) so CPU benchmarks can use a narrower copy of the same shape.
- `vgg16_bn`: torchvision's VGG-16 features with batch norm and a single linear head on the
  globally pooled 512-d features (the usual CIFAR variant; the ImageNet head would add 120M weights).
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from ._registry import Registry


class ModelError(ValueError):
    """An unknown model name or a model that cannot take the dataset's input; the message says which."""


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(in_channels, width), block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (used by the entanglement score)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class CifarResNet(nn.Module):
    """ResNet with the CIFAR stem: conv3x3 stride 1, no max-pool, four stages, global pool, linear."""

    def __init__(self, block, layers, num_classes: int, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class VGG16BN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        from torchvision.models import vgg16_bn

        features = vgg16_bn(weights=None).features
        if in_channels != 3:
            features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


def _small_cnn(num_classes, in_channels, image_size, width: int = 32):
    return SmallCNN(num_classes, in_channels, width)


def _resnet18(num_classes, in_channels, image_size, width: int = 64):
    from torchvision.models.resnet import BasicBlock  # heavy (torchvision pulls in torch._dynamo): only when built

    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width)


def _resnet50(num_classes, in_channels, image_size, width: int = 64):
    from torchvision.models.resnet import Bottleneck  # heavy: only when built

    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width)


def _vgg16_bn(num_classes, in_channels, image_size):
    if image_size < 32:
        raise ModelError(f"vgg16_bn halves the image 5 times and needs images of at least 32x32, got {image_size}x{image_size}; use small_cnn or resnet18")
    return VGG16BN(num_classes, in_channels)


# Name -> builder `fn(num_classes, in_channels, image_size, **options) -> nn.Module`; plugins add their
# own through the entry-point group `mlflow_unlearn.models`. A built model has `embed(x)` (the
# penultimate features, for the entanglement score) and `forward(x)` (logits).
MODELS = Registry("model", "mlflow_unlearn.models")
MODELS.add("small_cnn", _small_cnn)
MODELS.add("resnet18", _resnet18)
MODELS.add("resnet50", _resnet50)
MODELS.add("vgg16_bn", _vgg16_bn)


def validate_model_name(name: str) -> None:
    if not isinstance(name, str) or name not in MODELS:
        raise ModelError(MODELS.unknown_message([name]))


def build_model(name: str, *, num_classes: int, input_shape, seed: int | None = None, **kwargs) -> nn.Module:
    """Build model `name` for images of `input_shape` = (C, H, W). With `seed`, the initial weights
    are reproducible without touching the caller's global RNG state."""
    validate_model_name(name)
    in_channels, height, width_px = input_shape
    builder = MODELS.get(name)
    try:
        if seed is None:
            return builder(num_classes, in_channels, min(height, width_px), **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return builder(num_classes, in_channels, min(height, width_px), **kwargs)
    except TypeError as exc:
        raise ModelError(f"bad option for model {name!r}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# A classifier that stands alone: preprocessing inside, saved as weights plus a JSON spec
#
# `save_classifier` / `load_classifier` are the pure core of the logged-model format (tracking.log_model
# is the thin MLflow wrapper). Loading never unpickles: the spec names a builder from MODELS (installed code)
# and the weights are read with torch.load(weights_only=True), so a model in the registry cannot run
# code in the process that loads it (docs/design.md section 4).

CLASSIFIER_FORMAT = 1
WEIGHTS_FILE, SPEC_FILE = "weights.pt", "classifier.json"
_BUILDER_OPTIONS = {"width"}  # the only builder keyword a spec may carry (all integers)


class RawImageClassifier(nn.Module):
    """`net` with its input preprocessing in front: takes images as a user holds them, NHWC (NHW for
    one channel), uint8 in [0, 255] or float in [0, 1], and returns logits. `mean` and `std` are the
    per-channel statistics of the train split in [0, 1] units, the ones training normalised with."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels = self.mean.shape[1]
        x = images.unsqueeze(-1) if images.dim() == 3 and channels == 1 else images
        if x.dim() != 4 or x.shape[-1] != channels:
            raise ValueError(f"expected raw images of shape [N, H, W, {channels}] (channels last), got "
                             f"{tuple(images.shape)}")
        x = x.permute(0, 3, 1, 2)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        return self.net((x - self.mean) / self.std)


def save_classifier(path, net: nn.Module, *, name: str, kwargs: dict, num_classes: int, input_shape,
                    mean, std, classes=None) -> Path:
    """Write `net`'s weights and the spec that rebuilds it (architecture, class count, input shape
    (C, H, W), normalisation statistics, class names) into the folder `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path / WEIGHTS_FILE)
    spec = {"format": CLASSIFIER_FORMAT, "name": name, "kwargs": dict(kwargs), "num_classes": int(num_classes),
            "input_shape": [int(v) for v in input_shape], "mean": [float(v) for v in torch.as_tensor(mean).flatten()],
            "std": [float(v) for v in torch.as_tensor(std).flatten()],
            "classes": None if classes is None else [str(c) for c in classes]}
    (path / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    return path


def read_classifier_spec(path) -> dict:
    """The spec of a saved classifier, checked field by field: it may come from a registry anyone
    with write access could have filled."""
    file = Path(path) / SPEC_FILE
    if not file.is_file():
        raise ModelError(f"{path} holds no {SPEC_FILE}: not a classifier saved by mlflow-unlearn")
    spec = json.loads(file.read_text())
    bad = lambda what: ModelError(f"{file}: {what}; it was not written by mlflow_unlearn.models.save_classifier")
    if spec.get("format") != CLASSIFIER_FORMAT:
        raise bad(f"format {spec.get('format')!r}, expected {CLASSIFIER_FORMAT}")
    validate_model_name(spec.get("name"))
    kwargs = spec.get("kwargs")
    if not isinstance(kwargs, dict) or set(kwargs) - _BUILDER_OPTIONS or not all(
            isinstance(v, int) and 0 < v <= 4096 for v in kwargs.values()):
        raise bad(f"builder options {kwargs!r} (allowed: positive integers for {sorted(_BUILDER_OPTIONS)})")
    shape = spec.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and 0 < v <= 4096 for v in shape)):
        raise bad(f"input_shape {shape!r} (expected [C, H, W])")
    n = spec.get("num_classes")
    if not (isinstance(n, int) and 1 < n <= 100_000):
        raise bad(f"num_classes {n!r}")
    for key in ("mean", "std"):
        v = spec.get(key)
        if not (isinstance(v, list) and len(v) == shape[0] and all(isinstance(x, (int, float)) for x in v)):
            raise bad(f"{key} {v!r} (expected {shape[0]} numbers)")
    return spec


def load_classifier(path, *, raw_input: bool = False, map_location="cpu") -> nn.Module:
    """Rebuild a classifier saved by `save_classifier`, in eval mode: the bare network (inputs
    normalised as in training) or, with `raw_input`, the `RawImageClassifier` around it."""
    spec = read_classifier_spec(path)
    net = build_model(spec["name"], num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"]),
                      **spec["kwargs"])
    try:
        state = torch.load(Path(path) / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # a pickle that would build more than tensors: never run
        found = re.search(r"Unsupported global: GLOBAL ([\w.]{1,200})", str(exc))  # what it would call, not how to allow it
        why = f"it calls {found.group(1)}" if found else "it needs unpickling"
        raise ModelError(f"{WEIGHTS_FILE} is not a plain state_dict of tensors ({why}); "
                         f"models are loaded with torch.load(weights_only=True) and never unpickled: log the model "
                         f"again with mlflow_unlearn.tracking.log_model") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path}: the weights do not fit a {spec['name']} {spec['kwargs']}: {str(exc)[:300]}") from None
    model = RawImageClassifier(net, spec["mean"], spec["std"]) if raw_input else net
    return model.eval()

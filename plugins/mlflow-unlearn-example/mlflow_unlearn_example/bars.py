"""An example dataset, model and metric, registered by entry points in pyproject.toml.

`example-bars[:<rate>]`: 8x8 grey images of one bright bar (5 row positions and 5 column positions:
10 classes) on noise, generated from a fixed seed (no download); a share of train labels (default
0.1) is flipped, so the network has mislabelled examples to memorise and a forget set has something
to unlearn. `example_mlp`: a two-layer perceptron with `embed` (its hidden layer) and logits.
`example_confidence_gap`: how far the unlearned model's confidence on the forget set is from the
retrained reference's, shown as a column of `main`'s summary.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from mlflow_unlearn.data import DatasetError, DatasetSpec, RawImages, declare_dataset
from mlflow_unlearn.metrics import Shown, declare_metric

N_TRAIN, N_TEST = 700, 300  # per split, over 10 classes
DEFAULT_NOISE = 0.1


def _bars(n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    y = rng.randint(0, 10, size=n)
    x = rng.randint(0, 90, size=(n, 1, 8, 8))  # dim noise, in uint8 pixel units
    for i, label in enumerate(y):
        line = 1 + (label % 5) + (label % 5 > 1)  # rows/columns 1, 2, 4, 5, 6
        if label < 5:
            x[i, 0, line, :] = rng.randint(180, 256, size=8)
        else:
            x[i, 0, :, line] = rng.randint(180, 256, size=8)
    return x.astype(np.uint8), y.astype(np.int64)


def parse_noise(text: str) -> float:
    """The option after ':' (a fraction of train labels to flip); checked before any work."""
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not 0.0 <= rate < 0.5:
        raise DatasetError(f"example-bars takes a label-noise rate, a fraction in [0, 0.5): for example "
                           f"'example-bars:0.1'; got {text[:20]!r}")
    return rate


# How the name is written in help and errors, and the check of the option after ':' (its value
# reaches the loader); the entry point registers the function, the declarations travel with it.
@declare_dataset(form="example-bars[:<rate>]", option=parse_noise)
def bars(spec: DatasetSpec, rate: float | None) -> RawImages:
    rng = np.random.RandomState(1234)  # the data never moves; the spec's seed picks subsets and flips
    x_tr, y_tr = _bars(N_TRAIN, rng)
    x_te, y_te = _bars(N_TEST, rng)
    return RawImages(x_tr, y_tr, x_te, y_te, [f"row{r}" for r in range(5)] + [f"col{c}" for c in range(5)],
                     augment=False, label_noise=DEFAULT_NOISE if rate is None else rate)



class MLP(nn.Module):
    def __init__(self, num_classes: int, in_features: int, width: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def embed(self, x):
        return self.hidden(x)

    def forward(self, x):
        return self.fc(self.embed(x))


def mlp(num_classes: int, in_channels: int, image_size: int, width: int = 64) -> nn.Module:
    """A builder: class count, channels and image size come from the dataset; `width` is the only option."""
    return MLP(num_classes, in_channels * image_size * image_size, width)


@declare_metric(higher_is_better={"example/conf_gap": False},
                shown={"example/conf_gap": Shown("forget conf gap")})
def confidence_gap(unlearned, reference=None) -> dict[str, float]:
    """|mean true-class confidence on the forget set, unlearned - retrained|: 0 = as confident as a
    model that never saw the forget set. Needs the reference; nothing without one."""
    if reference is None:
        return {}
    mean = lambda outputs: float(np.mean(outputs["forget"].signal("confidence")))
    return {"example/conf_gap": abs(mean(unlearned) - mean(reference))}

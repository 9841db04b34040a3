"""The tiny unlearning problem shared by test_algorithms.py and test_algorithms_builtin.py (one copy,
trained once per test session by conftest's `problem` fixture): 400 digits, a width-8 small CNN
trained to 100% train accuracy; the forget set is every training example of class 3 (about 40),
so the retrained reference gets 0 on it. Plus the helpers both files measure with."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mlflow_unlearn.algorithms import TrainRecipe, UnlearnData
from mlflow_unlearn.data import DatasetSpec, load_dataset
from mlflow_unlearn.models import build_model
from mlflow_unlearn.training import TrainConfig, accuracy, predict_logits, train_model

TINY_CONFIG = TrainConfig(epochs=8, lr=0.1, batch_size=32)


def build_problem():
    """(model, udata, stats) of the tiny problem; fails unless the original fits it perfectly."""
    data = load_dataset(DatasetSpec("digits", subset=400))
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed, width=8)
    model = build(0)
    train_model(model, data, TINY_CONFIG, progress=False, eval_test=False)
    model.eval()
    forget_ids = torch.nonzero(data.train.y == 3).flatten()
    udata = UnlearnData.from_forget(data, forget_ids, recipe=TrainRecipe(build, TINY_CONFIG))
    found = stats(model, udata)
    assert found["retain_acc"] == 1.0 and found["forget_acc"] == 1.0, found  # the regime the paper needs
    return model, udata, found


def stats(model, udata):
    data = udata.data
    forget_logits = predict_logits(model, data, udata.forget)
    return {
        "forget_acc": (forget_logits.argmax(1) == udata.forget.y).float().mean().item(),
        "forget_ce": F.cross_entropy(forget_logits, udata.forget.y).item(),
        "retain_acc": accuracy(model, data, udata.retain),
    }


def forgot(before: dict, after: dict) -> bool:
    """The forgetting bar: forget CE up by more than 0.15 nats, or forget accuracy down by 0.2."""
    return after["forget_ce"] > before["forget_ce"] + 0.15 or after["forget_acc"] <= before["forget_acc"] - 0.2


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

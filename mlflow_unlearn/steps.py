"""The pipeline steps as plain functions: each is one MLflow run with a role tag. The CLI and the
MLproject entry points are thin wrappers around these. Inputs are validated before any run exists,
so bad input never leaves a half-created run or registered model."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import mlflow
import torch

from . import tracking
from .confidences import ConfidenceRecorder
from .data import DatasetSpec, check_dataset, load_dataset
from .models import build_model, validate_model_name
from .training import TrainConfig, accuracy, train_model
from .tracking import TAG


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use device=cpu or auto")
    return torch.device(device)


def default_model_name(dataset: str, model: str) -> str:
    base = dataset.split(":", 1)[0] if not dataset.startswith("imagefolder:") else "imagefolder-" + re.sub(r"\W+", "-", dataset.split(":", 1)[1].rstrip("/").split("/")[-1])
    return f"{base}-{model}"


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    history: list[dict]
    model: torch.nn.Module  # the trained network, as logged


    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


def train_step(
    *,
    dataset: str = "digits",
    model: str = "small_cnn",
    epochs: int = 15,
    lr: float = 0.05,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: bool | None = None,
    subset: int | None = None,
    val_fraction: float = 0.0,
    root: str | None = None,
    download: bool = False,
    width: int | None = None,
    registered_model_name: str | None = None,
    device: str | None = "auto",
    experiment: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train an original model while recording per-example confidences; log and register it."""
    # Validation first: nothing is created in MLflow until every input is known to be usable.
    spec = DatasetSpec(name=dataset, root=root, subset=subset, val_fraction=val_fraction, seed=seed, download=download)
    validate_model_name(model)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, seed=seed, augment=augment)
    check_dataset(spec)
    dev = resolve_device(device)
    model_kwargs = {} if width is None else {"width": int(width)}
    name = registered_model_name or default_model_name(dataset, model)
    tracking.connect()
    data = load_dataset(spec, device=dev)
    net = build_model(model, num_classes=data.num_classes, input_shape=data.input_shape, seed=seed, **model_kwargs)

    tracking.use_experiment(experiment)
    with mlflow.start_run(run_name=f"train-{model}-{spec.name.split(':')[0]}") as run:
        mlflow.set_tags({TAG + "role": "original", TAG + "dataset": spec.name, TAG + "model": model})
        mlflow.log_params({"dataset": spec.name, "model": model, "subset": subset, "val_fraction": val_fraction,
                           "train_device": str(dev), "n_train": len(data.train), "n_test": len(data.test), **model_kwargs,
                           **config.to_dict()})
        recorder = ConfidenceRecorder(len(data.train))
        t0 = time.perf_counter()
        history = train_model(net, data, config, recorder=recorder, log=tracking.MlflowLogger(), progress=progress)
        train_seconds = time.perf_counter() - t0
        final = {"train/acc_eval": accuracy(net, data, data.train), "test/acc": history[-1]["test/acc"],
                 "time/train_s": train_seconds}
        if data.val is not None:
            final["val/acc"] = accuracy(net, data, data.val)
        mlflow.log_metrics(final)
        model_spec = {"name": model, "kwargs": model_kwargs, "num_classes": data.num_classes,
                      "input_shape": list(data.input_shape), "dataset_spec": spec.to_dict(), "train_config": config.to_dict(),
                      "train_seconds": train_seconds}
        info = tracking.log_model(net, model_spec)
        tracking.log_confidences(recorder)
        tracking.log_manifest(data.manifest())
        mv = tracking.register(info.model_uri, name, {
            TAG + "role": "original", TAG + "dataset": spec.name, TAG + "dataset_digest": data.digest,
            TAG + "run_id": run.info.run_id, TAG + "train_acc": f"{final['train/acc_eval']:.4f}",
            TAG + "test_acc": f"{final['test/acc']:.4f}",
        })
        mlflow.set_tag(TAG + "registered_version", f"{name}/{mv.version}")
    print(f"registered models:/{name}/{mv.version}  train acc {final['train/acc_eval']:.4f}  test acc {final['test/acc']:.4f}  ({train_seconds:.1f} s)")
    return TrainResult(run.info.run_id, name, str(mv.version), history, net)


def ui_hint() -> str:
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"Open the runs in the MLflow UI: {uri}"
    return f"Open the runs in the MLflow UI: mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000)"


def main_step(*, dataset: str = "digits", model: str = "small_cnn", epochs: int = 15, seed: int = 0,
              registered_model_name: str | None = None, device: str | None = "auto", experiment: str | None = None) -> dict[str, Any]:
    """The README's main job. Today: train and register the original model with its confidences."""
    result = train_step(dataset=dataset, model=model, epochs=epochs, seed=seed, registered_model_name=registered_model_name,
                        device=device, experiment=experiment, progress=False)
    print(ui_hint())
    return {"original": result}

"""MLflow edge: connecting, logging original models with their confidence artifacts and manifest,
registering them, and loading everything back from a `models:/` URI.

Artifact layout of an original run (DESIGN.md section 4):
    model/                      mlflow.pytorch model, pickle format (loads back as the same class)
    model_spec.json             model name, builder options, dataset spec, training config
    manifest/train_manifest.json ids, labels, dataset name and digest
    confidences/true_class_prob.npy   float16 [epochs, n_train], column = example id
    confidences/history.npz     max_prob, entropy, correct, float16 [epochs, n_train]
    confidences/proxies.npz     c_proxy, max_conf, entropy, learning_events, float32 [n_train]
    confidences/proxies.csv     the same, one row per id, readable in the MLflow UI
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .confidences import PROXY_NAMES, ConfidenceRecorder, proxies_from_history
from .data import DatasetSpec, ImageData, load_dataset

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "mlflow-unlearn"
TAG = "mlflow_unlearn."
ROLES = ("original", "retrain", "unlearn", "rum", "search", "trial", "evaluate", "request")


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used; the message says what to do."""


class MissingArtifactError(LookupError):
    """A model version lacks an artifact the step needs; the message names it and how to produce it."""

    def __str__(self) -> str:
        return str(self.args[0])


class ModelURIError(ValueError):
    """A model URI that does not resolve to a registered version."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect(uri: str | None = None, *, timeout_s: float = 5.0) -> MlflowClient:
    """Point MLflow at `uri` (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db) and check
    that an HTTP server answers, before any run is created. MLflow's own client retries an
    unreachable server for minutes; this fails in seconds with the fix."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"the MLflow tracking server at {uri} does not answer ({getattr(exc, 'reason', exc)}); "
                f"start it (`mlflow server --backend-store-uri sqlite:///mlflow.db --port ...`) or unset "
                f"MLFLOW_TRACKING_URI to use the embedded {DEFAULT_TRACKING_URI}"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.parent and not db.parent.exists():
            raise TrackingError(f"the folder of the SQLite tracking database {uri} does not exist: create {db.parent} first")
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def use_experiment(name: str | None) -> None:
    """Select the experiment unless `mlflow run` already chose one for the active run."""
    if (os.environ.get("MLFLOW_RUN_ID") or mlflow.active_run()) and name is None:
        return
    mlflow.set_experiment(name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)


class MlflowLogger:
    """The core's MetricLogger protocol, writing to the active MLflow run (or a given run id)."""

    def __init__(self, run_id: str | None = None, prefix: str = ""):
        self.run_id, self.prefix = run_id, prefix

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {self.prefix + k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
        if not clean:
            return
        if self.run_id is None:
            mlflow.log_metrics(clean, step=step)
        else:
            MlflowClient().log_batch(
                self.run_id,
                metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), step or 0) for k, v in clean.items()],
            )


def param_text(value: Any) -> str:
    """How a parameter value is written: None as `none` and booleans as `true`/`false`, the spelling
    the MLproject entry points use, so a value reads the same whichever way a step was started."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _canonical(text: str) -> Any:
    t = str(text).strip()
    if t.lower() in ("", "none", "null"):
        return None
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return float(t)
    except ValueError:
        return t


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters on the active run. Under `mlflow run` the entry point's parameters are already
    logged, in the user's spelling (`none`, `15.0`, `auto`), and MLflow refuses to change a logged
    value. A key already logged with an equivalent value is skipped; one this step resolved to
    something else (`plan=auto` -> the registered plan) is logged as `<key>.resolved`, so the user's
    input and what ran are both on the run."""
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.params if run is not None else {}
    out = {}
    for key, value in params.items():
        text = param_text(value)
        if key in logged:
            if _canonical(logged[key]) == _canonical(text):
                continue
            key = f"{key}.resolved"
        out[key] = text
    if out:
        mlflow.log_params(out)


def pip_requirements() -> list[str]:
    """Explicit requirements for logged models: inferring them costs ~5 s per model."""
    import torchvision

    base = lambda v: v.split("+")[0]
    return [f"torch=={base(torch.__version__)}", f"torchvision=={base(torchvision.__version__)}", f"numpy=={np.__version__}"]


def _package_dir() -> str:
    return str(Path(__file__).resolve().parent)


def log_model(model: torch.nn.Module, model_spec: dict, *, name: str = "model") -> Any:
    """Log `model` in MLflow's pickle format with this package as code, so `mlflow.pytorch.load_model`
    returns the same nn.Module class (the pt2 default loads back as a GraphModule, which cannot be
    fine-tuned). The builder spec is logged beside it so it can also be rebuilt from the state dict."""
    model = model.to("cpu")
    # MLflow warns on every pickle-format log; we choose it on purpose (see above).
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    info = mlflow.pytorch.log_model(
        model,
        name=name,
        serialization_format="pickle",
        pip_requirements=pip_requirements(),
        code_paths=[_package_dir()],
    )
    mlflow.log_dict(model_spec, "model_spec.json")
    return info


def log_confidences(recorder: ConfidenceRecorder | Mapping[str, np.ndarray], *, artifact_path: str = "confidences") -> dict[str, np.ndarray]:
    """Log per-example, per-epoch confidences and the derived proxy scores to the active run.

    Accepts a ConfidenceRecorder (or its `history()` dict) from any training loop, so teams with their
    own trainer get the artifacts the `train` step logs. Returns the proxies."""
    history = recorder.history() if isinstance(recorder, ConfidenceRecorder) else dict(recorder)
    proxies = proxies_from_history(history)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "true_class_prob.npy", history["true_prob"].astype(np.float16))
        np.savez_compressed(tmp / "history.npz", **{k: history[k].astype(np.float16) for k in ("max_prob", "entropy", "correct")})
        np.savez(tmp / "proxies.npz", **{k: v.astype(np.float32) for k, v in proxies.items()})
        buf = io.StringIO()
        buf.write("id," + ",".join(PROXY_NAMES) + "\n")
        for i in range(len(proxies["c_proxy"])):
            buf.write(f"{i}," + ",".join(f"{proxies[k][i]:.6f}" for k in PROXY_NAMES) + "\n")
        (tmp / "proxies.csv").write_text(buf.getvalue())
        mlflow.log_artifacts(str(tmp), artifact_path)
    return proxies


def log_manifest(manifest: dict) -> None:
    mlflow.log_dict(manifest, "manifest/train_manifest.json")


# --------------------------------------------------------------------------------------------------
# Loading back

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))$")


@dataclass
class SourceModel:
    """A registered original model and everything recorded with it."""

    name: str
    version: str
    run_id: str
    model: torch.nn.Module
    model_spec: dict
    dataset_spec: DatasetSpec
    manifest: dict
    true_class_prob: np.ndarray | None  # [epochs, n_train]
    proxies: dict[str, np.ndarray] | None
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def load_data(self, device="cpu", *, check_digest: bool = True) -> ImageData:
        data = load_dataset(self.dataset_spec, device=device)
        want = self.manifest.get("dataset_digest")
        if check_digest and want and data.digest != want:
            raise MissingArtifactError(
                f"the dataset {self.dataset_spec.name!r} loaded here has digest {data.digest[:12]}..., but "
                f"{self.uri} was trained on {want[:12]}...; point root/imagefolder at the same data"
            )
        return data


def resolve_version(client: MlflowClient, model_uri: str):
    m = _MODELS_URI.match(model_uri or "")
    if not m:
        raise ModelURIError(f"model URI {model_uri!r} is not of the form models:/<name>/<version> or models:/<name>@<alias>")
    try:
        if m["version"]:
            return client.get_model_version(m["name"], m["version"])
        return client.get_model_version_by_alias(m["name"], m["alias"])
    except MlflowException as exc:
        known = ""
        try:
            versions = client.search_model_versions(f"name='{m['name']}'")
            known = f"; registered versions of {m['name']!r}: {sorted(int(v.version) for v in versions)}" if versions else f"; no registered model named {m['name']!r}"
        except MlflowException:
            pass
        raise ModelURIError(f"{model_uri} does not resolve: {exc.message}{known}") from None


def _download_json(client: MlflowClient, run_id: str, path: str, what: str, fix: str) -> dict:
    try:
        local = client.download_artifacts(run_id, path)
    except (MlflowException, OSError):
        raise MissingArtifactError(f"run {run_id} has no {what} artifact {path!r}; {fix}") from None
    return json.loads(Path(local).read_text())


def load_source(model_uri: str, *, with_confidences: bool = True, map_location="cpu") -> SourceModel:
    """Load `models:/name/version` or `models:/name@alias`: the model (same nn.Module class it was
    trained as), its dataset spec, the train manifest, and the confidence and proxy scores."""
    client = MlflowClient()
    mv = resolve_version(client, model_uri)
    fix = "it was not logged by `mlflow-unlearn train`; log it with mlflow_unlearn.tracking.log_manifest/log_confidences in the original run"
    manifest = _download_json(client, mv.run_id, "manifest/train_manifest.json", "training manifest", fix)
    model_spec = _download_json(client, mv.run_id, "model_spec.json", "model spec", fix)
    model = mlflow.pytorch.load_model(f"models:/{mv.name}/{mv.version}", map_location=map_location)
    true_prob, proxies = None, None
    if with_confidences:
        try:
            true_prob = np.load(client.download_artifacts(mv.run_id, "confidences/true_class_prob.npy"))
            with np.load(client.download_artifacts(mv.run_id, "confidences/proxies.npz")) as z:
                proxies = {k: z[k] for k in z.files}
        except (MlflowException, OSError):
            raise MissingArtifactError(f"run {mv.run_id} of {model_uri} has no confidences/ artifacts; {fix}") from None
    return SourceModel(
        name=mv.name, version=str(mv.version), run_id=mv.run_id, model=model, model_spec=model_spec,
        dataset_spec=DatasetSpec.from_dict(manifest["dataset_spec"]), manifest=manifest,
        true_class_prob=true_prob, proxies=proxies, tags=dict(mv.tags or {}),
    )


def register(model_uri: str, name: str, tags: Mapping[str, Any]) -> Any:
    """Register a logged model and tag the version. If tagging fails the version is deleted, so a
    crash never leaves a half-described version behind."""
    client = MlflowClient()
    mv = mlflow.register_model(model_uri, name)
    try:
        for k, v in tags.items():
            client.set_model_version_tag(name, mv.version, k, str(v))
    except Exception:
        client.delete_model_version(name, mv.version)
        raise
    return client.get_model_version(name, mv.version)


def dataclass_params(obj, prefix: str = "") -> dict[str, Any]:
    return {prefix + k: v for k, v in dataclasses.asdict(obj).items()}

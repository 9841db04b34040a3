"""MLflow edge: connecting, logging original models with their confidence artifacts and manifest,
registering them, and loading everything back from a `models:/` URI. The tag and role vocabulary
is in `tags.py`.

Artifact layout of an original run (docs/design.md section 4):
    models: original            pyfunc from code (pyfunc_model.py): raw uint8 images in; artifacts/classifier/
                                holds weights.pt + classifier.json, which the package reloads (never unpickled)
    model_spec.json             model name, builder options, dataset spec, training config
    manifest/train_manifest.json ids, labels, dataset name and digest
    confidences/true_class_prob.npy   float16 [epochs, n_train], column = example id
    confidences/history.npz     max_prob, entropy, correct, float16 [epochs, n_train]
    confidences/proxies.npz     c_proxy, max_conf, entropy, learning_events, float32 [n_train]
    confidences/proxies.csv     the same, one row per id, readable in the MLflow UI
    confidences/heldout_true_class_prob.npy   float16 [epochs, n_val]: the validation split after
                                each epoch, never trained on (the gate's estimate without a search)
    manifest/lineage.json       lineage.Lineage: nothing forgotten yet, the chain starts here

Every run that logs a model made from a registered version (unlearn, rum, retrain) logs its own
manifest/lineage.json (what that model has forgotten so far, naming this training run), so a
request on such a version accumulates on it; its manifest and C-proxy are read from the training run.
"""
from __future__ import annotations

import json
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

from .compute import original_train_passes
from .confidences import HELDOUT_FILE, ConfidenceRecorder, save_confidences
from .data import DatasetSpec, ImageData, load_dataset
from .image_input import expected_input
from .models import load_classifier, save_classifier
from .lineage import LINEAGE_PATH, Lineage, LineageError
from .tags import MAX_TAG_VALUE, TAG, Role, Tag, plan_tag_value  # noqa: F401 (the vocabulary, re-exported)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "mlflow-unlearn"
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


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the MLflow 3 UI opens an experiment in its GenAI or training view by it


TRANSIENT = ("IntegrityError", "UNIQUE constraint", "already exists", "database is locked", "Deadlock", "deadlock",
             "could not serialize", "TEMPORARILY_UNAVAILABLE", "Connection reset", "timed out")


def retry_transient(call, attempts: int = 6, pause_s: float = 0.1):
    """`call()`, retried when the store reports a transient conflict (two writers upserting one row
    at once: SQLite's IntegrityError or 'database is locked', a PostgreSQL serialisation failure),
    with a doubling pause (0.1 s to 1.6 s); any other error, or the last attempt's, is raised."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as exc:
            if attempt == attempts - 1 or not any(t in str(exc) for t in TRANSIENT):
                raise
            time.sleep(pause_s * (2 ** attempt))


def use_experiment(name: str | None) -> None:
    """Select the experiment unless `mlflow run` already chose one for the active run, and mark it
    as model training, so the MLflow UI opens it on training runs, not on its GenAI trace pages."""
    if (os.environ.get("MLFLOW_RUN_ID") or mlflow.active_run()) and name is None:
        run = mlflow.active_run()
        experiment_id = run.info.experiment_id if run else os.environ.get("MLFLOW_EXPERIMENT_ID")
        if experiment_id is None and os.environ.get("MLFLOW_RUN_ID"):
            experiment_id = MlflowClient().get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    else:
        # two processes creating the same experiment at once: one wins, the other retries and finds it
        wanted = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment_id = retry_transient(lambda: mlflow.set_experiment(wanted)).experiment_id
    if experiment_id is not None:
        client = MlflowClient()
        if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
            retry_transient(lambda: client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development"))


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


MODEL_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"
CLASSIFIER_ARTIFACT = "artifacts/classifier"  # inside the logged model: weights.pt + classifier.json
INPUT_EXAMPLE_SIZE = 4  # test images (never train: an example must not carry a forgotten image)


def raw_images(data: ImageData, split, n: int | None = None) -> np.ndarray:
    """Images of `split` as a user holds them: uint8, channels last ([N, H, W, C])."""
    x = split.x if n is None else split.x[:n]
    return np.ascontiguousarray(x.cpu().numpy().transpose(0, 2, 3, 1))


def model_signature(data: ImageData):
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    # object: MLflow passes what the client sent to the model unchanged (a uint8 tensor spec made the
    # REST server cast JSON floats to uint8 first); the model checks dtype, range and shape itself
    # (image_input), the same through pyfunc.predict and REST
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
                          outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
                          params=ParamSchema([ParamSpec("output", "string", "label")]))


def log_model(model: torch.nn.Module, model_spec: dict, data: ImageData, *, name: str) -> Any:
    """Log `model` as a standalone MLflow model called `name` (original, retrain, rum,
    unlearn-<algorithm>): a pyfunc from code (mlflow_unlearn/pyfunc_model.py, nothing pickled) that
    takes raw uint8 images and does its own normalisation, with a signature, an input example from
    the test split, and the `classifier` artifact (weights + spec) the package reloads from. The
    builder spec is also logged on the run (`model_spec.json`: the recipe a retrain replays)."""

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_classifier(Path(tmp) / "classifier", model, name=model_spec["name"], kwargs=model_spec["kwargs"],
                                 num_classes=model_spec["num_classes"], input_shape=model_spec["input_shape"],
                                 mean=data.mean.cpu(), std=data.std.cpu(), classes=data.classes)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(MODEL_CODE), artifacts={"classifier": str(folder)},
            code_paths=[_package_dir()], signature=model_signature(data),
            input_example=raw_images(data, data.test, INPUT_EXAMPLE_SIZE), pip_requirements=pip_requirements(),
            metadata={"input": expected_input(data.input_shape)},  # the contract the object signature cannot state
        )
    mlflow.log_dict(model_spec, "model_spec.json")
    return info


def _logged_model_id(uri_or_id: str) -> str:
    return uri_or_id[len("models:/"):] if uri_or_id.startswith("models:/") else uri_or_id


def version_model_id(mv) -> str:
    """The logged model behind a registered version (MLflow 3 keeps it as `models:/m-...` in source)."""
    return getattr(mv, "model_id", None) or _logged_model_id(mv.source or "")


def load_logged_classifier(model_id: str, *, map_location="cpu") -> torch.nn.Module:
    """The bare network of a model logged by `log_model` (`m-...` or `models:/m-...`), rebuilt from
    its weights and spec: never unpickled, never run as code."""

    model_id = _logged_model_id(model_id)
    try:
        location = mlflow.get_logged_model(model_id).artifact_location.rstrip("/")
    except MlflowException as exc:
        raise MissingArtifactError(f"logged model {model_id} not found: {exc.message}") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{CLASSIFIER_ARTIFACT}", dst_path=tmp)
        except (MlflowException, OSError):
            raise MissingArtifactError(
                f"logged model {model_id} has no {CLASSIFIER_ARTIFACT}/ (weights + spec): it was not logged by this "
                f"version of mlflow-unlearn (earlier versions logged pickled models, which are not loaded: a registry "
                f"writer must not be able to run code here); log it again with mlflow_unlearn.tracking.log_model"
            ) from None
        return load_classifier(local, map_location=map_location)


def log_dataset_input(name: str, digest: str, context: str, **details: Any) -> None:
    """A dataset as an MLflow run input (the run page's Dataset column and lineage): `name`, the
    first 32 hex digits of our sha256 `digest` (MLflow's digest column holds 36 characters; the full
    one is the input tag `mlflow_unlearn.digest`), `context` (training, forget, calibration) and
    `details` as the source's tags. Only descriptions: the data itself stays where it is."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    dataset = MetaDataset(CodeDatasetSource({k: str(v) for k, v in details.items()}), name=name, digest=digest[:32])
    mlflow.log_input(dataset, context=context, tags={TAG + "digest": digest})


def log_model_input(model_id: str | None) -> None:
    """The source model version as an input of the active run (MLflow 3's model lineage)."""
    if model_id:
        from mlflow.entities import LoggedModelInput

        mlflow.log_input(model=LoggedModelInput(model_id))


def run_model_id(run_id: str) -> str:
    """The model a step's run logged (each step run logs exactly one)."""
    outputs = MlflowClient().get_run(run_id).outputs
    models = [] if outputs is None else list(outputs.model_outputs or [])
    if not models:
        raise MissingArtifactError(f"run {run_id} logged no model; pass the run of an unlearn, rum, retrain or train step")
    return models[-1].model_id


def log_confidences(recorder: ConfidenceRecorder | Mapping[str, np.ndarray], *, artifact_path: str = "confidences",
                    heldout: ConfidenceRecorder | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Log per-example, per-epoch confidences and the derived proxy scores to the active run: a thin
    wrapper over the core's `confidences.save_confidences` (the files it writes are the artifacts).

    Accepts a ConfidenceRecorder (or its `history()` dict) from any training loop, so teams with their
    own trainer get the artifacts the `train` step logs. Returns the proxies."""
    with tempfile.TemporaryDirectory() as tmp:
        proxies = save_confidences(recorder, tmp, heldout=heldout)
        mlflow.log_artifacts(tmp, artifact_path)
    return proxies


def log_manifest(manifest: dict) -> None:
    mlflow.log_dict(manifest, MANIFEST_PATH)


def log_lineage(lineage: Lineage) -> None:
    """`manifest/lineage.json` on the active run: what the model logged with it has forgotten so far."""
    mlflow.log_dict(lineage.to_dict(), LINEAGE_PATH)


MANIFEST_PATH = "manifest/train_manifest.json"
_NO_MANIFEST_FIX = ("it was not logged by `mlflow-unlearn train` (or an unlearning step of this package); log it "
                    "with mlflow_unlearn.tracking.log_manifest/log_confidences in the original run")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def read_lineage(client: MlflowClient, mv) -> tuple[Lineage, dict]:
    """(lineage, training manifest) of a registered version. A version made by this package carries
    `manifest/lineage.json` in its run, naming the training run that holds the manifest and the
    C-proxy; a version without one (logged by the user's own training loop with `log_manifest`) is
    its own original with nothing forgotten.
    The lineage is read as checked JSON (lineage.Lineage.from_dict), never as a path or code."""
    where = f"models:/{mv.name}/{mv.version}"
    if not mv.run_id:
        raise MissingArtifactError(f"{where} has no source run, so no training manifest; {_NO_MANIFEST_FIX}")
    raw = None
    try:
        local = client.download_artifacts(mv.run_id, LINEAGE_PATH)
    except (MlflowException, OSError):
        local = None
    if local is not None:
        try:
            raw = json.loads(Path(local).read_text())
        except (OSError, ValueError):
            raise LineageError(f"the lineage of {where} ({LINEAGE_PATH} in run {mv.run_id}) is not JSON") from None
    original_run = raw.get("original_run") if isinstance(raw, dict) else mv.run_id
    if not isinstance(original_run, str) or not _RUN_ID.match(original_run):
        raise LineageError(f"the lineage of {where}: original_run is not an MLflow run id (32 hex digits)")
    manifest = _download_json(client, original_run, MANIFEST_PATH, "training manifest", _NO_MANIFEST_FIX)
    n_train = len(manifest.get("labels") or manifest.get("ids") or [])
    if raw is None:
        return Lineage.original(mv.run_id, f"{mv.name}/{mv.version}"), manifest
    return Lineage.from_dict(raw, n_train=n_train, where=f"the lineage of {where}"), manifest


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
    model_id: str | None = None  # the MLflow logged model behind the version
    lineage: Lineage | None = None  # what it has forgotten so far (None: an original built in memory)
    # [epochs, n_val] true-class probability of the validation split during the original's training
    # (confidences/heldout_true_class_prob.npy); None for runs without a validation split or older runs
    heldout_true_class_prob: np.ndarray | None = None

    @property
    def forgotten(self) -> np.ndarray:
        """Train ids earlier requests removed from this version (empty for an original)."""
        return self.lineage.forgotten if self.lineage is not None else np.zeros(0, dtype=np.int64)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def original_passes(self) -> int:
        """The original training's example passes: the unit of `cost/train_fraction` and of the
        budget. Recorded by the train step (`train_passes` in the manifest and the model spec); for
        versions trained before it was recorded, epochs x n_train, which is what the trainer does."""
        recorded = self.manifest.get("train_passes", self.model_spec.get("train_passes"))
        return original_train_passes(self.model_spec["train_config"], len(self.manifest["labels"]), recorded)

    def load_data(self, device="cpu", *, check_digest: bool = True, data_roots: list[str] | None = None) -> ImageData:
        """The source's data; with `data_roots` (the hook), only when every path it reads lies under one."""
        if data_roots is not None:
            self.dataset_spec.check_within(data_roots)
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
    lineage, manifest = read_lineage(client, mv)
    fix, original = _NO_MANIFEST_FIX, lineage.original_run  # the spec and the C-proxy are the original's
    model_spec = _download_json(client, original, "model_spec.json", "model spec", fix)
    model_id = version_model_id(mv)
    model = load_logged_classifier(model_id, map_location=map_location)
    true_prob, proxies, heldout_prob = None, None, None
    if with_confidences:
        try:
            true_prob = np.load(client.download_artifacts(original, "confidences/true_class_prob.npy"))
            with np.load(client.download_artifacts(original, "confidences/proxies.npz")) as z:
                proxies = {k: z[k] for k in z.files}
        except (MlflowException, OSError):
            raise MissingArtifactError(f"run {original} (the training run of {model_uri}) has no confidences/ "
                                       f"artifacts; {fix}") from None
        heldout_prob = _optional_npy(client, original, f"confidences/{HELDOUT_FILE}")
    return SourceModel(
        name=mv.name, version=str(mv.version), run_id=mv.run_id, model=model, model_spec=model_spec,
        dataset_spec=DatasetSpec.from_dict(manifest["dataset_spec"]), manifest=manifest,
        true_class_prob=true_prob, proxies=proxies, tags=dict(mv.tags or {}), model_id=model_id, lineage=lineage,
        heldout_true_class_prob=heldout_prob,
    )


def _optional_npy(client: MlflowClient, run_id: str, path: str) -> np.ndarray | None:
    """An artifact that older runs lack: None when absent (listing first, so a missing file is not an
    error), loaded without pickle otherwise."""
    folder, _, name = path.rpartition("/")
    try:
        if name not in {Path(f.path).name for f in client.list_artifacts(run_id, folder)}:
            return None
        return np.load(client.download_artifacts(run_id, path), allow_pickle=False)
    except (MlflowException, OSError, ValueError):
        return None


def register_version(model_uri: str, name: str, tags: Mapping[str, Any], *, description: str | None = None,
                     aliases: tuple[str, ...] = ()) -> Any:
    """The one way this package registers a version: created with all its tags in one call (a
    crash can never leave an untagged version; the registry hook relies on that), then described
    and given `aliases` (`describe_version`). If describing fails the version is deleted, so no
    half-described version is left behind either."""
    client = MlflowClient()
    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    try:
        describe_version(name, mv.version, description, aliases)
    except Exception:
        client.delete_model_version(name, mv.version)
        raise
    return client.get_model_version(name, mv.version)


def describe_version(name: str, version, description: str | None, aliases: tuple[str, ...] = ()) -> None:
    """Set a version's description and move `aliases` to it."""
    client = MlflowClient()
    if description:
        client.update_model_version(name, str(version), description=description)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, str(version))

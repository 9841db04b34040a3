"""Attach a forget set to a registered model version: the deletion request of docs/design.md section 5.

    from mlflow_unlearn.hook.attach import attach
    attach("digits-small_cnn", 1, "forget.txt")       # or [3, 14, 15], "random:20", "runs:/<run>/ids.json"

    mlflow-unlearn attach --model digits-small_cnn --version 1 --forget forget.txt

The ids are validated against the version's training manifest before anything is written, then
logged in a run with role `request` (artifact `forget_set/forget-<digest>.json`, plus an MLflow
dataset input carrying the digest), and the version gets the tag
`mlflow_unlearn.forget_set = runs:/<request run>/forget_set/forget-<digest>.json`; the hook service
takes it from there. Attaching the same ids again (in any order) while the first request waits or
after it was answered with a version changes nothing (pass force=True to make a new request
anyway). Every request is its own run, never a rewrite of a shared tag, so concurrent attaches
cannot lose one another: a job collects every request run of its version that is not answered yet,
unlearns the union, and tags every request's run with `mlflow_unlearn.answer` naming the version
that answers it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource
from mlflow.exceptions import MlflowException

from . import ledger
from .. import tracking
from ..forget_sets import ForgetSet, ForgetSetError, forget_digest, is_spec, load_forget_set, read_ids_and_digest
from ..request import resolve_forget_source
from ..tracking import MissingArtifactError
from ..tags import Role, Tag

MANIFEST_PATH = "manifest/train_manifest.json"
NO_MANIFEST_FIX = ("attach needs a version logged by `mlflow-unlearn train` (or one whose run has "
                   "manifest/train_manifest.json, see mlflow_unlearn.tracking.log_manifest)")


@dataclass
class AttachResult:
    model: str
    version: str
    uri: str  # the forget_set tag value
    digest: str
    n_forget: int
    run_id: str | None  # the request run (None when nothing new was attached)
    already_attached: bool = False
    merged_with: tuple[str, ...] = ()  # earlier requests still waiting on the version, now answered together

    def to_dict(self) -> dict:
        return asdict(self)


def load_manifest(client: MlflowClient, mv) -> tuple[dict, np.ndarray | None]:
    """A version's training manifest and (when logged) its C-proxy, without loading the model."""
    if not mv.run_id:
        raise MissingArtifactError(f"models:/{mv.name}/{mv.version} has no source run, so no training manifest; {NO_MANIFEST_FIX}")
    lineage, manifest = tracking.read_lineage(client, mv)  # an unlearned version: its training run's manifest
    c_proxy = None
    try:
        with np.load(client.download_artifacts(lineage.original_run, "confidences/proxies.npz")) as z:
            c_proxy = z["c_proxy"] if "c_proxy" in z.files else None
    except (MlflowException, OSError):
        pass
    return manifest, c_proxy


def validate_request(client: MlflowClient, model: str, version, forget, *, seed: int = 0):
    """(model version, manifest, validated ForgetSet); raises before anything is written."""

    mv = tracking.resolve_version(client, f"models:/{model}/{version}")
    manifest, c_proxy = load_manifest(client, mv)
    if "labels" not in manifest:
        raise MissingArtifactError(f"the training manifest of models:/{model}/{version} has no labels; {NO_MANIFEST_FIX}")
    fs = load_forget_set(resolve_forget_source(forget), labels=np.asarray(manifest["labels"]), c_proxy=c_proxy,
                         classes=manifest.get("classes"), seed=seed)
    return mv, manifest, fs


class ForgetSetSource(DatasetSource):
    """Where a logged forget set lives (MLflow resolves no dataset source for `runs:/` URIs)."""

    def __init__(self, uri: str, digest: str):
        self.uri, self.digest = uri, digest

    @staticmethod
    def _get_source_type() -> str:
        return "mlflow_unlearn_forget_set"

    def load(self):
        return mlflow.artifacts.download_artifacts(artifact_uri=self.uri)

    @staticmethod
    def _can_resolve(raw_source) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source):
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"uri": self.uri, "forget_digest": self.digest}

    @classmethod
    def from_dict(cls, source_dict: dict) -> "ForgetSetSource":
        return cls(source_dict["uri"], source_dict.get("forget_digest", ""))


def log_request(model: str, version, fs: ForgetSet, manifest: dict, *, labels=None, experiment: str | None = None,
                seed: int = 0) -> tuple[str, str]:
    """Log the forget set in a run with role `request`; return (run id, artifact URI)."""
    tracking.use_experiment(experiment)
    name = f"forget-{fs.digest}.json"
    labels = np.asarray(manifest.get("labels", [])) if labels is None else np.asarray(labels)
    with mlflow.start_run(run_name=f"request-{model}-{version}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({Tag.ROLE: Role.REQUEST, Tag.SOURCE_MODEL: f"{model}/{version}", Tag.FORGET_DIGEST: fs.digest,
                         Tag.SEED: str(seed)})
        tracking.log_params({"forget_source": str(fs.source)[:500], "n_forget": len(fs), "source_model": f"{model}/{version}"})
        mlflow.log_dict({"ids": fs.ids.tolist(), "digest": fs.digest, "n": len(fs), "source": str(fs.source),
                         "source_model": f"{model}/{version}", "dataset": manifest.get("dataset"),
                         "dataset_digest": manifest.get("dataset_digest")}, f"forget_set/{name}")
        try:
            import pandas as pd

            frame = pd.DataFrame({"id": fs.ids, **({"label": labels[fs.ids]} if len(labels) else {})})
            source = ForgetSetSource(f"runs:/{run.info.run_id}/forget_set/{name}", fs.digest)
            dataset = mlflow.data.from_pandas(frame, source=source, name=f"forget-set-{model}-{version}",
                                              digest=fs.digest[:36])  # MLflow keeps 36 characters of a digest
            mlflow.log_input(dataset, context="forget")
        except Exception as exc:  # the artifact is the request; the dataset entry is a convenience
            mlflow.set_tag(Tag.DATASET_INPUT_ERROR, str(exc)[:500])
    return run.info.run_id, f"runs:/{run.info.run_id}/forget_set/{name}"


def attach(model: str, version, forget, *, seed: int = 0, experiment: str | None = None, tracking_uri: str | None = None,
           force: bool = False, alias: str | None = None, promote: bool = True) -> AttachResult:
    """Validate `forget` against models:/model/version, log it and tag the version (see module doc).

    With `alias` (and `version=None`) the request follows the serving alias: it is tagged on the
    version the alias names now, and the job applies it to whatever version the alias names when it
    runs (requests accumulate there); with `promote` the alias then moves to the result."""
    client = tracking.connect(tracking_uri)
    if alias is not None:
        if version not in (None, ""):
            raise ValueError("give --version or --alias, not both: an alias request goes to the version the alias "
                             "names when the job runs")
        try:
            version = client.get_model_version_by_alias(model, alias).version
        except MlflowException as exc:
            raise ValueError(f"registered model {model!r} has no alias {alias!r} ({exc.error_code}); set it with "
                             f"MlflowClient().set_registered_model_alias({model!r}, {alias!r}, <version>)") from None
    elif version in (None, ""):
        raise ValueError("give --version (a model version) or --alias (a serving alias such as champion)")
    mv, manifest, fs = validate_request(client, model, version, forget, seed=seed)
    if not force:  # the same ids, waiting or answered with a version: the same request
        same = ledger.existing_request(client, mv.name, mv.version, fs.digest)
        state = ledger.VersionState(mv.name, str(mv.version), dict(mv.tags or {}))
        if same is None and (state.request and ledger.digest_from_uri(state.request) == fs.digest
                             and state.status not in (ledger.FAILED, ledger.REJECTED)):
            same = state.request  # attached by another tool under the same ids
        if same is not None:
            return AttachResult(mv.name, str(mv.version), same, fs.digest, len(fs), None, already_attached=True)
    # The request is its own record: a run, FINISHED once its forget set is logged. Nothing shared is
    # read and rewritten, so concurrent attaches cannot lose one another; the job collects every
    # waiting request run of the version (ledger.pending_requests) and answers each on its run.
    waiting = ledger.pending_requests(client, mv.name, mv.version)
    run_id, uri = log_request(mv.name, mv.version, fs, manifest, experiment=experiment, seed=seed)
    ledger.set_tags(client, mv.name, mv.version, {ledger.REQUEST_RUN_TAG: run_id, Tag.FOLLOW_ALIAS: alias,
                                                  Tag.PROMOTE: None if alias is None else str(bool(promote)).lower()})
    ledger.set_tags(client, mv.name, mv.version, {ledger.FORGET_SET_TAG: uri})  # last: this one triggers the hook
    return AttachResult(mv.name, str(mv.version), uri, fs.digest, len(fs), run_id, merged_with=tuple(waiting))


@dataclass(frozen=True)
class RequestIds:
    """A forget-set artifact read once: its raw ids (validated against the manifest later, by
    `request.prepare`), their digest, and the URI they came from."""

    ids: np.ndarray
    digest: str
    uri: str


ARTIFACT_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")  # what a forget-set tag may name


def read_request(uri: str) -> RequestIds:
    """Download the forget set a tag points to and read it, parsing and hashing it once.

    A tag is untrusted input (anyone who can tag a version writes it): only MLflow artifact URIs
    (`runs:/`, `models:/`, `mlflow-artifacts:/`) are read. A local path, a `file:` URI, a folder or
    any other scheme is refused before anything is opened, and no message quotes what a file holds.
    Raises ForgetSetError with the reason (an empty tag, a spec, another scheme, an unreadable or
    tampered artifact)."""
    uri = (uri or "").strip()
    if not uri:
        raise ForgetSetError("the forget-set tag is empty (or only whitespace); attach a forget set with "
                             "`mlflow-unlearn attach --forget <file or spec>`")
    if is_spec(uri):
        raise ForgetSetError("the forget-set tag is a spec (random:N, mix:N, ...), not a forget-set artifact; run "
                             "`mlflow-unlearn attach --forget <the spec>` so the ids are logged and auditable")
    if not uri.startswith(ARTIFACT_URI_SCHEMES):
        raise ForgetSetError(f"the forget-set tag must be an MLflow artifact URI ({', '.join(ARTIFACT_URI_SCHEMES)}), "
                             f"got a value of {len(uri)} character(s) that is not one; the hook never reads local "
                             f"paths or file: URIs on its host: run "
                             f"`mlflow-unlearn attach --forget <file>`, which logs the ids as an artifact first")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except Exception as exc:  # MLflow raises several types for unreadable URIs
        raise ForgetSetError(f"cannot read the forget-set artifact the tag names: {type(exc).__name__}") from None
    if Path(str(local)).is_dir():  # an artifact folder (downloaded, never a path on this host)
        files = sorted(p for p in Path(local).rglob("*") if p.suffix.lower() in (".json", ".txt", ".csv", ".npy"))
        if len(files) != 1:
            raise ForgetSetError(f"the forget-set URI names a folder with {len(files)} id files; point it at one file")
        local = str(files[0])
    ids, recorded = read_ids_and_digest(local, label="the forget-set artifact")
    try:
        digest = forget_digest(ids)
    except (TypeError, ValueError):
        raise ForgetSetError("the forget set does not hold integer ids") from None
    if recorded and recorded != digest:
        raise ForgetSetError(f"the forget-set artifact records a digest its ids do not hash to (they hash to "
                             f"{digest[:12]}...); it was changed after logging")
    return RequestIds(np.asarray(ids), digest, uri)


def wait_for(model: str, version, *, timeout_s: float = 600.0, poll_s: float = 0.5, tracking_uri: str | None = None,
             request: str | None = None) -> dict:
    """Poll the ledger until the request now attached (or `request`) is answered; return its state.
    A request merged into a later one is answered when that one is (its run's `answer` tag)."""
    tracking.connect(tracking_uri)
    client = MlflowClient()
    deadline = time.time() + timeout_s
    while True:
        state = ledger.read_state(client, model, version)
        want = request or state.request
        if state.handled_request == ledger.request_key(want) and state.status in ledger.TERMINAL:
            return state.to_dict()
        if request and request != state.request and ledger.request_run_id(request):
            try:
                answer = client.get_run(ledger.request_run_id(request)).data.tags.get(ledger.ANSWER_TAG)
            except MlflowException:
                answer = None
            if answer:  # "<name>/<version>: <status>[ -> version N][: error]" (jobs._Job.finish)
                outcome = answer.split(": ", 1)[-1]
                status = outcome.split(" ", 1)[0].rstrip(":")
                result = outcome.split("-> version ", 1)[1].split()[0] if "-> version " in outcome else None
                return {"name": model, "version": str(version), "forget_set": request, "status": status,
                        "result_version": result, "answer": answer, "merged_into": state.request}
        if time.time() > deadline:
            raise ValueError(f"{model}/{version}: no answer within {timeout_s:.0f} s (status {state.status!r}); "
                             f"is `mlflow-unlearn hook serve` (or a worker) running against this registry?")
        time.sleep(poll_s)

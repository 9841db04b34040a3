"""The registry is the ledger (docs/design.md section 5): every fact a worker needs to start, resume or skip a
job is a tag on a model version, so any worker on any machine can pick up any job.

On the source version (the one a forget set is attached to):

    mlflow_unlearn.forget_set      the request: URI of a forget-set artifact (set by `attach`, the UI, the REST API)
    mlflow_unlearn.status          queued | running | done | failed | rejected
    mlflow_unlearn.job_request     the forget_set value the status refers to (a new value = a new request)
    mlflow_unlearn.job_digest      sha256 of the request's sorted ids (the job key is name, version, digest)
    mlflow_unlearn.result_version  the unlearned version (status done)
    mlflow_unlearn.error           why (status rejected or failed)
    mlflow_unlearn.note            status done without a new version: why (every id was already forgotten)
    mlflow_unlearn.queued_at / started_at / finished_at   unix seconds
    mlflow_unlearn.job_run         the MLflow run of the job (role rum)
    mlflow_unlearn.merged_requests JSON list of earlier requests on this version that were replaced before
                                   they were answered (queued, running or not yet seen): the next job
                                   unlearns their union with the current one and answers them all
    mlflow_unlearn.follow_alias    (optional) apply the request to the version this alias names when the
                                   job runs; mlflow_unlearn.promote=true moves the alias to the result

Every request `attach` makes is its own run (role `request`, tags source_model = name/version and
forget_digest; FINISHED once its forget set is logged): the record no concurrent attach can
overwrite. A job collects every such run of its version that has no answer yet (`pending_requests`),
whatever the forget-set tag was last set to, and tags each with mlflow_unlearn.answer (the status and
version that answered it); it writes answers only into request runs made for its own version.

On the result version: role, source_model, source_version, forget_digest, n_forget, plan, plan_source,
metrics (JSON), metric.<key> for the headline metrics, request (the forget_set URI), evidence (URI).

Exactly one result per job key: a result is looked up (by source_version and forget_digest tags)
before a job runs and again right before it registers; a version is created with all its tags in one
call, so a crash never leaves an untagged result; and if two workers still race past both checks,
both see both versions after registering and the higher version number deletes itself.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..tracking import retry_transient as _retry

from ..tags import TAG, Tag

FORGET_SET_TAG = Tag.FORGET_SET
STATUS_TAG = Tag.STATUS
JOB_REQUEST_TAG = Tag.JOB_REQUEST
JOB_DIGEST_TAG = Tag.JOB_DIGEST
RESULT_VERSION_TAG = Tag.RESULT_VERSION
ERROR_TAG = Tag.ERROR
NOTE_TAG = Tag.NOTE
QUEUED_AT_TAG = Tag.QUEUED_AT
STARTED_AT_TAG = Tag.STARTED_AT
FINISHED_AT_TAG = Tag.FINISHED_AT
JOB_RUN_TAG = Tag.JOB_RUN
REQUEST_RUN_TAG = Tag.REQUEST_RUN

# on result versions (besides the step's own source_model / forget_digest / n_forget ...)
SOURCE_VERSION_TAG = Tag.SOURCE_VERSION
FORGET_DIGEST_TAG = Tag.FORGET_DIGEST
REQUEST_TAG = Tag.REQUEST
EVIDENCE_TAG = Tag.EVIDENCE
METRICS_TAG = Tag.METRICS

QUEUED, RUNNING, DONE, FAILED, REJECTED = "queued", "running", "done", "failed", "rejected"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, REJECTED)
TERMINAL = (DONE, FAILED, REJECTED)

MAX_TAG_VALUE = 4900  # MLflow's model-version tag values hold 5000 characters
MERGED_TAG = Tag.MERGED_REQUESTS
ANSWER_TAG = Tag.ANSWER

_DIGEST_IN_URI = re.compile(r"forget-([0-9a-f]{64})\.json$")


def job_key(name: str, version, digest: str) -> str:
    return f"{name}/{version}/{digest}"


def digest_from_uri(uri: str) -> str | None:
    """`attach` names the artifact after its digest (`.../forget-<sha256>.json`), so the job key of a
    request it made is known from the tag value alone; other URIs are read to find it."""
    m = _DIGEST_IN_URI.search(uri or "")
    return m.group(1) if m else None


def request_key(uri: str) -> str:
    """What `job_request` records for a forget-set tag value: the value itself when it fits in a tag,
    else `sha256:<hex>` of it. A value longer than a tag holds (MLflow accepts ~100,000 characters on
    a version tag) cannot be written back whole, and a truncated copy would never equal it: the
    request would look unanswered forever and be re-queued every scan."""
    uri = uri or ""
    if len(uri) <= MAX_TAG_VALUE and not uri.startswith("sha256:"):
        return uri
    import hashlib

    return "sha256:" + hashlib.sha256(uri.encode()).hexdigest()


def now() -> str:
    return f"{time.time():.3f}"


@dataclass
class VersionState:
    name: str
    version: str
    tags: dict[str, str]

    @property
    def request(self) -> str:
        return (self.tags.get(FORGET_SET_TAG) or "").strip()

    @property
    def status(self) -> str | None:
        return self.tags.get(STATUS_TAG)

    @property
    def handled_request(self) -> str | None:
        return self.tags.get(JOB_REQUEST_TAG)

    @property
    def is_current(self) -> bool:
        """The status tags describe the request now attached (not an older one)."""
        return bool(self.request) and self.handled_request == request_key(self.request)

    def to_dict(self) -> dict:
        keys = (FORGET_SET_TAG, STATUS_TAG, RESULT_VERSION_TAG, ERROR_TAG, NOTE_TAG, JOB_REQUEST_TAG, JOB_DIGEST_TAG,
                QUEUED_AT_TAG, STARTED_AT_TAG, FINISHED_AT_TAG, JOB_RUN_TAG)
        return {"name": self.name, "version": self.version,
                **{k[len(TAG):]: self.tags[k] for k in keys if k in self.tags}}


def merged_requests(tags: dict[str, str]) -> list[str]:
    """The merged-requests tag as a list of URIs (a malformed value is an empty list: the tag is
    untrusted, and every URI in it goes through the same checks as the forget-set tag)."""
    try:
        value = json.loads(tags.get(MERGED_TAG) or "[]")
    except ValueError:
        return []
    return [u.strip() for u in value if isinstance(u, str) and u.strip()] if isinstance(value, list) else []


def carried_requests(state: VersionState, *, replacing: bool = False) -> list[str]:
    """The requests on this version a job for the one attached now must also answer: the merged list,
    plus the request the status refers to while it is queued or running (a newer one replaced it
    before its job finished). With `replacing` (`attach`, about to attach a newer request) also the
    request attached now, unless it is answered. A running job's request is carried too: if that job
    dies its request is not lost, and if it succeeds the next job finds those ids forgotten already
    (on the promoted version) or unlearns the union from the same version, which honours both."""
    out = merged_requests(state.tags)
    handled = state.handled_request if state.status in (QUEUED, RUNNING) else None
    candidates = [handled if handled and not handled.startswith("sha256:") else None]  # a key is no URI
    if replacing and state.request and not (state.is_current and state.status in TERMINAL):
        candidates.append(state.request)
    for uri in candidates:
        if uri and uri not in out:
            out.append(uri)
    exclude = None if replacing else state.request
    return [u for u in out if u != exclude]


def merged_tag_value(uris: list[str]) -> str | None:
    """The merged-requests tag for `uris` (None: delete it). Raises ValueError when the list does not
    fit in a tag (about 50 runs:/ URIs): the caller must not drop a deletion request silently."""
    if not uris:
        return None
    value = json.dumps(uris)
    if len(value) > MAX_TAG_VALUE:
        raise ValueError(f"{len(uris)} requests are already waiting on this version (their URIs fill the "
                         f"{MAX_TAG_VALUE}-character tag {MERGED_TAG}); wait for the hook to answer them, then attach again")
    return value


def request_run_id(uri: str) -> str | None:
    """The run of a `runs:/<run id>/...` request (what `attach` logs), else None."""
    m = re.match(r"runs:/([0-9a-fA-F]{8,64})/", uri or "")
    return m.group(1) if m else None


def request_run_owner(client: MlflowClient, uri: str) -> str | None:
    """`name/version` when `uri` names a request run (role `request`, made by `attach` or recorded by
    a job) for that model version, else None (another tool's run, no run, or an unreadable one)."""
    run_id = request_run_id(uri)
    if not run_id:
        return None
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException:
        return None
    return tags.get(Tag.SOURCE_MODEL) if tags.get(Tag.ROLE) == "request" else None


def answer_request_run(client: MlflowClient, uri: str, answer: str, *, owner: str) -> bool:
    """Tag the request's run with its answer, only when it is a request run made for `owner`
    (`name/version`): a URI naming any other run (another model's request, another tool's run)
    never gets this job's answer written into it. Returns whether it was tagged (best effort)."""
    if request_run_owner(client, uri) != owner:
        return False
    try:
        client.set_tag(request_run_id(uri), ANSWER_TAG, answer[:MAX_TAG_VALUE])
        return True
    except MlflowException:
        return False


_HEX64 = re.compile(r"[0-9a-f]{64}")


def pending_requests(client: MlflowClient, name: str, version) -> list[str]:
    """Every request `attach` made for name/version that nothing has answered yet, oldest first, as
    forget-set URIs. Each request is its own run (role `request`, tagged with the version and its
    digest, FINISHED only once its forget set is logged): concurrent `attach` calls never overwrite
    each other's record, so a job that collects these misses none, whatever the version's
    forget-set tag was last set to."""
    experiments = [e.experiment_id for e in _retry(lambda: client.search_experiments(max_results=1000))]
    flt = (f"tags.`{Tag.ROLE}` = 'request' and tags.`{Tag.SOURCE_MODEL}` = '{_q(name)}/{version}' and "
           f"attributes.status = 'FINISHED'")
    out, token = [], None
    while experiments:
        page = _retry(lambda: client.search_runs(experiments, flt, max_results=1000, page_token=token,
                                                 order_by=["attributes.start_time ASC"]))
        for run in page:
            digest = run.data.tags.get(Tag.FORGET_DIGEST, "")
            if ANSWER_TAG not in run.data.tags and _HEX64.fullmatch(digest):
                out.append(f"runs:/{run.info.run_id}/forget_set/forget-{digest}.json")
        token = page.token
        if not token:
            break
    return out


def existing_request(client: MlflowClient, name: str, version, digest: str) -> str | None:
    """The URI of a request for the same ids on name/version that is waiting or was answered with a
    version (`done`), else None: the same ids attached again, in any order, are the same request."""
    if not _HEX64.fullmatch(digest or ""):
        return None
    experiments = [e.experiment_id for e in _retry(lambda: client.search_experiments(max_results=1000))]
    flt = (f"tags.`{Tag.ROLE}` = 'request' and tags.`{Tag.SOURCE_MODEL}` = '{_q(name)}/{version}' and "
           f"tags.`{Tag.FORGET_DIGEST}` = '{digest}' and attributes.status = 'FINISHED'")
    for run in (_retry(lambda: client.search_runs(experiments, flt, max_results=100)) if experiments else []):
        answer = run.data.tags.get(ANSWER_TAG)
        if answer is None or answer.split(": ", 1)[-1].startswith(DONE):
            return f"runs:/{run.info.run_id}/forget_set/forget-{digest}.json"
    return None


def read_state(client: MlflowClient, name: str, version) -> VersionState:
    mv = client.get_model_version(name, str(version))
    return VersionState(mv.name, str(mv.version), dict(mv.tags or {}))


def set_tags(client: MlflowClient, name: str, version, tags: dict[str, str | None]) -> None:
    """Set (value) or delete (None) several tags on a version; deleting an absent tag is fine."""
    for key, value in tags.items():
        if value is None:
            try:
                client.delete_model_version_tag(name, str(version), key)
            except MlflowException:
                pass
        else:
            _retry(lambda: client.set_model_version_tag(name, str(version), key, str(value)[:MAX_TAG_VALUE]))


def find_results(client: MlflowClient, name: str, version, digest: str) -> list[str]:
    """Result versions of the request (name, version, digest), lowest version first: those made from
    `version`, and those made for a request attached to `version` that followed an alias elsewhere."""
    found = set()
    for key in (SOURCE_VERSION_TAG, Tag.REQUEST_VERSION):
        flt = f"name = '{_q(name)}' and tags.`{key}` = '{version}' and tags.`{FORGET_DIGEST_TAG}` = '{digest}'"
        found |= {str(mv.version) for mv in client.search_model_versions(flt)}
    return sorted(found, key=int)


def attached_versions(client: MlflowClient, models: list[str] | None = None) -> list[VersionState]:
    """Every version with a non-empty forget-set tag (optionally only of the given registered models)."""
    flt = f"tags.`{FORGET_SET_TAG}` LIKE '%'"
    out, token = [], None
    while True:
        page = client.search_model_versions(flt, max_results=1000, page_token=token)
        for mv in page:
            if models and mv.name not in models:
                continue
            state = VersionState(mv.name, str(mv.version), dict(mv.tags or {}))
            if state.request:
                out.append(state)
        token = getattr(page, "token", None)
        if not token:
            return out


def _q(text: str) -> str:
    return str(text).replace("'", "\\'")

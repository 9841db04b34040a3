"""Where a request applies and where its result goes: a request attached through a serving alias
applies to the version the alias names when the job runs (`follow_alias`), and a result that
passed the gate moves that alias to it (`promote`), tagging the version it leaves with what it
still holds. `job` is the running job (`jobs._Job`: its client, model name and version)."""
from __future__ import annotations

import logging
import re

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from . import ledger
from .. import tracking
from ..forget_sets import ForgetSetError
from ..tags import Tag

log = logging.getLogger("mlflow_unlearn.hook")


def follow_alias(job) -> str:
    """The version a request applies to: the tagged one, or (tag mlflow_unlearn.follow_alias) the one
    that alias names now, so a request attached to the serving alias accumulates on what is served
    when the job runs, not when it was attached."""
    alias = ledger.read_state(job.client, job.name, job.version).tags.get(Tag.FOLLOW_ALIAS)
    if not alias:
        return job.version
    try:
        served = job.client.get_model_version_by_alias(job.name, alias)
    except MlflowException:
        raise ForgetSetError(f"the request follows an alias that registered model {job.name!r} no longer has; set the "
                             f"alias again, or attach to a version") from None
    # Forgetting is monotone: an alias moved back to a version the hook moved it away from (a
    # rollback) would serve again what a later version forgot. The hook tagged that version
    # still_contains when it moved the alias; only the version number is read from the tag.
    newest, seen = None, {str(served.version)}
    tags = served.tags or {}
    while (left := re.search(r"forgotten in version (\d+)", tags.get(Tag.STILL_CONTAINS, ""))) and left.group(1) not in seen:
        newest = left.group(1)  # follow the alias's moves to the last version it was moved to
        seen.add(newest)
        try:
            tags = job.client.get_model_version(job.name, newest).tags or {}
        except MlflowException:
            break
    if newest is not None:
        raise ForgetSetError(
            f"the request follows the alias to version {served.version}, but the hook moved that alias from there on "
            f"to version {newest}, which forgot examples version {served.version} still holds (the alias was moved "
            f"back); attach the request to version {newest} or move the alias to it, or attach it to version "
            f"{served.version} by --version to unlearn from that version on purpose")
    return str(served.version)


def promote(job, result: str) -> str | None:
    """With tags follow_alias + promote=true: move the alias to `result` and tag the version it leaves
    (which still contains the forgotten examples). Idempotent (a re-run finds the alias moved); an
    alias someone moved elsewhere meanwhile is left alone. Returns what was done."""
    tags = ledger.read_state(job.client, job.name, job.version).tags
    alias = tags.get(Tag.FOLLOW_ALIAS)
    if not alias or tags.get(Tag.PROMOTE) != "true":
        return None
    try:
        mv = job.client.get_model_version(job.name, result)
        source = (mv.tags or {}).get(Tag.SOURCE_VERSION)
        try:
            current = str(job.client.get_model_version_by_alias(job.name, alias).version)
        except MlflowException:
            current = None
        if current == str(result):
            return "already promoted"
        if current not in (None, source):
            log.warning("job %s/%s: alias %r moved to version %s meanwhile; not moving it to %s", job.name, job.version,
                        alias, current, result)
            return f"alias {alias} left on version {current}"
        job.client.set_registered_model_alias(job.name, alias, str(result))
        if source:
            job.client.set_model_version_tag(job.name, source, Tag.STILL_CONTAINS, (
                f"{_newly_forgotten(job.client, mv)} examples forgotten in version {result} (forget digest "
                f"{(mv.tags or {}).get(Tag.FORGET_DIGEST, '')[:12]}...): alias {alias} moved there"))
        return f"alias {alias} -> version {result}"
    except MlflowException as exc:
        log.warning("job %s/%s: could not promote alias %r to %s: %s", job.name, job.version, alias, result, exc)
        return None


def _newly_forgotten(client: MlflowClient, mv) -> str:
    """How many ids the result forgot that its source version still holds (its lineage's last entry:
    ids an earlier request already removed are not counted again)."""
    try:
        return str(int(tracking.read_lineage(client, mv)[0].requests[-1]["n_new"]))
    except Exception:  # a result without a readable lineage: the request's size, as tagged
        return (mv.tags or {}).get(Tag.N_FORGET, "?")

"""Finishing what an interrupted job left: a worker killed between registering a result and
finishing leaves the version registered (with its tags: it is created in one call) but the rest
unwritten; the re-run that finds the version writes what is missing (`repair_result`)."""
from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException

from .. import tracking
from ..tags import TAG, Tag
from .results import log_report

log = logging.getLogger("mlflow_unlearn.hook")


def repair_result(job, version: str, digest: str) -> list[str]:
    """A worker killed between registering a result and finishing leaves the version registered (with
    its tags: it is created in one call) but the rest unwritten: the job run's registered_version tag,
    the evidence report (still `result.version: null`), the description and the `unlearned` alias.
    The re-run that finds the version writes what is missing; returns what it repaired. Only a version
    whose run is this job's (source model and forget digest match) is touched, and the report is JSON
    (never unpickled)."""
    import json

    repaired = []
    try:
        mv = job.client.get_model_version(job.name, version)
        run_id = (mv.tags or {}).get(Tag.RUN_ID)
        if not run_id:
            return repaired
        run_tags = job.client.get_run(run_id).data.tags
        made_from = (mv.tags or {}).get(Tag.SOURCE_VERSION, job.version)  # another version when an alias was followed
        if (run_tags.get(Tag.SOURCE_MODEL) != f"{job.name}/{made_from}" or run_tags.get(Tag.FORGET_DIGEST) != digest
                or run_tags.get(Tag.SUPERSEDED_BY)):
            return repaired
        if run_tags.get(Tag.REGISTERED_VERSION) != f"{job.name}/{version}":
            job.client.set_tag(run_id, Tag.REGISTERED_VERSION, f"{job.name}/{version}")
            repaired.append("run tag registered_version")
        try:
            import mlflow

            text = mlflow.artifacts.load_text(f"runs:/{run_id}/evidence/report.json")
            report = json.loads(text) if len(text) < 5_000_000 else None
        except (MlflowException, OSError, ValueError):
            report = None
        if isinstance(report, dict) and isinstance(report.get("result"), dict) and report["result"].get("version") is None:
            report["result"]["version"] = version
            log_report(job.client, run_id, report)
            repaired.append("evidence result.version")
        if not mv.description:
            tags = mv.tags or {}
            metrics = ", ".join(f"{k[len(TAG + 'metric.'):]} {v}" for k, v in sorted(tags.items())
                                if k.startswith(TAG + "metric."))
            text = (f"Version {job.version} with {tags.get(Tag.N_FORGET, '?')} training examples unlearned (forget digest "
                    f"{digest[:12]}...) by the registry hook: RUM. {metrics}. Evidence: "
                    f"runs:/{run_id}/evidence/report.json (run {run_id}). Finished by a re-run after an interrupted job.")
            try:  # the alias goes to the newest result: leave it where a later request moved it
                newer = int(job.client.get_model_version_by_alias(job.name, "unlearned").version) > int(version)
            except MlflowException:
                newer = False
            tracking.describe_version(job.name, version, text, () if newer else ("unlearned",))
            repaired.append("description" if newer else "description and alias")
    except MlflowException as exc:  # cosmetic next to the ledger: the request is still answered
        log.warning("could not repair %s/%s: %s", job.name, version, exc)
    if repaired:
        log.warning("job %s/%s: result version %s was registered by an interrupted run; repaired %s", job.name,
                    job.version, version, ", ".join(repaired))
    return repaired

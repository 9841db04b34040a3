"""What a job writes about its result beside the ledger's tags: the evidence files (JSON,
markdown, HTML, the tier figure), the job run's metrics, and the result version's description.
Cosmetic next to the tags the ledger relies on."""
from __future__ import annotations

import logging
import time

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from . import evidence
from .. import tracking


def describe(job, version: str, ctx, plan, headline: dict, run_id: str) -> None:
    """The result version's description (what was forgotten, how, headline metrics, the evidence)
    and the `unlearned` alias. Cosmetic next to the tags the ledger relies on: a failure is logged,
    not raised, so a registered result is never lost over its description."""
    import numpy as np

    metrics = ", ".join(f"{k} {v:.4f}" for k, v in headline.items() if v is not None and np.isfinite(v))
    text = (f"Version {job.version} with {len(ctx.forget)} training examples unlearned (forget digest "
            f"{ctx.forget.digest[:12]}..., per memorisation tier {ctx.histogram}) by the registry hook: RUM, plan "
            f"{plan.to_compact()[:300]}. {metrics}. Evidence: runs:/{run_id}/evidence/report.json (run {run_id}).")
    try:
        tracking.describe_version(job.name, version, text, ("unlearned",))
    except MlflowException as exc:
        logging.getLogger(__name__).warning("could not describe %s/%s: %s", job.name, version, exc)


def finite(d: dict | None) -> dict:
    import math

    return {k: round(float(v), 6) for k, v in (d or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}


def log_report(client: MlflowClient, run_id: str, report: dict) -> None:
    client.log_dict(run_id, report, "evidence/report.json")
    client.log_text(run_id, evidence.to_markdown(report), "evidence/report.md")
    client.log_text(run_id, evidence.to_html(report), "evidence/report.html")
    fig = evidence.tier_figure(report)
    if fig is not None:
        client.log_figure(run_id, fig, "evidence/tiers.png")


def log_job_metrics(client, run_id, before, after, against_source, reference, times, extra=None) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = {**after, **{f"before/{k}": v for k, v in before.items()},
               **{f"change/{k}": after[k] - before[k] for k in after if k in before and not k.startswith("tier/")},
               **{f"vs_source/{k}": v for k, v in against_source.items()},
               **({k: v for k, v in reference.items()} if reference else {}),
               **{f"time/{k}": v for k, v in times.items() if k != "unlearn_s"}, **(extra or {})}
    clean = finite(metrics)
    items = [Metric(k, v, ts, 0) for k, v in clean.items()]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])

"""The evidence report of one unlearning job: what was asked, what was done, how well it was forgotten.

Logged with the job run (and so with the result version) as `evidence/report.json`,
`evidence/report.md` and `evidence/report.html` (the MLflow UI shows the HTML in its artifact view).
"""
from __future__ import annotations

import html
import json
import math
import platform
import sys
import time
from typing import Any
from ..plots import tier_accuracy_chart

SCHEMA = "mlflow_unlearn.evidence/1"
HEADLINE = ("forget/acc", "retain/acc", "test/acc", "mia/efficacy", "mia/auc")
REFERENCE_KEYS = ("tow", "tow_mia", "tow_pe", "gap/forget", "gap/retain", "gap/test", "mia/gap")


def software_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("mlflow-unlearn", "mlflow", "torch", "torchvision", "numpy", "huey", "fastapi", "uvicorn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item"):  # numpy scalars
        return _clean(v.item())
    return v


def build_report(*, request: dict, forget: dict, plan: dict, plan_source: str, before: dict, after: dict,
                 against_source: dict, reference: dict | None, reference_run: str | None, times: dict,
                 result: dict, reference_tier_acc: dict | None = None, lineage: dict | None = None,
                 gate: dict | None = None, cost: dict | None = None) -> dict:
    """`lineage`: the result's chain of requests (lineage.Lineage.to_dict() without the id list):
    every request applied since the original, this one last, and how many ids were forgotten."""
    change = {k: after[k] - before[k] for k in after if k in before and isinstance(after[k], (int, float))
              and isinstance(before[k], (int, float)) and not k.startswith("tier/")}
    return _clean({
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "request": request,
        "forget": forget,
        "plan": plan,
        "plan_source": plan_source,
        "metrics": {"before": before, "after": after, "change": change, "against_source": against_source,
                    "against_reference": reference, "reference_run": reference_run,
                    "reference_tier_acc": reference_tier_acc},
        "time": times,
        # compute in trainings (example passes / the source's original training): the result's own
        # run and, in `attempts_train_fraction`, every attempt of the job together
        "cost": cost,
        "result": result,
        "lineage": lineage,
        "gate": gate,
        "software": software_versions(),
    })


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _rows(report: dict) -> dict[str, list[tuple[str, ...]]]:
    m = report["metrics"]
    req, fg, t = report["request"], report["forget"], report["time"]
    sections = {
        "Request": [("model version", f"{req.get('model')}/{req.get('version')}"), ("forget set", req.get("forget_set")),
                    ("request run", req.get("request_run")), ("result version", report["result"].get("version")),
                    ("job run", report["result"].get("run_id"))],
        "Forget set": [("digest (sha256 of sorted ids)", fg.get("digest")), ("examples", fg.get("count")),
                       ("already forgotten by an earlier request", fg.get("already_forgotten", 0)),
                       *[(f"request {k + 1} answered by this job", uri) for k, uri in enumerate(fg.get("requests") or [])
                         if len(fg.get("requests") or []) > 1],
                       *[("request refused (unreadable)", f"{r['uri']}: {r['reason']}") for r in fg.get("refused_requests") or []],
                       *[(f"train-set memorisation bin `{k}`", v) for k, v in (fg.get("tier_histogram") or {}).items()],
                       *[(f"tier `{k}` (unlearned as)", v) for k, v in (fg.get("tiers") or {}).items()]],
        "Lineage (every request on the way to the result, oldest first)": _lineage_rows(report.get("lineage")),
        "Acceptance gate (no retrain needed; see mlflow_unlearn/gate.py)": _gate_rows(report.get("gate")),
        "Plan": [("source", report["plan_source"]), ("retain mode", report["plan"].get("retain_mode")),
                 *[(f"tier `{s['tier']}`", f"{s['algorithm']} {json.dumps(s.get('hyperparameters') or {})}")
                   for s in report["plan"].get("steps", [])]],
    }
    keys = [k for k in HEADLINE if k in m["after"]] + sorted(k for k in m["after"] if k.startswith("tier/") and k.endswith("forget_acc"))
    sections["Metrics (no retrain: forget/retain/test accuracy, MIA against test)"] = [
        ("metric", "source model", "unlearned", "change")] + [
        (k, _fmt(m["before"].get(k)), _fmt(m["after"].get(k)), _fmt(m["change"].get(k))) for k in keys]
    if m.get("against_source"):
        sections["Prediction change against the source model"] = [
            (k.replace("disagree/", "disagreement on "), _fmt(v)) for k, v in m["against_source"].items()]
    if m.get("against_reference"):
        sections["Against the cached retrained reference"] = [("reference run", m.get("reference_run"))] + [
            (k, _fmt(m["against_reference"].get(k))) for k in REFERENCE_KEYS if k in m["against_reference"]]
    else:
        sections["Against a retrained reference"] = [("ToW", "n/a: no cached retrain for this forget set "
                                                      "(`mlflow-unlearn retrain` makes one; later jobs then report ToW)")]
    if report.get("cost"):
        sections["Compute (fractions of the original training)"] = [(k, _fmt(v)) for k, v in report["cost"].items()]
    sections["Time (seconds)"] = [(k, _fmt(v)) for k, v in t.items()]
    sections["Software"] = list(report["software"].items())
    return sections


def _gate_rows(gate: dict | None) -> list[tuple[str, ...]]:
    if not gate:
        return [("gate", "n/a")]
    rows = [("attempt", "check", "value", "limit", "verdict")]
    for a in gate.get("attempts") or []:
        for c in (a.get("gate") or {}).get("checks") or []:
            verdict = {True: "pass", False: "FAIL", None: "not checked"}[c.get("passed")]
            rows.append((a.get("stage"), c.get("name"), _fmt(c.get("value")), c.get("limit"),
                         verdict + (f" ({c['detail']})" if c.get("detail") and c.get("passed") is None else "")))
    rows.append(("result", "path", gate.get("path"), "", "never-seen estimate: " + str(gate.get("never_seen") or "none")))
    return rows


def _lineage_rows(lineage: dict | None) -> list[tuple[str, ...]]:
    if not lineage:
        return [("lineage", "n/a")]
    rows = [("request", "applied to", "forget digest", "ids", "new", "how", "run")]
    for k, r in enumerate(lineage.get("requests") or []):
        rows.append((str(k + 1), r.get("source"), str(r.get("forget_digest", ""))[:12] + "...", r.get("n_forget"),
                     r.get("n_new"), r.get("how"), r.get("run_id")))
    rows.append(("total", lineage.get("original_model") or lineage.get("original_run"), "", lineage.get("n_forgotten"),
                 "", "forgotten since the original", ""))
    return rows


def to_markdown(report: dict) -> str:
    req = report["request"]
    out = [f"# Unlearning evidence: {req.get('model')} version {req.get('version')} -> version "
           f"{report['result'].get('version')}", "", f"Created {report['created_at']} by mlflow-unlearn's registry hook.", ""]
    for title, rows in _rows(report).items():
        out += [f"## {title}", ""]
        if rows and len(rows[0]) > 2:
            head, *body = rows
        else:
            head, body = ("item", "value"), rows
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        out += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in r) + " |" for r in body]
        out.append("")
    return "\n".join(out)


def tier_figure(report: dict):
    """Forget accuracy per memorisation tier of the source version, the result and (when a
    reference was cached) the retrained reference, from the report's metrics; None without tiers."""

    def tiers(metrics: dict | None) -> dict[str, float]:
        return {k.split("/")[1]: v for k, v in (metrics or {}).items()
                if k.startswith("tier/") and k.endswith("/forget_acc") and v is not None}

    metrics = report.get("metrics", {})
    before, after = tiers(metrics.get("before")), tiers(metrics.get("after"))
    reference = metrics.get("reference_tier_acc") or {}
    if not after:
        return None
    per_tier = {t: {"original": before.get(t), "unlearned": after[t], "reference": reference.get(t)} for t in after}
    per_tier = {t: {k: v for k, v in d.items() if v is not None} for t, d in per_tier.items()}
    return tier_accuracy_chart(per_tier, title="Forget-set accuracy per memorisation tier: source version vs result")


def figure_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def to_html(report: dict) -> str:
    req = report["request"]
    title = f"Unlearning evidence: {req.get('model')} version {req.get('version')} -> version {report['result'].get('version')}"
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>", html.escape(title), "</title><style>",
             "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}",
             "</style></head><body><h1>", html.escape(title), "</h1>",
             f"<p>Created {html.escape(report['created_at'])} by mlflow-unlearn's registry hook.</p>"]
    for name, rows in _rows(report).items():
        parts.append(f"<h2>{html.escape(name)}</h2><table>")
        if rows and len(rows[0]) > 2:
            head, *body = rows
            parts.append("<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in head) + "</tr>")
        else:
            body = rows
        for r in body:
            parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    fig = tier_figure(report)
    if fig is not None:  # inline, so the report stays one self-contained file
        import base64

        parts.append("<h2>Per-tier forget accuracy</h2><img alt='forget accuracy per tier' style='max-width:100%' "
                     "src='data:image/png;base64," + base64.b64encode(figure_png(fig)).decode() + "'>")
    parts.append("<details><summary>report.json</summary><pre>" + html.escape(json.dumps(report, indent=2)) + "</pre></details>")
    parts.append("</body></html>")
    return "".join(parts)

"""`mlflow-unlearn hook install`: create (or update, matched by name) the MLflow webhook that sends
`model_version_tag.set` and `model_version.created` events to the hook service.

The MLflow server must run with a SQL backend and, for a receiver on localhost, the environment of
docs/design.md section 5 (docs/hook.md, "Running `mlflow server` with webhooks locally"). Each server worker caches its webhook list for 60 s: an
installed or changed webhook takes effect on a running server within a minute.
"""
from __future__ import annotations

from mlflow import MlflowClient

from .. import tracking
from .config import DEFAULT_WEBHOOK_NAME, EVENTS, check_secret


def install_webhook(url: str, secret: str, *, name: str = DEFAULT_WEBHOOK_NAME, tracking_uri: str | None = None,
                    test: bool = False) -> dict:
    """Create or update the webhook; returns {"id", "name", "url", "events", "action", "test"?}."""
    if not secret:
        raise ValueError("no webhook secret: pass --secret or set MLFLOW_UNLEARN_HOOK_SECRET (the hook service verifies it)")
    check_secret(secret)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook URL {url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8765/webhook)")
    client: MlflowClient = tracking.connect(tracking_uri)
    existing = None
    token = None
    while existing is None:
        page = client.list_webhooks(max_results=100, page_token=token)
        existing = next((w for w in page if w.name == name), None)
        token = getattr(page, "token", None)
        if not token:
            break
    description = "mlflow-unlearn registry hook: forget-set tags start unlearning jobs"
    if existing is None:
        hook = client.create_webhook(name=name, url=url, events=list(EVENTS), description=description, secret=secret,
                                     status="ACTIVE")
        action = "created"
    else:
        hook = client.update_webhook(existing.webhook_id, url=url, events=list(EVENTS), description=description,
                                     secret=secret, status="ACTIVE")
        action = "updated"
    out = {"id": hook.webhook_id, "name": hook.name, "url": hook.url, "events": [str(e) for e in hook.events],
           "action": action}
    if test:
        result = client.test_webhook(hook.webhook_id)
        out["test"] = {"success": result.success, "status": result.response_status, "error": result.error_message}
    return out

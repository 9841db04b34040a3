"""`mlflow-unlearn hook serve`: the HTTP receiver of MLflow's webhooks (FastAPI on uvicorn).

POST /webhook   an MLflow webhook delivery. Unsigned, wrongly signed or stale (timestamp outside the
                tolerance): 401 and nothing else. Signed events that do not concern a forget set
                (other tags, other entities, the webhook test payload): 200 `ignored`. A delivery id
                seen before: 200 `duplicate`. Otherwise 202 `accepted`, and after the response the
                request is queued (status tag `queued`, huey task); the job runs in a worker.
GET  /health    {"status": "ok", "pending": jobs waiting in the queue, ...}
GET  /status/{name}/{version}   the ledger tags of a version

The answer never waits for a job or a registry write: verification, one small write to the queue
storage (the delivery id) and the response. Embedded huey workers (`--workers N`, default 1) run the
jobs in the same process; `--workers 0` leaves them to `mlflow-unlearn hook worker` processes sharing
the queue. A reconciler thread scans the registry at startup and every `--reconcile-interval` s.
"""
from __future__ import annotations

import json
import logging
import time

from fastapi import BackgroundTasks, FastAPI, Request  # module level: FastAPI resolves the annotations here
from fastapi.responses import JSONResponse

from . import jobs, ledger
from .. import tracking
from .config import HookConfig, is_redis
from .reconcile import Reconciler
from .signature import SignatureError, verify

log = logging.getLogger("mlflow_unlearn.hook")

TRIGGERS = {("model_version_tag", "set"), ("model_version", "created")}


def target_of(payload: dict) -> tuple[str, str] | None:
    """(name, version) when a webhook payload may start a job, else None."""
    entity, action, data = payload.get("entity"), payload.get("action"), payload.get("data") or {}
    if (entity, action) not in TRIGGERS or not isinstance(data, dict):
        return None
    name, version = data.get("name"), data.get("version")
    if not name or version in (None, ""):
        return None
    if entity == "model_version_tag" and data.get("key") != ledger.FORGET_SET_TAG:
        return None
    if entity == "model_version" and not (data.get("tags") or {}).get(ledger.FORGET_SET_TAG):
        return None
    return str(name), str(version)


def create_app(config: HookConfig):
    # no /docs, /redoc or /openapi.json: the receiver answers signed webhook calls, and an interactive
    # API page is one more unauthenticated surface on it
    app = FastAPI(title="mlflow-unlearn registry hook", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    delivery_ttl = int(2 * config.tolerance_s) + 60 if is_redis(config.resolved_queue()) else None

    def first_delivery(delivery_id: str) -> bool:
        # Shared by every service replica on the same queue; a delivery older than the timestamp
        # tolerance is rejected as stale anyway, so Redis forgets the id after twice that.
        return bool(jobs.current_huey().put_if_empty(f"delivery.{delivery_id}", time.time(), delivery_ttl))

    def submit_safely(name: str, version: str, delivery_id: str) -> None:
        try:
            outcome = jobs.submit(name, version)
            log.info("delivery %s: %s/%s %s", delivery_id, name, version, outcome)
        except Exception:  # the reconciler picks the request up later
            log.exception("delivery %s: submitting %s/%s failed", delivery_id, name, version)

    @app.post("/webhook")
    async def webhook(request: Request, background: BackgroundTasks):
        body = await request.body()
        try:
            delivery_id = verify(request.headers, body, config.secret or "", tolerance_s=config.tolerance_s)
        except SignatureError as exc:
            log.warning("rejected webhook call from %s: %s", request.client.host if request.client else "?", exc)
            return JSONResponse({"error": str(exc)}, status_code=401)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        target = target_of(payload) if isinstance(payload, dict) else None
        if target is None or not config.watches(target[0]):
            return {"status": "ignored", "delivery_id": delivery_id}
        if not first_delivery(delivery_id):
            return {"status": "duplicate", "delivery_id": delivery_id}
        background.add_task(submit_safely, target[0], target[1], delivery_id)
        return JSONResponse({"status": "accepted", "delivery_id": delivery_id, "model": target[0], "version": target[1]},
                            status_code=202)

    @app.get("/health")
    def health():
        return {"status": "ok", "pending": jobs.pending(), "workers": config.workers, "worker_type": config.worker_type,
                "queue": "redis" if is_redis(config.resolved_queue()) else "sqlite", "models": config.models or "all"}

    @app.get("/status/{name}/{version}")
    def status(name: str, version: str):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            return ledger.read_state(MlflowClient(), name, version).to_dict()
        except MlflowException as exc:
            return JSONResponse({"error": exc.message}, status_code=404)

    return app


def serve(config: HookConfig, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    """Run the webhook receiver with embedded workers and the reconciler until SIGINT/SIGTERM."""
    import uvicorn


    config.validate(need_secret=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    h = jobs.configure(config)
    tracking.connect(config.tracking_uri)
    consumer = jobs.make_consumer(h, config)
    if consumer is not None:
        consumer.shutdown_timeout = 30
        consumer.start()
    reconciler = Reconciler(config).start()
    log.info("hook service on http://%s:%s/webhook, queue %s, %d %s worker(s), reconcile every %s s", host, port,
             config.resolved_queue() if not is_redis(config.resolved_queue()) else "redis", config.workers,
             config.worker_type, config.reconcile_interval_s or "never")
    try:
        uvicorn.run(create_app(config), host=host, port=port, log_level=log_level)
    finally:
        reconciler.stop()
        if consumer is not None:
            consumer.stop(graceful=True)


def run_worker(config: HookConfig, *, reconcile: bool = False) -> None:
    """`mlflow-unlearn hook worker`: huey consumer(s) on the shared queue, in the foreground."""

    config.validate()
    if config.workers < 1:
        raise ValueError("hook worker needs --workers 1 or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    h = jobs.configure(config)
    tracking.connect(config.tracking_uri)
    consumer = jobs.make_consumer(h, config)
    reconciler = Reconciler(config).start() if reconcile else None
    try:
        consumer.run()
    finally:
        if reconciler is not None:
            reconciler.stop()

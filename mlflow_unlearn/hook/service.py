"""`mlflow-unlearn hook serve`: the HTTP receiver of MLflow's webhooks (FastAPI on uvicorn).

POST /webhook   an MLflow webhook delivery. A body over --max-body-bytes (default 1 MiB): 413 before
                it is read. Unsigned, wrongly signed or stale (timestamp outside the
                tolerance): 401 and nothing else, checked before the body is parsed. Signed events that do not concern a forget set
                (other tags, other entities, the webhook test payload): 200 `ignored`. A delivery id
                seen before: 200 `duplicate`. Otherwise the job is queued (huey task) and the answer
                is 202 `accepted`; the job runs in a worker.
GET  /health    {"status": "ok", "pending": jobs waiting in the queue, ...}; names no model
GET  /status/{name}/{version}   the ledger tags of a version; needs `Authorization: Bearer <secret>`

The answer never waits for a job or a registry write: verification, the delivery id claimed and the
job put in the queue (two small writes to the queue storage), then the response; the `queued` status
tag is written after it (and a job a worker started meanwhile keeps its `running`: jobs.submit
re-reads after writing). A delivery is only marked seen once its job is queued: if queueing fails,
the id is released and the answer is 503, so MLflow's retry of it gets in.

Embedded huey workers (`--workers N`, default 1) run the jobs in the same process; `--workers 0`
leaves them to `mlflow-unlearn hook worker` processes sharing the queue. A reconciler thread scans
the registry at startup and every `--reconcile-interval` s.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging

from fastapi import BackgroundTasks, FastAPI, Request  # module level: FastAPI resolves the annotations here
from fastapi.responses import JSONResponse

from . import deliveries, job_queue, jobs, ledger
from .. import tracking
from ..tags import Tag
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
    queue = config.resolved_queue()
    delivery_log: list = []  # created on the first call, once jobs.configure has made the queue

    def seen():
        if not delivery_log:
            delivery_log.append(deliveries.for_queue(queue, job_queue.current_huey(), tolerance_s=config.tolerance_s))
        return delivery_log[0]

    def mark_queued(name: str, version: str, delivery_id: str) -> None:
        """After the answer: the ledger's `queued` status (a registry write the answer does not wait for)."""
        try:
            outcome = jobs.submit(name, version, enqueued=True)
            log.info("delivery %s: %s/%s %s", delivery_id, name, version, outcome)
        except Exception:  # cosmetic: the job itself sets `running`, and the reconciler re-checks
            log.exception("delivery %s: writing the queued status of %s/%s failed", delivery_id, name, version)

    @app.post("/webhook")
    async def webhook(request: Request, background: BackgroundTasks):
        body = await read_limited(request, config.max_body_bytes)
        if isinstance(body, JSONResponse):  # too large (413) or a bad Content-Length (400), nothing read
            return body
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
        if target is None:
            return {"status": "ignored", "delivery_id": delivery_id}
        # Whether the model is watched (--models, or its opt-in tag) is the job's first check: the
        # answer never waits for a registry read.
        if not seen().claim(delivery_id):
            return {"status": "duplicate", "delivery_id": delivery_id}
        try:  # queued before the answer: a 202 means the job is in the queue, whatever happens next
            job_queue.enqueue(*target)
        except Exception as exc:
            seen().release(delivery_id)  # not queued, so not seen: MLflow's retry of this delivery gets in
            log.exception("delivery %s: queueing %s/%s failed", delivery_id, *target)
            return JSONResponse({"error": f"could not queue the job ({type(exc).__name__}); retry the delivery"},
                                status_code=503)
        background.add_task(mark_queued, target[0], target[1], delivery_id)
        return JSONResponse({"status": "accepted", "delivery_id": delivery_id, "model": target[0], "version": target[1]},
                            status_code=202)

    @app.get("/health")
    def health():  # unauthenticated, so it names no model and no version
        return {"status": "ok", "pending": job_queue.pending(), "workers": config.workers, "worker_type": config.worker_type,
                "queue": "redis" if is_redis(queue) else "sqlite"}

    @app.get("/status/{name}/{version}")
    def status(name: str, version: str, request: Request):
        # the ledger of a version names its requests and errors: behind the webhook secret
        # (`Authorization: Bearer <secret>`); `mlflow-unlearn hook status` reads the registry instead
        if not bearer_matches(request.headers.get("authorization"), config.secret):
            return JSONResponse({"error": "send the webhook secret as `Authorization: Bearer <secret>`"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            return ledger.read_state(MlflowClient(), name, version).to_dict()
        except MlflowException as exc:
            return JSONResponse({"error": exc.message}, status_code=404)

    return app


async def read_limited(request: Request, limit: int) -> "bytes | JSONResponse":
    """The body, read only while it stays within `limit` bytes: a declared Content-Length over it is
    refused before a byte is read, and a body streamed without one is dropped at the first chunk past
    it (the connection is then closed), so the receiver never holds more than `limit` of it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            return JSONResponse({"error": "bad Content-Length header"}, status_code=400, headers={"Connection": "close"})
        if int(declared) > limit:
            return _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> JSONResponse:
    return JSONResponse({"error": f"the body is over the receiver's limit of {limit} bytes (got {size}+); MLflow's "
                                  f"deliveries are a few KiB (raise it with --max-body-bytes)"},
                        status_code=413, headers={"Connection": "close"})


def bearer_matches(header: str | None, secret: str | None) -> bool:
    if not secret or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), secret.encode())


def bind_warning(host: str) -> str | None:
    """A warning when the receiver listens beyond this machine: its /webhook is signed, but /health and the
    port itself are then reachable by anyone on the network."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (f"the hook service binds {host}, reachable beyond this machine: put it behind TLS and a firewall that "
            f"lets only the MLflow server in, or bind 127.0.0.1 (the default) when MLflow runs on the same host")


def serve(config: HookConfig, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    """Run the webhook receiver with embedded workers and the reconciler until SIGINT/SIGTERM."""
    import uvicorn


    config.validate(need_secret=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warning = bind_warning(host)
    if warning:
        log.warning(warning)
    if not config.models:
        log.warning("no --models: only registered models tagged %s=true are watched (--models '*' watches all)",
                    Tag.HOOK_WATCH)
    h = jobs.configure(config)
    tracking.connect(config.tracking_uri)
    consumer = job_queue.make_consumer(h, config)
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
    consumer = job_queue.make_consumer(h, config)
    reconciler = Reconciler(config).start() if reconcile else None
    try:
        consumer.run()
    finally:
        if reconciler is not None:
            reconciler.stop()

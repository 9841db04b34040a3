"""The model-registry hook (docs/design.md section 5): attaching a forget set to a registered model version
(a tag) yields a new, audited, unlearned version of the same registered model, exactly once.

    attach.py      validate a forget set against a version's training manifest, log it (role `request`),
                   set the `mlflow_unlearn.forget_set` tag; `wait_for` the answer
    signature.py   MLflow webhook HMAC signatures: verify (and sign, for tests and tools)
    service.py     the FastAPI webhook receiver (`mlflow-unlearn hook serve`)
    deliveries.py  webhook delivery ids seen, with an expiry, on either queue (replays are dropped)
    jobs.py        the job: submitting a request, its state machine, unlearning and registration
    job_queue.py   the queue (huey on a SQLite file or Redis) and the process's one hook configuration
    job_locks.py   job locks that name their owner (host, boot, pid, start time), so dead owners' locks clear
    acceptance.py  the acceptance gate in a job: attempts, escalation (stronger plan, exact retrain), retrain_after
    ledger.py      the registry as the ledger: tag names, a version's request state, merged requests
    reconcile.py   the periodic registry scan that catches lost events and tags set while down
    evidence.py    the evidence report (JSON, markdown, HTML) logged with every result version
    webhooks.py    create or update the webhook on an MLflow server (`mlflow-unlearn hook install`)
    config.py      settings shared by the service, the workers and the CLI (flags or environment)
    cli.py         the `attach` and `hook ...` subcommands
    local.py       start `mlflow server` and the service as subprocesses (`hook demo`, bench/bench_hook.py)
    demo.py        `mlflow-unlearn hook demo`: the whole loop on one machine

Only edge code lives here: it imports mlflow freely, the core never imports it.
"""
from .ledger import (  # noqa: F401
    FORGET_SET_TAG, STATUS_TAG, RESULT_VERSION_TAG, ERROR_TAG, JOB_REQUEST_TAG, JOB_DIGEST_TAG, STATUSES, TERMINAL,
)


def attach(*args, **kwargs):
    """See `mlflow_unlearn.hook.attach.attach`."""
    from .attach import attach as _attach

    return _attach(*args, **kwargs)

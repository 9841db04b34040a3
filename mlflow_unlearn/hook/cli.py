"""Subcommands `attach` and `hook {serve,install,worker,reconcile,status,demo}` (wired into
mlflow_unlearn/cli.py). Every hook setting has an environment default (see config.py)."""
from __future__ import annotations

import argparse
import json
import os
import sys


from ..cli_types import budget as _budget
from ..cli_types import whole_number as _int


from .attach import wait_for  # noqa: E402  (`attach --wait` and `hook status --wait`)


def _config_args(p, *, workers_default=None, reconcile_default=None):
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--queue", default=None,
                   help="job queue: a SQLite file (default mlflow-unlearn-hook.db next to a SQLite tracking DB, else "
                        "in the working directory) or redis://host:port/db; env MLFLOW_UNLEARN_HOOK_QUEUE")
    p.add_argument("--workers", type=_int, default=workers_default,
                   help="jobs run at once (huey consumer workers); env MLFLOW_UNLEARN_HOOK_WORKERS, default 1")
    p.add_argument("--worker-type", choices=("thread", "process"), default=None, help="huey worker type (default thread)")
    p.add_argument("--models", default=None, help="comma-separated registered model names to watch, * for all (default: only models tagged "
                                                  "mlflow_unlearn.hook_watch=true); "
                                                  "env MLFLOW_UNLEARN_HOOK_MODELS")
    p.add_argument("--experiment", default=None, help="experiment of the job runs (default mlflow-unlearn, beside the request runs)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument("--seed", type=_int, default=None)
    p.add_argument("--budget", type=_budget, default=None,
                   help="the most compute a job's attempt may use, as a fraction in (0, 1] of the source's original "
                        "training (default 0.1; env MLFLOW_UNLEARN_BUDGET); the escalated attempt gets twice it")
    p.add_argument("--reconcile-interval", type=float, default=reconcile_default,
                   help="seconds between registry scans for requests without an answer (0: none)")
    p.add_argument("--lock-ttl", type=_int, default=None, help="Redis queue: a dead worker's job lock expires after this (s)")
    p.add_argument("--gate", default=None, metavar="KEY=VALUE,...",
                   help="acceptance-gate thresholds (fractions): retain_drop, heldout_drop, forget_tolerance, "
                        "mia_tolerance, neighbours (defaults 0.05, 0.05, 0.10, 0.05, 50; see mlflow_unlearn/gate.py)")
    p.add_argument("--escalate", default=None, metavar="STAGES",
                   help="what a job does when a result fails the gate: stronger,retrain (default), retrain, or none "
                        "(then nothing is registered and the request ends failed)")
    p.add_argument("--retrain-after-fraction", type=float, default=None,
                   help="retrain exactly instead of unlearning once this fraction of the train set is forgotten in total")
    p.add_argument("--data-root", action="append", default=None, metavar="FOLDER",
                   help="a folder the source models' training data may be read from (repeat for several; env "
                        "MLFLOW_UNLEARN_HOOK_DATA_ROOTS, os.pathsep-separated); a model whose manifest names data "
                        "elsewhere on this host is rejected (default: none, only the embedded datasets)")
    p.add_argument("--retrain-after-requests", type=_int, default=None,
                   help="answer the N-th request since the last retrain (or training) with an exact retrain: at most "
                        "N-1 approximate requests in a row")


def _config(a, **extra):
    from .config import HookConfig

    models = [m.strip() for m in a.models.split(",") if m.strip()] if getattr(a, "models", None) else None
    return HookConfig.from_env(
        tracking_uri=getattr(a, "tracking_uri", None), queue=getattr(a, "queue", None), workers=getattr(a, "workers", None),
        worker_type=getattr(a, "worker_type", None), models=models, experiment=getattr(a, "experiment", None),
        device=getattr(a, "device", None), seed=getattr(a, "seed", None), budget=getattr(a, "budget", None),
        reconcile_interval_s=getattr(a, "reconcile_interval", None), lock_ttl_s=getattr(a, "lock_ttl", None),
        gate=_gate_thresholds(getattr(a, "gate", None)), escalation=_escalation(getattr(a, "escalate", None)),
        data_roots=getattr(a, "data_root", None),
        retrain_after_fraction=getattr(a, "retrain_after_fraction", None),
        retrain_after_requests=getattr(a, "retrain_after_requests", None), **extra)


def _gate_thresholds(text: str | None) -> dict | None:
    if text is None:
        return None
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"--gate {part!r} is not key=value (e.g. --gate retain_drop=0.03,forget_tolerance=0.15)")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--gate {key.strip()}={value!r}: not a number") from None
    return out


def _escalation(text: str | None) -> tuple | None:
    if text is None:
        return None
    return () if text.strip().lower() in ("none", "") else tuple(p.strip() for p in text.split(",") if p.strip())


def add_attach(sub):
    p = sub.add_parser("attach", help="attach a forget set to a registered model version (the registry hook unlearns it)")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--version", default=None, help="model version (or --alias)")
    p.add_argument("--alias", default=None,
                   help="a serving alias (e.g. champion): the request applies to the version the alias names when the "
                        "job runs, and the alias moves to the result (unless --no-promote)")
    p.add_argument("--no-promote", action="store_true", help="with --alias: leave the alias where it is")
    p.add_argument("--forget", required=True,
                   help="a file of ids (.txt/.json/.npy/.csv), an MLflow artifact URI, or random:N | class:K | mix:N | tiers:...")
    p.add_argument("--seed", type=_int, default=0, help="seed for random:/mix:/tiers: specs")
    p.add_argument("--experiment", default=None, help="experiment of the request run")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--force", action="store_true", help="make a new request even if these ids are already attached")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for the answer and print it (needs the hook service running)")

    def run(a):
        from .attach import attach

        res = attach(a.model, a.version, a.forget, seed=a.seed, experiment=a.experiment, tracking_uri=a.tracking_uri,
                     force=a.force, alias=a.alias, promote=not a.no_promote)
        what = "already attached (same ids), nothing new" if res.already_attached else f"attached in request run {res.run_id}"
        print(f"{res.model}/{res.version}: {res.n_forget} ids, digest {res.digest[:12]}..., {what}")
        print(f"  mlflow_unlearn.forget_set = {res.uri}")
        if res.merged_with:
            print(f"  merged with {len(res.merged_with)} request(s) still waiting on this version: one job answers them all")
        if a.wait > 0:
            state = wait_for(res.model, res.version, timeout_s=a.wait, tracking_uri=a.tracking_uri, request=res.uri)
            print(json.dumps(state, indent=2))
            if state.get("status") != "done":
                raise ValueError(f"request {state.get('status')}: {state.get('error')}")

    p.set_defaults(func=run)


def add_hook(sub):
    p = sub.add_parser("hook", help="the registry hook: webhook service, workers, reconciler, webhook install")
    hs = p.add_subparsers(dest="hook_command", required=True)

    s = hs.add_parser("serve", help="receive MLflow webhooks and run unlearning jobs (FastAPI + uvicorn + huey workers)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_int, default=8765)
    s.add_argument("--secret", default=None, help="webhook secret; env MLFLOW_UNLEARN_HOOK_SECRET")
    s.add_argument("--tolerance", type=float, default=None, help="accepted webhook timestamp skew in seconds (default 300)")
    s.add_argument("--max-body-bytes", type=_int, default=None,
                   help="largest webhook body read, in bytes (default 1 MiB; env MLFLOW_UNLEARN_HOOK_MAX_BODY_BYTES); "
                        "larger ones get 413 before they are read")
    s.add_argument("--log-level", default="info")
    _config_args(s, reconcile_default=None)

    def serve(a):
        from .service import serve as _serve

        cfg = _config(a, secret=a.secret, tolerance_s=a.tolerance, max_body_bytes=a.max_body_bytes)
        _serve(cfg, host=a.host, port=a.port, log_level=a.log_level)

    s.set_defaults(func=serve)

    i = hs.add_parser("install", help="create or update the MLflow webhook that calls the hook service")
    i.add_argument("--url", default=os.environ.get("MLFLOW_UNLEARN_HOOK_URL", "http://127.0.0.1:8765/webhook"),
                   help="the service's /webhook URL as the MLflow server reaches it (env MLFLOW_UNLEARN_HOOK_URL)")
    i.add_argument("--secret", default=os.environ.get("MLFLOW_UNLEARN_HOOK_SECRET"), help="env MLFLOW_UNLEARN_HOOK_SECRET")
    i.add_argument("--name", default="mlflow-unlearn")
    i.add_argument("--tracking-uri", default=None, help="the MLflow server (default $MLFLOW_TRACKING_URI)")
    i.add_argument("--test", action="store_true", help="then send MLflow's test event and report the answer")

    def install(a):
        from .webhooks import install_webhook

        out = install_webhook(a.url, a.secret, name=a.name, tracking_uri=a.tracking_uri, test=a.test)
        print(json.dumps(out, indent=2))

    i.set_defaults(func=install)

    w = hs.add_parser("worker", help="run unlearning jobs from the shared queue (huey consumer) in the foreground")
    _config_args(w, reconcile_default=0.0)

    def worker(a):
        from .service import run_worker

        cfg = _config(a)
        run_worker(cfg, reconcile=cfg.reconcile_interval_s > 0)

    w.set_defaults(func=worker)

    r = hs.add_parser("reconcile", help="scan the registry once and queue every request without an answer")
    _config_args(r)

    def reconcile(a):
        from .. import tracking
        from . import job_queue, jobs
        from .reconcile import Reconciler

        cfg = _config(a)
        jobs.configure(cfg)
        tracking.connect(cfg.tracking_uri)
        actions = Reconciler(cfg, queued_grace_s=0).scan()
        for name, version, action in actions:
            print(f"{name}/{version}: {action}")
        print(f"{len(actions)} request(s) queued; {job_queue.pending()} job(s) pending in the queue")

    r.set_defaults(func=reconcile)

    st = hs.add_parser("status", help="print the ledger tags of a model version (optionally wait for the answer)")
    st.add_argument("--model", required=True)
    st.add_argument("--version", required=True)
    st.add_argument("--tracking-uri", default=None)
    st.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")

    def status(a):
        from mlflow import MlflowClient

        from .. import tracking
        from . import ledger

        if a.wait > 0:
            state = wait_for(a.model, a.version, timeout_s=a.wait, tracking_uri=a.tracking_uri)
        else:
            tracking.connect(a.tracking_uri)
            state = ledger.read_state(MlflowClient(), a.model, a.version).to_dict()
        print(json.dumps(state, indent=2))

    st.set_defaults(func=status)

    d = hs.add_parser("demo", help="the whole loop locally: mlflow server + hook service, train, attach, wait, print the evidence")
    d.add_argument("--workdir", default="hook-demo", help="folder for the server's database, artifacts and logs")
    d.add_argument("--forget", default="mix:30")
    d.add_argument("--epochs", type=_int, default=10)
    d.add_argument("--subset", type=_none_int, default=600)
    d.add_argument("--timeout", type=float, default=600.0)

    def demo(a):
        from .demo import run_demo

        run_demo(workdir=a.workdir, forget=a.forget, epochs=a.epochs, subset=a.subset, timeout_s=a.timeout)

    d.set_defaults(func=demo)


def _none_int(value: str):
    return None if str(value).strip().lower() in ("", "none", "0") else _int(value)


def main(argv=None) -> int:  # `python -m mlflow_unlearn.hook.cli ...` for debugging
    parser = argparse.ArgumentParser(prog="mlflow-unlearn")
    sub = parser.add_subparsers(dest="command", required=True)
    add_attach(sub)
    add_hook(sub)
    a = parser.parse_args(argv)
    a.func(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

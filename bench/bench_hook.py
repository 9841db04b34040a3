"""Registry-hook latency and throughput, end to end on one machine (README.md "The registry hook", bench/README.md).

    .venv/bin/python bench/bench_hook.py                       # 20 requests per phase, ~10 min on 2 cores
    .venv/bin/python bench/bench_hook.py --requests 5 --quick  # smoke run

A real `mlflow server` (SQLite, webhooks enabled) and `mlflow-unlearn hook serve` (process workers)
run as subprocesses; a small_cnn is trained on digits and registered, its registered model gets the
plan given by --plan, and every request forgets --forget ids (a different random set per version).
Each request's forget set is logged beforehand (as `attach` does), so what is timed starts when the
`mlflow_unlearn.forget_set` tag is set on a version:

- latency: requests one at a time with 1 worker: tag set -> job started (`started_at` tag) and
  -> new version registered (its creation timestamp); p50 and p95;
- throughput: all requests set as one burst, with 1 and then 2 workers: results per minute from the
  first tag to the last registration, with the same latencies (which now include queueing);
- concurrent attaches (`--concurrent N`, default 20): N `mlflow-unlearn attach` calls for distinct
  ids on ONE version, each in its own process, started together, with 1 and then 2 workers:
  requests made, attach errors, answered, lost (no answer within --drain-timeout), versions made
  from that version, whether the version the `unlearned` alias serves lacks the union, drain time.

    .venv/bin/python bench/bench_hook.py --quick --no-burst --concurrent 20                       # SQLite
    .venv/bin/python bench/bench_hook.py --quick --no-burst --concurrent 20 --backend postgres --queue redis
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20, help="requests per phase (default 20)")
    ap.add_argument("--workers", default="1,2", help="worker counts for the throughput phase")
    ap.add_argument("--worker-type", default="process", choices=("process", "thread"))
    ap.add_argument("--forget", type=int, default=30, help="ids per request (random, one set per version)")
    ap.add_argument("--plan", default="low=none;mid=finetune(epochs=1);high=neggrad_plus(epochs=2)",
                    help="plan registered on the model (compact form); 'default' for rum.default_plan")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the source model")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--subset", type=int, default=None, help="digits train subset (default: all 1437)")
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "hook"))
    ap.add_argument("--quick", action="store_true", help="skip the latency phase")
    ap.add_argument("--no-burst", action="store_true", help="skip the burst (throughput) phase")
    ap.add_argument("--concurrent", type=int, default=20, help="attach processes on one version at once (0: skip)")
    ap.add_argument("--concurrent-ids", type=int, default=5, help="ids per concurrent request")
    ap.add_argument("--drain-timeout", type=float, default=1200.0, help="seconds to wait for every answer")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--backend", default="sqlite", choices=("sqlite", "postgres"),
                    help="the MLflow server's backend store: SQLite in --workdir, or a fresh database on the "
                         "PostgreSQL at 127.0.0.1:5432 (dropped at the end)")
    ap.add_argument("--queue", default="sqlite", choices=("sqlite", "redis"),
                    help="the hook's job queue: a SQLite file per phase, or Redis db 14 at 127.0.0.1:6379 (flushed per phase)")
    args = ap.parse_args(argv)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import shutil

    import mlflow

    from mlflow_unlearn.hook import ledger, local
    from mlflow_unlearn.hook.attach import log_request, validate_request
    from mlflow_unlearn.hook.webhooks import install_webhook
    from mlflow_unlearn.rum import Plan
    from mlflow_unlearn.tracking import run_model_id
    from mlflow_unlearn.steps import train_step
    from mlflow_unlearn.tags import Tag

    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    secret = secrets.token_hex(16)
    model = "digits-hook-bench"
    server = hook = None
    hook_port = local.free_port()
    results = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}, "config": vars(args), "phases": {}}

    redis_url = "redis://127.0.0.1:6379/14"

    def start_hook(workers: int, tag: str):
        if args.queue == "redis":
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        queue = redis_url if args.queue == "redis" else str(workdir / f"queue-{tag}.db")
        proc, url = local.start_hook_service(workdir, server_url, secret, port=hook_port, workers=workers,
                                             worker_type=args.worker_type, queue=queue,
                                             reconcile_interval_s=30, models=[model], log_name=f"hook-{tag}.log")
        return proc, url

    pg_db = None
    backend_uri = None
    if args.backend == "postgres":
        import psycopg

        pg_db = f"mlflow_hook_bench_{os.getpid()}"
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {pg_db}")
        backend_uri = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_db}"
    results["config"]["backend_store_uri"] = backend_uri or "sqlite"
    try:
        print(f"starting mlflow server ({args.backend} backend, {args.queue} queue) ...", flush=True)
        server, server_url = local.start_mlflow_server(workdir, env={"MLFLOW_WEBHOOK_CACHE_TTL": "2"},
                                                       backend_store_uri=backend_uri)
        install_webhook(f"http://127.0.0.1:{hook_port}/webhook", secret, tracking_uri=server_url)
        os.environ["MLFLOW_TRACKING_URI"] = server_url
        mlflow.set_tracking_uri(server_url)
        client = mlflow.MlflowClient(server_url)
        print("training the source model ...", flush=True)
        trained = train_step(dataset="digits", model="small_cnn", width=args.width, epochs=args.epochs, subset=args.subset,
                             registered_model_name=model, progress=False)
        if args.plan != "default":
            client.set_registered_model_tag(model, Tag.SEARCHED_PLAN, Plan.parse(args.plan).to_json(indent=None))
        results["source"] = trained.model_uri

        _, manifest, _ = validate_request(client, model, trained.version, [0])
        n_train = len(manifest["labels"])
        seq = [0]

        def prepare_requests(n: int) -> list[tuple[str, str]]:
            """Register n versions and log a forget set for each (not attached yet)."""
            import numpy as np

            out = []
            for _ in range(n):
                v = str(mlflow.register_model(f"models:/{run_model_id(trained.run_id)}", model).version)
                seq[0] += 1
                ids = np.sort(np.random.RandomState(seq[0]).choice(n_train, size=args.forget, replace=False))
                _, _, fs = validate_request(client, model, v, ids)
                _, uri = log_request(model, v, fs, manifest)
                out.append((v, uri))
            return out

        def wait_done(versions, timeout=3600):
            deadline = time.time() + timeout
            pending = set(versions)
            while pending and time.time() < deadline:
                for v in list(pending):
                    st = ledger.read_state(client, model, v)
                    if st.is_current and st.status in ledger.TERMINAL:
                        if st.status != "done":
                            raise RuntimeError(f"{model}/{v}: {st.status}: {st.tags.get(ledger.ERROR_TAG)}")
                        pending.discard(v)
                time.sleep(0.2)
            if pending:
                raise TimeoutError(f"not answered: {sorted(pending)}")

        def measure(reqs, t_set):
            rows = []
            for v, _ in reqs:
                st = ledger.read_state(client, model, v)
                res = client.get_model_version(model, st.tags[ledger.RESULT_VERSION_TAG])
                try:  # the job's whole cost, every attempt (the evidence), in trainings
                    report = json.loads(mlflow.artifacts.load_text((res.tags or {})[ledger.EVIDENCE_TAG]))
                    job_cost = float(report["cost"]["attempts_train_fraction"])
                except Exception:
                    job_cost = float("nan")
                rows.append({"version": v, "to_start_s": float(st.tags[ledger.STARTED_AT_TAG]) - t_set[v],
                             "to_registered_s": res.creation_timestamp / 1000.0 - t_set[v],
                             "registered_at": res.creation_timestamp / 1000.0,
                             "gate": (res.tags or {}).get(Tag.GATE), "job_cost": job_cost})
            return rows

        def summary(rows, span=None):
            out = {k: {"p50": pct([r[k] for r in rows], 0.5), "p95": pct([r[k] for r in rows], 0.95)}
                   for k in ("to_start_s", "to_registered_s")}
            out["n"] = len(rows)
            out["gate_paths"] = {p: sum(1 for r in rows if r["gate"] == p) for p in sorted({r["gate"] for r in rows}, key=str)}
            out["gate_path_cost"] = {p: sum(r["job_cost"] for r in rows if r["gate"] == p) / max(1, out["gate_paths"][p])
                                     for p in out["gate_paths"]}
            if span:
                out["span_s"] = span
                out["throughput_per_min"] = 60.0 * len(rows) / span
            return out

        def warm_up():
            (v, uri), = prepare_requests(1)
            client.set_model_version_tag(model, v, ledger.FORGET_SET_TAG, uri)
            wait_done([v])

        if not args.quick:
            print(f"latency phase: {args.requests} requests one at a time, 1 worker ...", flush=True)
            hook, _ = start_hook(1, "latency")
            warm_up()
            reqs = prepare_requests(args.requests)
            t_set = {}
            for v, uri in reqs:
                client.set_model_version_tag(model, v, ledger.FORGET_SET_TAG, uri)
                t_set[v] = time.time()
                wait_done([v])
            results["phases"]["latency_1_worker"] = summary(measure(reqs, t_set))
            local.stop(hook)
            hook = None

        for workers in [int(w) for w in args.workers.split(",") if w.strip()] if args.concurrent > 0 else []:
            print(f"concurrent phase: {args.concurrent} attach processes on one version, {workers} worker(s) ...", flush=True)
            hook, _ = start_hook(workers, f"concurrent{workers}")
            results["phases"][f"concurrent_{workers}_workers"] = concurrent_attaches(
                client, model, server_url, trained.run_id, n_train, workers, args)
            local.stop(hook)
            hook = None

        for workers in [int(w) for w in args.workers.split(",") if w.strip()] if not args.no_burst else []:
            print(f"throughput phase: burst of {args.requests} requests, {workers} {args.worker_type} worker(s) ...", flush=True)
            hook, _ = start_hook(workers, f"burst{workers}")
            warm_up()
            reqs = prepare_requests(args.requests)
            t_set = {}
            for v, uri in reqs:
                client.set_model_version_tag(model, v, ledger.FORGET_SET_TAG, uri)
                t_set[v] = time.time()
            wait_done([v for v, _ in reqs])
            rows = measure(reqs, t_set)
            span = max(r["registered_at"] for r in rows) - min(t_set.values())
            results["phases"][f"burst_{workers}_workers"] = summary(rows, span)
            local.stop(hook)
            hook = None
        results["machine"]["load_avg_end"] = os.getloadavg()
    finally:
        local.stop(hook)
        local.stop(server)
        if pg_db is not None:
            import psycopg

            with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)")

    print()
    print(f"Machine: {results['machine']['cpus']} CPUs, load average {results['machine']['load_avg_start'][0]:.1f} at start, "
          f"{results['machine'].get('load_avg_end', [float('nan')])[0]:.1f} at end; {args.worker_type} workers; "
          f"plan {args.plan!r}; {args.forget} ids per request; small_cnn width {args.width} on digits")
    print()
    print(f"backend {args.backend}, queue {args.queue}")
    concurrent = {k: v for k, v in results["phases"].items() if k.startswith("concurrent_")}
    if concurrent:
        print("| backend, queue | workers | requests | attach errors | answered | lost | versions made | serving lacks the union | drain (s) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, c in concurrent.items():
            print(f"| {args.backend}, {args.queue} | {c['workers']} | {c['requests']} | {c['attach_errors']} | {c['answered']} | "
                  f"{c['lost']} | {c['versions_made']} | {'yes' if c['serving_lacks_union'] else 'NO'} | {c['drain_s']:.0f} |")
        print()
    bursts = {k: v for k, v in results["phases"].items() if not k.startswith("concurrent_")}
    if bursts:
        print("| phase | n | tag -> start p50 (s) | p95 (s) | tag -> registered p50 (s) | p95 (s) | results/min | gate paths |")
        print("|---|---|---|---|---|---|---|---|")
    for name, s in bursts.items():
        tp = f"{s['throughput_per_min']:.1f}" if "throughput_per_min" in s else "-"
        paths = ", ".join(f"{k} {v} (mean job cost {s.get('gate_path_cost', {}).get(k, float('nan')):.3f})"
                          for k, v in s.get("gate_paths", {}).items())
        print(f"| {name} | {s['n']} | {s['to_start_s']['p50']:.2f} | {s['to_start_s']['p95']:.2f} | "
              f"{s['to_registered_s']['p50']:.2f} | {s['to_registered_s']['p95']:.2f} | {tp} | {paths} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


ATTACH_SCRIPT = """
import json, sys
from mlflow_unlearn.hook.attach import attach
model, version, url, ids = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
res = attach(model, version, ids, tracking_uri=url)
print(json.dumps({"run_id": res.run_id}))
"""


def concurrent_attaches(client, model: str, server_url: str, run_id: str, n_train: int, workers: int, args) -> dict:
    """N `attach` processes for distinct ids on one fresh version, started together; then wait for
    every request run's answer (or --drain-timeout) and count what happened."""
    import subprocess

    import mlflow
    import numpy as np

    from mlflow_unlearn.hook import ledger
    from mlflow_unlearn.tracking import read_lineage, run_model_id

    v = str(mlflow.register_model(f"models:/{run_model_id(run_id)}", model).version)
    ids = np.random.RandomState(1000 + workers).permutation(n_train)[: args.concurrent * args.concurrent_ids]
    sets = [sorted(int(i) for i in ids[k::args.concurrent]) for k in range(args.concurrent)]
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", ATTACH_SCRIPT, model, v, server_url, json.dumps(one)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT)) for one in sets]
    outs = [p.communicate(timeout=600) for p in procs]
    attach_s = time.time() - t0
    made = [(json.loads(out.strip().splitlines()[-1])["run_id"], one) for (out, _), p, one in zip(outs, procs, sets)
            if p.returncode == 0 and out.strip()]
    errors = [err.strip().splitlines()[-1][:200] if err.strip() else f"exit {p.returncode}"
              for (_, err), p in zip(outs, procs) if p.returncode != 0]
    answers, deadline = {}, time.time() + args.drain_timeout
    while len(answers) < len(made) and time.time() < deadline:
        for run, _ in made:
            if run not in answers and (a := client.get_run(run).data.tags.get(ledger.ANSWER_TAG)):
                answers[run] = a
        time.sleep(1)
    drain_s = time.time() - t0
    versions = client.search_model_versions(f"name = '{model}' and tags.`{ledger.SOURCE_VERSION_TAG}` = '{v}'")
    union = set().union(*(set(one) for _, one in made)) if made else set()
    try:
        serving = client.get_model_version_by_alias(model, "unlearned")
        lacks = union <= set(read_lineage(client, serving)[0].forgotten.tolist())
    except Exception:
        lacks = False
    return {"workers": workers, "requests": len(made), "attach_errors": len(errors), "errors": errors[:5],
            "answered": len(answers), "lost": len(made) - len(answers), "versions_made": len(versions),
            "answers_done": sum(": done" in a for a in answers.values()), "serving_lacks_union": lacks,
            "attach_s": attach_s, "drain_s": drain_s}


if __name__ == "__main__":
    sys.exit(main())

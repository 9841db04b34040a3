"""The registry hook against a real `mlflow server` (SQLite, webhooks enabled) on 127.0.0.1 and the real
hook service (`mlflow-unlearn hook serve`, uvicorn, huey on SQLite) as a subprocess: no mocks.

One module-wide setup: the server, the hook service (watching registered model MODEL only), the
webhook installed right after the server starts (servers cache webhook lists for a while), and a
tiny digits model registered as MODEL with a tiny plan, so each job takes a few seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, redis_or_skip, start_mlflow_server, use_tracking
from mlflow_unlearn.hook import ledger, local
from mlflow_unlearn.hook.signature import signed_headers
from mlflow_unlearn.tracking import run_model_id

pytestmark = pytest.mark.integration  # real servers / subprocesses: `pytest -m "not integration"` skips them

MODEL = "hooktiny"
QUIET = "hooktiny-quiet"  # not watched by the main service: used where no job may start by itself
SECRET = "test-hook-secret"
TINY_PLAN = "low=none;mid=finetune(epochs=1);high=neggrad_plus(epochs=1,lr=0.03,alpha=0.99)"
JOB_TIMEOUT = 240
# The service's tests are about the ledger, not about how well TINY_PLAN forgets (its one epoch of
# neggrad_plus costs this tiny model ~5 points of retain accuracy, which the default gate refuses):
# a loose gate keeps each job one attempt. The gate itself is tested with its defaults below.
# neggrad_plus runs at its pre-budget defaults here: the current ones (lr 0.08, alpha 0.95, chosen
# for a model fitted to its data at budget 0.1) took this under-fitted model's retain accuracy from
# 0.95 to 0.59.
LOOSE_GATE = "retain_drop=0.3,heldout_drop=0.3,mia_tolerance=0.3"
# For the same reason the service runs at budget 1: the tiny model's whole training is 2,160 example
# passes, and at the default 0.1 the high tier's share (about 70 passes, two steps) left it
# recognisable, so the first attempt failed the gate. The budget itself is tested in
# test_compute.py, test_algorithms_defaults.py and, for the hook at its default,
# test_a_result_that_fails_the_gate_escalates_to_an_exact_retrain.
TEST_BUDGET = "1"
PLAN_BUDGET = 0.5  # the budget the registered plan says it was searched at


class Hook:
    """`mlflow-unlearn hook serve` as a subprocess on a fixed port (restarts keep the webhook URL)."""

    def __init__(self, workdir: Path, tracking_uri: str, *, models, workers=1, reconcile_s=3.0, queue=None, name="hook"):
        self.workdir, self.tracking_uri, self.models = workdir, tracking_uri, models
        self.workers, self.reconcile_s, self.name = workers, reconcile_s, name
        self.queue = queue or str(workdir / f"{name}-queue.db")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> "Hook":
        self.proc, _ = local.start_hook_service(self.workdir, self.tracking_uri, SECRET, port=self.port, workers=self.workers,
                                                queue=self.queue, reconcile_interval_s=self.reconcile_s, models=self.models,
                                                log_name=f"{self.name}.log",
                                                extra_args=["--gate", LOOSE_GATE, "--budget", TEST_BUDGET])
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        local.stop(self.proc)

    def post(self, body: bytes, headers: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + "/webhook", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as resp:
            return json.loads(resp.read())

    def log(self) -> str:
        p = self.workdir / f"{self.name}.log"
        return p.read_text()[-4000:] if p.exists() else ""


@dataclass
class Env:
    workdir: Path
    url: str
    hook: Hook
    run_id: str  # the training run: registering its model again makes more source versions
    version: str  # the trained version

    @property
    def client(self):
        import mlflow

        return mlflow.MlflowClient(self.url)

    def new_version(self, name: str = MODEL) -> str:
        import mlflow

        return str(mlflow.register_model(f"models:/{run_model_id(self.run_id)}", name).version)


@pytest.fixture(scope="module")
def env(tmp_path_factory, sqlite_template):
    import mlflow

    from mlflow_unlearn.hook.webhooks import install_webhook
    from mlflow_unlearn.rum import Plan
    from mlflow_unlearn.steps import train_step
    from mlflow_unlearn.tags import Tag

    workdir = tmp_path_factory.mktemp("hook")
    shutil.copy(sqlite_template, workdir / "mlflow.db")
    server, url = start_mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}",
                                      env=local.webhook_server_env(workdir, cache_ttl_s=2))
    hook = Hook(workdir, url, models=[MODEL], workers=2).start()
    install_webhook(hook.url + "/webhook", SECRET, tracking_uri=url)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(workdir)
            use_tracking(mp, url)
            trained = train_step(dataset="digits", model="small_cnn", width=8, subset=300, epochs=8, batch_size=32,
                                 registered_model_name=MODEL, progress=False, device="cpu")
            client = mlflow.MlflowClient(url)
            plan = Plan.parse(TINY_PLAN).to_json(indent=None)
            # as `search` attaches it: with the budget its trials ran under (below the service's, so
            # jobs run it at its own: request.at_plan_budget)
            client.set_registered_model_tag(MODEL, Tag.SEARCHED_PLAN, json.dumps(dict(json.loads(plan), budget=PLAN_BUDGET)))
            mlflow.register_model(f"models:/{run_model_id(trained.run_id)}", QUIET)
            client.set_registered_model_tag(QUIET, Tag.SEARCHED_PLAN, plan)
            yield Env(workdir, url, hook, trained.run_id, trained.version)
            while mlflow.active_run():
                mlflow.end_run()
    finally:
        hook.stop()
        local.stop(server)
        mlflow.set_tracking_uri(None)


def wait_answer(env: Env, version, *, name=MODEL, timeout=JOB_TIMEOUT, want=ledger.TERMINAL) -> ledger.VersionState:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = ledger.read_state(env.client, name, version)
        blank_answered = not state.request and state.handled_request == ""  # a whitespace-only tag, rejected
        if (state.is_current or blank_answered) and state.status in want:
            return state
        time.sleep(0.3)
    raise AssertionError(f"{name}/{version} not answered in {timeout} s: {state.tags}\n--- hook log ---\n{env.hook.log()}")


def results_of(env: Env, version, name=MODEL) -> list:
    return env.client.search_model_versions(f"name = '{name}' and tags.`{ledger.SOURCE_VERSION_TAG}` = '{version}'")


def log_ids_artifact(env: Env, ids, path="request/ids.json") -> str:
    """A forget-set artifact logged the way another tool would (not by `attach`); returns its URI."""
    client = env.client
    exp = client.get_experiment_by_name("external-tool") or client.get_experiment(client.create_experiment("external-tool"))
    run = client.create_run(exp.experiment_id)
    if path.endswith(".json"):
        client.log_dict(run.info.run_id, {"ids": list(ids)}, path)
    else:
        client.log_text(run.info.run_id, "\n".join(str(i) for i in ids), path)
    client.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}/{path}"


# --------------------------------------------------------------------------------------------------


def test_attach_yields_one_audited_version_and_duplicates_change_nothing(env):
    import mlflow

    from mlflow_unlearn.hook.attach import attach

    v = env.new_version()
    res = attach(MODEL, v, "random:24", tracking_uri=env.url)
    assert res.uri.endswith(f"forget-{res.digest}.json") and not res.already_attached
    request_run = env.client.get_run(res.run_id)
    assert request_run.data.tags["mlflow_unlearn.role"] == "request"
    assert request_run.data.tags["mlflow_unlearn.forget_digest"] == res.digest
    assert [d.dataset.digest for d in request_run.inputs.dataset_inputs] == [res.digest[:36]]

    state = wait_answer(env, v)
    assert state.status == "done", state.tags
    new = state.tags[ledger.RESULT_VERSION_TAG]
    mv = env.client.get_model_version(MODEL, new)
    tags = mv.tags
    assert tags["mlflow_unlearn.source_version"] == v and tags["mlflow_unlearn.forget_digest"] == res.digest
    assert tags["mlflow_unlearn.n_forget"] == "24" and tags["mlflow_unlearn.request"] == res.uri
    assert json.loads(tags["mlflow_unlearn.applied_plan"])["steps"][2]["algorithm"] == "neggrad_plus"
    assert tags["mlflow_unlearn.plan_source"].startswith("registered")
    assert tags["mlflow_unlearn.plan_source"].endswith(f"at its searched budget {PLAN_BUDGET:g} (request budget {TEST_BUDGET})")
    metrics = json.loads(tags["mlflow_unlearn.metrics"])
    for key in ("forget/acc", "retain/acc", "test/acc", "mia/efficacy", "mia/auc"):
        assert 0.0 <= metrics["after"][key] <= 1.0 and key in metrics["before"]
    assert "mlflow_unlearn.metric.forget/acc" in tags
    for s in ("queued_at", "started_at", "finished_at"):
        assert float(state.tags[f"mlflow_unlearn.{s}"]) > 0

    report = json.loads(Path(mlflow.artifacts.download_artifacts(tags["mlflow_unlearn.evidence"], tracking_uri=env.url)).read_text())
    assert report["result"]["version"] == new and report["forget"]["count"] == 24
    assert sum(report["forget"]["tier_histogram"].values()) == 24
    assert report["metrics"]["against_reference"] is None  # no cached retrain: no ToW
    assert report["time"]["original_train_s"] > 0 and "mlflow" in report["software"]
    # compute in trainings: the result's own run, under the plan's budget (within the service's), and the
    # job's attempts together
    cost = report["cost"]
    assert 0 < cost["cost/train_fraction"] <= cost["cost/budget"] == PLAN_BUDGET < float(TEST_BUDGET)
    assert tags["mlflow_unlearn.budget"] == f"{PLAN_BUDGET:g}"
    assert cost["attempts_train_fraction"] == pytest.approx(cost["cost/train_fraction"])  # one attempt
    assert float(tags["mlflow_unlearn.cost_train_fraction"]) == pytest.approx(cost["cost/train_fraction"], abs=1e-4)
    run_id = tags["mlflow_unlearn.run_id"]
    md = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/evidence/report.md", tracking_uri=env.url)).read_text()
    assert res.digest in md and "mia/efficacy" in md
    html = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/evidence/report.html", tracking_uri=env.url)).read_text()
    assert "<table>" in html
    job_run = env.client.get_run(run_id)
    assert job_run.data.tags["mlflow_unlearn.role"] == "rum" and "change/forget/acc" in job_run.data.metrics
    # linked to its request run, in the same experiment; the chart in the evidence; described and aliased
    assert job_run.data.tags["mlflow_unlearn.request_run"] == res.run_id
    assert job_run.info.experiment_id == request_run.info.experiment_id
    assert "<img alt='forget accuracy per tier'" in html
    assert "evidence/tiers.png" in [a.path for a in env.client.list_artifacts(run_id, "evidence")]
    assert "24 training examples unlearned" in mv.description
    assert str(env.client.get_model_version_by_alias(MODEL, "unlearned").version) == new
    # the result stands alone: raw test images in, the test accuracy the job measured out
    from mlflow_unlearn.tracking import load_source, raw_images

    data = load_source(f"models:/{MODEL}/{v}", with_confidences=False).load_data()
    labels = mlflow.pyfunc.load_model(f"models:/{MODEL}/{new}").predict(raw_images(data, data.test))
    assert float((labels == data.test.y.numpy()).mean()) == pytest.approx(metrics["after"]["test/acc"], abs=1e-6)  # tag rounds to 6 digits

    # The same ids attached again, in any order: nothing new.
    again = attach(MODEL, v, "random:24", tracking_uri=env.url)
    assert again.already_attached and again.run_id is None
    ids = json.loads(Path(mlflow.artifacts.download_artifacts(res.uri, tracking_uri=env.url)).read_text())["ids"]
    reordered = attach(MODEL, v, ids[::-1], tracking_uri=env.url)
    assert reordered.already_attached and reordered.uri == res.uri
    # The same ids attached by another tool (a new tag value pointing to another artifact): done, same result.
    other_uri = log_ids_artifact(env, ids[::-1], "request/ids.txt")
    env.client.set_model_version_tag(MODEL, v, ledger.FORGET_SET_TAG, other_uri)
    state = wait_answer(env, v)
    assert state.status == "done" and state.tags[ledger.RESULT_VERSION_TAG] == new
    # One event delivered twice (same delivery id), then once more under a new delivery id.
    body = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": MODEL, "version": v, "key": ledger.FORGET_SET_TAG, "value": other_uri}}).encode()
    headers = signed_headers(SECRET, body)
    assert env.hook.post(body, headers)[0] == 202
    status, answer = env.hook.post(body, headers)
    assert (status, answer["status"]) == (200, "duplicate")
    assert env.hook.post(body, signed_headers(SECRET, body))[0] == 202
    time.sleep(2)
    state = wait_answer(env, v)
    assert state.tags[ledger.RESULT_VERSION_TAG] == new
    assert [str(r.version) for r in results_of(env, v)] == [new]


def test_version_created_with_the_tag_is_handled(env):
    """`model_version.created` carrying a forget-set tag starts a job too."""
    import mlflow

    from mlflow_unlearn.hook.attach import log_request, validate_request

    v0 = env.new_version()
    _, manifest, fs = validate_request(env.client, MODEL, v0, [5, 6, 7, 8, 9, 10])
    _, uri = log_request(MODEL, v0, fs, manifest)
    mv = mlflow.register_model(f"models:/{run_model_id(env.run_id)}", MODEL, tags={ledger.FORGET_SET_TAG: uri})
    state = wait_answer(env, mv.version)
    assert state.status == "done", state.tags
    assert len(results_of(env, mv.version)) == 1


def test_unsigned_wrongly_signed_or_stale_calls_get_401_and_nothing_runs(env):
    # A second service that watches QUIET, runs no workers and never scans: only a valid call can queue.
    quiet = Hook(env.workdir, env.url, models=[QUIET], workers=0, reconcile_s=0, name="quiet").start()
    try:
        v = env.new_version(QUIET)
        uri = log_ids_artifact(env, [1, 2, 3, 4])
        env.client.set_model_version_tag(QUIET, v, ledger.FORGET_SET_TAG, uri)
        body = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00+00:00",
                           "data": {"name": QUIET, "version": v, "key": ledger.FORGET_SET_TAG, "value": uri}}).encode()
        good = signed_headers(SECRET, body)
        unsigned = {k: val for k, val in good.items() if k != "X-MLflow-Signature"}
        calls = {"unsigned": (body, unsigned), "wrong secret": (body, signed_headers("not-the-secret", body)),
                 "stale": (body, signed_headers(SECRET, body, timestamp=int(time.time()) - 3600)),
                 "tampered": (body.replace(b'"value"', b'"valuE"'), good)}
        for what, (b, h) in calls.items():
            status, answer = quiet.post(b, h)
            assert status == 401, (what, status, answer)
        time.sleep(1.0)
        assert quiet.health()["pending"] == 0
        assert ledger.read_state(env.client, QUIET, v).status is None  # nothing was queued
        # The same call correctly signed is accepted and queued (so the 401s were the signature's doing).
        assert quiet.post(body, good)[0] == 202
        assert quiet.health()["pending"] == 1  # queued before the answer
        deadline = time.time() + 30  # the `queued` status tag is written after the answer
        while ledger.read_state(env.client, QUIET, v).status != "queued" and time.time() < deadline:
            time.sleep(0.2)
        assert ledger.read_state(env.client, QUIET, v).status == "queued"
    finally:
        quiet.stop()


def test_bad_forget_sets_are_rejected_with_the_reason_and_no_new_version(env):
    import mlflow

    client = env.client
    n_before = len(client.search_model_versions(f"name = '{MODEL}'"))
    cases = {
        "unknown ids": (log_ids_artifact(env, [1, 2, 99999]), "out of range"),
        "empty": (log_ids_artifact(env, []), "empty"),
        "unreadable URI": ("runs:/0123456789abcdef0123456789abcdef/forget_set/nothing.json", "cannot read"),
        # a tag is untrusted: paths and files on the worker's host are never opened (issue 11, part 4)
        "/etc/passwd": ("/etc/passwd", "MLflow artifact URI"),
        "/proc/self/environ": ("/proc/self/environ", "MLflow artifact URI"),
        "relative path": ("ids.txt", "MLflow artifact URI"),
        "directory": ("/usr", "MLflow artifact URI"),
        "file URI": ("file:///etc/passwd", "MLflow artifact URI"),
        "whitespace": ("   ", "empty"),
    }
    versions = {}
    for what, (uri, _) in cases.items():
        versions[what] = env.new_version()
        client.set_model_version_tag(MODEL, versions[what], ledger.FORGET_SET_TAG, uri)
    # A version without a training manifest: a model logged by plain mlflow.pytorch, no mlflow-unlearn train.
    import torch

    mlflow.set_experiment("plain")
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", pip_requirements=["torch"], serialization_format="pickle")
    versions["no manifest"] = str(mlflow.register_model(f"models:/{run_model_id(run.info.run_id)}", MODEL).version)
    cases["no manifest"] = (log_ids_artifact(env, [1, 2, 3]), "training manifest")
    client.set_model_version_tag(MODEL, versions["no manifest"], ledger.FORGET_SET_TAG, cases["no manifest"][0])
    # Content that must never come back in an error tag: keys of a JSON object, words of a text file,
    # strings of a .npy, the URI itself (issue 27: errors quote nothing they read)
    exp = client.get_experiment_by_name("external-tool")
    leaky = client.create_run(exp.experiment_id)
    client.log_dict(leaky.info.run_id, {"dataset_spec": "x", "LEAKY_KEY_7": "hunter2"}, "request/obj.json")
    client.log_text(leaky.info.run_id, "1 2 LEAKY_WORD_7\n", "request/ids.txt")
    npy = env.workdir / "strings.npy"
    np.save(npy, np.array(["0123", "LEAKY_NPY_7"]))
    client.log_artifact(leaky.info.run_id, str(npy), "request")
    client.set_terminated(leaky.info.run_id)
    for what, path, needle in (("json keys", "request/obj.json", "without an 'ids' list"),
                               ("text words", "request/ids.txt", "not an integer"),
                               ("npy strings", "request/strings.npy", "1-d array of whole numbers")):
        versions[what] = env.new_version()
        cases[what] = (f"runs:/{leaky.info.run_id}/{path}", needle)
        client.set_model_version_tag(MODEL, versions[what], ledger.FORGET_SET_TAG, cases[what][0])
    n_sources = n_before + len(versions)

    for what, v in versions.items():
        state = wait_answer(env, v)
        assert state.status == "rejected", (what, state.tags)
        assert cases[what][1] in state.tags[ledger.ERROR_TAG], (what, state.tags[ledger.ERROR_TAG])
        error = state.tags[ledger.ERROR_TAG]
        assert "root:" not in error and "SECRET" not in error and "LEAKY" not in error and "hunter2" not in error
        assert "dataset_spec" not in error and "/tmp" not in error and str(env.workdir) not in error, (what, error)
        assert not cases[what][0].strip() or cases[what][0] not in error, (what, error)  # the tag is not echoed
        assert not any(n in error for n in ("obj.json", "strings.npy", "request/")), (what, error)  # nor its file name
        assert ledger.RESULT_VERSION_TAG not in state.tags
        assert results_of(env, v) == []
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == n_sources

    # The CLI validates before writing anything: unknown ids exit 2 with the reason, no tag is set.
    v = env.new_version()
    bad = env.workdir / "bad-ids.txt"
    bad.write_text("1 2 99999\n")
    out = subprocess.run([sys.executable, "-m", "mlflow_unlearn.cli", "attach", "--model", MODEL, "--version", v,
                          "--forget", str(bad), "--tracking-uri", env.url], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_TRACKING_URI": env.url})
    assert out.returncode == 2, out.stderr
    assert "out of range" in out.stderr
    assert ledger.FORGET_SET_TAG not in client.get_model_version(MODEL, v).tags


def test_hook_killed_mid_job_completes_exactly_once_after_restart(env):
    from mlflow_unlearn.hook.attach import attach

    client = env.client
    v = env.new_version()
    attach(MODEL, v, "mix:30", tracking_uri=env.url)
    deadline = time.time() + JOB_TIMEOUT
    seen = None
    while time.time() < deadline:
        seen = ledger.read_state(client, MODEL, v).status
        if seen in ("running",) + ledger.TERMINAL:
            break
        time.sleep(0.05)
    assert seen == "running", f"status {seen!r} before the kill\n{env.hook.log()}"
    env.hook.kill()
    try:
        # While the service is down: the job stays `running`, and a new tag gets no delivery.
        assert ledger.read_state(client, MODEL, v).status == "running"
        v2 = env.new_version()
        attach(MODEL, v2, "random:12", tracking_uri=env.url)
        time.sleep(1)
    finally:
        env.hook.start()  # same port, same queue: the reconciler finds both
    for version in (v, v2):
        state = wait_answer(env, version)
        assert state.status == "done", state.tags
        results = results_of(env, version)
        assert [str(r.version) for r in results] == [state.tags[ledger.RESULT_VERSION_TAG]]
    # the killed attempt's run is not left RUNNING forever
    runs = client.search_runs([client.get_experiment_by_name("mlflow-unlearn").experiment_id],
                              filter_string=f"tags.`mlflow_unlearn.source_model` = '{MODEL}/{v}' and tags.`mlflow_unlearn.role` = 'rum'")
    assert "RUNNING" not in {r.info.status for r in runs}


def test_redis_queue_runs_a_job(env):
    """The Redis path end to end: submit into a RedisExpireHuey queue and let huey execute it."""
    from mlflow_unlearn.hook import job_queue, jobs
    from mlflow_unlearn.hook.attach import attach
    from mlflow_unlearn.hook.config import HookConfig

    url = redis_or_skip()
    cfg = HookConfig(tracking_uri=env.url, queue=url, models=[QUIET], reconcile_interval_s=0, device="cpu")
    h = jobs.configure(cfg)
    try:
        h.flush()
        v = env.new_version(QUIET)
        res = attach(QUIET, v, "random:9", tracking_uri=env.url)  # QUIET: the webhook service ignores it
        assert jobs.submit(QUIET, v) == "queued"
        assert jobs.submit(QUIET, v) == "already queued"
        assert job_queue.pending() == 1
        task = h.dequeue()
        h.execute(task)
        state = ledger.read_state(env.client, QUIET, v)
        assert state.status == "done", state.tags
        assert state.tags[ledger.JOB_DIGEST_TAG] == res.digest
        assert len(results_of(env, v, QUIET)) == 1
        assert not h.is_locked(ledger.job_key(QUIET, v, res.digest))
    finally:
        h.storage.flush_all()


def test_reconcile_cli_and_a_standalone_process_worker(env, capsys):
    """`hook reconcile` queues a request no event announced; `hook worker` (another process, process
    workers) picks it up from the shared queue: any worker can run any job."""
    from mlflow_unlearn import cli
    from mlflow_unlearn.hook.attach import attach

    queue = env.workdir / "standalone-queue.db"
    v = env.new_version(QUIET)
    attach(QUIET, v, "random:8", tracking_uri=env.url)  # QUIET: the webhook service ignores it
    assert cli.main(["hook", "reconcile", "--queue", str(queue), "--models", QUIET, "--tracking-uri", env.url]) == 0
    out = capsys.readouterr().out
    assert f"{QUIET}/{v}: queued" in out  # (and any other unanswered QUIET request, e.g. the 401 test's)
    assert "job(s) pending in the queue" in out
    log = open(env.workdir / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "mlflow_unlearn.cli", "hook", "worker", "--queue", str(queue),
                               "--models", QUIET, "--workers", "1", "--worker-type", "process", "--tracking-uri", env.url],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": env.url})
    try:
        state = wait_answer(env, v, name=QUIET)
        assert state.status == "done", state.tags
        assert len(results_of(env, v, QUIET)) == 1
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


def _forget_accuracy(env, version: str, ids) -> float:
    from mlflow_unlearn import tracking
    from mlflow_unlearn.training import accuracy

    src = tracking.load_source(f"models:/{MODEL}/{version}", with_confidences=False)
    data = src.load_data("cpu")
    return accuracy(src.model, data, data.train.subset(__import__("torch").as_tensor(ids)))


def test_requests_accumulate_on_the_served_version(env):
    """v1 -> v2 (request A) -> v3 (request B on v2, four ids of A again) through the webhook: v3's
    lineage and evidence list both requests, B's repeats are reported, and a request of only
    forgotten ids is answered with the version that already lacks them."""
    import mlflow

    from mlflow_unlearn import tracking
    from mlflow_unlearn.hook.attach import attach
    from mlflow_unlearn.tags import Tag

    client = env.client
    v1 = env.new_version()
    a = list(range(100, 112))
    b = a[:4] + list(range(200, 208))
    attach(MODEL, v1, a, tracking_uri=env.url)
    v2 = wait_answer(env, v1).tags[ledger.RESULT_VERSION_TAG]
    attach(MODEL, v2, b, tracking_uri=env.url)  # an unlearned version takes requests like an original
    state = wait_answer(env, v2)
    assert state.status == ledger.DONE, state.tags
    v3 = state.tags[ledger.RESULT_VERSION_TAG]
    mv3 = client.get_model_version(MODEL, v3)
    lineage, _ = tracking.read_lineage(client, mv3)
    assert lineage.forgotten.tolist() == sorted(set(a) | set(b))
    assert [(r["source"], r["n_forget"], r["n_new"]) for r in lineage.requests] == [(f"{MODEL}/{v1}", 12, 12),
                                                                                     (f"{MODEL}/{v2}", 12, 8)]
    report = json.loads(mlflow.artifacts.load_text(mv3.tags[ledger.EVIDENCE_TAG]))
    assert report["forget"]["already_forgotten"] == 4 and report["forget"]["already_forgotten_ids"] == a[:4]
    assert [r["source"] for r in report["lineage"]["requests"]] == [f"{MODEL}/{v1}", f"{MODEL}/{v2}"]
    assert mv3.tags[Tag.SOURCE_VERSION] == v2
    accuracy = {(v, name): _forget_accuracy(env, v, ids) for v in (v1, v3) for name, ids in (("A", a), ("B", b))}
    print("forget accuracy", accuracy)
    assert accuracy[(v3, "A")] <= accuracy[(v1, "A")] and accuracy[(v3, "B")] <= accuracy[(v1, "B")], accuracy
    # every id already forgotten: answered with v3 itself, no new version
    attach(MODEL, v3, a[:6], tracking_uri=env.url)
    state = wait_answer(env, v3)
    assert state.status == ledger.DONE and state.tags[ledger.RESULT_VERSION_TAG] == v3, state.tags
    assert "already forgotten" in state.tags[ledger.NOTE_TAG] and results_of(env, v3) == []


def _in_process_jobs(env, tmp_path, model: str, **config):
    """This process as a hook worker for `model` only (a SQLite queue of its own; jobs run by run_job)."""
    from mlflow_unlearn.hook import jobs
    from mlflow_unlearn.hook.config import HookConfig

    jobs.configure(HookConfig(tracking_uri=env.url, queue=str(tmp_path / f"jobs-{len(config)}.db"), models=[model],
                              reconcile_interval_s=0, device="cpu", **config))
    return jobs


def test_a_request_on_the_serving_alias_follows_it_and_promotes_the_result(env, tmp_path):
    """attach --alias champion: the job applies the request to the version the alias names when it
    runs (here: moved after attaching), registers the result from that version, moves the alias to
    it and tags the version it left; a re-run changes nothing; --no-promote leaves the alias."""
    import mlflow

    from mlflow_unlearn import tracking
    from mlflow_unlearn.hook.attach import attach
    from mlflow_unlearn.tags import Tag

    served = "hooktiny-served"
    client = env.client
    va = str(mlflow.register_model(f"models:/{run_model_id(env.run_id)}", served).version)
    vb = str(mlflow.register_model(f"models:/{run_model_id(env.run_id)}", served).version)
    client.set_registered_model_alias(served, "champion", va)
    jobs = _in_process_jobs(env, tmp_path, served, gate={"retain_drop": 0.3, "heldout_drop": 0.3, "mia_tolerance": 0.3})
    res = attach(served, None, list(range(30, 40)), alias="champion", tracking_uri=env.url)
    assert res.version == va  # tagged where the alias pointed at attach time
    client.set_registered_model_alias(served, "champion", vb)  # promoted meanwhile, before the job runs
    assert jobs.run_job(served, va).startswith("done -> version ")
    result = ledger.read_state(client, served, va).tags[ledger.RESULT_VERSION_TAG]
    mv = client.get_model_version(served, result)
    assert mv.tags[Tag.SOURCE_VERSION] == vb and mv.tags[Tag.REQUEST_VERSION] == va  # applied to what was served
    assert tracking.read_lineage(client, mv)[0].requests[-1]["source"] == f"{served}/{vb}"
    assert str(client.get_model_version_by_alias(served, "champion").version) == result
    assert f"forgotten in version {result}" in client.get_model_version(served, vb).tags[Tag.STILL_CONTAINS]
    # a re-run (say after a crash) finds the result through the request's version and moves nothing
    ledger.set_tags(client, served, va, {ledger.STATUS_TAG: ledger.RUNNING})
    assert jobs.run_job(served, va) == f"done -> version {result}"
    assert len(client.search_model_versions(f"name = '{served}'")) == 3
    # the next request on the alias accumulates on the result; --no-promote leaves the alias
    from mlflow_unlearn import cli

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(str(i) for i in range(50, 56)))
    assert cli.main(["attach", "--model", served, "--alias", "champion", "--forget", str(ids_file), "--no-promote",
                     "--tracking-uri", env.url]) == 0  # the README's command
    assert ledger.read_state(client, served, result).tags[Tag.FOLLOW_ALIAS] == "champion"
    assert jobs.run_job(served, result).startswith("done -> version ")
    second = ledger.read_state(client, served, result).tags[ledger.RESULT_VERSION_TAG]
    assert tracking.read_lineage(client, client.get_model_version(served, second))[0].forgotten.tolist() == [
        *range(30, 40), *range(50, 56)]
    assert str(client.get_model_version_by_alias(served, "champion").version) == result
    # promoted again with 5 ids the served version already lacks and 3 new: the version the alias
    # leaves still contains 3 examples, not 8
    attach(served, None, [*range(30, 35), 60, 61, 62], alias="champion", tracking_uri=env.url)
    assert jobs.run_job(served, result).startswith("done -> version ")
    third = str(client.get_model_version_by_alias(served, "champion").version)
    assert third not in (result, second)
    assert client.get_model_version(served, result).tags[Tag.STILL_CONTAINS].startswith(f"3 examples forgotten in version {third}")
    # a rollback: champion moved back to vb, which still holds what `result` forgot; a request through
    # the alias is refused naming both versions, and nothing is registered
    client.set_registered_model_alias(served, "champion", vb)
    n_versions = len(client.search_model_versions(f"name = '{served}'"))
    attach(served, None, [70, 71], alias="champion", tracking_uri=env.url)
    assert jobs.run_job(served, vb).startswith("rejected")
    error = ledger.read_state(client, served, vb).tags[ledger.ERROR_TAG]
    assert f"to version {vb}" in error and f"to version {third}" in error and "moved back" in error, error
    assert len(client.search_model_versions(f"name = '{served}'")) == n_versions
    with pytest.raises(ValueError, match=r"no alias 'prod'"):
        attach(served, None, [1], alias="prod", tracking_uri=env.url)
    with pytest.raises(ValueError, match="not both"):
        attach(served, va, [1], alias="champion", tracking_uri=env.url)


def test_requests_waiting_on_a_version_are_merged_into_one_job(env, tmp_path):
    """Requests that arrive for a version while its job waits are merged (issue 11, part 2): `attach`
    carries the waiting one along, the receiver carries one replaced by hand; one job unlearns the
    union, registers one version and answers every request with it. A forged entry in the merged
    list is refused unread and does not sink the others."""
    import mlflow

    from mlflow_unlearn import tracking
    from mlflow_unlearn.tags import Tag
    from mlflow_unlearn.hook.attach import attach, wait_for

    merged_model = "hooktiny-merge"
    client = env.client
    v = env.new_version(merged_model)
    jobs = _in_process_jobs(env, tmp_path, merged_model, gate={"retain_drop": 0.3, "heldout_drop": 0.3, "mia_tolerance": 0.3})
    a = attach(merged_model, v, list(range(60, 66)), tracking_uri=env.url)
    assert jobs.submit(merged_model, v, client=client) == "queued"  # what the receiver does on a's webhook
    b = attach(merged_model, v, list(range(70, 76)), tracking_uri=env.url)  # a still waits: merged, not replaced
    assert b.merged_with == (a.uri,)
    assert jobs.submit(merged_model, v, client=client) == "queued, with 1 earlier request(s) merged"
    c_uri = log_ids_artifact(env, [80, 81, 82, 83, 60])  # set by hand (the UI): the receiver carries b along
    client.set_model_version_tag(merged_model, v, ledger.FORGET_SET_TAG, c_uri)
    assert jobs.submit(merged_model, v, client=client) == "queued, with 2 earlier request(s) merged"
    state = ledger.read_state(client, merged_model, v)
    assert ledger.merged_requests(state.tags) == [a.uri, b.uri]
    # a forged entry (a path on the worker) rides along in the list: refused unread, the others go on
    ledger.set_tags(client, merged_model, v, {ledger.MERGED_TAG: json.dumps([a.uri, b.uri, "/etc/passwd"])})

    outcome = jobs.run_job(merged_model, v)
    assert outcome.startswith("done -> version ") and "answering 2 merged request(s)" in outcome, outcome
    state = ledger.read_state(client, merged_model, v)
    result = state.tags[ledger.RESULT_VERSION_TAG]
    assert state.status == ledger.DONE and ledger.MERGED_TAG not in state.tags
    union = sorted({*range(60, 66), *range(70, 76), 80, 81, 82, 83})
    mv = client.get_model_version(merged_model, result)
    assert tracking.read_lineage(client, mv)[0].forgotten.tolist() == union and mv.tags[Tag.N_FORGET] == "16"
    assert json.loads(mv.tags[ledger.MERGED_TAG]) == [c_uri, a.uri, b.uri]
    report = json.loads(mlflow.artifacts.load_text(mv.tags[ledger.EVIDENCE_TAG]))
    assert report["forget"]["requests"] == [c_uri, a.uri, b.uri]
    assert [r["uri"] for r in report["forget"]["refused_requests"]] == ["/etc/passwd"]
    assert "MLflow artifact URI" in report["forget"]["refused_requests"][0]["reason"]
    for uri in (a.uri, b.uri):  # every request answered with the one version, on its own run
        answer = client.get_run(ledger.request_run_id(uri)).data.tags[ledger.ANSWER_TAG]
        assert answer == f"{merged_model}/{v}: done -> version {result}", answer
        assert wait_for(merged_model, v, request=uri, timeout_s=5, tracking_uri=env.url)["result_version"] == result
    # c was set by hand and names another tool's run: answered on the version, that run left untouched
    assert ledger.ANSWER_TAG not in client.get_run(ledger.request_run_id(c_uri)).data.tags
    assert wait_for(merged_model, v, request=c_uri, timeout_s=5, tracking_uri=env.url)["result_version"] == result
    assert jobs.run_job(merged_model, v) == "skipped: already done"
    assert len(client.search_model_versions(f"name = '{merged_model}'")) == 2  # the source and one result
    # answered: the next request starts a fresh list
    d = attach(merged_model, v, [90, 91], tracking_uri=env.url)
    assert d.merged_with == () and ledger.MERGED_TAG not in ledger.read_state(client, merged_model, v).tags


def test_a_result_that_fails_the_gate_escalates_to_an_exact_retrain(env, tmp_path):
    """A plan that wrecks the model (gradient ascent at lr 1) fails the acceptance gate; so does its
    stronger variant; the job then retrains on retain with the source's recipe and registers that,
    tagged gate=retrained, with every attempt in the evidence. With escalation off nothing is
    registered; with retrain_after_requests=1 the job retrains without trying."""
    import mlflow

    from mlflow_unlearn import tracking
    from mlflow_unlearn.hook.attach import attach
    from mlflow_unlearn.rum import Plan
    from mlflow_unlearn.tags import Tag

    gated = "hooktiny-gated"
    client = env.client
    v = str(mlflow.register_model(f"models:/{run_model_id(env.run_id)}", gated).version)
    client.set_registered_model_tag(gated, Tag.SEARCHED_PLAN,
                                    Plan.parse("all=neggrad_plus(lr=1.0,alpha=0.5,epochs=2)").to_json(indent=None))
    jobs = _in_process_jobs(env, tmp_path, gated)
    attach(gated, v, list(range(40, 52)), tracking_uri=env.url)
    outcome = jobs.run_job(gated, v)
    assert outcome.startswith("done -> version "), outcome
    result = ledger.read_state(client, gated, v).tags[ledger.RESULT_VERSION_TAG]
    mv = client.get_model_version(gated, result)
    assert mv.tags[Tag.GATE] == "retrained" and mv.tags[Tag.ALGORITHM] == "retrain", mv.tags
    checks = json.loads(mv.tags[Tag.GATE_CHECKS])  # the retrain's own checks, reported, not required
    assert {"retain", "heldout", "mia"} <= set(checks) and all(len(v) == 2 for v in checks.values())
    report = json.loads(mlflow.artifacts.load_text(mv.tags[ledger.EVIDENCE_TAG]))
    attempts = report["gate"]["attempts"]
    assert [a["stage"] for a in attempts] == ["passed", "escalated", "retrained"]
    assert [a["verdict"] for a in attempts][:2] == ["failed", "failed"]
    assert attempts[2]["verdict"] in ("passed", "accepted (exact retrain)")  # an exact retrain is the answer either way
    # compute at the default budget (0.1): the first attempt within it, the stronger one within twice
    # it, the exact retrain unlimited (about one training on retain); the evidence sums them
    costs = [a["cost"]["cost/train_fraction"] for a in attempts]
    assert 0 < costs[0] <= 0.1 and 0 < costs[1] <= 0.2 and 0.8 < costs[2] <= 1.0, costs
    assert [a["cost"]["cost/budget"] for a in attempts] == [0.1, 0.2, 0.1]
    assert report["cost"]["attempts_train_fraction"] == pytest.approx(sum(costs))
    failed = {c["name"] for c in attempts[0]["gate"]["checks"] if c["passed"] is False}
    assert failed & {"retain", "finite"}, attempts[0]["gate"]  # wrecked, or diverged to NaN weights
    assert client.get_run(attempts[0]["run_id"]).data.tags[Tag.GATE] == "failed"
    # never searched, so the never-seen estimate comes from the validation split, and the per-tier
    # forget checks are checked (not skipped) on every attempt
    assert "validation examples of the same C-proxy rank" in report["gate"]["never_seen"], report["gate"]
    tier_checks = [c for a in attempts for c in a["gate"]["checks"] if c["name"].startswith("forget/")]
    assert tier_checks and all(c["passed"] is not None for c in tier_checks), tier_checks
    lineage, _ = tracking.read_lineage(client, mv)
    assert lineage.requests[-1]["how"] == "retrain" and lineage.forgotten.tolist() == list(range(40, 52))
    assert report["lineage"]["requests"][-1]["how"] == "retrain"  # the evidence says what produced it
    superseded = [client.get_run(a["run_id"]).data.tags.get(Tag.SUPERSEDED_BY) for a in attempts]
    assert superseded[0].startswith("a stronger attempt") and superseded[1].startswith("an exact retrain")
    assert superseded[2] is None

    v2 = str(mlflow.register_model(f"models:/{run_model_id(env.run_id)}", gated).version)
    jobs = _in_process_jobs(env, tmp_path, gated, escalation=())
    attach(gated, v2, list(range(60, 70)), tracking_uri=env.url)
    outcome = jobs.run_job(gated, v2)
    state = ledger.read_state(client, gated, v2)
    assert state.status == ledger.FAILED and "acceptance gate" in state.tags[ledger.ERROR_TAG], outcome
    assert results_of(env, v2, gated) == []  # nothing registered
    failed_run = client.get_run(state.tags[ledger.JOB_RUN_TAG])
    assert failed_run.data.tags[Tag.GATE] == "failed" and Tag.SUPERSEDED_BY not in failed_run.data.tags  # nothing ran after it

    v3 = str(mlflow.register_model(f"models:/{run_model_id(env.run_id)}", gated).version)
    jobs = _in_process_jobs(env, tmp_path, gated, retrain_after_requests=1)
    attach(gated, v3, list(range(80, 90)), tracking_uri=env.url)
    assert jobs.run_job(gated, v3).startswith("done -> version ")
    mv3 = client.get_model_version(gated, ledger.read_state(client, gated, v3).tags[ledger.RESULT_VERSION_TAG])
    assert mv3.tags[Tag.GATE] == "retrained" and mv3.tags[Tag.PLAN_SOURCE].startswith("retrain (retrain_after_requests 1")
    report = json.loads(mlflow.artifacts.load_text(mv3.tags[ledger.EVIDENCE_TAG]))
    assert [a["stage"] for a in report["gate"]["attempts"]] == ["retrained"]  # no approximate attempt


def test_a_rerun_repairs_what_a_crash_after_registering_left_unwritten(env, tmp_path):
    """Killed between registering the result and finishing: the version exists (created with its tags
    in one call), but the run tag, the evidence's result.version, the description and the alias are
    missing and the source still says running. The re-run finds the version and writes the rest."""
    import mlflow

    from mlflow_unlearn.hook.attach import attach
    from mlflow_unlearn.tags import Tag

    jobs = _in_process_jobs(env, tmp_path, QUIET)
    client = env.client
    v = env.new_version(QUIET)
    attach(QUIET, v, "random:9", tracking_uri=env.url)
    assert jobs.run_job(QUIET, v).startswith("done -> version ")
    result = ledger.read_state(client, QUIET, v).tags[ledger.RESULT_VERSION_TAG]
    run_id = client.get_model_version(QUIET, result).tags[Tag.RUN_ID]
    # the state a kill right after tracking.register_version leaves
    client.delete_tag(run_id, Tag.REGISTERED_VERSION)
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/evidence/report.json"))
    report["result"]["version"] = None
    client.log_dict(run_id, report, "evidence/report.json")
    client.update_model_version(QUIET, result, description="")
    client.delete_registered_model_alias(QUIET, "unlearned")
    ledger.set_tags(client, QUIET, v, {ledger.STATUS_TAG: ledger.RUNNING, ledger.RESULT_VERSION_TAG: None,
                                       ledger.FINISHED_AT_TAG: None})

    assert jobs.run_job(QUIET, v) == f"done -> version {result}"
    assert [str(r.version) for r in results_of(env, v, QUIET)] == [result]  # nothing registered twice
    assert client.get_run(run_id).data.tags[Tag.REGISTERED_VERSION] == f"{QUIET}/{result}"
    repaired = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/evidence/report.json"))
    assert repaired["result"]["version"] == result and repaired["forget"] == report["forget"]
    mv = client.get_model_version(QUIET, result)
    assert "9 training examples unlearned" in mv.description and f"runs:/{run_id}/evidence" in mv.description
    assert str(client.get_model_version_by_alias(QUIET, "unlearned").version) == result
    state = ledger.read_state(client, QUIET, v)
    assert state.status == ledger.DONE and state.tags[ledger.RESULT_VERSION_TAG] == result


def test_the_crafted_pickle_attack_runs_nothing(env, tmp_path):
    """Issue 11's attack replayed: a version whose model is a pickle that creates a file when loaded
    (as `mlflow.pytorch` models are), and one whose weights.pt is such a pickle. Both are rejected with
    the reason; no file appears, no version is registered."""
    import pickle

    import mlflow
    import torch

    from mlflow_unlearn.hook.attach import attach
    from mlflow_unlearn.tracking import CLASSIFIER_ARTIFACT, version_model_id

    crafted = "hooktiny-crafted"
    jobs = _in_process_jobs(env, tmp_path, crafted)
    client = env.client
    marker = tmp_path / "pwned"

    class Payload:  # unpickling calls open(marker, "w"): the file appears if anything unpickles it
        def __reduce__(self):
            return (open, (str(marker), "w"))

    # the trained run's manifest, spec and confidences, so that only the model is forged
    src = Path(mlflow.artifacts.download_artifacts(f"runs:/{env.run_id}/", dst_path=str(tmp_path / "src")))
    exp = client.get_experiment_by_name("external-tool") or client.get_experiment(client.create_experiment("external-tool"))
    run = client.create_run(exp.experiment_id)
    for item in ("manifest", "confidences", "model_spec.json"):
        if (src / item).is_dir():
            client.log_artifacts(run.info.run_id, str(src / item), item)
        else:
            client.log_artifact(run.info.run_id, str(src / item))
    client.set_terminated(run.info.run_id)
    location = mlflow.get_logged_model(version_model_id(client.get_model_version(MODEL, env.version))).artifact_location
    real_spec = Path(mlflow.artifacts.download_artifacts(f"{location.rstrip('/')}/{CLASSIFIER_ARTIFACT}/classifier.json",
                                                        dst_path=str(tmp_path / "spec")))

    def forged_version(files: dict[str, object]) -> str:
        folder = tmp_path / f"forged-{len(list(tmp_path.glob('forged-*')))}"
        for rel, content in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copy(content, folder / rel)
            else:
                torch.save(content, folder / rel, pickle_module=pickle)
        logged = client.create_logged_model(exp.experiment_id, name="forged", source_run_id=run.info.run_id)
        client.log_model_artifacts(logged.model_id, str(folder))
        client.finalize_logged_model(logged.model_id, "READY")
        mv = client.create_model_version(crafted, f"models:/{logged.model_id}", run_id=run.info.run_id,
                                         model_id=logged.model_id)
        return str(mv.version)

    client.create_registered_model(crafted)
    cases = {  # what an `mlflow.pytorch` pickle model holds; our own layout with pickled weights
        forged_version({"data/model.pth": {"model": Payload()}}): "has no artifacts/classifier/",
        forged_version({f"{CLASSIFIER_ARTIFACT}/weights.pt": {"x": Payload()},
                        f"{CLASSIFIER_ARTIFACT}/classifier.json": real_spec}): "(it calls ",
    }
    for v, reason in cases.items():
        attach(crafted, v, "random:9", tracking_uri=env.url)
        outcome = jobs.run_job(crafted, v)
        state = ledger.read_state(client, crafted, v)
        assert state.status == ledger.REJECTED, (outcome, state.tags)
        assert reason in state.tags[ledger.ERROR_TAG], state.tags[ledger.ERROR_TAG]
        assert not marker.exists(), "a registry version ran code in the worker"
        assert results_of(env, v, crafted) == []


@pytest.mark.slow
def test_burst_of_20_attach_requests_gives_20_result_versions(env):
    from mlflow_unlearn.hook.attach import attach

    versions = [env.new_version() for _ in range(20)]
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda v: attach(MODEL, v, "random:10", seed=int(v), tracking_uri=env.url), versions))
    results = {}
    for v in versions:
        state = wait_answer(env, v, timeout=900)
        assert state.status == "done", state.tags
        found = results_of(env, v)
        assert len(found) == 1
        results[v] = str(found[0].version)
    assert len(set(results.values())) == 20


ATTACH_SCRIPT = """
import json, sys
from mlflow_unlearn.hook.attach import attach
model, version, url, ids = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
res = attach(model, version, ids, tracking_uri=url)
print(json.dumps({"run_id": res.run_id, "uri": res.uri, "already": res.already_attached}))
"""


@pytest.mark.slow  # 12 processes attach to one version at once, then the service drains them
def test_concurrent_attaches_from_separate_processes_are_all_answered(env):
    """Twelve `attach` calls for distinct ids on one version, started together in separate processes
    against the real server: each returns its own request, every request is answered `done` with a
    version that lacks its ids, and the version the `unlearned` alias serves at the end lacks the
    union (a request is its own run; nothing shared is read and rewritten)."""
    import mlflow

    from mlflow_unlearn import tracking

    v = env.new_version()
    sets = [[200 + 3 * i, 201 + 3 * i, 202 + 3 * i] for i in range(12)]
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", ATTACH_SCRIPT, MODEL, v, env.url, json.dumps(ids)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(Path(__file__).parents[1]))
             for ids in sets]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for (_, err), p in zip(outs, procs) if p.returncode]
    requests = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(r["run_id"] and not r["already"] for r in requests) and len({r["run_id"] for r in requests}) == 12
    client = env.client
    answers, deadline = {}, time.time() + 3 * JOB_TIMEOUT
    while len(answers) < 12 and time.time() < deadline:
        for r in requests:
            answer = client.get_run(r["run_id"]).data.tags.get(ledger.ANSWER_TAG)
            if answer and r["run_id"] not in answers:
                answers[r["run_id"]] = answer
        time.sleep(1)
    drain_s = time.time() - t0
    assert len(answers) == 12, f"unanswered: {[r['run_id'] for r in requests if r['run_id'] not in answers]}\n{env.hook.log()}"
    for r, ids in zip(requests, sets):
        answer = answers[r["run_id"]]
        assert ": done -> version " in answer, answer
        result = client.get_model_version(MODEL, answer.split("-> version ", 1)[1].split()[0])
        assert set(ids) <= set(tracking.read_lineage(client, result)[0].forgotten.tolist()), (answer, ids)
    serving = client.get_model_version_by_alias(MODEL, "unlearned")
    lacks = set(tracking.read_lineage(client, serving)[0].forgotten.tolist())
    versions = sorted({a.split("-> version ", 1)[1].split()[0] for a in answers.values()}, key=int)
    print(f"12 concurrent attaches: 12 answered, 0 lost, {len(versions)} version(s) {versions}, drained in {drain_s:.0f} s")
    assert set().union(*map(set, sets)) <= lacks, (serving.version, versions)
    del mlflow


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _flood(url: str, total: int, chunked: bool) -> tuple[int | None, int]:
    """POST `total` bytes of junk, unsigned, as fast as the socket takes them; (HTTP status or None, bytes sent)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    head = (f"POST /webhook HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
            + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n") + "\r\n")
    sent, block = 0, b"x" * (1 << 20)
    try:
        sock.sendall(head.encode())
        while sent < total:
            sock.sendall(b"100000\r\n" + block + b"\r\n" if chunked else block)
            sent += len(block)
    except OSError:
        pass
    try:
        first = sock.recv(64).decode("latin-1")
        status = int(first.split()[1]) if first.startswith("HTTP/") else None
    except OSError:
        status = None
    sock.close()
    return status, sent


def test_three_huge_unsigned_posts_leave_the_receivers_memory_flat(env):
    """Three 400 MB unsigned posts at once (two with a Content-Length, one chunked): each gets 413
    once the limit is passed, without the receiver reading the rest; its resident memory stays flat."""
    pid = env.hook.proc.pid
    before = _rss_mb(pid)
    peak, stop = [before], []

    def sample():
        while not stop:
            peak.append(_rss_mb(pid))
            time.sleep(0.05)

    with ThreadPoolExecutor(4) as pool:
        sampler = pool.submit(sample)
        floods = [pool.submit(_flood, env.hook.url, 400 << 20, chunked) for chunked in (False, False, True)]
        results = [f.result(timeout=120) for f in floods]
        stop.append(True)
        sampler.result()
    print(f"receiver RSS {before:.0f} MB before, {max(peak):.0f} MB peak; sent {[s >> 20 for _, s in results]} MiB")
    assert all(status in (413, None) for status, _ in results) and any(status == 413 for status, _ in results)
    assert max(peak) - before < 40, (before, max(peak))
    assert env.hook.health()["status"] == "ok"

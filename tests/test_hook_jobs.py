"""mlflow_unlearn/hook/jobs.py, the parts that need no server: watched models, the receiver's status
write, merged jobs (the job end to end: test_hook_e2e.py; the queue and locks: test_hook_job_*.py)."""
from __future__ import annotations

import json

import pytest

from mlflow_unlearn.hook import ledger
from mlflow_unlearn.hook.config import HookConfig


def test_only_named_or_opted_in_models_are_watched(tracking, tmp_path):
    from mlflow import MlflowClient

    from mlflow_unlearn.hook import job_queue, jobs
    from mlflow_unlearn.tags import Tag

    client = MlflowClient()
    for name in ("named", "opted-in", "other"):
        client.create_registered_model(name)
    client.set_registered_model_tag("opted-in", Tag.HOOK_WATCH, "true")
    client.set_registered_model_tag("other", Tag.HOOK_WATCH, "no")
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["named"]))
    assert [jobs.is_watched(client, n) for n in ("named", "opted-in", "other", "absent")] == [True, True, False, False]
    out = jobs.submit("other", 1, client=client)
    assert out.startswith("ignored (model not watched") and "hook_watch=true" in out and job_queue.pending() == 0
    assert jobs.run_job("other", 1).startswith("skipped: model not watched")
    jobs.configure(HookConfig(queue=str(tmp_path / "q2.db"), tracking_uri=tracking))  # no --models: tags only
    assert [jobs.is_watched(client, n) for n in ("named", "opted-in")] == [False, True]
    jobs.configure(HookConfig(queue=str(tmp_path / "q3.db"), tracking_uri=tracking, models=["*"]))
    assert all(jobs.is_watched(client, n) for n in ("named", "other", "absent"))


def test_the_receivers_queued_status_never_clears_a_started_jobs_tags(tracking, tmp_path):
    """The receiver queues the job before answering and writes the `queued` status after: a worker may
    have started meanwhile (started_at written). That write must not erase it."""
    from mlflow import MlflowClient

    from mlflow_unlearn.hook import job_queue, jobs

    client = MlflowClient()
    client.create_registered_model("m")
    v = client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model").version
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["m"]))
    uri = "runs:/0123456789abcdef0123456789abcdef/forget_set/ids.json"
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri, ledger.STARTED_AT_TAG: "123.000"})  # the job began
    assert jobs.submit("m", v, client=client, enqueued=True) == "queued" and job_queue.pending() == 0  # not queued twice
    state = ledger.read_state(client, "m", v)
    assert state.tags[ledger.STARTED_AT_TAG] == "123.000" and state.is_current
    # the reconciler's path queues itself, so it clears the last answer before queueing
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri + "?2"})
    # (the first request was queued and never answered: the new one carries it, see ledger.carried_requests)
    assert jobs.submit("m", v, client=client) == "queued, with 1 earlier request(s) merged" and job_queue.pending() == 1
    assert ledger.merged_requests(ledger.read_state(client, "m", v).tags) == [uri]
    assert ledger.STARTED_AT_TAG not in ledger.read_state(client, "m", v).tags


def test_a_merged_job_reads_every_request_once_and_answers_each(tracking, tmp_path):
    """The job's side of merging (jobs._merge_carried, _Job.finish): the union of the request attached
    now and the carried ones, keyed by the union's digest; an unreadable carried request (a forged
    path) is refused unread without sinking the others; the request attached now being unreadable
    leaves the carried ones to be answered; each request's run gets its own answer."""
    import mlflow
    from mlflow import MlflowClient

    from mlflow_unlearn.forget_sets import ForgetSetError, forget_digest
    from mlflow_unlearn.hook import jobs

    client = MlflowClient()
    client.create_registered_model("m")
    v = client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model").version
    uris = {}
    for name, ids, owner in (("a", [1, 2, 3], "m/1"), ("b", [3, 4], "m/1"), ("c", [9], "m/1"), ("dup", [5, 5, 6], "m/1"),
                             ("other", [7], "n/1"), ("tool", [8], None), ("sibling", [6], "m/2")):
        with mlflow.start_run() as run:  # request runs as `attach` tags them; "tool": another tool's run
            if owner:
                mlflow.set_tags({"mlflow_unlearn.role": "request", "mlflow_unlearn.source_model": owner})
            mlflow.log_dict({"ids": ids}, f"forget_set/{name}.json")
        uris[name] = f"runs:/{run.info.run_id}/forget_set/{name}.json"

    def job(uri):
        ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri})
        return jobs._Job(client, "m", v, uri, 0.0)

    j = job(uris["c"])
    req = jobs._merge_carried(j, [uris["a"], "/etc/passwd", uris["b"], uris["dup"]])
    assert req.ids.tolist() == [1, 2, 3, 4, 9] and req.digest == forget_digest([1, 2, 3, 4, 9]) and req.uri == uris["c"]
    assert j.all_requests() == [uris["c"], uris["a"], uris["b"]]
    reasons = dict(j.refused)
    assert "MLflow artifact URI" in reasons["/etc/passwd"] and "repeats ids [5]" in reasons[uris["dup"]]
    ledger.set_tags(client, "m", v, {ledger.MERGED_TAG: json.dumps([uris["a"], uris["b"]])})
    assert j.finish(ledger.DONE, result="7", digest=req.digest) == "done -> version 7 (answering 2 merged request(s) too)"
    state = ledger.read_state(client, "m", v)
    assert state.status == ledger.DONE and ledger.MERGED_TAG not in state.tags and state.is_current

    def answer(uri):
        return client.get_run(ledger.request_run_id(uri)).data.tags.get(ledger.ANSWER_TAG)

    assert [answer(uris[k]) for k in "cab"] == ["m/1: done -> version 7"] * 3
    assert answer(uris["dup"]).startswith("m/1: rejected: ") and "repeats ids" in answer(uris["dup"])
    # a request of another registered model is refused unread; neither it, another tool's run nor
    # another version's request (both read and unlearned) gets this job's answer written into it
    j = job(uris["c"])
    req = jobs._merge_carried(j, [uris["other"], uris["tool"], uris["sibling"]])
    assert req.ids.tolist() == [6, 8, 9] and "another registered model" in dict(j.refused)[uris["other"]]
    j.finish(ledger.DONE, result="9", digest=req.digest)
    assert answer(uris["other"]) is None and answer(uris["tool"]) is None and answer(uris["sibling"]) is None
    assert answer(uris["c"]) == "m/1: done -> version 9"
    # the request attached now is unreadable: the carried ones are still unlearned, and the note says why
    j = job(uris["dup"])
    assert jobs._merge_carried(j, [uris["c"]]).ids.tolist() == [9] and j.all_requests() == [uris["c"]]
    assert j.finish(ledger.DONE, result="8").startswith("done -> version 8")
    assert "the forget set attached now was refused" in ledger.read_state(client, "m", v).tags[ledger.NOTE_TAG]
    # nothing readable at all: the reason of the request attached now
    with pytest.raises(ForgetSetError, match="repeats ids"):
        jobs._merge_carried(job(uris["dup"]), [])
    with pytest.raises(ForgetSetError, match="repeats ids"):
        jobs._merge_carried(job(uris["dup"]), ["/etc/passwd"])


@pytest.mark.parametrize("worker_did", ["started", "finished"])
def test_a_job_that_started_during_the_receivers_queued_write_keeps_its_status(tracking, tmp_path, monkeypatch, worker_did):
    """MLflow tags have no compare-and-set: a worker may take the job off the queue and start it
    between the receiver's read and its `queued` write. The receiver re-reads: a started_at it did
    not read puts `running` back; a finished_at queues the job once more, whose re-run answers again."""
    from mlflow import MlflowClient

    from mlflow_unlearn.hook import job_queue, jobs

    client = MlflowClient()
    client.create_registered_model("m")
    v = client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model").version
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["m"]))
    uri = "runs:/0123456789abcdef0123456789abcdef/forget_set/ids.json"
    # an earlier request's answer is still on the version: its timestamps must not look like this job's
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri, ledger.STARTED_AT_TAG: "100.000",
                                     ledger.FINISHED_AT_TAG: "101.000"})
    read_state = ledger.read_state
    calls = []

    def worker_between_read_and_write(c, name, version):
        state = read_state(c, name, version)
        if not calls:  # right after the receiver's first read, as _run_locked / finish would write them
            tags = {ledger.JOB_REQUEST_TAG: uri, ledger.STARTED_AT_TAG: "200.000", ledger.FINISHED_AT_TAG: None}
            if worker_did == "finished":
                tags.update({ledger.FINISHED_AT_TAG: "201.000"})
            ledger.set_tags(c, name, version, tags)
            ledger.set_tags(c, name, version, {ledger.STATUS_TAG: ledger.RUNNING if worker_did == "started" else ledger.DONE})
        calls.append(1)
        return state

    monkeypatch.setattr(ledger, "read_state", worker_between_read_and_write)
    assert jobs.submit("m", v, client=client, enqueued=True) == "queued"
    monkeypatch.setattr(ledger, "read_state", read_state)
    state = ledger.read_state(client, "m", v)
    if worker_did == "started":
        assert state.status == ledger.RUNNING and job_queue.pending() == 0
    else:  # the overwritten `done` comes back when the re-queued job finds its answer
        assert state.status == ledger.QUEUED and job_queue.queued_targets() == {("m", str(v))}

    # without a worker in between, the receiver's `queued` stands and nothing is queued twice
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri + "?2", ledger.STATUS_TAG: ledger.DONE})
    job_queue.current_huey().flush()
    assert jobs.submit("m", v, client=client, enqueued=True).startswith("queued")
    assert ledger.read_state(client, "m", v).status == ledger.QUEUED and job_queue.pending() == 0


@pytest.mark.parametrize("after_write", [1, 2, 3])
def test_a_rejection_written_while_the_reconciler_requeues_keeps_its_reason(tracking, tmp_path, monkeypatch, after_write):
    """The reconciler re-queues a request whose first job may be answering it right now (a rejection
    takes no job lock). Whichever of the reconciler's tag writes that answer lands after, the version
    must end `rejected` WITH its error tag: a `rejected` without a reason once reached CI (the clear of
    the last answer came after the `queued` status and erased the job's error; the re-queued job then
    saw a terminal status and skipped). The job here is the real run_job, run between two writes."""
    from mlflow import MlflowClient

    from mlflow_unlearn.hook import job_queue, jobs

    client = MlflowClient()
    client.create_registered_model("m")
    v = str(client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model").version)
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["m"], device="cpu"))
    unreadable = "runs:/0123456789abcdef0123456789abcdef/forget_set/nothing.json"
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: unreadable})
    set_tags, writes, answered = ledger.set_tags, [], []

    def a_job_answers_between_writes(c, name, version, tags):
        set_tags(c, name, version, tags)
        if answered:  # the job's own writes (and anything after it answered) pass straight through
            return
        writes.append(sorted(tags))
        if len(writes) == after_write:
            answered.append(jobs.run_job(name, version))

    monkeypatch.setattr(ledger, "set_tags", a_job_answers_between_writes)
    outcome = jobs.submit("m", v, client=client, force_enqueue=True)
    monkeypatch.setattr(ledger, "set_tags", set_tags)
    assert outcome == "queued" and len(writes) >= after_write, (outcome, writes)
    assert answered and answered[0].startswith("rejected") and "cannot read" in answered[0], answered
    # the worker runs what the reconciler queued: it answers again, or finds the answer standing
    assert job_queue.queued_targets() == {("m", v)}
    job_queue.current_huey().flush()
    rerun = jobs.run_job("m", v)
    state = ledger.read_state(client, "m", v)
    assert state.is_current and state.status == ledger.REJECTED, (rerun, state.tags)
    assert "cannot read" in state.tags.get(ledger.ERROR_TAG, ""), (rerun, state.tags)


def test_a_job_that_finishes_while_the_receiver_puts_running_back_is_queued_again(tracking, tmp_path, monkeypatch):
    """The receiver saw a started_at it did not read and writes `running` back; if the job finished in
    between (its finished_at and `rejected` landed after the receiver's re-read), that `running` would
    stand over the answer. The receiver reads once more and queues the job again: its re-run answers."""
    from mlflow import MlflowClient

    from mlflow_unlearn.hook import job_queue, jobs

    client = MlflowClient()
    client.create_registered_model("m")
    v = str(client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model").version)
    jobs.configure(HookConfig(queue=str(tmp_path / "q.db"), tracking_uri=tracking, models=["m"]))
    uri = "runs:/0123456789abcdef0123456789abcdef/forget_set/ids.json"
    ledger.set_tags(client, "m", v, {ledger.FORGET_SET_TAG: uri})
    read_state, reads = ledger.read_state, []

    def the_job_runs_and_finishes_around_the_receivers_reads(c, name, version):
        state = read_state(c, name, version)
        reads.append(1)
        if len(reads) == 1:  # after the receiver's first read: the job starts (_run_locked)
            ledger.set_tags(c, name, version, {ledger.JOB_REQUEST_TAG: uri, ledger.STARTED_AT_TAG: "200.000"})
            ledger.set_tags(c, name, version, {ledger.STATUS_TAG: ledger.RUNNING})
        elif len(reads) == 2:  # after the re-read that saw it started: the job answers (_Job.finish)
            ledger.set_tags(c, name, version, {ledger.FINISHED_AT_TAG: "201.000", ledger.ERROR_TAG: "out of range"})
            ledger.set_tags(c, name, version, {ledger.STATUS_TAG: ledger.REJECTED})
        return state

    monkeypatch.setattr(ledger, "read_state", the_job_runs_and_finishes_around_the_receivers_reads)
    assert jobs.submit("m", v, client=client, enqueued=True) == "queued"
    monkeypatch.setattr(ledger, "read_state", read_state)
    assert ledger.read_state(client, "m", v).status == ledger.RUNNING  # over the answer, for now
    assert job_queue.queued_targets() == {("m", v)}  # ... and the job that will write it again is queued


@pytest.mark.integration  # a tiny imagefolder model and one job
def test_a_model_whose_data_lies_outside_the_data_roots_is_rejected_without_touching_it(tracking, tmp_path):
    """A manifest is registry content: the job refuses a source whose dataset names a host path
    outside --data-root before opening it, in words that do not say whether the path exists; with
    the folder as a data root the same request is answered."""
    import shutil

    from test_data import make_imagefolder

    from mlflow_unlearn.hook import jobs
    from mlflow_unlearn.hook.attach import attach
    from mlflow_unlearn.steps import train_step

    tree = tmp_path / "data" / "tree"
    make_imagefolder(tree, n_per_class=12)
    trained = train_step(dataset=f"imagefolder:{tree}", width=4, epochs=1, registered_model_name="m", progress=False)

    def job(roots, ids):
        jobs.configure(HookConfig(tracking_uri=tracking, queue=str(tmp_path / f"q{len(ids)}.db"), models=["m"],
                                  reconcile_interval_s=0, device="cpu", data_roots=roots, escalation=("retrain",),
                                  budget=1.0))  # 40 images: the default 0.1 is a couple of passes
        attach("m", trained.version, ids, tracking_uri=tracking)
        outcome = jobs.run_job("m", trained.version)
        return outcome, ledger.read_state(MlflowClient(), "m", trained.version).tags.get(ledger.ERROR_TAG)

    from mlflow import MlflowClient

    outcome, error = job([], [0, 1])
    assert outcome.startswith("rejected") and "--data-root" in error and str(tmp_path) not in error
    hidden = tmp_path / "moved"
    shutil.move(str(tree), str(hidden))  # gone: the refusal reads the same
    outcome, error_gone = job([], [0, 1, 2])
    assert outcome.startswith("rejected") and error_gone == error
    shutil.move(str(hidden), str(tree))
    outcome, _ = job([str(tmp_path / "data")], [0, 1, 2, 3])
    assert outcome.startswith("done -> version "), outcome

"""mlflow_unlearn/hook/ledger.py: tag names, digests in URIs, which earlier requests a new one carries."""
from __future__ import annotations

import pytest

from mlflow_unlearn.hook import ledger


def test_ledger_names_and_digest_in_uri():
    d = "a" * 64
    assert ledger.digest_from_uri(f"runs:/abc/forget_set/forget-{d}.json") == d
    assert ledger.digest_from_uri("runs:/abc/ids.txt") is None
    assert ledger.job_key("m", 3, d) == f"m/3/{d}"
    state = ledger.VersionState("m", "3", {ledger.FORGET_SET_TAG: "u", ledger.JOB_REQUEST_TAG: "u", ledger.STATUS_TAG: "done"})
    assert state.is_current and state.to_dict()["status"] == "done"
    assert not ledger.VersionState("m", "3", {ledger.FORGET_SET_TAG: "v", ledger.JOB_REQUEST_TAG: "u"}).is_current


def test_requests_carried_into_the_next_job():
    """Which earlier requests a new one carries (ledger.carried_requests): waiting ones (queued,
    running, not yet seen) and the merged list, never an answered one; a list too long for a tag is
    an error that says what to do, not a silent drop."""
    def state(request, status=None, handled=None, merged=None):
        tags = {ledger.FORGET_SET_TAG: request}
        tags.update({k: v for k, v in ((ledger.STATUS_TAG, status), (ledger.JOB_REQUEST_TAG, handled),
                                         (ledger.MERGED_TAG, merged)) if v is not None})
        return ledger.VersionState("m", "1", tags)

    # attach, about to replace the request attached now
    assert ledger.carried_requests(state("A"), replacing=True) == ["A"]  # not seen by the hook yet
    assert ledger.carried_requests(state("A", "queued", "A"), replacing=True) == ["A"]
    assert ledger.carried_requests(state("A", "running", "A"), replacing=True) == ["A"]
    for answered in ("done", "failed", "rejected"):
        assert ledger.carried_requests(state("A", answered, "A"), replacing=True) == []
    assert ledger.carried_requests(state("B", "queued", "A", '["X"]'), replacing=True) == ["X", "A", "B"]
    # the receiver and the job: the request attached now is the job's own, never carried
    assert ledger.carried_requests(state("B", "queued", "A")) == ["A"]
    assert ledger.carried_requests(state("B", "done", "A")) == []
    assert ledger.carried_requests(state("B", "queued", "B", '["A", "B"]')) == ["A"]
    for forged in ('{"a": 1}', "not json", '[1, "", "  "]'):  # an untrusted tag: nothing usable, no crash
        assert ledger.carried_requests(state("B", "done", "A", forged)) == []
    assert ledger.merged_tag_value([]) is None
    many = [f"runs:/{i:032x}/forget_set/forget-{'0' * 64}.json" for i in range(60)]
    with pytest.raises(ValueError, match=r"60 requests are already waiting.*wait for the hook"):
        ledger.merged_tag_value(many)
    assert ledger.request_run_id(many[1]) == f"{1:032x}" and ledger.request_run_id("/etc/passwd") is None

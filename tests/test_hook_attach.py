"""mlflow_unlearn/hook/attach.py: reading a request (only artifact URIs, read once, tamper-checked)."""
from __future__ import annotations

import pytest


def test_a_request_is_read_once_and_a_tampered_artifact_is_rejected(tracking, tmp_path):
    """read_request downloads, parses and hashes the forget-set artifact once (the job passes the ids
    on); an artifact whose ids no longer match the digest recorded beside them is refused."""
    import mlflow

    from mlflow_unlearn.forget_sets import ForgetSetError, forget_digest
    from mlflow_unlearn.hook.attach import read_request

    good = {"ids": [5, 1, 3], "digest": forget_digest([1, 3, 5])}
    with mlflow.start_run() as run:
        mlflow.log_dict(good, "forget_set/good.json")
        mlflow.log_dict({**good, "ids": [5, 1, 4]}, "forget_set/changed.json")
    req = read_request(f"runs:/{run.info.run_id}/forget_set/good.json")
    assert req.ids.tolist() == [5, 1, 3] and req.digest == good["digest"]
    with pytest.raises(ForgetSetError, match="changed after logging"):
        read_request(f"runs:/{run.info.run_id}/forget_set/changed.json")
    with pytest.raises(ForgetSetError, match="is a spec"):
        read_request("mix:30")


@pytest.mark.parametrize("tag", ["/etc/passwd", "/proc/self/environ", "relative/ids.txt", "/usr", "file:///etc/passwd",
                                 "s3://bucket/ids.txt", "   ", ""])
def test_a_forget_set_tag_that_is_not_an_artifact_uri_is_refused_unread(tag, monkeypatch):
    """A tag is untrusted: anything but runs:/, models:/ or mlflow-artifacts:/ is refused before any
    download or file access, and the message does not quote a file."""
    import builtins

    import mlflow

    from mlflow_unlearn.forget_sets import ForgetSetError
    from mlflow_unlearn.hook.attach import read_request

    def forbidden(*a, **k):
        raise AssertionError(f"read_request touched {a[:1]} for tag {tag!r}")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", forbidden)
    monkeypatch.setattr(builtins, "open", forbidden)
    with pytest.raises(ForgetSetError) as info:
        read_request(tag)
    message = str(info.value)
    assert ("MLflow artifact URI" in message) if tag.strip() else ("empty" in message)
    assert "root:" not in message and "PATH=" not in message

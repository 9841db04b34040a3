"""mlflow_unlearn/hook/cli.py through the `mlflow-unlearn` entry point (cli.main, in process): hook
settings from flags, bad settings refused with the value named (exit 2) before a server, worker or
queue starts, and `hook status` printing the ledger. The serving commands end to end: test_hook_e2e."""
from __future__ import annotations

import json

import pytest

from mlflow_unlearn import cli
from mlflow_unlearn.hook import ledger


@pytest.mark.parametrize("argv,needle", [
    (["hook", "worker", "--gate", "retain_drop=lots"], "retain_drop='lots': not a number"),
    (["hook", "worker", "--gate", "retain_drop"], "'retain_drop' is not key=value"),
    (["hook", "serve", "--secret", "sixteen-byte-key", "--gate", "bogus=0.1"], "bogus"),
    (["hook", "serve"], "no webhook secret"),
    (["hook", "reconcile", "--escalate", "sideways"], "'sideways'"),
    (["hook", "worker", "--escalate", "retrain,retrain"], "'retrain,retrain'"),
    (["hook", "install", "--url", "ftp://127.0.0.1/webhook", "--secret", "sixteen-byte-key"], "'ftp://127.0.0.1/webhook'"),
    (["hook", "install", "--url", "http://127.0.0.1:8765/webhook", "--secret", "short"], "16"),
])
def test_bad_settings_exit_2_naming_the_value_before_anything_starts(tracking, tmp_path, capsys, argv, needle):
    queue = tmp_path / "queue.db"
    if argv[1] != "install":
        argv = [*argv, "--queue", str(queue)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlflow-unlearn {argv[0]}: error:") and needle in err, err
    assert not queue.exists()  # refused before a queue was opened


def test_hook_status_prints_the_ledger_of_a_version(tracking, capsys):
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("m")
    client.create_model_version("m", "runs:/0123456789abcdef0123456789abcdef/model")
    ledger.set_tags(client, "m", "1", {ledger.FORGET_SET_TAG: "runs:/0123456789abcdef0123456789abcdef/f.json",
                                       ledger.STATUS_TAG: ledger.REJECTED, ledger.ERROR_TAG: "the reason"})
    assert cli.main(["hook", "status", "--model", "m", "--version", "1"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["status"] == "rejected" and state["error"] == "the reason"
    assert cli.main(["hook", "status", "--model", "m", "--version", "7"]) == 2  # an unknown version is named
    assert "7" in capsys.readouterr().err

"""The `mlflow-unlearn` command line (cli.py): a subcommand that exits 2 on bad input without creating anything."""
import os
import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient


def assert_nothing_created():
    client = MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs == [], f"a run was created: {[r.info.run_id for r in runs]}"
    assert client.search_registered_models() == []


def run_cli(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "mlflow_unlearn.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_cli_bad_dataset_exits_2_and_names_it(tracking, tmp_path):
    out = run_cli(["train", "--dataset", "mnist"], tmp_path, {**os.environ})
    assert out.returncode == 2
    assert "mnist" in out.stderr and "digits" in out.stderr
    assert_nothing_created()




@pytest.mark.parametrize("command", ["unlearn", "rum", "search"])
@pytest.mark.parametrize("budget", ["lots", "0", "-0.1", "1.01"])
def test_cli_bad_budget_exits_2_naming_the_flag_and_the_range(command, budget, capsys):
    """Before any work (argparse, no source loaded): the flag, the range and what the number means."""
    from mlflow_unlearn.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--model-uri", "models:/m/1", "--forget", "mix:9", *(["--algorithm", "finetune"]
                                                                          if command == "unlearn" else []),
              "--budget", budget])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --budget" in err and "(0, 1]" in err and "fraction of the original training" in err
    assert repr(budget) in err

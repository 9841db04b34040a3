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


@pytest.mark.integration  # a tiny training and its calibration reference, as the README documents the flag
def test_cli_train_with_calibration_reference_logs_the_reference(tracking, tmp_path):
    out = run_cli(["train", "--subset", "200", "--epochs", "1", "--width", "4", "--registered-model-name", "cli-cal",
                   "--calibration-reference", "true", "--calibration-size", "9", "--no-progress"], tmp_path, {**os.environ})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "calibration reference: run" in out.stdout and "k=2;size=9;tiers=3" in out.stdout
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string="tags.`mlflow_unlearn.calibration_pool` = 'k=2;size=9;tiers=3'")
    assert len(runs) == 1 and runs[0].data.tags["mlflow_unlearn.source_model"] == "cli-cal/1"


@pytest.mark.parametrize("size", ["0", "-3", "many"])
def test_cli_bad_calibration_size_exits_2(size, capsys):
    from mlflow_unlearn.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--calibration-size", size])
    assert exit_.value.code == 2 and "--calibration-size" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["digits-noisy:abc", "digits-noisy:0.7"])
def test_cli_bad_noise_rate_exits_2_before_any_work(value, capsys):
    from mlflow_unlearn.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["main", "--dataset", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--dataset" in err and "[0, 0.5)" in err and "digits-noisy:0.1" in err

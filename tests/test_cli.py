"""The `mlflow-unlearn` command line (cli.py, cli_types.py): argument types that name the bad value,
and a subcommand that exits 2 on bad input without creating anything."""
import argparse
import os
import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_unlearn import cli_types


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


@pytest.mark.parametrize("parse, value, needle", [
    (cli_types.whole_number, "2.5", "'2.5'"),
    (cli_types.whole_number, "two", "'two'"),
    (cli_types.boolean, "maybe", "'maybe'"),
    (cli_types.device, "tpu", "unknown device 'tpu'"),
    (cli_types.algorithm_list, "finetune,sgd", "['sgd']"),
])
def test_argument_types_name_the_bad_value(parse, value, needle):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse(value)
    assert needle in str(info.value)


def test_argument_types_accept_mlflow_run_spellings():
    assert cli_types.whole_number("15.0") == 15
    assert cli_types.none_or(cli_types.whole_number)("none") is None
    assert cli_types.boolean("True") is True and cli_types.boolean("off") is False
    assert cli_types.algorithm_list("default") is None
    assert cli_types.algorithm_list("none,finetune") == ["none", "finetune"]
    assert cli_types.device("cuda:1") == "cuda:1"


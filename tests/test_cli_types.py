"""cli_types.py: each argument type parses the spellings `mlflow run` passes (every parameter as
text: `none`, `15.0`) and names the bad value otherwise."""
import argparse

import pytest

from mlflow_unlearn import cli_types


@pytest.mark.parametrize("parse, value, needle", [
    (cli_types.whole_number, "2.5", "'2.5'"),
    (cli_types.whole_number, "two", "'two'"),
    (cli_types.boolean, "maybe", "'maybe'"),
    (cli_types.device, "tpu", "unknown device 'tpu'"),
    (cli_types.algorithm_list, "finetune,sgd", "unknown algorithm 'sgd'"),
    (cli_types.max_epochs, "0", "expected auto or a whole number >= 1, got '0'"),
    (cli_types.max_epochs, "lots", "got 'lots'"),
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
    assert cli_types.max_epochs("AUTO") == "auto" and cli_types.max_epochs("4.0") == 4


def test_none_or_keeps_the_cast_and_its_name():
    parse = cli_types.none_or(float)
    assert parse(" NULL ") is None and parse("") is None and parse("0.5") == 0.5
    assert parse.__name__ == "float"  # argparse quotes this name in its own error message
    with pytest.raises(ValueError):
        parse("half")

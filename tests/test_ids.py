"""The one id check (mlflow_unlearn/ids.py) and every layer that uses it: the same bad id gets the
same message whether it reaches a forget set, a tier, UnlearnData, the metrics or the memorisation
helpers; each layer raises its own exception type."""
import numpy as np
import pytest
import torch

from mlflow_unlearn.ids import IdError, check_something_retained, train_ids


@pytest.mark.parametrize("ids, fragment", [
    ([1, 50], "out of range: [50]"),
    ([-1, 3], "out of range: [-1]"),
    ([4, 9, 4], "repeats ids [4]"),
    ([], "is empty"),
    ([1.5], "not integers: 1 of 1, the first at position 0"),
    ([float("nan")], "not integers"),
    (["a"], "not integers"),
    ([True, False], "not integers"),
    (torch.tensor([1.0]), "not integers"),
])
def test_bad_ids_are_named(ids, fragment):
    with pytest.raises(IdError) as info:
        train_ids(ids, 50, what="forget set")
    assert fragment in str(info.value) and str(info.value).startswith("forget set")


def test_good_ids_keep_their_order_and_become_int64():
    for ids in ([3, 1, 2], np.array([3, 1, 2], dtype=np.int32), torch.tensor([3, 1, 2])):
        out = train_ids(ids, 10)
        assert out.dtype == np.int64 and out.tolist() == [3, 1, 2]
    assert train_ids([], 10, allow_empty=True).size == 0
    assert train_ids(np.array([2.0, 5.0]), 10, from_file=True).tolist() == [2, 5]  # a CSV reader's floats


def test_nothing_retained_is_named():
    with pytest.raises(IdError, match="covers all 10 train examples"):
        check_something_retained(10, 10)
    check_something_retained(9, 10)


def test_every_layer_runs_the_same_check_with_its_own_error():
    from mlflow_unlearn.algorithms import UnlearnData
    from mlflow_unlearn.data import DatasetSpec, load_dataset
    from mlflow_unlearn.forget_sets import ForgetSetError, validate_ids
    from mlflow_unlearn.memorization import MemorizationError, tiers_from_c_proxy
    from mlflow_unlearn.metrics import MetricInputError, outputs_for
    from mlflow_unlearn.models import build_model
    from mlflow_unlearn.rum import PlanError, run_rum

    data = load_dataset(DatasetSpec("digits", subset=60))
    n = len(data.train)
    model = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, width=4)
    calls = {
        ForgetSetError: lambda: validate_ids([1, 1], n),
        MemorizationError: lambda: tiers_from_c_proxy([1, 1, 2], np.linspace(0, 1, n)),
        PlanError: lambda: run_rum(model, data, {"all": [1, 1]}, "all=none"),
        ValueError: lambda: UnlearnData.from_forget(data, [1, 1]),
        MetricInputError: lambda: outputs_for(model, data, [1, 1]),
    }
    for error, call in calls.items():
        with pytest.raises(error, match=r"repeats ids \[1\]; give each id once"):
            call()


def test_train_ids_returns_a_plain_array_and_checks_every_time():
    """No check is cached on an array (a typed value such as task.UnlearnTask is the proof instead)."""
    ids = train_ids([5, 1, 3], 10)
    assert type(ids) is np.ndarray and ids.tolist() == [5, 1, 3] and ids.dtype == np.int64
    with pytest.raises(IdError, match=r"out of range: \[5\]"):
        train_ids(ids, 4)
    assert train_ids([], 10, allow_empty=True).tolist() == []
    with pytest.raises(IdError, match="is empty"):
        train_ids([], 10)

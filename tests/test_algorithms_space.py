"""Search spaces declared at registration (algorithms/space.py): every registered space fits its
algorithm, a bad declaration names the algorithm, and the default search reads the registry."""
from __future__ import annotations

import pytest

from mlflow_unlearn.algorithms import ALGORITHMS, hyperparameters


def test_every_registered_search_space_fits_its_algorithm():
    """The contract the search relies on, over every registered algorithm (plugins included): each
    declared key is a hyperparameter and every range end is a valid value of it."""
    from mlflow_unlearn.algorithms import default_search_algorithms, search_space

    for name in ALGORITHMS.names():
        space = search_space(name)  # raises SearchSpaceError on a bad declaration
        assert set(space) <= set(hyperparameters(name)), name
    default = default_search_algorithms()
    assert default[0] == "none" and {"finetune", "neggrad_plus", "salun", "scrub"} <= set(default)
    assert "retrain" not in default and "influence" not in default  # declared opt-in
    assert all(search_space(n) for n in default if n != "none")


@pytest.mark.parametrize("space, fragment", [
    ({"momentum": "FloatRange"}, "not one of its hyperparameters"),
    ({"lr": (1e-3, 1e-1)}, "must be a FloatRange, IntRange or Choice"),
    ({"lr": "negative"}, "includes an invalid value"),
    ({"epochs": "zero"}, "includes an invalid value"),
])
def test_bad_search_space_declarations_name_the_algorithm(monkeypatch, space, fragment):
    from mlflow_unlearn.algorithms import FloatRange, IntRange, SearchSpaceError, declare_algorithm, search_space

    resolve = {"FloatRange": FloatRange(1e-3, 0.1), "negative": FloatRange(-1.0, 0.1), "zero": IntRange(0, 3)}
    space = {k: resolve.get(v, v) if isinstance(v, str) else v for k, v in space.items()}
    fn = declare_algorithm(search_space=space)(lambda model, data, *, lr=0.1, epochs=2, seed=0, log=None: model)
    monkeypatch.setitem(ALGORITHMS._items, "toy_bad_space", fn)
    with pytest.raises(SearchSpaceError, match=fragment) as info:
        search_space("toy_bad_space")
    assert "toy_bad_space" in str(info.value)


def test_default_search_reads_the_registry(monkeypatch):
    """Registering an algorithm with `default_search=True` is all it takes to be searched by default."""
    from mlflow_unlearn import tuning
    from mlflow_unlearn._registry import declare
    from mlflow_unlearn.algorithms import EPOCHS, FloatRange, default_search_algorithms

    fn = lambda model, data, *, lr=0.1, epochs=2, seed=0, log=None: model
    monkeypatch.setitem(ALGORITHMS._items, "toy_searched", fn)
    assert "toy_searched" not in default_search_algorithms()
    declare(search_space={"lr": FloatRange(1e-3, 0.1, log=True), "epochs": EPOCHS}, default_search=True)(fn)
    assert default_search_algorithms()[-1] == "toy_searched"
    trials = tuning.rum_default_trials(["low", "high"], default_search_algorithms())
    assert {"shape": "whole", "whole.algorithm": "toy_searched", "whole.toy_searched.defaults": True} in trials

"""Compute in the units of training (mlflow_unlearn/compute.py): exact pass counts on a tiny known
run, the budget's validation and its enforcement (the meter's backstop, `fit_steps`, RUM's division
over tiers), and the break-even arithmetic. The contract over every registered algorithm at the
digits scale is in test_algorithms_defaults.py."""
from __future__ import annotations

import math
import uuid

import pytest
import torch
import torch.nn.functional as F

from mlflow_unlearn.algorithms import ALGORITHMS, Loop, UnlearnData, run_algorithm
from mlflow_unlearn.compute import (
    Budget,
    BudgetError,
    BudgetExhausted,
    ComputeMeter,
    break_even_requests,
    original_train_passes,
    parse_budget,
)
from mlflow_unlearn.confidences import ConfidenceRecorder
from mlflow_unlearn.data import DatasetSpec, load_dataset
from mlflow_unlearn.models import build_model
from mlflow_unlearn.rum import Plan, run_rum
from mlflow_unlearn.training import TrainConfig, train_model


@pytest.fixture(scope="module")
def data():
    return load_dataset(DatasetSpec("digits", subset=120, val_fraction=0.25))


def _model(data, seed=0):
    return build_model("small_cnn", num_classes=data.num_classes, input_shape=data.input_shape, seed=seed, width=4)


@pytest.fixture
def register():
    added = []

    def add(fn):
        name = f"_test_{fn.__name__}_{uuid.uuid4().hex[:8]}"
        ALGORITHMS.add(name, fn)
        added.append(name)
        return name

    yield add
    for name in added:
        ALGORITHMS._items.pop(name, None)


# --------------------------------------------------------------------------------------------------
# Counting


def test_a_tiny_training_counts_epochs_times_examples_and_its_eval_passes_apart(data):
    """90 train examples, batch 16 (the last batch of an epoch has 10), 3 epochs: 270 example
    passes; the validation split (30) evaluated after each epoch: 90 eval passes, counted apart."""
    assert (len(data.train), len(data.val)) == (90, 30)
    net = _model(data)
    meter = ComputeMeter()
    with meter.watching(net):
        train_model(net, data, TrainConfig(epochs=3, lr=0.05, batch_size=16), progress=False, eval_test=False,
                    heldout=data.val, heldout_recorder=ConfidenceRecorder(len(data.val)))
    assert (meter.train_passes, meter.eval_passes) == (270, 90)
    assert original_train_passes({"epochs": 3}, 90) == 270  # the fallback for versions that did not record it
    assert original_train_passes({"epochs": 3}, 90, recorded=271) == 271
    assert not any(m._forward_pre_hooks for m in net.modules())  # nothing left on the model


def test_the_meter_counts_copies_made_while_watched_and_strips_what_outlives_the_run(data):
    net = _model(data)
    meter = ComputeMeter()
    x = data.normalize(data.train.x[:7])
    with meter.watching(net):
        teacher = __import__("copy").deepcopy(net)
        with torch.no_grad():
            teacher(x)
        F.cross_entropy(net(x), data.train.y[:7]).backward()
    meter.strip(teacher)
    assert (meter.train_passes, meter.eval_passes) == (7, 7)
    net(x), teacher(x)  # outside: not counted
    assert (meter.train_passes, meter.eval_passes) == (7, 7)


def test_the_limit_holds_example_passes_not_eval_passes(data):
    net = _model(data)
    meter = ComputeMeter(10)
    x = data.normalize(data.train.x[:6])
    with meter.watching(net):
        net(x)
        with torch.no_grad():
            for _ in range(5):
                net(x)  # 30 eval passes: counted, not limited
        with pytest.raises(BudgetExhausted):
            net(x)  # 6 + 6 > 10
    assert (meter.train_passes, meter.eval_passes, meter.remaining) == (6, 30, 4)


# --------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("bad", ["abc", "", 0, "0", -0.1, 1.5, "inf", float("nan"), True, None, [0.1]])
def test_a_bad_budget_names_the_flag_and_the_range(bad):
    with pytest.raises(BudgetError, match=r"--budget must be a number in \(0, 1\].*fraction of the original training"):
        parse_budget(bad)


def test_a_good_budget_parses_and_rounds_down_to_passes():
    assert parse_budget("0.1") == 0.1 and parse_budget(1) == 1.0 and parse_budget(" 0.05 ") == 0.05
    budget = Budget.of("0.1", 19410)
    assert budget.passes == 1941 and budget.fraction_of(970) == pytest.approx(0.04997, abs=1e-5)
    assert Budget.of(0.3, 10).passes == 3  # 0.3 * 10 is 3.0000000000000004 in floats: not 2, not 4


def test_a_long_bad_value_is_shortened_in_the_message():
    with pytest.raises(BudgetError) as err:
        parse_budget("x" * 500)
    assert len(str(err.value)) < 250


# --------------------------------------------------------------------------------------------------
# Enforcement


def test_an_algorithm_without_a_meter_is_stopped_at_its_limit_after_its_last_whole_step(data, register):
    """A plugin that knows nothing of budgets: 50 steps of 9 examples from passes over 80 retain
    (each pass's last batch has 8); at a limit of 100 example passes it gets 11 steps (9 x 10 + 8 =
    98 passes; a 12th would make 107) and the model returned is the one after the 11th step."""
    steps_done = []

    def greedy(model, data: UnlearnData, *, seed: int = 0):
        loop = Loop(model, data, lr=0.05, total_steps=50, seed=seed)
        for pos in loop.cycle(len(data.retain), 9):
            loss = F.cross_entropy(loop.forward(loop.inputs(data.retain, pos)), data.retain.y[pos])
            loop.step(loss)
            steps_done.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            if len(steps_done) == 50:
                return model

    name = register(greedy)
    net = _model(data)
    udata = UnlearnData.from_forget(data, list(range(10)))
    meter = ComputeMeter(100)
    out = run_algorithm(name, net, udata, meter=meter)
    assert meter.stopped_at_limit and meter.train_passes == 98 and len(steps_done) == 11
    assert all(torch.equal(v, steps_done[-1][k]) for k, v in out.state_dict().items())
    assert not any(m._forward_pre_hooks for m in out.modules())


def test_a_budget_that_pays_for_no_step_says_the_smallest_that_would(data):
    net = _model(data)
    udata = UnlearnData.from_forget(data, list(range(10)))
    meter = ComputeMeter(5, unit=1000)  # finetune's retain batch here is 1 (80 retain < 64 x 2): ...
    with pytest.raises(BudgetError, match=r"finetune: .*pays for no optimiser step.*smallest budget"):
        run_algorithm("finetune", net, udata, {"batch_size": 8}, meter=ComputeMeter(0, unit=1000))
    run_algorithm("finetune", net, udata, {"batch_size": 8}, meter=meter)  # ... so 5 passes pay for 5 steps
    assert meter.train_passes == 5


def test_rum_divides_its_budget_by_tier_size_and_passes_on_what_a_step_leaves(data):
    """Tiers of 10, 10 and 20 examples, budget 0.1 of 3,000 passes = 300: the first step's share is
    300 x 10/40 = 75, but `none` spends nothing, so the next step may spend 300 x 10/30 = 100 and the
    last what is left of 300; the plan never spends more than 300. `retrain` is exact: counted,
    never limited."""
    net = _model(data)
    tiers = {"low": list(range(0, 10)), "mid": list(range(10, 20)), "high": list(range(20, 40))}
    plan = Plan.parse("low=none;mid=finetune;high=neggrad_plus")
    result = run_rum(net, data, tiers, plan, budget=Budget(0.1, 3000))
    low, mid, high = result.steps
    assert (low.limit, low.train_passes) == (75, 0)
    assert mid.limit == 100 and 0 < mid.train_passes <= 100
    assert high.limit == 300 - mid.train_passes and 0 < high.train_passes <= high.limit
    assert result.train_passes <= 300
    cost = result.cost()
    assert cost["cost/train_fraction"] == result.train_passes / 3000 and cost["cost/budget"] == 0.1

    exact = run_rum(net, data, tiers, Plan.parse("all=retrain"), budget=Budget(0.1, 3000))
    assert exact.steps[0].limit is None and exact.train_passes == 30 * 50  # TrainConfig()'s 30 epochs x 50 retain


def test_rum_says_the_request_budget_that_would_give_every_step_one(data):
    net = _model(data)
    tiers = {"low": list(range(0, 10)), "high": list(range(10, 20))}
    plan = Plan.parse("low=neggrad_plus;high=neggrad_plus")
    with pytest.raises(BudgetError, match=r"too small for RUM step 1/2 .*--budget 0\.\d+") as err:
        run_rum(net, data, tiers, plan, budget=Budget(0.001, 1000))
    suggested = float(str(err.value).rsplit("--budget ", 1)[1].rstrip(")"))
    result = run_rum(net, data, tiers, plan, budget=Budget(suggested, 1000))  # the suggestion works
    assert result.steps[0].train_passes > 0 and result.train_passes <= Budget(suggested, 1000).passes


# --------------------------------------------------------------------------------------------------
# Break-even


@pytest.mark.parametrize("first, later, expected", [
    (0.5, 0.1, 1),  # cheaper than a retrain from the first request on
    (1.5, 0.1, 2),  # 1.5 + 0.1 = 1.6 < 2
    (6.7, 0.63, 17),  # the CPU benchmark's seed 0 before budgets: "until about the 17th request"
    (3.0, 0.5, 6),  # at 5 requests both cost 5.0: not cheaper yet
    (2.0, 1.0, math.inf),  # a later request that costs a retrain never pays back the first
])
def test_break_even_is_the_first_request_count_where_unlearning_is_strictly_cheaper(first, later, expected):
    n = break_even_requests(first, later)
    assert n == expected
    if not math.isinf(n):
        assert first + (n - 1) * later < n  # cheaper at n ...
        assert n == 1 or first + (n - 2) * later >= n - 1  # ... and not before


def test_break_even_refuses_what_is_not_a_cost():
    with pytest.raises(ValueError, match="later_request must be a finite cost"):
        break_even_requests(1.0, float("nan"))

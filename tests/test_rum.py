"""RUM: plans as plain data (forms, validation) and the executor (order, retain sets, carried model)."""
from __future__ import annotations

import json
import uuid

import pytest
import torch

from mlflow_unlearn.algorithms import ALGORITHMS, UnlearnData, hyperparameters, run_algorithm
from mlflow_unlearn.data import DatasetSpec, load_dataset
from mlflow_unlearn.models import build_model
from mlflow_unlearn.progress import ListLogger
from mlflow_unlearn.memorization import DEFAULT_TIERS
from mlflow_unlearn.rum import (
    ALL_TIER,
    Plan,
    PlanError,
    PlanStep,
    RETAIN_MODES,
    all_tier,
    default_plan,
    run_rum,
    single_algorithm_plan,
)

TIERS3 = ("low", "mid", "high")


@pytest.fixture(scope="module")
def data():
    return load_dataset(DatasetSpec("digits", subset=200))


@pytest.fixture
def model(data):
    return build_model("small_cnn", num_classes=data.num_classes, input_shape=data.input_shape, seed=0, width=8)


@pytest.fixture
def tiers():
    # Deliberately not in plan order, and not covering all of train (ids 30.. are never forgotten).
    return {"high": list(range(20, 30)), "low": list(range(0, 10)), "mid": torch.arange(10, 20)}


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def register():
    """Register test-only algorithms under unique names; removed afterwards."""
    added = []

    def add(fn):
        name = f"_test_{fn.__name__}_{uuid.uuid4().hex[:8]}"
        ALGORITHMS.add(name, fn)
        added.append(name)
        return name

    yield add
    for name in added:
        ALGORITHMS._items.pop(name, None)


@pytest.fixture
def recorder(register):
    calls = []

    def record(model, data: UnlearnData, *, scale: float = 1.0, seed: int = 0, log=None):
        calls.append({"forget": sorted(data.forget_ids.tolist()), "retain": sorted(data.retain_ids.tolist()),
                      "seed": seed, "scale": scale})
        if log is not None:
            log.log_metrics({"unlearn/called": 1.0}, step=0)
        return model

    return register(record), calls


# --------------------------------------------------------------------------------------------------
# Executor


def test_none_everywhere_returns_the_original_weights_and_leaves_the_caller_model_alone(data, model, tiers):
    before = snapshot(model)
    model.eval()
    result = run_rum(model, data, tiers, Plan.parse("low=none;mid=none;high=none"))
    assert result.model is not model
    assert same_weights(snapshot(result.model), before)
    assert same_weights(snapshot(model), before)
    assert not result.model.training  # the caller's mode is kept
    assert [s.tier for s in result.steps] == list(TIERS3)
    assert result.seconds == pytest.approx(sum(s.seconds for s in result.steps))


def test_real_algorithm_changes_the_copy_not_the_callers_model(data, model, tiers):
    before = snapshot(model)
    result = run_rum(model, data, tiers, "low=none;mid=finetune(epochs=1,batch_size=64);high=none")
    assert same_weights(snapshot(model), before)
    assert not same_weights(snapshot(result.model), before)
    assert result.steps[1].hyperparameters == hyperparameters("finetune") | {"epochs": 1, "batch_size": 64}


@pytest.mark.parametrize("retain_mode", RETAIN_MODES)
def test_steps_follow_plan_order_with_the_retain_set_of_the_mode(data, model, tiers, recorder, retain_mode):
    algo, calls = recorder
    order = ["mid", "high", "low"]
    plan = Plan([PlanStep(t, algo, {"scale": i + 1}) for i, t in enumerate(order)], retain_mode=retain_mode)
    result = run_rum(model, data, tiers, plan, seed=7)

    n = len(data.train)
    ids = {t: sorted(torch.as_tensor(v).tolist()) for t, v in tiers.items()}
    everything_forgotten = set().union(*map(set, ids.values()))
    assert [c["forget"] for c in calls] == [ids[t] for t in order]
    assert [c["seed"] for c in calls] == [7, 8, 9]
    assert [c["scale"] for c in calls] == [1.0, 2.0, 3.0]
    for k, call in enumerate(calls):
        if retain_mode == "exclude_all":
            gone = everything_forgotten
        else:  # shrinking: the tiers unlearned so far, the current one included
            gone = set().union(*(set(ids[t]) for t in order[: k + 1]))
        assert call["retain"] == sorted(set(range(n)) - gone), (retain_mode, k)
    if retain_mode == "shrinking":
        assert [len(c["retain"]) for c in calls] == [n - 10, n - 20, n - 30]
    # the records say the same
    assert [r.tier for r in result.steps] == order
    assert [sorted(r.forget_ids.tolist()) for r in result.steps] == [c["forget"] for c in calls]
    assert [sorted(r.retain_ids.tolist()) for r in result.steps] == [c["retain"] for c in calls]
    assert [r.n_retain for r in result.steps] == [len(c["retain"]) for c in calls]
    assert result.retain_mode == retain_mode
    json.dumps(result.to_dict())  # plain data


@pytest.mark.parametrize("retain_mode", RETAIN_MODES)
def test_ids_forgotten_by_earlier_requests_are_never_retained(data, model, tiers, recorder, retain_mode):
    """Requests accumulate: a model that already forgot some ids must not be fine-tuned on them again."""
    algo, calls = recorder
    tiered = set().union(*(set(torch.as_tensor(v).tolist()) for v in tiers.values()))
    earlier = sorted(i for i in range(len(data.train)) if i not in tiered)[:7]
    plan = Plan([PlanStep(t, algo, {}) for t in ("low", "mid", "high")], retain_mode=retain_mode)
    run_rum(model, data, tiers, plan, forgotten=earlier)
    assert calls and all(not set(earlier) & set(c["retain"]) for c in calls)
    assert len(calls[-1]["retain"]) == len(data.train) - len(tiered) - len(earlier)
    again = sorted(torch.as_tensor(tiers["mid"]).tolist())[0]
    with pytest.raises(PlanError, match=rf"ids \[{again}\] were forgotten by an earlier request"):
        run_rum(model, data, tiers, plan, forgotten=[again])


def test_model_is_carried_from_step_to_step(data, model, tiers, register):
    def add_one(model, data, *, seed: int = 0, log=None):
        with torch.no_grad():
            model.fc.bias.add_(1.0)
        return model

    name = register(add_one)
    bias = model.fc.bias.detach().clone()
    seen = []

    class Callbacks:
        def step_finished(self, index, step, record, model):
            seen.append(model.fc.bias.detach().clone())

    result = run_rum(model, data, tiers, single_algorithm_plan(name, {}, TIERS3), callbacks=Callbacks())
    assert torch.allclose(result.model.fc.bias, bias + 3)
    assert [torch.allclose(b, bias + k + 1) for k, b in enumerate(seen)] == [True] * 3
    assert torch.equal(model.fc.bias, bias)


def test_callbacks_get_each_step_and_supply_the_algorithms_logger(data, model, tiers, recorder):
    algo, calls = recorder
    events, loggers = [], []

    class Callbacks:
        def step_started(self, index, step, n_forget, n_retain):
            events.append(("started", index, step.tier, n_forget, n_retain))
            loggers.append(ListLogger())
            return loggers[-1]

        def step_finished(self, index, step, record, model):
            events.append(("finished", index, step.tier, record.n_forget, record.n_retain))

    run_rum(model, data, tiers, single_algorithm_plan(algo, None, TIERS3), callbacks=Callbacks())
    n_retain = len(data.train) - 30
    assert events == [(kind, i, t, 10, n_retain) for i, t in enumerate(TIERS3) for kind in ("started", "finished")]
    assert [lg.records for lg in loggers] == [[(0, {"unlearn/called": 1.0})]] * 3


def test_vanilla_is_rum_over_the_single_tier_all(data, model, recorder):
    algo, calls = recorder
    forget = list(range(5, 25))
    plan = single_algorithm_plan(algo, {"scale": 2})
    assert plan.tiers == [ALL_TIER] and all_tier(forget) == {"all": forget}
    run_rum(model, data, all_tier(forget), plan, seed=3)
    expected = UnlearnData.from_forget(data, forget)
    assert calls == [{"forget": forget, "retain": expected.retain_ids.tolist(), "seed": 3, "scale": 2.0}]

    # and with a real algorithm, exactly what run_algorithm gives
    params = {"epochs": 1, "batch_size": 64}
    via_rum = run_rum(model, data, all_tier(forget), single_algorithm_plan("finetune", params), seed=3).model
    direct = run_algorithm("finetune", model, UnlearnData.from_forget(data, forget), params, seed=3)
    assert same_weights(snapshot(via_rum), snapshot(direct))


def test_a_whole_set_plan_runs_on_any_tiering_of_the_request(data, model, tiers, recorder):
    """The search's whole-set candidates are one-step plans on tier "all"; they must run (and
    validate) against a request cut into low/mid/high, unlearning the union in one step."""
    algo, calls = recorder
    plan = single_algorithm_plan(algo)
    assert plan.validate(list(tiers)).tiers == [ALL_TIER]
    run_rum(model, data, tiers, plan, seed=1)
    union = sorted(i for ids in tiers.values() for i in ids)
    assert len(calls) == 1 and sorted(calls[0]["forget"]) == union
    with pytest.raises(PlanError, match="not in the plan"):
        Plan.parse(f"low={algo}").validate(list(tiers))  # a partial per-tier plan is still an error


# --------------------------------------------------------------------------------------------------
# Forms


EXAMPLE = {
    "name": "example",
    "retain_mode": "shrinking",
    "steps": [
        {"tier": "low", "algorithm": "none", "hyperparameters": {}},
        {"tier": "mid", "algorithm": "finetune", "hyperparameters": {"lr": 0.01, "epochs": 3}},
        {"tier": "high", "algorithm": "neggrad_plus", "hyperparameters": {"alpha": 0.9}},
    ],
}


def test_dict_json_and_yaml_round_trips(tmp_path):
    plan = Plan.from_dict(EXAMPLE)
    assert plan.to_dict() == EXAMPLE
    assert Plan.parse(plan.to_json()) == plan
    assert Plan.parse(plan.to_yaml()) == plan
    for suffix in (".json", ".yaml", ".yml"):
        path = plan.dump(tmp_path / f"plan{suffix}")
        assert Plan.load(path) == plan
        assert Plan.parse(str(path)) == plan
        assert Plan.parse(path) == plan
    assert Plan.parse(EXAMPLE) == plan
    # a bare list of steps is a plan with the default retain mode
    assert Plan.parse(json.dumps(EXAMPLE["steps"])).retain_mode == "exclude_all"


def test_compact_form():
    plan = Plan.parse("low=none;mid=finetune(lr=0.01,epochs=3);high=neggrad_plus(alpha=0.9)")
    assert plan == Plan([PlanStep("low", "none"), PlanStep("mid", "finetune", {"lr": 0.01, "epochs": 3}),
                         PlanStep("high", "neggrad_plus", {"alpha": 0.9})])
    assert isinstance(plan.steps[1].hyperparameters["epochs"], int)
    assert Plan.parse(plan.to_compact()) == plan
    spaced = Plan.parse(" retain_mode=shrinking ; low = none() ; high=neggrad_plus( alpha = 0.95 , lr=1e-3 ) ")
    assert spaced.retain_mode == "shrinking"
    assert spaced.steps[1].hyperparameters == {"alpha": 0.95, "lr": 0.001}
    assert Plan.parse(spaced.to_compact()) == spaced
    odd = Plan([PlanStep("t-1", "x", {"flag": True, "word": "a,b;c", "plain": "abc"})])
    assert Plan.parse(odd.to_compact()) == odd
    named = Plan.from_dict(EXAMPLE)  # the compact form carries the steps and the retain mode, not the name
    assert Plan.parse(named.to_compact()) == Plan(named.steps, named.retain_mode)


def test_a_plan_carries_the_budget_it_was_chosen_under_in_json_and_yaml_not_the_compact_form():
    plan = Plan.from_dict(dict(EXAMPLE, budget=0.05))
    assert plan.budget == 0.05 and plan.to_dict()["budget"] == 0.05
    assert Plan.parse(plan.to_json()) == plan and Plan.parse(plan.to_yaml()) == plan
    assert plan.validate(TIERS3).budget == 0.05  # the executor's type keeps it
    assert "budget" not in plan.to_compact() and Plan.parse(plan.to_compact()).budget is None
    assert "budget" not in Plan.from_dict(EXAMPLE).to_dict()  # no key when the plan does not say


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan"), "0.1", True])
def test_a_plan_budget_outside_0_1_is_named(budget):
    with pytest.raises(PlanError, match=r"plan budget must be a number in \(0, 1\].*got") as info:
        Plan.from_dict(dict(EXAMPLE, budget=budget))
    assert "drop the key" in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("low=finetune(lr=0.01", "unbalanced"),
    ("low=finetune(0.01)", "name=value"),
    ("low=finetune(lr=1,lr=2)", "twice"),
    ("just words", "could not read"),
    ("missing.yaml", "does not exist"),
    ('{"steps": [{"tier": "low"}]}', "algorithm"),
    ('{"steps": [], "retain": "shrinking"}', "unknown key"),
])
def test_unreadable_plans_say_why(text, message):
    with pytest.raises(PlanError, match=message):
        Plan.parse(text)


# --------------------------------------------------------------------------------------------------
# Validation


def validate_error(plan, tiers=TIERS3) -> str:
    with pytest.raises(PlanError) as info:
        Plan.parse(plan).validate(tiers)
    return str(info.value)


def test_validate_returns_complete_hyperparameters():
    plan = Plan.parse("low=none;mid=finetune(lr=0.05,epochs='2');high=neggrad_plus").validate(TIERS3)
    assert plan.steps[1].hyperparameters == hyperparameters("finetune") | {"lr": 0.05, "epochs": 2}
    assert plan.steps[2].hyperparameters == hyperparameters("neggrad_plus")


def test_unknown_tier_is_named_and_the_tiers_listed():
    msg = validate_error("low=none;mid=none;high=none;top=none")
    assert "unknown tier 'top'" in msg and "low, mid, high" in msg


def test_duplicate_tier():
    assert "more than once" in validate_error("low=none;low=finetune;mid=none;high=none")


def test_unknown_algorithm_lists_the_known_ones():
    msg = validate_error("low=none;mid=fine_tune;high=none")
    assert "fine_tune" in msg and "finetune" in msg and "neggrad_plus" in msg and "salun" in msg


@pytest.mark.parametrize("step, words", [
    ("finetune(lr=-1)", ["finetune", "lr", "-1"]),
    ("neggrad_plus(alpha=1.5)", ["neggrad_plus", "alpha", "1.5"]),
    ("finetune(epochs=abc)", ["finetune", "epochs", "abc"]),
    ("finetune(learning_rate=0.1)", ["finetune", "learning_rate"]),
])
def test_bad_hyperparameters_name_algorithm_parameter_and_value(step, words):
    msg = validate_error(f"low=none;mid={step};high=none")
    assert all(w in msg for w in words), msg


def test_a_tier_left_out_is_an_error_listing_it():
    msg = validate_error("low=none;high=none", ("low", "mid", "high", "top"))
    assert "'mid', 'top'" in msg and "not in the plan" in msg


def test_empty_tier_is_named(data, model):
    msg = validate_error("low=none;mid=none;high=none", {"low": [1], "mid": [], "high": [2]})
    assert "'mid'" in msg and "no examples" in msg
    with pytest.raises(PlanError, match="'mid'.*no examples"):
        run_rum(model, data, {"low": [1], "mid": torch.tensor([], dtype=torch.long), "high": [2]},
                "low=none;mid=none;high=none")


def test_bad_retain_mode_lists_the_valid_ones():
    msg = validate_error(Plan([PlanStep(t, "none") for t in TIERS3], retain_mode="shrink"))
    assert "shrink" in msg and "exclude_all" in msg and "shrinking" in msg
    with pytest.raises(PlanError, match="exclude_all, shrinking"):
        Plan.parse("retain_mode=everything;low=none").validate()


def test_every_problem_is_reported_at_once():
    msg = validate_error("low=nope;mid=finetune(lr=0)")
    assert "nope" in msg and "lr=0" in msg and "'high'" in msg


def test_run_rum_rejects_bad_tiers_before_running_anything(data, model, recorder):
    algo, calls = recorder
    plan = single_algorithm_plan(algo, None, ("a", "b"))
    with pytest.raises(PlanError, match="share ids"):
        run_rum(model, data, {"a": [1, 2], "b": [2, 3]}, plan)
    with pytest.raises(PlanError, match="out of range"):
        run_rum(model, data, {"a": [1], "b": [10_000]}, plan)
    with pytest.raises(PlanError, match="repeats"):
        run_rum(model, data, {"a": [1, 1], "b": [3]}, plan)
    with pytest.raises(PlanError, match="nothing would be retained"):
        run_rum(model, data, {"a": range(100), "b": range(100, len(data.train))}, plan)
    with pytest.raises(PlanError, match="unknown tier 'b'"):
        run_rum(model, data, {"a": [1]}, plan)
    assert calls == []


# --------------------------------------------------------------------------------------------------
# Plans the system builds


@pytest.mark.parametrize("names", [DEFAULT_TIERS, ("all",), ("low", "high"), ("t0", "t1", "t2", "t3", "t4")])
def test_default_plan_is_valid_and_covers_every_tier_in_order(names):
    plan = default_plan(names).validate(names)
    assert plan.tiers == list(names) and plan.retain_mode == "exclude_all"
    algos = [s.algorithm for s in plan.steps]
    assert algos[-1] == "neggrad_plus" and set(algos[:-1]) <= {"finetune"}  # a forget term on the highest tier only
    gentle = plan.steps[-1].hyperparameters  # validated: the algorithm's defaults filled in
    assert (gentle["lr"], gentle["alpha"]) == (0.03, 0.99)  # gentle: the gate's retain/test checks
    assert Plan.parse(default_plan(names).to_compact()) == Plan(default_plan(names).steps)  # name not in compact


def test_single_algorithm_plan_over_tiers():
    plan = single_algorithm_plan("neggrad_plus", {"alpha": 0.9}, TIERS3, retain_mode="shrinking")
    assert [(s.tier, s.algorithm, s.hyperparameters) for s in plan.steps] == [(t, "neggrad_plus", {"alpha": 0.9}) for t in TIERS3]
    plan.steps[0].hyperparameters["alpha"] = 0.5  # steps do not share one dict
    assert plan.steps[1].hyperparameters == {"alpha": 0.9}
    assert plan.validate(TIERS3).retain_mode == "shrinking"


def test_a_validated_plan_is_its_own_type_and_the_executor_takes_only_that():
    """`Plan.validate` returns a ValidatedPlan (no check cached on a plain Plan); `execute_plan` runs
    only that, on a task with the tiers it was validated for."""
    from mlflow_unlearn.rum import ValidatedPlan, execute_plan
    from mlflow_unlearn.task import UnlearnTask

    plan = Plan.parse("low=none;mid=finetune(epochs=1);high=neggrad_plus")
    checked = plan.validate(["low", "mid", "high"])
    assert isinstance(checked, ValidatedPlan) and not isinstance(plan, ValidatedPlan)
    assert checked.for_tiers == ("low", "mid", "high") and checked.steps[1].hyperparameters["lr"] > 0  # completed
    assert checked == plan.validate(["low", "mid", "high"]) and checked.validate(["low", "mid", "high"]) is not checked
    with pytest.raises(PlanError, match="'high'"):
        checked.validate({"low": [1], "mid": [2], "high": []})  # an empty tier is the caller's error
    assert Plan.from_dict(checked.to_dict()).validate(["low", "mid", "high"]) == checked  # a read-back plan
    data = load_dataset(DatasetSpec("digits", subset=60))
    model = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=0, width=4)
    task = UnlearnTask.build(data, {"low": [1, 2], "mid": [3, 4]})
    with pytest.raises(TypeError, match="ValidatedPlan"):
        execute_plan(model, task, plan)
    with pytest.raises(PlanError, match=r"tiers \['low', 'mid', 'high'\].*validate it for this task"):
        execute_plan(model, task, checked)
    ran = execute_plan(model, task, Plan.parse("low=none;mid=none").validate(task.tiers))
    assert [r.tier for r in ran.steps] == ["low", "mid"]

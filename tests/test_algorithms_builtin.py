"""The built-in algorithms (algorithms/builtin.py): the batch-size rule, SalUn's mask, l1-sparse's
shrinkage, a faithful retrain and influence, augmentation off unless asked (the defaults contract is
in test_algorithms_defaults.py).

The tiny problem (`problem`): 400 digits, a width-8 small CNN trained to 100% train accuracy; the
forget set is every training example of class 3.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from algorithm_problem import same as _same, state as _state, stats as _stats

from mlflow_unlearn.algorithms import (
    ALGORITHMS,
    HyperparameterError,
    MIN_FORGET_BATCHES,
    MIN_RETAIN_BATCHES,
    Loop,
    UnlearnData,
    effective_batch_size,
    run_algorithm,
    saliency_mask,
    validate_hyperparameters,
)
from mlflow_unlearn.progress import ListLogger
from mlflow_unlearn.training import train_model


def test_salun_only_moves_salient_weights(problem):
    model, udata, _ = problem
    fraction = 0.3
    mask = saliency_mask(model, udata, fraction)
    total = sum(m.numel() for m in mask.values())
    chosen = sum(int(m.sum()) for m in mask.values())
    assert abs(chosen - round(fraction * total)) <= 1
    out = run_algorithm("salun", model, udata, {"epochs": 1, "mask_fraction": fraction})
    new, old = dict(out.named_parameters()), dict(model.named_parameters())
    for name, m in mask.items():
        frozen = m == 0
        assert torch.equal(new[name][frozen], old[name][frozen]), name
    assert any(not torch.equal(new[k][mask[k] == 1], old[k][mask[k] == 1]) for k in mask)


def test_l1_sparse_shrinks_weights_more_than_finetune(problem):
    model, udata, _ = problem
    common = {"lr": 0.05, "epochs": 2}
    l1 = run_algorithm("l1_sparse", model, udata, {**common, "alpha_l1": 0.005})
    ft = run_algorithm("finetune", model, udata, common)
    norm = lambda m: sum(p.abs().sum().item() for p in m.parameters())
    assert norm(l1) < norm(ft) - 1.0


def test_effective_batch_size_rule():
    assert (MIN_RETAIN_BATCHES, MIN_FORGET_BATCHES) == (64, 8)
    # the paper's sizes: 45,000 retain, 3,000 forget, 48,000 together: batch 128 unchanged
    assert effective_batch_size(45_000, 128, MIN_RETAIN_BATCHES) == 128
    assert effective_batch_size(3_000, 128, MIN_FORGET_BATCHES) == 128
    assert effective_batch_size(48_000, 128, MIN_RETAIN_BATCHES) == 128
    # digits mix:90 and a 30-example tier; at least min_batches batches per epoch
    for n, min_batches, expected in [(1204, 64, 18), (90, 8, 11), (1294, 64, 20), (30, 8, 3), (10, 8, 1), (5, 8, 1)]:
        batch = effective_batch_size(n, 128, min_batches)
        assert batch == expected
        assert math.ceil(n / batch) >= min(min_batches, n)
    assert effective_batch_size(1204, 8, MIN_RETAIN_BATCHES) == 8  # an upper bound: a smaller batch_size wins


@pytest.mark.parametrize("name, epochs, sets", [
    ("finetune", 2, ["retain"]),
    ("l1_sparse", 2, ["retain"]),
    ("neggrad", 2, ["forget"]),
    ("neggrad_plus", 2, ["retain"]),
    ("random_label", 2, ["pool"]),
    ("salun", 2, ["pool"]),
])
def test_algorithms_log_effective_batch_and_steps(problem, name, epochs, sets):
    model, udata, _ = problem
    log = ListLogger()
    run_algorithm(name, model, udata, {"epochs": epochs}, seed=0, log=log)
    logged = {k: v for _, m in log.records for k, v in m.items()}
    n = {"retain": len(udata.retain_ids), "forget": len(udata.forget_ids),
         "pool": len(udata.retain_ids) + len(udata.forget_ids)}[sets[0]]
    batch = effective_batch_size(n, 128, MIN_FORGET_BATCHES if sets[0] == "forget" else MIN_RETAIN_BATCHES)
    assert batch < 128  # the tiny problem is small enough for the rule to act
    assert logged["unlearn/batch_size"] == batch
    assert logged["unlearn/steps"] == math.ceil(n / batch) * epochs


def test_scrub_logs_both_batches(problem):
    model, udata, _ = problem
    log = ListLogger()
    run_algorithm("scrub", model, udata, {"epochs": 3, "max_steps": 2}, seed=0, log=log)
    logged = {k: v for _, m in log.records for k, v in m.items()}
    n_r, n_f = len(udata.retain_ids), len(udata.forget_ids)
    r, f = effective_batch_size(n_r, 128, MIN_RETAIN_BATCHES), effective_batch_size(n_f, 128, MIN_FORGET_BATCHES)
    assert (logged["unlearn/batch_size"], logged["unlearn/forget_batch_size"]) == (r, f)
    assert logged["unlearn/steps"] == 3 * math.ceil(n_r / r) + 2 * math.ceil(n_f / f)


def test_retrain_with_a_recipe_is_the_retrained_reference(problem):
    model, udata, _ = problem
    recipe = udata.recipe
    for seed in (0, 3):
        out = run_algorithm("retrain", model, udata, seed=seed)
        reference = recipe.build(seed)
        train_model(reference, udata.data, dataclasses.replace(recipe.config, seed=seed),
                    train_ids=udata.retain_ids, progress=False, eval_test=False)
        assert _same(_state(out), _state(reference)), f"seed {seed}: retrain differs from the recipe's retrain"
    assert not _same(_state(run_algorithm("retrain", model, udata, seed=1)), _state(out))


def test_retrain_epochs_fraction_shortens_the_recipe(problem):
    model, udata, _ = problem
    log = ListLogger()
    out = run_algorithm("retrain", model, udata, {"epochs_fraction": 0.25}, seed=2, log=log)
    epochs = round(0.25 * udata.recipe.config.epochs)
    reference = udata.recipe.build(2)
    train_model(reference, udata.data, dataclasses.replace(udata.recipe.config, seed=2, epochs=epochs),
                train_ids=udata.retain_ids, progress=False, eval_test=False)
    assert _same(_state(out), _state(reference))
    logged = {k: v for _, m in log.records for k, v in m.items()}
    assert logged["unlearn/steps"] == math.ceil(len(udata.retain_ids) / udata.recipe.config.batch_size) * epochs


def test_retrain_without_a_recipe_falls_back_to_reinitialising_the_model(problem):
    model, udata, _ = problem
    bare = UnlearnData(udata.data, udata.forget_ids, udata.retain_ids)
    assert bare.recipe is None
    log = ListLogger()
    out = run_algorithm("retrain", model, bare, {"epochs_fraction": 0.1}, seed=0, log=log)  # 3 of 30 epochs
    logged = {k: v for _, m in log.records for k, v in m.items()}
    assert logged["unlearn/batch_size"] == 128
    assert logged["unlearn/steps"] == math.ceil(len(bare.retain_ids) / 128) * 3
    assert type(out) is type(model) and not _same(_state(out), _state(model))


def test_run_rum_passes_the_recipe_and_augment_to_every_step(problem):
    from mlflow_unlearn.rum import all_tier, run_rum, single_algorithm_plan

    model, udata, _ = problem
    seen = []

    def spy(model, data, *, seed: int = 0, log=None):
        seen.append((data.recipe, data.augment))
        return model

    ALGORITHMS._items["test_spy"] = spy
    try:
        forget = udata.forget_ids.tolist()
        tiers = {"low": forget[:10], "mid": forget[10:20], "high": forget[20:]}
        run_rum(model, udata.data, tiers, "low=test_spy;mid=test_spy;high=test_spy", recipe=udata.recipe, augment=True)
        assert seen == [(udata.recipe, True)] * 3
        seen.clear()
        run_rum(model, udata.data, tiers, "low=test_spy;mid=none;high=test_spy")
        assert seen == [(None, False)] * 2
    finally:
        del ALGORITHMS._items["test_spy"]
    via_rum = run_rum(model, udata.data, all_tier(forget), single_algorithm_plan("retrain", {"epochs_fraction": 0.25}),
                      seed=4, recipe=udata.recipe).model
    direct = run_algorithm("retrain", model, udata, {"epochs_fraction": 0.25}, seed=4)
    assert _same(_state(via_rum), _state(direct))


def test_unlearning_does_not_augment_unless_asked(problem):
    model, udata, _ = problem
    augmentable = dataclasses.replace(udata.data, augment=True)  # a dataset whose training augments
    plain = UnlearnData(augmentable, udata.forget_ids, udata.retain_ids)
    asked = UnlearnData(augmentable, udata.forget_ids, udata.retain_ids, augment=True)
    assert Loop(model, plain, lr=0.1, total_steps=1).augment is False
    assert Loop(model, asked, lr=0.1, total_steps=1).augment is True
    params = {"epochs": 1}
    base = run_algorithm("finetune", model, udata, params)
    assert _same(_state(run_algorithm("finetune", model, plain, params)), _state(base))
    assert not _same(_state(run_algorithm("finetune", model, asked, params)), _state(base))


def _reference_wfisher_step(model, udata, fisher_samples, seed):
    """The SalUn `Wfisher` recursion written out directly (one example at a time with autograd)."""
    model = model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    data = udata.data

    def grad_of(split, idx):
        loss = F.cross_entropy(model(data.normalize(split.x[idx])), split.y[idx], reduction="sum")
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    forget, retain = udata.forget, udata.retain
    n_f, n_r = len(forget), len(retain)
    forget_grad = grad_of(forget, torch.arange(n_f)) / (n_f + n_r)
    retain_grad = grad_of(retain, torch.arange(n_r)) * n_f / ((n_f + n_r) * n_r)
    k_vec, o_vec, N = forget_grad - retain_grad, None, float(fisher_samples)
    order = torch.randperm(n_r, generator=torch.Generator().manual_seed(seed))[:min(fisher_samples + 2, n_r)]
    for i in order.tolist():
        g = grad_of(retain, torch.tensor([i]))
        if o_vec is None:
            o_vec = g.clone()
            continue
        tmp = torch.dot(o_vec, g)
        k_vec -= (torch.dot(k_vec, g) / (N + tmp)) * o_vec
        o_vec -= (tmp / (N + tmp)) * o_vec
    return k_vec


def test_influence_is_the_woodfisher_step_of_the_reference_code(problem):
    model, udata, _ = problem
    scale, samples = 0.3, 40
    out = run_algorithm("influence", model, udata, {"scale": scale, "fisher_samples": samples, "max_retain_drop": 1.0}, seed=5)
    delta = torch.cat([(a.detach() - b.detach()).reshape(-1) for a, b in zip(out.parameters(), model.parameters())])
    expected = scale * _reference_wfisher_step(model, udata, samples, seed=5)
    # w + delta is rounded to float32 around weights of size ~1, so compare norm-wise
    assert float((delta - expected).norm() / expected.norm()) < 1e-3
    assert _same(dict(out.named_buffers()), dict(model.named_buffers()))  # batch-norm statistics unchanged


def _flat_delta(out, model):
    return torch.cat([(a.detach() - b.detach()).reshape(-1) for a, b in zip(out.parameters(), model.parameters())])


def test_the_retain_guard_stops_an_ascent_before_it_wrecks_retain(problem):
    """neggrad at lr 0.05 (20x its default) takes the tiny problem's retain accuracy to ~0.12 with
    the guard off (max_retain_drop=1); with it on (the default 0.02), the run stops and returns the
    weights of the last check that held, and logs where."""
    model, udata, stats = problem
    off = run_algorithm("neggrad", model, udata, {"lr": 0.05, "max_retain_drop": 1.0}, seed=0)
    assert _stats(off, udata)["retain_acc"] < 0.5
    log = ListLogger()
    on = run_algorithm("neggrad", model, udata, {"lr": 0.05}, seed=0, log=log)
    logged = {k: v for _, m in log.records for k, v in m.items()}
    assert logged["unlearn/guard_retain_acc_failed"] < logged["unlearn/guard_retain_acc_start"] - 0.02
    assert 1 <= logged["unlearn/guard_stop_step"] < logged["unlearn/steps"]
    assert _stats(on, udata)["retain_acc"] >= stats["retain_acc"] - 0.02


def test_the_retain_guard_halves_an_influence_step_that_wrecks_retain(problem):
    """influence at scale 50 destroys the tiny problem (retain ~0.12) with the guard off; with it on
    the step is halved along the same direction until the retain sample holds, and the scale used
    is logged."""
    model, udata, stats = problem
    hp = {"scale": 50.0, "fisher_samples": 64}
    off = run_algorithm("influence", model, udata, {**hp, "max_retain_drop": 1.0}, seed=0)
    assert _stats(off, udata)["retain_acc"] < 0.5
    log = ListLogger()
    on = run_algorithm("influence", model, udata, hp, seed=0, log=log)
    logged = {k: v for _, m in log.records for k, v in m.items()}
    used, halvings = logged["unlearn/scale_used"], int(logged["unlearn/guard_halvings"])
    assert 0 < used < 50 and used == 50 / 2 ** halvings
    assert _stats(on, udata)["retain_acc"] >= stats["retain_acc"] - 0.02
    expected = _flat_delta(off, model) * (used / 50)  # the same step, shortened
    assert float((_flat_delta(on, model) - expected).norm() / expected.norm()) < 1e-3


def test_max_retain_drop_out_of_range_names_the_value():
    with pytest.raises(HyperparameterError, match=r"max_retain_drop=1\.5 is out of range; it must be a fraction in \[0, 1\]"):
        validate_hyperparameters("neggrad", {"max_retain_drop": 1.5})

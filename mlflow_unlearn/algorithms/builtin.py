"""The built-in unlearning algorithms (docs/design.md section 2).

Defaults start from the commands in the RUM repository's README (github.com/kairanzhao/RUM, which
builds on the SalUn code, github.com/OPTML-Group/Unlearn-Saliency, and SCRUB,
github.com/meghdadk/SCRUB): SGD with momentum 0.9 and weight decay 5e-4, batch size 128. Those
values were chosen for 3,000-example forget sets and ResNet-18 on CIFAR; where a default here
differs (mostly learning rates), docs/algorithms.md gives the reason and the measurement.
Where this implementation differs from that code on purpose, the docstring says so. Differences
that hold for every iterative algorithm here:

- the learning rate decays per step with a cosine to 0 over the run (the same schedule as
  `mlflow_unlearn.training`); the papers' code kept it constant, because its step-decay milestones
  (epochs 91 and 136) lie beyond the 5-10 unlearning epochs. The mean rate is therefore half the
  peak; searches tune `lr` anyway.
- the optimiser is `mlflow_unlearn.training.sgd`: SGD with *Nesterov* momentum whenever
  momentum > 0; the papers' code used plain (heavy-ball) momentum SGD.
- training batches are augmented (crop + flip) only when `UnlearnData.augment` is set, which is
  off by default whatever the dataset's own `augment` says: RUM's per-tier unlearning commands
  (`main_rum.py`, `main_rum_proxy.py`) ran with `--no_aug`. The one-shot estimates (the SalUn
  mask, the influence gradients) always use the plain images.
- the batch-size rule below.

Batch-size rule (every iterative algorithm; `retrain` replays the source's recipe instead):
`batch_size` is an upper bound; an epoch over retain (retain + forget for random_label and salun) is
cut into at least `MIN_RETAIN_BATCHES` = 64 batches and an epoch over forget into at least
`MIN_FORGET_BATCHES` = 8 (`effective_batch_size`), so small sets get real optimiser steps. The
table of batches at the paper's and the demo's sizes, and why: docs/algorithms.md.

Budget rule (every built-in but `none` and `retrain`; `mlflow_unlearn.compute`). Given a
`meter` with a limit (the request's budget, or a plan step's share of it), an algorithm plans its
optimiser steps to fit before it starts: what its hyperparameters ask for (`epochs` passes), cut to
what the limit pays for at one batch (or retain + forget batch) a step (`fit_steps`), with retain
batches drawn from reshuffled passes, so a cut run samples retain instead of sweeping it and its
cost follows the budget and the forget set, not the size of retain. Fixed work that comes first
(salun's mask, influence's gradient estimates, scrub's max passes) is paid from the same limit.
Without a limit (meter None) the run is what the hyperparameters say. `retrain` is exact: counted,
never limited. Eval passes (guards, scrub's teacher) are counted and reported, not limited.

Each run logs its effective batch size and number of optimiser steps as `unlearn/batch_size` and
`unlearn/steps` (scrub also `unlearn/forget_batch_size`), at step 0.

The defaults were measured on "the digits setup" (docs/algorithms.md), which
tests/test_algorithms.py checks every algorithm against.

Every algorithm has the signature `fn(model, data, *, <hyperparameters>, seed=0, log=None)`, may
change `model` in place and returns the unlearned model. Use `run_algorithm`, which validates the
hyperparameters and works on a copy.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ALGORITHMS, Loop, UnlearnData, ensure_passes, fit_steps, progress_enabled, seeded
from ..compute import ComputeMeter
from ..progress import MetricLogger
from .space import EPOCHS, Choice, FloatRange, IntRange
from ..training import TrainConfig, accuracy, retrain_from_scratch

MIN_RETAIN_BATCHES = 64  # an epoch over the retain set (or retain + forget) has at least this many batches
MIN_FORGET_BATCHES = 8  # an epoch over the forget set has at least this many batches


def effective_batch_size(n: int, batch_size: int, min_batches: int) -> int:
    """The batch size an epoch over `n` examples uses: `batch_size`, lowered so that the epoch has
    at least `min_batches` batches (one example per batch when n < min_batches)."""
    return max(1, min(int(batch_size), int(n) // max(int(min_batches), 1)))


def _steps(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def _log_plan(log: MetricLogger | None, **values) -> None:
    """The effective batch size(s) and the number of optimiser steps, logged once at step 0."""
    if log is not None:
        log.log_metrics({f"unlearn/{k}": float(v) for k, v in values.items()}, step=0)


# Retain examples the guard scores. 512: near accuracy 0.95 the sample's standard error is about 0.01,
# half the default max_retain_drop; with 256, neggrad stopped where the sample had lost 0.02 and the
# whole retain set 0.055 (CPU CIFAR scale). About 1-2 s per check for resnet18 width 32 on one core.
RETAIN_GUARD_SAMPLE = 512


class RetainGuard:
    """Keeps a method with no retain term (neggrad's ascent, influence's one step) from wrecking the
    model: accuracy on a fixed, seeded sample of `RETAIN_GUARD_SAMPLE` retain examples (all of them
    when retain is smaller; eval mode,
    plain images), against the same sample before unlearning. `holds(model)` is False once it has
    fallen more than `max_drop` (a fraction, 0.02 = 2 points); `max_drop=1` turns the guard off.

    Why (no fixed step size suits every scale) with the measurements: docs/algorithms.md, "RetainGuard"."""

    def __init__(self, model: nn.Module, data: UnlearnData, max_drop: float, seed: int):
        self.data, self.max_drop = data, float(max_drop)
        n = len(data.retain)
        gen = torch.Generator().manual_seed(int(seed) + 7919)  # its own stream: the algorithm's shuffles are unchanged
        positions = torch.randperm(n, generator=gen)[:RETAIN_GUARD_SAMPLE].to(data.device)
        self.sample = data.retain.subset(positions)
        self.start = self.accuracy(model) if self.active else float("nan")
        self.failed = float("nan")  # the sample's accuracy at the last check that did not hold

    @property
    def active(self) -> bool:
        return self.max_drop < 1.0 and len(self.data.retain) > 0

    def accuracy(self, model: nn.Module) -> float:
        return accuracy(model, self.data.data, self.sample)

    def holds(self, model: nn.Module) -> bool:
        if not self.active:
            return True
        acc = self.accuracy(model)
        if self.start - acc <= self.max_drop + 1e-9:
            return True
        self.failed = acc
        return False


# --------------------------------------------------------------------------------------------------


# Search spaces (declared with each algorithm; `mlflow_unlearn.tuning` samples them). The ranges
# contain the papers' settings; epochs run from 1 to the search's `max_epochs` (a step that costs a
# retrain has lost its point); the ascent-based methods also search the batch-size bound, so a
# 10-example tier gets enough optimiser steps. `influence` and `retrain` declare no space and are
# left out of the default search (name them in `--algorithms` to try them at their defaults):
# retrain is the exact, most expensive answer every result is measured against.
LR_RETAIN = FloatRange(1e-3, 2e-1, log=True)  # papers: FT/RL/SalUn lr 0.01-0.1; retain-driven steps
SMALL_BATCHES = Choice(8, 16, 32, 64, 128)


@ALGORITHMS.register("none")
def none(model: nn.Module, data: UnlearnData, *, seed: int = 0, log: MetricLogger | None = None) -> nn.Module:
    """Do nothing: a copy of the model. The RUM paper found this best for low-memorisation tiers."""
    return copy.deepcopy(model)


@ALGORITHMS.register("finetune", default_search=True,
                     search_space={"lr": LR_RETAIN, "epochs": EPOCHS})
def finetune(model: nn.Module, data: UnlearnData, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 128,
             momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
             log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """Fine-tune (FT): cross-entropy on the retain set only; forgetting comes from catastrophic
    forgetting. RUM README: `--unlearn FT --unlearn_lr 0.01 --unlearn_epochs 10`.

    Batches and the measurements behind the defaults: docs/algorithms.md, "finetune"."""
    return _retain_training(model, data, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                            weight_decay=weight_decay, alpha_l1=0.0, seed=seed, log=log, desc="finetune", meter=meter)


@ALGORITHMS.register("l1_sparse", default_search=True,
                     search_space={"lr": LR_RETAIN, "epochs": EPOCHS, "alpha_l1": FloatRange(1e-5, 1e-2, log=True)})
def l1_sparse(model: nn.Module, data: UnlearnData, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 128,
              alpha_l1: float = 5e-4, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
              log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """l1-sparse (Jia et al., "Model sparsity can simplify machine unlearning", 2023): fine-tune on
    retain with `alpha_l1 * sum|w|` over all weights added to the loss, the coefficient decaying
    linearly to 0 over the run. The SalUn/RUM code (`FT_prune`, `FT_l1`) decays it per epoch; here
    per step. RUM README: `--unlearn FT_prune --alpha ${alpha} --unlearn_lr 0.01 --unlearn_epochs 10`
    leaves the coefficient to a search; 5e-4 is a starting point, not a value taken from the paper.

    Batches and the measurements behind the defaults: docs/algorithms.md, "l1_sparse"."""
    return _retain_training(model, data, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                            weight_decay=weight_decay, alpha_l1=alpha_l1, seed=seed, log=log, desc="l1_sparse",
                            meter=meter)


def _retain_training(model, data, *, lr, epochs, batch_size, momentum, weight_decay, alpha_l1, seed, log, desc,
                     meter=None):
    retain = data.retain
    batch = effective_batch_size(len(retain), batch_size, MIN_RETAIN_BATCHES)
    steps = _steps(len(retain), batch)
    total = fit_steps(steps * epochs, batch, meter, algorithm=desc)
    _log_plan(log, batch_size=batch, steps=total)
    loop = Loop(model, data, lr=lr, total_steps=total, momentum=momentum, weight_decay=weight_decay,
                seed=seed, log=log, desc=desc)
    retain_batches = loop.cycle(len(retain), batch)
    params = [p for p in model.parameters() if p.requires_grad]

    def add_l1():  # the L1 subgradient, added directly (same as differentiating alpha * sum|w|)
        coef = alpha_l1 * (1.0 - loop.progress())
        if coef > 0:
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.grad.add_(torch.sign(p), alpha=coef)

    for epoch, n_epochs, n_steps in loop.epochs(total, steps):
        loop.start_epoch(epoch, n_epochs, n_steps)
        for _ in range(n_steps):
            pos = next(retain_batches)
            loss = F.cross_entropy(loop.forward(loop.inputs(retain, pos)), retain.y[pos])
            loop.record("loss", loss, len(pos))
            loop.step(loss, before_step=add_l1 if alpha_l1 > 0 else None)
        loop.end_epoch(epoch)
    return model


@ALGORITHMS.register("neggrad", default_search=True,
                     search_space={"lr": FloatRange(1e-5, 1e-2, log=True), "epochs": EPOCHS, "batch_size": SMALL_BATCHES})
def neggrad(model: nn.Module, data: UnlearnData, *, lr: float = 3.5e-3, epochs: int = 5, batch_size: int = 128,
            momentum: float = 0.9, weight_decay: float = 5e-4, max_retain_drop: float = 0.02, seed: int = 0,
            log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """NegGrad (gradient ascent, GA): maximise cross-entropy on the forget set, nothing else.
    RUM README: `--unlearn GA --unlearn_lr 0.0001 --unlearn_epochs 5`. Unbounded by nature: with a
    large `lr` it destroys the model, which is what makes `lr` the parameter to search.

    The retain guard (`RetainGuard`, `max_retain_drop`, 1 = off) checks a retain sample four times
    per epoch and at the end; once it has fallen more than `max_retain_drop`, the weights of the last
    check that passed are returned and the ascent stops (`unlearn/guard_stop_step`).

    Batches and the measurements behind the defaults: docs/algorithms.md, "neggrad"."""
    forget = data.forget
    batch = effective_batch_size(len(forget), batch_size, MIN_FORGET_BATCHES)
    steps = _steps(len(forget), batch)
    total = fit_steps(steps * epochs, batch, meter, algorithm="neggrad")
    _log_plan(log, batch_size=batch, steps=total)
    loop = Loop(model, data, lr=lr, total_steps=total, momentum=momentum, weight_decay=weight_decay,
                seed=seed, log=log, desc="neggrad")
    guard = RetainGuard(model, data, max_retain_drop, seed)
    check_every = max(1, math.ceil(steps / 4))
    kept = copy.deepcopy(model.state_dict()) if guard.active else None
    forget_batches = loop.cycle(len(forget), batch)
    for epoch, n_epochs, n_steps in loop.epochs(total, steps):
        loop.start_epoch(epoch, n_epochs, n_steps)
        for _ in range(n_steps):
            pos = next(forget_batches)
            ce = F.cross_entropy(loop.forward(loop.inputs(forget, pos)), forget.y[pos])
            loop.record("forget_loss", ce, len(pos))
            loop.step(-ce)
            last = loop.step_count == total
            if guard.active and (loop.step_count % check_every == 0 or last):
                if not guard.holds(model):
                    model.load_state_dict(kept)
                    loop.end_epoch(epoch)
                    _log_guard(log, guard, stop_step=loop.step_count)
                    return model
                kept = copy.deepcopy(model.state_dict())
        loop.end_epoch(epoch)
    return model


def _log_guard(log: MetricLogger | None, guard: RetainGuard, **values) -> None:
    """Where the retain guard acted: its sample's accuracy at the start and at the last check that failed."""
    if log is not None:
        log.log_metrics({"unlearn/guard_retain_acc_start": guard.start, "unlearn/guard_retain_acc_failed": guard.failed,
                         **{f"unlearn/guard_{k}": float(v) for k, v in values.items()}}, step=0)


@ALGORITHMS.register("neggrad_plus", default_search=True,
                     search_space={"lr": LR_RETAIN, "epochs": EPOCHS, "alpha": FloatRange(0.8, 0.999)})
def neggrad_plus(model: nn.Module, data: UnlearnData, *, lr: float = 0.08, epochs: int = 5, batch_size: int = 128,
                 alpha: float = 0.95, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
                 log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """NegGrad+ (Kurmanji et al., SCRUB paper): per step, `alpha * CE(retain batch) - (1 - alpha) *
    CE(forget batch)`. An epoch is one pass over retain; forget batches are drawn from a forget order
    that is reshuffled on every pass (fresh batches, where the RUM code's `itertools.cycle` replayed
    the first pass's cached batches). RUM README: `--unlearn NG --alpha ${alpha} --unlearn_lr 0.01
    --unlearn_epochs 5` leaves alpha to a search; 0.99 (retain term dominant) is the starting point.

    Batches and the measurements behind the defaults: docs/algorithms.md, "neggrad_plus"."""
    retain, forget = data.retain, data.forget
    batch = effective_batch_size(len(retain), batch_size, MIN_RETAIN_BATCHES)
    steps = _steps(len(retain), batch)
    total = fit_steps(steps * epochs, batch + min(batch, len(forget)), meter, algorithm="neggrad_plus")
    _log_plan(log, batch_size=batch, steps=total)
    loop = Loop(model, data, lr=lr, total_steps=total, momentum=momentum, weight_decay=weight_decay,
                seed=seed, log=log, desc="neggrad_plus")
    retain_batches = loop.cycle(len(retain), batch)
    forget_batches = loop.cycle(len(forget), batch)
    for epoch, n_epochs, n_steps in loop.epochs(total, steps):
        loop.start_epoch(epoch, n_epochs, n_steps)
        for _ in range(n_steps):
            pos = next(retain_batches)
            fpos = next(forget_batches)
            r_loss = F.cross_entropy(loop.forward(loop.inputs(retain, pos)), retain.y[pos])
            f_loss = F.cross_entropy(loop.forward(loop.inputs(forget, fpos)), forget.y[fpos])
            loss = alpha * r_loss - (1.0 - alpha) * f_loss
            loop.record("loss", loss, len(pos))
            loop.record("retain_loss", r_loss, len(pos))
            loop.record("forget_loss", f_loss, len(fpos))
            loop.step(loss)
        loop.end_epoch(epoch)
    return model


def _distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """SCRUB's DistillKL: KL(teacher || student) at temperature T, times T^2, mean over the batch."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature ** 2


@ALGORITHMS.register("scrub", default_search=True,
                     search_space={"lr": FloatRange(1e-4, 3e-2, log=True), "epochs": EPOCHS, "max_steps": IntRange(1, 4),
                              "batch_size": SMALL_BATCHES})
def scrub(model: nn.Module, data: UnlearnData, *, lr: float = 1e-2, epochs: int = 5, max_steps: int = 4,
          temperature: float = 4.0, gamma: float = 0.99, beta: float = 0.001, batch_size: int = 128,
          momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
          log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """SCRUB (Kurmanji et al., "Towards unbounded machine unlearning", NeurIPS 2023): a student
    (the model) and a frozen teacher (the original). Each epoch, while `epoch < max_steps`, one pass
    over forget *maximising* the KL divergence from the teacher at `temperature`; then one pass over
    retain minimising `gamma * CE + beta * KL`. One optimiser for both. RUM README: `--unlearn SCRUB
    --msteps 4 --kd_T 4.0 --unlearn_lr 5e-3 --unlearn_epochs 5`; gamma 0.99 and beta (SCRUB's
    `alpha`, the KL weight) 0.001 are SCRUB's own defaults.

    Batches and the measurements behind the defaults: docs/algorithms.md, "scrub"."""
    retain, forget = data.retain, data.forget
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    r_batch = effective_batch_size(len(retain), batch_size, MIN_RETAIN_BATCHES)
    f_batch = effective_batch_size(len(forget), batch_size, MIN_FORGET_BATCHES)
    r_steps, f_steps = _steps(len(retain), r_batch), _steps(len(forget), f_batch)
    max_epochs = min(max_steps, epochs)
    # Under a budget both phases shrink by the same factor, so the balance of max (forget) and min
    # (retain) steps stays what the hyperparameters set: keeping the forget passes whole and cutting
    # only retain took digits' retain accuracy from 1.0 to 0.81 at budget 0.1.
    natural = f_batch * f_steps * max_epochs + r_batch * r_steps * epochs  # example passes, an upper bound
    remaining = None if meter is None else meter.remaining
    f_per_epoch = f_steps
    if remaining is not None and natural > remaining:
        f_per_epoch = max(1, int(f_steps * remaining / natural))
    retain_total = fit_steps(r_steps * epochs, r_batch, meter, algorithm="scrub",
                             reserved=f_batch * f_per_epoch * max_epochs)
    per_epoch = [retain_total // epochs + (1 if e < retain_total % epochs else 0) for e in range(epochs)]
    total = retain_total + f_per_epoch * max_epochs
    _log_plan(log, batch_size=r_batch, forget_batch_size=f_batch, steps=total)
    loop = Loop(model, data, lr=lr, total_steps=total, momentum=momentum, weight_decay=weight_decay, seed=seed,
                log=log, desc="scrub")
    retain_batches = loop.cycle(len(retain), r_batch)
    forget_batches = loop.cycle(len(forget), f_batch)
    for epoch in range(epochs):
        loop.start_epoch(epoch, epochs, per_epoch[epoch] + (f_per_epoch if epoch < max_steps else 0))
        if epoch < max_steps:
            for _ in range(f_per_epoch):
                pos = next(forget_batches)
                x = loop.inputs(forget, pos)
                with torch.no_grad():
                    t = loop.forward(x, teacher)
                kl = _distill_kl(loop.forward(x), t, temperature)
                loop.record("forget_kl", kl, len(pos))
                loop.step(-kl)
        for _ in range(per_epoch[epoch]):
            pos = next(retain_batches)
            x = loop.inputs(retain, pos)
            with torch.no_grad():
                t = loop.forward(x, teacher)
            s = loop.forward(x)
            ce, kl = F.cross_entropy(s, retain.y[pos]), _distill_kl(s, t, temperature)
            loss = gamma * ce + beta * kl
            loop.record("loss", loss, len(pos))
            loop.record("retain_loss", ce, len(pos))
            loop.record("retain_kl", kl, len(pos))
            loop.step(loss)
        loop.end_epoch(epoch)
    return model


def _wrong_labels(y: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """A label drawn uniformly among the classes other than y, for each y."""
    shift = torch.randint(1, num_classes, y.shape, generator=gen, device=gen.device).to(y.device)
    return (y + shift) % num_classes


def _random_label_training(model, data, *, lr, epochs, batch_size, momentum, weight_decay, seed, log, desc,
                           mask=None, meter=None):
    if data.num_classes < 2:
        raise ValueError(f"{desc} needs at least 2 classes to relabel the forget set")
    forget, retain = data.forget, data.retain
    n_f, n = len(forget), len(forget) + len(retain)
    pool_ids = torch.cat([data.forget_ids, data.retain_ids])
    train = data.data.train
    batch = effective_batch_size(n, batch_size, MIN_RETAIN_BATCHES)
    steps = _steps(n, batch)
    total = fit_steps(steps * epochs, batch, meter, algorithm=desc)
    _log_plan(log, batch_size=batch, steps=total)
    # With a mask, weight decay is added to the gradient before masking (so frozen weights stay
    # exactly frozen); the optimiser itself then runs without weight decay.
    loop = Loop(model, data, lr=lr, total_steps=total, momentum=momentum,
                weight_decay=0.0 if mask is not None else weight_decay, seed=seed, log=log, desc=desc)
    named = [(p, mask[k]) for k, p in model.named_parameters() if mask is not None and k in mask]

    def apply_mask():
        with torch.no_grad():
            for p, m in named:
                if p.grad is not None:
                    if weight_decay:
                        p.grad.add_(p, alpha=weight_decay)
                    p.grad.mul_(m)

    pool_batches = loop.cycle(n, batch)  # lazy: each pass's order is drawn after that epoch's labels
    for epoch, n_epochs, n_steps in loop.epochs(total, steps):
        loop.start_epoch(epoch, n_epochs, n_steps)
        labels = torch.cat([_wrong_labels(forget.y, data.num_classes, loop.gen), retain.y])  # fresh every epoch
        for _ in range(n_steps):
            pos = next(pool_batches)
            ids = pool_ids[pos]
            logits = loop.forward(loop.inputs(train, ids))
            loss = F.cross_entropy(logits, labels[pos])
            loop.record("loss", loss, len(pos))
            is_forget = pos < n_f
            if bool(is_forget.any()):
                loop.record("forget_loss", F.cross_entropy(logits[is_forget].detach(), labels[pos][is_forget]),
                            int(is_forget.sum()))
            loop.step(loss, before_step=apply_mask if mask is not None else None)
        loop.end_epoch(epoch)
    return model


@ALGORITHMS.register("random_label", default_search=True,
                     search_space={"lr": LR_RETAIN, "epochs": EPOCHS})
def random_label(model: nn.Module, data: UnlearnData, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 128,
                 momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
                 log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """Random labelling (RL): the forget set relabelled at random, trained together with the retain
    set in shuffled mixed batches. Labels are drawn afresh each epoch, uniformly among the wrong
    classes (the RUM code drew among all classes, so about 1/C of them kept their true label).
    RUM README: `--unlearn RL_og --unlearn_lr 0.1 --unlearn_epochs 10` (ResNet-18, CIFAR); the
    defaults are the README's.

    Batches and the measurements behind the defaults: docs/algorithms.md, "random_label"."""
    return _random_label_training(model, data, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                                  weight_decay=weight_decay, seed=seed, log=log, desc="random_label", meter=meter)


def forget_gradients(model: nn.Module, data: UnlearnData, *, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Gradient of the mean cross-entropy over the forget set w.r.t. each trainable parameter, in
    eval mode on the plain images. The weights and batch-norm statistics are left as they were."""
    return _mean_gradients(model, data, data.forget, batch_size)


def _mean_gradients(model, data, split, batch_size):
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    total = {k: torch.zeros_like(p) for k, p in named}
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(split), batch_size):
            x = data.data.normalize(split.x[i:i + batch_size])
            loss = F.cross_entropy(model(x).float(), split.y[i:i + batch_size], reduction="sum")
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (k, _), g in zip(named, grads):
                if g is not None:
                    total[k] += g
    finally:
        model.train(was_training)
    return {k: g / len(split) for k, g in total.items()}


def saliency_mask(model: nn.Module, data: UnlearnData, fraction: float, *, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """SalUn's weight saliency map: 1 for the `fraction` of weights (over the whole network) with the
    largest |gradient of the forget loss|, 0 elsewhere."""
    grads = forget_gradients(model, data, batch_size=batch_size)
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    k = max(1, int(round(fraction * flat.numel())))
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[torch.topk(flat, k, sorted=False).indices] = True
    mask, start = {}, 0
    for name, g in grads.items():
        mask[name] = chosen[start:start + g.numel()].view_as(g).to(g.dtype)
        start += g.numel()
    return mask


@ALGORITHMS.register("salun", default_search=True,
                     search_space={"lr": LR_RETAIN, "epochs": EPOCHS, "mask_fraction": FloatRange(0.1, 0.9)})
def salun(model: nn.Module, data: UnlearnData, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 128,
          mask_fraction: float = 0.5, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
          log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """SalUn (Fan et al., "SalUn: empowering machine unlearning via gradient-based weight saliency",
    ICLR 2024): random labelling with the gradients (and weight decay) masked to the `mask_fraction`
    of weights with the largest |gradient of the forget loss|; the other weights stay exactly as
    they were. The mask is computed first, without changing the weights or batch-norm statistics
    (the SalUn script took optimiser steps while accumulating the gradients). RUM README:
    `generate_mask.py` then `--unlearn RL --unlearn_lr 0.1 --unlearn_epochs 10`; 0.5 is SalUn's
    default sparsity. The defaults are the README's.

    `batch_size` is also the chunk size of the mask's forget-gradient computation (a memory setting
    there).

    Batches and the measurements behind the defaults: docs/algorithms.md, "salun"."""
    pool_batch = effective_batch_size(len(data.forget_ids) + len(data.retain_ids), batch_size, MIN_RETAIN_BATCHES)
    ensure_passes(len(data.forget_ids) + pool_batch, meter, algorithm="salun",
                  what="its saliency mask (one gradient pass over forget) and one optimiser step")
    mask = saliency_mask(model, data, mask_fraction, batch_size=batch_size)
    return _random_label_training(model, data, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                                  weight_decay=weight_decay, seed=seed, log=log, desc="salun", mask=mask, meter=meter)


def _flat_per_example_gradients(model: nn.Module, data: UnlearnData, split, positions: torch.Tensor,
                                names: list[str], memory_bytes: int = 1 << 30):
    """Yield the per-example gradients of the cross-entropy of `split`'s examples at `positions`,
    in that order, one flattened [P] vector each (parameters `names` in order), eval mode, plain
    images. Computed in chunks with torch.func.vmap, one example at a time for models vmap cannot
    handle. The weights and batch-norm statistics are not changed."""
    from torch.func import functional_call, grad, vmap

    named = dict(model.named_parameters())
    params = {k: named[k].detach() for k in names}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    n_params = sum(p.numel() for p in params.values())
    chunk = int(max(1, min(64, memory_bytes // max(4 * n_params, 1))))  # per-example grads held at once

    def loss_one(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out.float(), y.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    was_training = model.training
    model.eval()
    try:
        use_vmap = True
        for i in range(0, len(positions), chunk):
            pos = positions[i:i + chunk]
            x, y = data.data.normalize(split.x[pos]), split.y[pos]
            if use_vmap:
                try:
                    g = per_example(params, x, y)
                except (RuntimeError, NotImplementedError):
                    use_vmap = False
                else:
                    flat = torch.cat([g[k].reshape(len(pos), -1) for k in names], dim=1)
                    yield from flat
                    continue
            for j in range(len(pos)):
                loss = F.cross_entropy(model(x[j:j + 1]).float(), y[j:j + 1])
                gs = torch.autograd.grad(loss, [named[k] for k in names], allow_unused=True)
                yield torch.cat([(torch.zeros_like(named[k]) if gk is None else gk).reshape(-1)
                                 for k, gk in zip(names, gs)])
    finally:
        model.train(was_training)


@ALGORITHMS.register("influence")
def influence(model: nn.Module, data: UnlearnData, *, scale: float = 2.5, fisher_samples: int = 1000,
              batch_size: int = 128, max_retain_drop: float = 0.02, seed: int = 0,
              log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """Influence unlearning (IU; Koh & Liang 2017, Izzo et al. 2021): one Newton-style step that
    removes the forget set's first-order influence, as `wfisher` in the SalUn/RUM code
    (`Classification/unlearn/Wfisher.py` in github.com/OPTML-Group/Unlearn-Saliency):
        v = (n_f / n) * (mean forget gradient - mean retain gradient),    n = n_f + n_r
        w <- w + scale * H^-1 v

    with H^-1 v estimated by that code's WoodFisher-style recursion over per-example retain
    gradients g_1, g_2, ... (N = `fisher_samples`): o = g_1, k = v, then for each later g

        k <- k - (k.g / (N + o.g)) * o
        o <- o - (o.g / (N + o.g)) * o

    (the reference's recursion as written: o stays a rescaled first gradient rather than the exact
    Woodbury update H_t^-1 g_t, and the implicit damping is 1). As in the reference, N + 2
    per-example gradients are used (the first only starts o), or the whole retain set if smaller,
    with N kept as the normaliser. `scale` is the reference's `--alpha` (RUM README: `--unlearn
    wfisher --alpha ${alpha}`, arg_parser default 0.2). There is no clamp: the step is exactly
    proportional to `scale`.

    Deviations from the reference: the per-example retain gradients are taken in a seeded random
    order of the retain set (the reference took the first N + 2 retain examples in dataset order,
    which for a class-sorted dataset such as an ImageFolder tree are all of one class), and they are
    computed in vmap chunks (the recursion itself is sequential, as in the reference). Gradients are
    taken in eval mode on the plain images; batch-norm statistics are not changed. `batch_size` only
    sets how many examples the mean gradients process at once.

    The retain guard (`RetainGuard`, `max_retain_drop`, 1 = off): when the step at `scale` costs the
    retain sample more than `max_retain_drop` of accuracy, the step is halved until it does not (at
    most `GUARD_HALVINGS` times; then no step, the model unchanged); the scale used is logged as
    `unlearn/scale_used`. Below the guard the step is exactly proportional to `scale`, and v is
    proportional to n_f / n, so the same `scale` does less on a smaller forget set.

    Batches and the measurements behind the defaults: docs/algorithms.md, "influence".
    """
    n_f, n_r = len(data.forget_ids), len(data.retain_ids)
    n = n_f + n_r
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n_r, generator=gen).to(data.device)
    count, n_mean = _influence_samples(n_f, n_r, fisher_samples, meter)
    positions = order[:count]
    g_f = _mean_gradients(model, data, data.forget, batch_size)
    # The mean retain gradient over all of retain, or over a seeded sample of it when a budget
    # would not pay for a whole pass (an unbiased estimate; cost then follows the budget).
    g_r = _mean_gradients(model, data, data.retain if n_mean == n_r else data.retain.subset(order[:n_mean]), batch_size)
    v = torch.cat([((g_f[k] - g_r[k]) * (n_f / n)).reshape(-1) for k in names])
    N = float(fisher_samples)
    k_vec, o_vec = v.clone(), None
    if meter is not None:  # vmap hides the batch from the meter's hook: charged here, one pass per example
        meter.charge(count, gradient=True)
    with meter.paused() if meter is not None else contextlib.nullcontext():
        for g in _flat_per_example_gradients(model, data, data.retain, positions, names):
            if o_vec is None:
                o_vec = g.clone()
                continue
            tmp = torch.dot(o_vec, g)
            k_vec -= (torch.dot(k_vec, g) / (N + tmp)) * o_vec
            o_vec -= (tmp / (N + tmp)) * o_vec
    named = dict(model.named_parameters())
    guard = RetainGuard(model, data, max_retain_drop, seed)
    base = {k: named[k].detach().clone() for k in names}
    used, halvings = float(scale), 0
    while True:
        _set_along(named, names, base, k_vec, used)
        if guard.holds(model):
            break
        if halvings == GUARD_HALVINGS:  # even the smallest step tried costs retain accuracy: no step
            used = 0.0
            _set_along(named, names, base, k_vec, used)
            break
        used, halvings = used / 2, halvings + 1
    if halvings and log is not None:
        _log_guard(log, guard, halvings=halvings)
    if log is not None and n_mean < n_r:
        log.log_metrics({"unlearn/retain_gradient_samples": float(n_mean)}, step=0)
    weight_norm = torch.sqrt(sum(named[k].detach().pow(2).sum() for k in names)).item()
    if log is not None:
        log.log_metrics({"unlearn/step_norm": used * k_vec.norm().item(), "unlearn/v_norm": v.norm().item(),
                         "unlearn/weight_norm": weight_norm, "unlearn/fisher_samples": float(count),
                         "unlearn/scale_used": used}, step=0)
    return model


def _influence_samples(n_f: int, n_r: int, fisher_samples: int, meter: ComputeMeter | None) -> tuple[int, int]:
    """(per-example retain gradients for the Fisher recursion, retain examples in the mean retain
    gradient) that influence can afford: N + 2 and all of retain without a limit; under a limit,
    after the forget set's pass, the recursion gets at most half of what is left and the mean the rest."""
    count = min(fisher_samples + 2, n_r)
    remaining = None if meter is None else meter.remaining
    if remaining is None:
        return count, n_r
    ensure_passes(n_f + 2, meter, algorithm="influence",
                  what="one gradient pass over forget and at least one retain example for each estimate")
    left = remaining - n_f
    count = max(1, min(count, left // 2))
    return count, max(1, min(n_r, left - count))


GUARD_HALVINGS = 8  # influence's step is halved at most this often (to 1/256 of `scale`) before none is taken


def _set_along(named: dict, names: list[str], base: dict, direction: torch.Tensor, step: float) -> None:
    """Parameters = base + step * direction (the flat direction laid out in `names` order)."""
    start = 0
    with torch.no_grad():
        for k in names:
            p = named[k]
            p.copy_(base[k]).add_(direction[start:start + p.numel()].view_as(p), alpha=step)
            start += p.numel()


@ALGORITHMS.register("retrain", exact=True)
def retrain(model: nn.Module, data: UnlearnData, *, epochs_fraction: float = 1.0, seed: int = 0,
            log: MetricLogger | None = None, meter: ComputeMeter | None = None) -> nn.Module:
    """Retrain from scratch on the retain set: the exact answer, and the reference every metric is
    measured against.

    With `data.recipe` (a `TrainRecipe`, how the source model was made) this is exactly what the
    pipeline's retrained reference does (`mlflow_unlearn.references.retrain`), through the same
    function (`training.retrain_from_scratch`, the package's one retrain): `recipe.build(seed)` (a
    fresh model of the source architecture) trained with `recipe.config`, its seed replaced by
    `seed`, on the retain ids. Its augmentation is the recipe's (the source training's),
    not `UnlearnData.augment`, and the batch-size rule of the unlearning algorithms does not apply.

    Without a recipe it falls back to `TrainConfig()` defaults (30 epochs, lr 0.1, batch 128, the
    paper's recipe) with the seed replaced, on the given model re-initialised by calling
    `reset_parameters()` on every submodule that has one, under `torch.manual_seed(seed)`: a
    model's own custom initialisation (for example the Kaiming-normal convolutions of `CifarResNet`)
    is not replayed, and parameters owned by modules without `reset_parameters` are kept (a
    RuntimeWarning names them). Pass a recipe for a faithful retrain.

    The one hyperparameter, `epochs_fraction` in (0, 1], shortens the recipe: the run trains
    `max(1, round(epochs_fraction * epochs))` epochs with the same per-step cosine schedule over
    that shorter run (a cheaper, approximate retrain; 1.0 = the recipe exactly)."""
    if data.recipe is not None:
        net, base = None, data.recipe.config
    else:
        net = model
        owned = set()
        with seeded(seed, data.device):
            for module in net.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
                    owned.update(id(p) for p in module.parameters(recurse=False))
        kept = [k for k, p in net.named_parameters() if id(p) not in owned]
        if kept:
            warnings.warn(f"retrain: parameters {kept[:5]}{'...' if len(kept) > 5 else ''} belong to modules without "
                          f"reset_parameters() and keep their trained values", RuntimeWarning, stacklevel=2)
        base = TrainConfig()
    epochs = base.epochs if epochs_fraction >= 1.0 else max(1, round(epochs_fraction * base.epochs))
    config = dataclasses.replace(base, seed=int(seed), epochs=epochs)
    batch = config.batch_size
    _log_plan(log, batch_size=batch, steps=_steps(len(data.retain_ids), batch) * epochs)
    # The recipe's architecture from scratch (the package's one retrain), or the re-initialised model.
    build = data.recipe.build if net is None else (lambda _seed: net)
    # Counted here, whichever model it trains (the watched copy or a fresh one): train_model passes
    # every retain example once per epoch.
    with meter.paused() if meter is not None else contextlib.nullcontext():
        net = retrain_from_scratch(build, config, data.data, data.retain_ids, seed=seed, log=_Renamed(log),
                                   progress=_progress())
    if meter is not None:
        meter.charge(epochs * len(data.retain_ids), gradient=True)
    return net


def _progress() -> bool:
    return progress_enabled()


class _Renamed:
    """train_model's `train/loss`, `train/acc`, `time/epoch_s` as `unlearn/loss`, `unlearn/acc`,
    `unlearn/epoch_s`, like every other algorithm's keys."""

    def __init__(self, log):
        self.log = log

    def log_metrics(self, metrics, step=None):
        if self.log is not None:
            self.log.log_metrics({"unlearn/" + k.split("/", 1)[-1]: v for k, v in metrics.items()}, step=step)

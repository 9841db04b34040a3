"""The built-in unlearning algorithms (DESIGN.md section 2).

Defaults follow the commands in the RUM repository's README (github.com/kairanzhao/RUM, which
builds on the SalUn code, github.com/OPTML-Group/Unlearn-Saliency, and SCRUB,
github.com/meghdadk/SCRUB): SGD with momentum 0.9 and weight decay 5e-4, batch size 128.
Where this implementation differs from that code on purpose, the docstring says so. Two
differences hold for every iterative algorithm here:

- the learning rate decays per step with a cosine to 0 over the run (the same schedule as
  `mlflow_unlearn.training`); the papers' code kept it constant, because its step-decay milestones
  (epochs 91 and 136) lie beyond the 5-10 unlearning epochs. The mean rate is therefore half the
  peak; searches tune `lr` anyway.
- training batches are augmented (crop + flip) when the dataset's `augment` says so, as the papers'
  code did with its train transforms; the one-shot estimates (the SalUn mask, the influence
  gradients and Fisher) use the plain images.

Every algorithm has the signature `fn(model, data, *, <hyperparameters>, seed=0, log=None)`, may
change `model` in place and returns the unlearned model. Use `run_algorithm`, which validates the
hyperparameters and works on a copy.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import MetricLogger
from ..training import TrainConfig, train_model
from ._base import ALGORITHMS, Loop, UnlearnData, seeded


def _steps(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


# --------------------------------------------------------------------------------------------------


@ALGORITHMS.register("none")
def none(model: nn.Module, data: UnlearnData, *, seed: int = 0, log: MetricLogger | None = None) -> nn.Module:
    """Do nothing: a copy of the model. The RUM paper found this best for low-memorisation tiers."""
    return copy.deepcopy(model)


@ALGORITHMS.register("finetune")
def finetune(model: nn.Module, data: UnlearnData, *, lr: float = 0.01, epochs: int = 10, batch_size: int = 128,
             momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
             log: MetricLogger | None = None) -> nn.Module:
    """Fine-tune (FT): cross-entropy on the retain set only; forgetting comes from catastrophic
    forgetting. RUM README: `--unlearn FT --unlearn_lr 0.01 --unlearn_epochs 10`."""
    return _retain_training(model, data, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                            weight_decay=weight_decay, alpha_l1=0.0, seed=seed, log=log, desc="finetune")


@ALGORITHMS.register("l1_sparse")
def l1_sparse(model: nn.Module, data: UnlearnData, *, lr: float = 0.01, epochs: int = 10, batch_size: int = 128,
              alpha_l1: float = 5e-4, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
              log: MetricLogger | None = None) -> nn.Module:
    """l1-sparse (Jia et al., "Model sparsity can simplify machine unlearning", 2023): fine-tune on
    retain with `alpha_l1 * sum|w|` over all weights added to the loss, the coefficient decaying
    linearly to 0 over the run. The SalUn/RUM code (`FT_prune`, `FT_l1`) decays it per epoch; here
    per step. RUM README: `--unlearn FT_prune --alpha ${alpha} --unlearn_lr 0.01 --unlearn_epochs 10`
    leaves the coefficient to a search; 5e-4 is a starting point, not a value taken from the paper."""
    return _retain_training(model, data, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                            weight_decay=weight_decay, alpha_l1=alpha_l1, seed=seed, log=log, desc="l1_sparse")


def _retain_training(model, data, *, lr, epochs, batch_size, momentum, weight_decay, alpha_l1, seed, log, desc):
    retain = data.retain
    steps = _steps(len(retain), batch_size)
    loop = Loop(model, data, lr=lr, total_steps=steps * epochs, momentum=momentum, weight_decay=weight_decay,
                seed=seed, log=log, desc=desc)
    params = [p for p in model.parameters() if p.requires_grad]

    def add_l1():  # the L1 subgradient, added directly (same as differentiating alpha * sum|w|)
        coef = alpha_l1 * (1.0 - loop.progress())
        if coef > 0:
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.grad.add_(torch.sign(p), alpha=coef)

    for epoch in range(epochs):
        loop.start_epoch(epoch, epochs, steps)
        for pos in loop.batches(len(retain), batch_size):
            loss = F.cross_entropy(loop.forward(loop.inputs(retain, pos)), retain.y[pos])
            loop.record("loss", loss, len(pos))
            loop.step(loss, before_step=add_l1 if alpha_l1 > 0 else None)
        loop.end_epoch(epoch)
    return model


@ALGORITHMS.register("neggrad")
def neggrad(model: nn.Module, data: UnlearnData, *, lr: float = 1e-4, epochs: int = 5, batch_size: int = 128,
            momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
            log: MetricLogger | None = None) -> nn.Module:
    """NegGrad (gradient ascent, GA): maximise cross-entropy on the forget set, nothing else.
    RUM README: `--unlearn GA --unlearn_lr 0.0001 --unlearn_epochs 5`. Unbounded by nature: with a
    large `lr` it destroys the model, which is what makes `lr` the parameter to search."""
    forget = data.forget
    steps = _steps(len(forget), batch_size)
    loop = Loop(model, data, lr=lr, total_steps=steps * epochs, momentum=momentum, weight_decay=weight_decay,
                seed=seed, log=log, desc="neggrad")
    for epoch in range(epochs):
        loop.start_epoch(epoch, epochs, steps)
        for pos in loop.batches(len(forget), batch_size):
            ce = F.cross_entropy(loop.forward(loop.inputs(forget, pos)), forget.y[pos])
            loop.record("forget_loss", ce, len(pos))
            loop.step(-ce)
        loop.end_epoch(epoch)
    return model


@ALGORITHMS.register("neggrad_plus")
def neggrad_plus(model: nn.Module, data: UnlearnData, *, lr: float = 0.01, epochs: int = 5, batch_size: int = 128,
                 alpha: float = 0.99, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
                 log: MetricLogger | None = None) -> nn.Module:
    """NegGrad+ (Kurmanji et al., SCRUB paper): per step, `alpha * CE(retain batch) - (1 - alpha) *
    CE(forget batch)`. An epoch is one pass over retain; forget batches are drawn from a forget order
    that is reshuffled on every pass (fresh batches, where the RUM code's `itertools.cycle` replayed
    the first pass's cached batches). RUM README: `--unlearn NG --alpha ${alpha} --unlearn_lr 0.01
    --unlearn_epochs 5` leaves alpha to a search; 0.99 (retain term dominant) is the starting point."""
    retain, forget = data.retain, data.forget
    steps = _steps(len(retain), batch_size)
    loop = Loop(model, data, lr=lr, total_steps=steps * epochs, momentum=momentum, weight_decay=weight_decay,
                seed=seed, log=log, desc="neggrad_plus")
    forget_batches = loop.cycle(len(forget), batch_size)
    for epoch in range(epochs):
        loop.start_epoch(epoch, epochs, steps)
        for pos in loop.batches(len(retain), batch_size):
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


@ALGORITHMS.register("scrub")
def scrub(model: nn.Module, data: UnlearnData, *, lr: float = 5e-3, epochs: int = 5, max_steps: int = 4,
          temperature: float = 4.0, gamma: float = 0.99, beta: float = 0.001, batch_size: int = 128,
          momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
          log: MetricLogger | None = None) -> nn.Module:
    """SCRUB (Kurmanji et al., "Towards unbounded machine unlearning", NeurIPS 2023): a student
    (the model) and a frozen teacher (the original). Each epoch, while `epoch < max_steps`, one pass
    over forget *maximising* the KL divergence from the teacher at `temperature`; then one pass over
    retain minimising `gamma * CE + beta * KL`. One optimiser for both. RUM README: `--unlearn SCRUB
    --msteps 4 --kd_T 4.0 --unlearn_lr 5e-3 --unlearn_epochs 5`; gamma 0.99 and beta (SCRUB's
    `alpha`, the KL weight) 0.001 are SCRUB's own defaults."""
    retain, forget = data.retain, data.forget
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    r_steps, f_steps = _steps(len(retain), batch_size), _steps(len(forget), batch_size)
    max_epochs = min(max_steps, epochs)
    loop = Loop(model, data, lr=lr, total_steps=r_steps * epochs + f_steps * max_epochs, momentum=momentum,
                weight_decay=weight_decay, seed=seed, log=log, desc="scrub")
    for epoch in range(epochs):
        loop.start_epoch(epoch, epochs, r_steps + (f_steps if epoch < max_steps else 0))
        if epoch < max_steps:
            for pos in loop.batches(len(forget), batch_size):
                x = loop.inputs(forget, pos)
                with torch.no_grad():
                    t = loop.forward(x, teacher)
                kl = _distill_kl(loop.forward(x), t, temperature)
                loop.record("forget_kl", kl, len(pos))
                loop.step(-kl)
        for pos in loop.batches(len(retain), batch_size):
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
                           mask=None):
    if data.num_classes < 2:
        raise ValueError(f"{desc} needs at least 2 classes to relabel the forget set")
    forget, retain = data.forget, data.retain
    n_f, n = len(forget), len(forget) + len(retain)
    pool_ids = torch.cat([data.forget_ids, data.retain_ids])
    train = data.data.train
    steps = _steps(n, batch_size)
    # With a mask, weight decay is added to the gradient before masking (so frozen weights stay
    # exactly frozen); the optimiser itself then runs without weight decay.
    loop = Loop(model, data, lr=lr, total_steps=steps * epochs, momentum=momentum,
                weight_decay=0.0 if mask is not None else weight_decay, seed=seed, log=log, desc=desc)
    named = [(p, mask[k]) for k, p in model.named_parameters() if mask is not None and k in mask]

    def apply_mask():
        with torch.no_grad():
            for p, m in named:
                if p.grad is not None:
                    if weight_decay:
                        p.grad.add_(p, alpha=weight_decay)
                    p.grad.mul_(m)

    for epoch in range(epochs):
        loop.start_epoch(epoch, epochs, steps)
        labels = torch.cat([_wrong_labels(forget.y, data.num_classes, loop.gen), retain.y])  # fresh every epoch
        for pos in loop.batches(n, batch_size):
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


@ALGORITHMS.register("random_label")
def random_label(model: nn.Module, data: UnlearnData, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 128,
                 momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
                 log: MetricLogger | None = None) -> nn.Module:
    """Random labelling (RL): the forget set relabelled at random, trained together with the retain
    set in shuffled mixed batches. Labels are drawn afresh each epoch, uniformly among the wrong
    classes (the RUM code drew among all classes, so about 1/C of them kept their true label).
    RUM README: `--unlearn RL_og --unlearn_lr 0.1 --unlearn_epochs 10` (ResNet-18, CIFAR); on
    small data and models 0.01-0.1 works."""
    return _random_label_training(model, data, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                                  weight_decay=weight_decay, seed=seed, log=log, desc="random_label")


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


@ALGORITHMS.register("salun")
def salun(model: nn.Module, data: UnlearnData, *, lr: float = 0.1, epochs: int = 10, batch_size: int = 128,
          mask_fraction: float = 0.5, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
          log: MetricLogger | None = None) -> nn.Module:
    """SalUn (Fan et al., "SalUn: empowering machine unlearning via gradient-based weight saliency",
    ICLR 2024): random labelling with the gradients (and weight decay) masked to the `mask_fraction`
    of weights with the largest |gradient of the forget loss|; the other weights stay exactly as
    they were. The mask is computed first, without changing the weights or batch-norm statistics
    (the SalUn script took optimiser steps while accumulating the gradients). RUM README:
    `generate_mask.py` then `--unlearn RL --unlearn_lr 0.1 --unlearn_epochs 10`; 0.5 is SalUn's
    default sparsity."""
    mask = saliency_mask(model, data, mask_fraction, batch_size=batch_size)
    return _random_label_training(model, data, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                                  weight_decay=weight_decay, seed=seed, log=log, desc="salun", mask=mask)


def _fisher_diagonal(model: nn.Module, data: UnlearnData, positions: torch.Tensor,
                     memory_bytes: int = 1 << 30) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean of squared per-example gradients of the cross-entropy
    over the retain examples at `positions`, eval mode, plain images (torch.func.vmap, with a
    one-example-at-a-time fallback for models vmap cannot handle)."""
    from torch.func import functional_call, grad, vmap

    retain = data.retain
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    n_params = sum(p.numel() for p in params.values())
    chunk = int(max(1, min(64, memory_bytes // max(4 * n_params, 1))))  # per-example grads held at once
    named = dict(model.named_parameters())
    was_training = model.training
    model.eval()

    def loss_one(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out.float(), y.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    try:
        use_vmap = True
        for i in range(0, len(positions), chunk):
            pos = positions[i:i + chunk]
            x, y = data.data.normalize(retain.x[pos]), retain.y[pos]
            if use_vmap:
                try:
                    g = per_example(params, x, y)
                    for k in names:
                        fisher[k] += g[k].pow(2).sum(0)
                    continue
                except (RuntimeError, NotImplementedError):
                    use_vmap = False
            for j in range(len(pos)):
                loss = F.cross_entropy(model(x[j:j + 1]).float(), y[j:j + 1])
                gs = torch.autograd.grad(loss, [named[k] for k in names], allow_unused=True)
                for k, gk in zip(names, gs):
                    if gk is not None:
                        fisher[k] += gk.pow(2)
    finally:
        model.train(was_training)
    return {k: f / len(positions) for k, f in fisher.items()}


@ALGORITHMS.register("influence")
def influence(model: nn.Module, data: UnlearnData, *, scale: float = 1.0, damping: float = 1e-3,
              fisher_samples: int = 1000, max_change_fraction: float = 0.01, batch_size: int = 128, seed: int = 0,
              log: MetricLogger | None = None) -> nn.Module:
    """Influence unlearning (IU; Koh & Liang 2017, Izzo et al. 2021; `wfisher` in the SalUn/RUM
    code): one Newton-style step that removes the forget set's first-order influence,

        w <- w + scale * (F + damping)^-1 v,   v = (n_f / n) * (mean forget grad - mean retain grad)

    with F the diagonal empirical Fisher (mean squared per-example gradient) estimated on
    `fisher_samples` random retain examples. The SalUn/RUM code used the same v with a WoodFisher
    inverse-Hessian estimate from 1,000 retain examples (RUM README: `--unlearn wfisher --alpha
    ${alpha}`, alpha default 0.2); the diagonal is far cheaper and the damping keeps it well posed.
    The step is clamped: if its L2 norm exceeds `max_change_fraction` of the weights' L2 norm it
    is scaled down to that, so no setting can blow the model up in one step. On a model that fits
    its training set the gradients are tiny, the diagonal Newton step is large and the clamp is what
    sets the step length (the logged `unlearn/step_clamped` says so); a 1% default measured on
    digits small CNNs removed a forgotten class while keeping retain accuracy, 2% already cost
    retain accuracy, 10% destroyed the model. Search `max_change_fraction` (and `damping`) rather
    than `scale`. Batch-norm statistics are not changed.
    """
    n_f, n_r = len(data.forget_ids), len(data.retain_ids)
    n = n_f + n_r
    g_f = _mean_gradients(model, data, data.forget, batch_size)
    g_r = _mean_gradients(model, data, data.retain, batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    k = min(fisher_samples, n_r)
    positions = torch.randperm(n_r, generator=gen)[:k].to(data.device)
    fisher = _fisher_diagonal(model, data, positions)
    named = {k_: p for k_, p in model.named_parameters() if p.requires_grad}
    delta = {k_: scale * (n_f / n) * (g_f[k_] - g_r[k_]) / (fisher[k_] + damping) for k_ in named}
    step_norm = torch.sqrt(sum(d.pow(2).sum() for d in delta.values())).item()
    weight_norm = torch.sqrt(sum(p.detach().pow(2).sum() for p in named.values())).item()
    limit = max_change_fraction * weight_norm
    factor = 1.0 if step_norm <= limit or step_norm == 0 else limit / step_norm
    with torch.no_grad():
        for k_, p in named.items():
            p.add_(delta[k_], alpha=factor)
    if log is not None:
        log.log_metrics({"unlearn/step_norm": step_norm * factor, "unlearn/step_clamped": float(factor < 1.0),
                         "unlearn/weight_norm": weight_norm}, step=0)
    return model


@ALGORITHMS.register("retrain")
def retrain(model: nn.Module, data: UnlearnData, *, epochs: int = 30, lr: float = 0.1, batch_size: int = 128,
            momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
            log: MetricLogger | None = None) -> nn.Module:
    """Retrain from scratch on the retain set: the exact answer, and the reference every metric is
    measured against. Same recipe as the original training (`mlflow_unlearn.training.train_model`,
    defaults of `TrainConfig`: 30 epochs, lr 0.1, the paper's recipe). The weights are
    re-initialised by calling `reset_parameters()` on every submodule that has one, under
    `torch.manual_seed(seed)`; a model's own custom initialisation (for example the Kaiming-normal
    convolutions of `CifarResNet`) is not replayed, and parameters owned by modules without
    `reset_parameters` are kept (a RuntimeWarning names them)."""
    owned = set()
    with seeded(seed, data.device):
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                owned.update(id(p) for p in module.parameters(recurse=False))
    kept = [k for k, p in model.named_parameters() if id(p) not in owned]
    if kept:
        warnings.warn(f"retrain: parameters {kept[:5]}{'...' if len(kept) > 5 else ''} belong to modules without "
                      f"reset_parameters() and keep their trained values", RuntimeWarning, stacklevel=2)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                         weight_decay=weight_decay, seed=seed)
    train_model(model, data.data, config, train_ids=data.retain_ids, log=_Renamed(log), progress=_progress(),
                eval_test=False, desc="retrain")
    return model


def _progress() -> bool:
    from ._base import progress_enabled

    return progress_enabled()


class _Renamed:
    """train_model's `train/loss`, `train/acc`, `time/epoch_s` as `unlearn/loss`, `unlearn/acc`,
    `unlearn/epoch_s`, like every other algorithm's keys."""

    def __init__(self, log):
        self.log = log

    def log_metrics(self, metrics, step=None):
        if self.log is not None:
            self.log.log_metrics({"unlearn/" + k.split("/", 1)[-1]: v for k, v in metrics.items()}, step=step)

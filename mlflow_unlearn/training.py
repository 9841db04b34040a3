"""Training: SGD with momentum and weight decay, a per-step cosine schedule, tensor-resident data.

The same loop trains the original model (recording per-example confidences for free), the
retrained reference (on the retain ids only) and the fine-tuning style unlearning algorithms.

`sgd` uses Nesterov momentum whenever momentum > 0 (`nesterov=momentum > 0`); the RUM/SalUn
papers' code used plain (heavy-ball) momentum SGD. Every optimiser in the package (training, the
retrained reference, the unlearning algorithms' `Loop`) goes through it or the same setting.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .confidences import ConfidenceRecorder
from .data import ImageData, Split, augment_batch
from .progress import MetricLogger, NullLogger, ProgressBar


class TrainConfigError(ValueError):
    """A training setting out of range; the message names it and the valid range."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 0.1  # peak learning rate at batch_size examples per step, cosine-decayed to 0 per step
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0  # model init, shuffling and augmentation
    augment: bool | None = None  # None: what suits the dataset (crop+flip for CIFAR-like images)
    label_smoothing: float = 0.0
    amp: bool | None = None  # bf16 autocast; None: on for CUDA, off on the CPU

    def __post_init__(self):
        def bad(name, value, want):
            raise TrainConfigError(f"{name} must be {want}, got {value!r}")

        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs <= 0:
            bad("epochs", self.epochs, "a positive integer")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", self.lr, "a positive number (e.g. 0.1)")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            bad("batch_size", self.batch_size, "a positive integer")
        if not 0.0 <= self.momentum < 1.0:
            bad("momentum", self.momentum, "in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", self.weight_decay, "non-negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad("label_smoothing", self.label_smoothing, "a fraction in [0, 1)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine decay from the optimiser's lr to 0 over `total_steps`."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def use_amp(amp: bool | None, device: torch.device) -> bool:
    return (device.type == "cuda") if amp is None else bool(amp)


def batches(n: int, batch_size: int, generator: torch.Generator, device, *, shuffle: bool = True, drop_last: bool = False):
    """Yield index tensors covering range(n) in a seeded random order."""
    order = torch.randperm(n, generator=generator, device=generator.device).to(device) if shuffle else torch.arange(n, device=device)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]


def make_generator(seed: int, device) -> torch.Generator:
    device = torch.device(device)
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    g.manual_seed(int(seed))
    return g


def train_model(
    model: nn.Module,
    data: ImageData,
    config: TrainConfig,
    *,
    train_ids: torch.Tensor | None = None,
    recorder: ConfidenceRecorder | None = None,
    log: MetricLogger | None = None,
    progress: bool = True,
    eval_test: bool = True,
    on_batch: Callable[..., None] | None = None,
    desc: str = "train",
    heldout: Split | None = None,
    heldout_recorder: ConfidenceRecorder | None = None,
) -> list[dict]:
    """Train `model` in place on `data.train` (or on the ids `train_ids` of it) and return per-epoch
    records: loss, train accuracy (on the augmented training batches), test accuracy, seconds.

    With a `recorder`, each batch's training logits are recorded under the examples' ids.
    `on_batch(model=, ids=, inputs=, labels=, logits=, epoch=)` is called after the forward pass and
    before the optimiser step; tests use it to check what was recorded.

    With `heldout` (a split never trained on, e.g. `data.val`) and `heldout_recorder`
    (ConfidenceRecorder(len(heldout))), the eval-mode logits of the held-out split are recorded after
    every epoch under ids 0..len(heldout)-1: the "held-out C-proxy" the acceptance gate matches by
    rank when no calibration reference exists (gate.heldout_never_seen). One eval pass per epoch,
    not counted in `time/epoch_s`.
    """
    if (heldout is None) != (heldout_recorder is None):
        raise TrainConfigError("heldout and heldout_recorder go together: pass both or neither")
    if heldout is not None and heldout_recorder.n_samples != len(heldout):
        raise TrainConfigError(f"heldout_recorder has {heldout_recorder.n_samples} slots but the held-out split has "
                               f"{len(heldout)} examples; use ConfidenceRecorder(len(heldout))")
    log = log or NullLogger()
    device = data.device
    model.to(device)
    train = data.train if train_ids is None else data.train.subset(torch.as_tensor(train_ids, device=device))
    if len(train) == 0:
        raise TrainConfigError("the training set is empty")
    augment = data.augment if config.augment is None else config.augment
    amp = use_amp(config.amp, device)
    gen = make_generator(config.seed, device)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    opt = sgd(model, config.lr, config.momentum, config.weight_decay)
    sched = cosine_schedule(opt, steps_per_epoch * config.epochs)
    history = []
    for epoch in range(config.epochs):
        model.train()
        t0 = time.perf_counter()
        bar = ProgressBar(steps_per_epoch, f"{desc} epoch {epoch + 1}/{config.epochs}", enabled=progress)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for idx in batches(len(train), config.batch_size, gen, device):
            x = data.normalize(train.x[idx])
            if augment:
                x = augment_batch(x, generator=gen)
            y = train.y[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            if recorder is not None:
                recorder.update(train.ids[idx], logits, y)
            if on_batch is not None:
                on_batch(model=model, ids=train.ids[idx], inputs=x, labels=y, logits=logits, epoch=epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            bar.update()
        if recorder is not None:
            recorder.end_epoch()
        seconds = time.perf_counter() - t0  # training time only; evaluation is not counted
        record = {"epoch": epoch, "train/loss": loss_sum.item() / len(train), "train/acc": correct.item() / len(train),
                  "time/epoch_s": seconds}
        if eval_test:
            record["test/acc"] = accuracy(model, data, data.test)
        if heldout is not None and len(heldout):
            heldout_recorder.update(torch.arange(len(heldout), device=device), predict_logits(model, data, heldout),
                                    heldout.y)  # eval mode; predict_logits restores train mode
            heldout_recorder.end_epoch()
        bar.close(**{k: v for k, v in record.items() if k != "epoch"})
        log.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        history.append(record)
    return history


def retrain_from_scratch(build: Callable[[int], nn.Module], config: TrainConfig, data: ImageData, retain_ids, *,
                         seed: int, log: MetricLogger | None = None, progress: bool = False,
                         desc: str = "retrain") -> nn.Module:
    """The exact answer to a deletion request, and the one retrain of the package (the retrained
    reference, the calibration reference, the `retrain` algorithm and the benchmarks all call it):
    `build(seed)` (a freshly initialised model of the source's architecture) trained with the
    source's recipe `config`, its seed replaced by `seed`, on the train ids `retain_ids` only.
    Returns the model on the data's device, in train mode as training left it."""
    net = build(int(seed))
    if not isinstance(net, nn.Module):
        raise TypeError(f"retrain: build({seed}) returned {type(net).__name__}, not a torch.nn.Module")
    net = net.to(data.device)
    retain = torch.as_tensor(retain_ids, dtype=torch.long, device=data.device)
    train_model(net, data, dataclasses.replace(config, seed=int(seed)), train_ids=retain, log=log, progress=progress,
                eval_test=False, desc=desc)
    return net


@torch.no_grad()
def eval_outputs(model: nn.Module, data: ImageData, split: Split, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 *, batch_size: int = 1024, amp: bool | None = None) -> torch.Tensor:
    """`forward(batch)` (default: the model itself) over a split in eval mode and large batches,
    as float32 [N, ...]. The model's train/eval mode is restored afterwards."""
    forward = forward or model
    was_training = model.training
    model.eval()
    amp = use_amp(amp, data.device)
    out = []
    try:
        for i in range(0, len(split), batch_size):
            with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=amp):
                out.append(forward(data.normalize(split.x[i:i + batch_size])).float())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=data.device)


def predict_logits(model: nn.Module, data: ImageData, split: Split, *, batch_size: int = 1024, amp: bool | None = None) -> torch.Tensor:
    """Eval-mode logits [N, classes] (float32) for a split."""
    if len(split) == 0:
        return torch.empty(0, data.num_classes, device=data.device)
    return eval_outputs(model, data, split, batch_size=batch_size, amp=amp)


def accuracy(model: nn.Module, data: ImageData, split: Split) -> float:
    if len(split) == 0:
        return float("nan")
    return (predict_logits(model, data, split).argmax(1) == split.y).float().mean().item()



def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use device=cpu or auto")
    return torch.device(device)

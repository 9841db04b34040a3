"""Example mlflow-unlearn algorithm plugin (registered by the entry point in pyproject.toml)."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from mlflow_unlearn.algorithms import Loop, UnlearnData
from mlflow_unlearn.progress import MetricLogger


def ascent_then_repair(model: nn.Module, data: UnlearnData, *, ascent_steps: int = 5, ascent_lr: float = 0.01,
                       repair_epochs: int = 1, repair_lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                       log: MetricLogger | None = None) -> nn.Module:
    """`ascent_steps` steps of gradient ascent on forget batches (pushing the forget loss up), then
    `repair_epochs` epochs of cross-entropy on the retain set to repair what the ascent broke."""
    forget, retain = data.forget, data.retain
    if ascent_steps > 0:
        ascent = Loop(model, data, lr=ascent_lr, total_steps=ascent_steps, seed=seed, log=log, desc="ascent")
        ascent.start_epoch(0, 1, ascent_steps)
        batches = ascent.cycle(len(forget), batch_size)
        for _ in range(ascent_steps):
            pos = next(batches)
            ce = F.cross_entropy(ascent.forward(ascent.inputs(forget, pos)), forget.y[pos])
            ascent.record("forget_loss", ce, len(pos))
            ascent.step(-ce)
        ascent.end_epoch(0)  # logs unlearn/forget_loss at step 0
    steps = math.ceil(len(retain) / batch_size)
    repair = Loop(model, data, lr=repair_lr, total_steps=steps * repair_epochs, seed=seed + 1, log=log, desc="repair")
    for epoch in range(repair_epochs):
        repair.start_epoch(epoch, repair_epochs, steps)
        for pos in repair.batches(len(retain), batch_size):
            loss = F.cross_entropy(repair.forward(repair.inputs(retain, pos)), retain.y[pos])
            repair.record("retain_loss", loss, len(pos))
            repair.step(loss)
        repair.end_epoch(1 + epoch)
    return model

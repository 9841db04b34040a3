"""Per-example confidences recorded during training, and the memorisation proxies derived from them.

The C-proxy of example i (docs/design.md section 2) is the mean over training epochs of the softmax
probability of its true class, taken from the training forward pass of i's minibatch: no extra
pass. Low C-proxy = high memorisation. In the same pass we also record the max-class probability,
the entropy of the prediction, and whether it was correct (the "learning events" proxy).

`ConfidenceRecorder` is a small public API for teams that train with their own loop::

    recorder = ConfidenceRecorder(n_samples=len(train_set))
    for epoch in range(epochs):
        for ids, x, y in loader:          # ids: each example's index in the train set
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            recorder.update(ids, logits, y)
            ...
        recorder.end_epoch()
    scores = recorder.proxies()            # {"c_proxy": array[n_samples], ...}

and `mlflow_unlearn.tracking.log_confidences(recorder)` logs the same artifacts the `train` step does.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import torch

PROXY_NAMES = ("c_proxy", "max_conf", "entropy", "learning_events")


class ConfidenceRecorder:
    """Records, per epoch and per example id, true-class probability, max-class probability,
    prediction entropy (nats) and correctness. Buffers live on the logits' device, so recording is a
    few indexed writes per batch and never a host sync."""

    def __init__(self, n_samples: int):
        if n_samples <= 0:
            raise ValueError(f"n_samples must be positive, got {n_samples}")
        self.n_samples = int(n_samples)
        self._epochs: list[dict[str, torch.Tensor]] = []
        self._current: dict[str, torch.Tensor] | None = None

    def _row(self, device) -> dict[str, torch.Tensor]:
        if self._current is None:
            nan = lambda: torch.full((self.n_samples,), float("nan"), device=device)
            self._current = {"true_prob": nan(), "max_prob": nan(), "entropy": nan(), "correct": nan()}
        return self._current

    @torch.no_grad()
    def update(self, ids, logits: torch.Tensor, labels) -> None:
        """Record one minibatch: `ids` are the examples' ids (0..n_samples-1), `logits` [B, classes]
        from the training forward pass, `labels` [B] the true classes."""
        logits = logits.detach().float()
        ids = torch.as_tensor(ids, device=logits.device, dtype=torch.long)
        labels = torch.as_tensor(labels, device=logits.device, dtype=torch.long)
        if ids.ndim != 1 or ids.shape[0] != logits.shape[0] or labels.shape != ids.shape:
            raise ValueError(f"ids {tuple(ids.shape)}, logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree in batch size")
        row = self._row(logits.device)
        log_p = torch.log_softmax(logits, dim=1)
        p = log_p.exp()
        row["true_prob"][ids] = p.gather(1, labels[:, None]).squeeze(1)
        max_p, pred = p.max(dim=1)
        row["max_prob"][ids] = max_p
        row["entropy"][ids] = -(p * log_p).sum(dim=1)
        row["correct"][ids] = (pred == labels).float()

    def end_epoch(self) -> None:
        """Close the current epoch. Examples not seen this epoch stay NaN and are skipped by the means."""
        if self._current is None:
            raise RuntimeError("end_epoch() called before any update() in this epoch")
        self._epochs.append({k: v.to("cpu") for k, v in self._current.items()})
        self._current = None

    @property
    def n_epochs(self) -> int:
        return len(self._epochs)

    def _stack(self, key: str) -> np.ndarray:
        if not self._epochs:
            raise RuntimeError("no completed epoch recorded; call end_epoch() after each epoch")
        return torch.stack([e[key] for e in self._epochs]).numpy()

    def true_class_prob(self) -> np.ndarray:
        """[epochs, n_samples] float32, indexed by example id."""
        return self._stack("true_prob")

    def history(self) -> dict[str, np.ndarray]:
        return {k: self._stack(k) for k in ("true_prob", "max_prob", "entropy", "correct")}

    def proxies(self) -> dict[str, np.ndarray]:
        return proxies_from_history(self.history())


def proxies_from_history(history: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean over epochs of each recorded quantity (NaN = not seen that epoch, ignored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an example never seen -> NaN, on purpose
        return {
            "c_proxy": np.nanmean(history["true_prob"], axis=0),
            "max_conf": np.nanmean(history["max_prob"], axis=0),
            "entropy": np.nanmean(history["entropy"], axis=0),
            "learning_events": np.nanmean(history["correct"], axis=0),
        }


HELDOUT_FILE = "heldout_true_class_prob.npy"  # [epochs, n_val] float16: the validation split, never trained on


def heldout_c_proxy(true_prob: np.ndarray) -> np.ndarray:
    """The held-out C-proxy: mean over epochs of the true-class probability of examples that were
    evaluated after every epoch but never trained on (float64 [n_heldout])."""
    true_prob = np.asarray(true_prob, dtype=np.float64)
    if true_prob.ndim != 2 or true_prob.shape[0] == 0 or true_prob.shape[1] == 0:
        raise ValueError(f"held-out confidences must be [epochs, n_heldout] with both > 0, got shape {true_prob.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(true_prob, axis=0)


def save_confidences(recorder: "ConfidenceRecorder | Mapping[str, np.ndarray]", folder, *,
                     heldout: "ConfidenceRecorder | np.ndarray | None" = None) -> dict[str, np.ndarray]:
    """Write a training run's confidences into `folder` (the layout of an original run's
    `confidences/` artifacts, docs/design.md section 4) and return the proxies:
    `true_class_prob.npy` float16 [epochs, n_train], `history.npz` (max_prob, entropy, correct;
    float16), `proxies.npz` float32 [n_train] and `proxies.csv` (one row per id, readable in the UI);
    with `heldout` (the recorder `training.train_model` filled on the validation split, or its
    [epochs, n_val] true-class probabilities) also `heldout_true_class_prob.npy` float16."""
    from pathlib import Path

    history = recorder.history() if isinstance(recorder, ConfidenceRecorder) else dict(recorder)
    proxies = proxies_from_history(history)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "true_class_prob.npy", history["true_prob"].astype(np.float16))
    np.savez_compressed(folder / "history.npz", **{k: history[k].astype(np.float16) for k in ("max_prob", "entropy", "correct")})
    np.savez(folder / "proxies.npz", **{k: v.astype(np.float32) for k, v in proxies.items()})
    rows = ["id," + ",".join(PROXY_NAMES)]
    rows += [f"{i}," + ",".join(f"{proxies[k][i]:.6f}" for k in PROXY_NAMES) for i in range(len(proxies["c_proxy"]))]
    (folder / "proxies.csv").write_text("\n".join(rows) + "\n")
    if heldout is not None:
        held = heldout.true_class_prob() if isinstance(heldout, ConfidenceRecorder) else np.asarray(heldout)
        heldout_c_proxy(held)  # validates the shape
        np.save(folder / HELDOUT_FILE, held.astype(np.float16))
    return proxies

"""The logger protocol: core code reports progress through it and never imports a tracker.

MLflow's implementation lives in `mlflow_unlearn.tracking`; tests pass a list-backed one.
"""
from __future__ import annotations

import sys
from typing import Mapping, Protocol


class MetricLogger(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...


class NullLogger:
    def log_metrics(self, metrics, step=None) -> None:
        pass


class ListLogger:
    """Keeps every call; handy in tests and notebooks."""

    def __init__(self):
        self.records: list[tuple[int | None, dict]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, dict(metrics)))


class ProgressBar:
    """A tqdm bar on stderr (one per epoch, or per model/trial), silent when disabled or when
    stderr is not a terminal (CI logs, `mlflow run` piped to a file)."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "step"):
        from tqdm import tqdm

        self._bar = tqdm(total=max(int(total), 1), desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                         disable=not (enabled and sys.stderr.isatty()), leave=True)

    def update(self, n: int = 1, **postfix) -> None:
        self._bar.update(n)
        if postfix and not self._bar.disable:
            self._bar.set_postfix(_short(postfix), refresh=False)  # drawn at tqdm's own refresh rate

    def close(self, **postfix) -> None:
        if postfix and not self._bar.disable:
            self._bar.set_postfix(_short(postfix))
        self._bar.close()


def _short(postfix: Mapping) -> dict:
    return {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()}

"""The logger protocol: core code reports progress through it and never imports a tracker.

MLflow's implementation lives in `mlflow_unlearn.tracking`; tests pass a list-backed one.
"""
from __future__ import annotations

import sys
import time
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
    """A one-line progress bar per epoch on stderr (no dependency; quiet when disabled)."""

    def __init__(self, total: int, desc: str, enabled: bool = True, width: int = 24):
        self.total, self.desc, self.enabled, self.width = max(total, 1), desc, enabled, width
        self.n, self.t0 = 0, time.perf_counter()
        self.tty = enabled and sys.stderr.isatty()

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if self.tty:
            self._draw(postfix, end="")

    def close(self, **postfix) -> None:
        if self.enabled:
            self._draw(postfix, end="\n")

    def _draw(self, postfix, end):
        filled = int(self.width * self.n / self.total)
        info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r{self.desc} [{bar}] {self.n}/{self.total} {time.perf_counter() - self.t0:.1f}s {info}{end}")
        sys.stderr.flush()

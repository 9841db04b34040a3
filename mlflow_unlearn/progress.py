"""The logger protocol: core code reports progress through it and never imports a tracker.

MLflow's implementation lives in `mlflow_unlearn.tracking`; tests pass a list-backed one.
"""
from __future__ import annotations

import sys
import time
from typing import Mapping, Protocol

# Without a terminal (CI logs, `mlflow run` piped to a file) a bar draws nothing, so a long phase
# would look hung: instead a plain line, at most this often (seconds), says where it is.
HEARTBEAT_S = 15.0


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

    _last_line = time.monotonic()  # when a heartbeat line was last printed, by any bar of this process

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "step"):
        from tqdm import tqdm

        self._bar = tqdm(total=max(int(total), 1), desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                         disable=not (enabled and sys.stderr.isatty()), leave=True)
        self._heartbeat = enabled and self._bar.disable
        self._desc, self._unit, self._done = desc, unit, 0

    def update(self, n: int = 1, **postfix) -> None:
        self._bar.update(n)
        self._done += n
        if postfix and not self._bar.disable:
            self._bar.set_postfix(_short(postfix), refresh=False)  # drawn at tqdm's own refresh rate
        if self._heartbeat and time.monotonic() - ProgressBar._last_line >= HEARTBEAT_S:
            ProgressBar._last_line = time.monotonic()
            extra = "".join(f", {k} {v}" for k, v in _short(postfix).items())
            print(f"  ... {self._desc}: {self._done}/{self._bar.total} {self._unit}s{extra}", file=sys.stderr, flush=True)

    def close(self, **postfix) -> None:
        if postfix and not self._bar.disable:
            self._bar.set_postfix(_short(postfix))
        self._bar.close()


def _short(postfix: Mapping) -> dict:
    return {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()}

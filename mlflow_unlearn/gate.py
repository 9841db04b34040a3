"""The acceptance gate: is an unlearned model good enough to become a version, judged without a
retrain (issue 11)? Pure functions on metrics the job computes anyway (no mlflow here).

Checks, each with its value, limit and verdict:

- `retain`: retain accuracy may drop at most `retain_drop` (absolute) below the source's: unlearning
  must not break what the model should still know.
- `heldout`: the same for held-out accuracy (the job's test split), limit `heldout_drop`.
- `forget/<tier>`: per memorisation tier, forget accuracy within `forget_tolerance` + 2 binomial
  standard errors of what a model that never saw those examples gets on them. That expectation
  comes from the search's calibration references (retrained without their calibration forget sets,
  so their accuracy on those sets *is* never-seen accuracy), as a function of the C-proxy: each
  example of the tier is given the mean correctness of the `k` calibration examples nearest in
  C-proxy. Without calibration references (no `mlflow-unlearn search` run for the model) the
  estimate comes from held-out examples of the same memorisation rank (`heldout_never_seen`): the
  train step records, per epoch, the true-class confidence of the validation split as well (its
  "held-out C-proxy", measured like the C-proxy but on examples never trained on); a forget example
  at C-proxy quantile q of the train set is matched to the validation examples at quantile q of
  theirs, and the source's correctness on those is its never-seen estimate. Without either (a model
  trained without a validation split, or before these were recorded) the checks are reported as not
  checked.
- `mia`: the attack AUC of forget vs held-out may exceed the never-seen expectation by at most
  `mia_tolerance` + 2 standard errors (Hanley-McNeil): above that, the forget set still looks like
  training data. The expectation follows the request's mix (`NeverSeen.expected_auc`: the
  calibration references' never-seen confidences of C-proxy-matched examples against their held-out
  confidences; a set of easy examples scores high even unseen), else the references' AUC, else 0.5.

Tolerances are absolute accuracy / AUC units. The standard-error terms make small tiers (30 examples:
SE up to 0.09) judged no more strictly than their size allows.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np


class GateError(ValueError):
    """Invalid gate thresholds or inputs; the message names the value."""


@dataclass(frozen=True)
class GateThresholds:
    retain_drop: float = 0.05  # accuracy (fraction): a retain set loses at most 5 points
    heldout_drop: float = 0.05  # accuracy: held-out loses at most 5 points (generalisation kept)
    forget_tolerance: float = 0.10  # accuracy: per-tier distance from never-seen, before the 2-SE term
    mia_tolerance: float = 0.05  # AUC above the never-seen expectation, before the 2-SE term
    neighbours: int = 50  # calibration examples averaged per forget example (by C-proxy)

    def __post_init__(self):
        for name in ("retain_drop", "heldout_drop", "forget_tolerance", "mia_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1 or math.isnan(value):
                raise GateError(f"gate threshold {name} must be a fraction in [0, 1] (accuracy/AUC units, not percent), "
                                f"got {value!r}")
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or self.neighbours < 1:
            raise GateError(f"gate threshold neighbours must be a positive integer, got {self.neighbours!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "GateThresholds":
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise GateError(f"unknown gate threshold(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: (int(v) if k == "neighbours" else float(v)) for k, v in d.items()})


@dataclass(frozen=True)
class NeverSeen:
    """Never-seen correctness of calibration examples (1 = a reference that did not train on it
    classifies it correctly) with their C-proxy, and the references' forget-vs-held-out AUC.
    `correct` may also be an expected correctness in [0, 1] (a probability of being classified
    correctly): heldout_never_seen can take the source's true-class probability."""

    c_proxy: np.ndarray
    correct: np.ndarray
    auc: float | None = None
    source: str = "calibration references"
    conf: np.ndarray | None = None  # never-seen true-class confidence per example (same order as c_proxy)
    heldout_conf: np.ndarray | None = None  # the references' true-class confidence on held-out examples

    def __post_init__(self):
        c, y = np.asarray(self.c_proxy, dtype=np.float64), np.asarray(self.correct, dtype=np.float64)
        if c.ndim != 1 or c.shape != y.shape or len(c) == 0:
            raise GateError(f"never-seen data needs equal-length, non-empty c_proxy and correct (got {c.shape}, {y.shape})")
        if not np.all(np.isfinite(c)) or not np.all((y >= 0) & (y <= 1)):
            raise GateError("never-seen data: c_proxy must be finite and correct in [0, 1] (0/1 outcomes or "
                            "probabilities of being classified correctly)")
        order = np.argsort(c, kind="stable")
        object.__setattr__(self, "c_proxy", c[order])
        object.__setattr__(self, "correct", y[order])
        if self.conf is not None or self.heldout_conf is not None:
            conf = np.asarray(self.conf if self.conf is not None else [], dtype=np.float64)
            held = np.asarray(self.heldout_conf if self.heldout_conf is not None else [], dtype=np.float64)
            if conf.shape != c.shape or held.ndim != 1 or len(held) == 0 or not (np.all(np.isfinite(conf)) and
                                                                                np.all(np.isfinite(held))):
                raise GateError("never-seen data: conf needs one finite value per example and heldout_conf at least one")
            object.__setattr__(self, "conf", conf[order])
            object.__setattr__(self, "heldout_conf", held)

    def _windows(self, c_values, neighbours: int) -> tuple[np.ndarray, int]:
        c = np.asarray(c_values, dtype=np.float64).reshape(-1)
        n, k = len(self.c_proxy), min(int(neighbours), len(self.c_proxy))
        pos = np.searchsorted(self.c_proxy, c)
        return np.clip(pos - k // 2, 0, n - k), k

    def accuracy_at(self, c_values, neighbours: int = 50) -> np.ndarray:
        """Expected never-seen accuracy of examples with these C-proxy values: the mean correctness of
        the `neighbours` calibration examples nearest in C-proxy (a window in the sorted order)."""
        start, k = self._windows(c_values, neighbours)
        prefix = np.concatenate([[0.0], np.cumsum(self.correct)])
        return (prefix[start + k] - prefix[start]) / k

    def expected_auc(self, c_values, neighbours: int = 50) -> float | None:
        """The attack AUC (forget vs held-out) a never-seen model would give a forget set with these
        C-proxy values: each example stands for the never-seen confidences of its `neighbours`
        nearest calibration examples, against the references' held-out confidences. It follows the
        request's mix: a set of easy examples is confidently classified even unseen (AUC > 0.5).
        Without stored confidences: the references' own AUC (or None)."""
        if self.conf is None or self.heldout_conf is None:
            return self.auc
        from .metrics import mia_auc

        start, k = self._windows(c_values, neighbours)
        matched = self.conf[(start[:, None] + np.arange(k)[None, :]).reshape(-1)]
        return mia_auc(matched, self.heldout_conf)


def heldout_never_seen(train_c_proxy, heldout_c_proxy, heldout_correct, *, heldout_conf=None, test_conf=None,
                       source: str = "held-out examples of the same C-proxy rank") -> NeverSeen:
    """A never-seen estimate without any retrain, from held-out examples (the validation split).

    `train_c_proxy` [n_train]: the C-proxy of the training examples; `heldout_c_proxy` [n_heldout]:
    the same quantity measured on held-out examples during the same training (mean true-class
    confidence over epochs, never trained on); `heldout_correct` [n_heldout] 0/1: whether the source
    classifies each held-out example correctly. The two C-proxies are on different scales (training
    on an example raises its confidence), so they are matched by rank, not value: held-out example j
    at quantile q of the held-out C-proxy stands for a train example at quantile q of the train
    C-proxy (the split is a seeded random carve-out, so both follow the same difficulty
    distribution). With `heldout_conf` (the source's true-class confidence on the held-out examples)
    and `test_conf` (on the test split) the MIA expectation follows the request's mix as well.

    Limits (measured in bench/bench_gate.py): a validation split of a few hundred examples resolves
    the most memorised percent or two of the train set only coarsely, and correctness and rank come
    from the same model, so the estimate is sharper than a retrain's."""
    train = np.asarray(train_c_proxy, dtype=np.float64).reshape(-1)
    held = np.asarray(heldout_c_proxy, dtype=np.float64).reshape(-1)
    correct = np.asarray(heldout_correct, dtype=np.float64).reshape(-1)
    if len(train) == 0 or not np.all(np.isfinite(train)):
        raise GateError(f"held-out never-seen estimate: train_c_proxy must be non-empty and finite (got {len(train)} values)")
    if len(held) == 0 or held.shape != correct.shape or not np.all(np.isfinite(held)):
        raise GateError(f"held-out never-seen estimate: heldout_c_proxy must be non-empty, finite and match "
                        f"heldout_correct in length (got {held.shape} and {correct.shape})")
    rank = np.argsort(np.argsort(held, kind="stable"), kind="stable")
    quantile = (rank + 0.5) / len(held)  # mid-rank quantile in (0, 1)
    c_equivalent = np.quantile(train, quantile)
    with_conf = heldout_conf is not None and test_conf is not None
    return NeverSeen(c_equivalent, correct, source=source,
                     conf=np.asarray(heldout_conf, dtype=np.float64).reshape(-1) if with_conf else None,
                     heldout_conf=np.asarray(test_conf, dtype=np.float64).reshape(-1) if with_conf else None)


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    limit: str
    passed: bool | None  # None: not checked (the detail says why)
    detail: str = ""


@dataclass
class GateReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    def summary(self) -> str:
        if self.passed:
            return "passed (" + ", ".join(c.name for c in self.checks if c.passed) + ")"
        return "failed: " + "; ".join(f"{c.name} {'n/a' if c.value is None else f'{c.value:.4f}'} (limit {c.limit}"
                                      f"{'; ' + c.detail if c.detail else ''})" for c in self.failed)


def _binomial_se(p: float, n: int) -> float:
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(max(p * (1 - p), 1.0 / (4 * max(n, 1))) / max(n, 1))  # floor: never 0 for p of 0 or 1


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from n_pos positives and n_neg negatives."""
    a = min(max(auc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / max(n_pos * n_neg, 1)
    return math.sqrt(max(var, 0.0))


def tier_expectation(never_seen: NeverSeen, c_values, thresholds: GateThresholds | None = None) -> tuple[float, float]:
    """What the gate expects of one tier's forget accuracy: the never-seen accuracy expected for
    examples with these C-proxy values, and the accepted distance from it (`forget_tolerance` plus
    two binomial standard errors of a tier this size). NaN for an empty tier."""
    t = thresholds or GateThresholds()
    c = np.asarray(c_values, dtype=np.float64).reshape(-1)
    if len(c) == 0:
        return float("nan"), float("nan")
    expected = float(np.mean(never_seen.accuracy_at(c, t.neighbours)))
    return expected, t.forget_tolerance + 2 * _binomial_se(expected, len(c))


def check_result(before: Mapping[str, float], after: Mapping[str, float], tiers: Mapping[str, Any], c_proxy, *,
                 n_heldout: int, never_seen: NeverSeen | None = None,
                 thresholds: GateThresholds | None = None) -> GateReport:
    """Run every check on the metrics of the source (`before`) and the unlearned model (`after`):
    keys `retain/acc`, `test/acc`, `mia/auc` and `tier/<tier>/forget_acc` (as
    `evaluation.evaluation_metrics` computes them). `tiers`: tier name -> forget ids (train ids);
    `c_proxy`: the source's C-proxy, indexed by train id."""
    t = thresholds or GateThresholds()
    report = GateReport()
    for key, name, drop in (("retain/acc", "retain", t.retain_drop), ("test/acc", "heldout", t.heldout_drop)):
        if key not in before or key not in after:
            raise GateError(f"the gate needs {key!r} before and after unlearning")
        floor = before[key] - drop
        report.checks.append(Check(name, float(after[key]), f">= {floor:.4f} (source {before[key]:.4f} - {drop})",
                                   bool(after[key] >= floor)))
    c = np.asarray(c_proxy, dtype=np.float64)
    n_forget = 0
    for tier, ids in tiers.items():
        ids = np.asarray(ids, dtype=np.int64)
        n_forget += len(ids)
        key = f"tier/{tier}/forget_acc"
        value = after.get(key)
        if value is None and len(tiers) == 1:
            value = after.get("forget/acc")
        if never_seen is None:
            report.checks.append(Check(f"forget/{tier}", None if value is None else float(value), "n/a", None,
                                       "not checked: no never-seen estimate (no calibration references and no "
                                       "held-out confidences; run `mlflow-unlearn search` for this model once, or "
                                       "train it with a validation split)"))
            continue
        expected, band = tier_expectation(never_seen, c[ids], t)
        ok = value is not None and abs(float(value) - expected) <= band
        report.checks.append(Check(f"forget/{tier}", None if value is None else float(value),
                                   f"{expected:.4f} +- {band:.4f}", bool(ok),
                                   f"{len(ids)} examples; never-seen estimate from {never_seen.source}"))
    auc = after.get("mia/auc")
    if auc is not None and np.isfinite(auc):
        all_ids = np.concatenate([np.asarray(v, dtype=np.int64) for v in tiers.values()]) if tiers else np.zeros(0, np.int64)
        expected_auc = never_seen.expected_auc(c[all_ids], t.neighbours) if never_seen is not None and len(all_ids) else None
        expected_auc = 0.5 if expected_auc is None else float(expected_auc)
        band = t.mia_tolerance + 2 * auc_standard_error(float(auc), max(n_forget, 1), max(int(n_heldout), 1))
        report.checks.append(Check("mia", float(auc), f"<= {expected_auc + band:.4f} (never-seen {expected_auc:.4f})",
                                   bool(auc <= expected_auc + band), "AUC of forget vs held-out by true-class confidence"))
    return report

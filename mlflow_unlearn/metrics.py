"""Unlearning metrics: a pure functional core over arrays, plus thin model-level glue.

Everything here follows docs/design.md section 2 and reports fractions in [0, 1], never percentages.
Core layering: numpy, scipy, torch, the package's own core modules and scikit-learn (the attack's
logistic regression and ROC AUC; MLflow depends on it anyway), never mlflow; the MLflow edge logs
the flat dict that `evaluate_unlearning` returns as is.

Array functions (the building blocks, usable on stored predictions without a model):

- `accuracy(pred, labels)`, `accuracy_gap(acc_u, acc_r)`, `disagreement(pred_u, pred_r)`
- `tow(gap_forget, gap_retain, gap_test)`, `tow_mia(mia_gap, gap_retain, gap_test)`,
  `tow_pe(dis_forget, dis_retain, dis_test)`
- `mia_efficacy(retain_conf, test_conf, forget_conf, *, seed)`, `mia_auc(forget_signal, test_signal)`,
  `mia(...)` (both at once, as a `MIAResult`), `mia_gap(mia_u, mia_r)`
- `entanglement_score(emb_forget, emb_retain)`

Statistics over several seeds (`mean_ci`, `paired_test`) are in `mlflow_unlearn.statistics`; the
input checks every array function runs are in `mlflow_unlearn.arrays`.

Model-level glue: `SplitOutputs` (logits and labels of one split), `outputs_for(model, data,
forget_ids, retain_ids)` (a `ModelOutputs` dict keyed forget/retain/test), `embeddings(...)` and
`evaluate_unlearning(unlearned, reference, ...)`, which returns the metric keys of docs/design.md section 4.

Metrics are looked up by name in `METRICS` (entry-point group `mlflow_unlearn.metrics`): a metric
is a callable `(unlearned: ModelOutputs, reference: ModelOutputs | None) -> dict[str, float]` that
may also declare the keyword-only parameters `seed` and/or `signal`, which `evaluate_unlearning`
passes through. A metric declares the direction of its score keys when it is registered
(`higher_is_better={"tow": True}`); those keys are what a search can optimise (`objectives()`). Bad inputs raise `MetricInputError` (a `ValueError`) that quotes the bad value.
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import special, stats

from ._registry import Registry, declare
from .arrays import MetricInputError, _array, _fraction, _int_labels, _number, _same_length, _to_numpy
from .ids import train_ids
from .training import eval_outputs, predict_logits

__all__ = [
    "MetricInputError", "accuracy", "accuracy_gap", "disagreement", "tow", "tow_mia", "tow_pe",
    "MIAResult", "LogisticAttack", "fit_logistic_1d", "mia", "mia_efficacy", "mia_auc", "mia_gap",
    "entanglement_score", "SplitOutputs", "ModelOutputs", "SPLITS",
    "SIGNALS", "outputs_for", "split_outputs", "embeddings", "evaluate_unlearning", "METRICS", "BUILTIN_METRICS", "objectives",
    "Shown", "declare_metric", "shown_keys", "floor_key",
    "objective",
]

SPLITS = ("forget", "retain", "test")


# --------------------------------------------------------------------------------------------
# accuracy, gaps, tug of war, disagreement


def accuracy(pred: Any, labels: Any) -> float:
    """Fraction of examples whose predicted class equals the label."""
    p = _int_labels("pred", pred)
    y = _int_labels("labels", labels)
    _same_length("pred", p, "labels", y)
    return float(np.mean(p == y))


def accuracy_gap(acc_u: float, acc_r: float) -> float:
    """`|acc_u - acc_r|`: accuracy gap between unlearned and retrained models on one split."""
    return abs(_fraction("acc_u", acc_u) - _fraction("acc_r", acc_r))


def tow(gap_forget: float, gap_retain: float, gap_test: float) -> float:
    """Tug of war: `(1 - gap_forget) * (1 - gap_retain) * (1 - gap_test)`; 1.0 = retrain-equivalent."""
    return ((1.0 - _fraction("gap_forget", gap_forget)) * (1.0 - _fraction("gap_retain", gap_retain))
            * (1.0 - _fraction("gap_test", gap_test)))


def tow_mia(mia_gap: float, gap_retain: float, gap_test: float) -> float:
    """ToW-MIA: `(1 - mia_gap) * (1 - gap_retain) * (1 - gap_test)`."""
    return ((1.0 - _fraction("mia_gap", mia_gap)) * (1.0 - _fraction("gap_retain", gap_retain))
            * (1.0 - _fraction("gap_test", gap_test)))


def disagreement(pred_u: Any, pred_r: Any) -> float:
    """Fraction of examples on which the two models predict different classes."""
    a = _int_labels("pred_u", pred_u)
    b = _int_labels("pred_r", pred_r)
    _same_length("pred_u", a, "pred_r", b)
    return float(np.mean(a != b))


def tow_pe(dis_forget: float, dis_retain: float, dis_test: float) -> float:
    """Per-example ToW: `(1 - dis_forget) * (1 - dis_retain) * (1 - dis_test)`."""
    return ((1.0 - _fraction("dis_forget", dis_forget)) * (1.0 - _fraction("dis_retain", dis_retain))
            * (1.0 - _fraction("dis_test", dis_test)))


# --------------------------------------------------------------------------------------------
# membership inference


@dataclass(frozen=True)
class LogisticAttack:
    """A fitted 1-D logistic attack: P(member | s) = sigmoid(coef * (s - mean) / scale + intercept)."""

    coef: float
    intercept: float
    mean: float
    scale: float

    def member_probability(self, signal: Any) -> np.ndarray:
        s = _array("signal", signal, allow_empty=True).astype(np.float64)
        return special.expit(self.coef * (s - self.mean) / self.scale + self.intercept)


def fit_logistic_1d(x: Any, y: Any, *, l2: float = 1.0, max_iter: int = 1000, tol: float = 1e-10) -> LogisticAttack:
    """Fit a 1-D logistic regression: scikit-learn's `LogisticRegression(C=1/l2)` (lbfgs; the L2
    penalty `0.5 * l2 * coef**2` is on the slope only, not the intercept; `l2=0`: no penalty) on
    the feature standardised with the training mean and standard deviation. A constant feature is
    left at zero, so the attack falls back to the class prior."""
    from sklearn.linear_model import LogisticRegression

    x = _array("x", x).astype(np.float64)
    y = _array("y", y).astype(np.float64)
    _same_length("x", x, "y", y)
    if not np.isin(y, (0.0, 1.0)).all():
        raise MetricInputError(f"y must hold 0/1 labels, got {float(y[~np.isin(y, (0.0, 1.0))][0])!r}")
    if y.min() == y.max():
        raise MetricInputError(f"y must hold both classes, got only {int(y[0])}")
    l2 = _number("l2", l2)
    if l2 < 0:
        raise MetricInputError(f"l2 must be non-negative, got {l2!r}")
    mean, scale = float(x.mean()), float(x.std())
    if not scale > 0:
        scale = 1.0
    z = (x - mean) / scale
    if np.all(z == 0):
        prior = y.mean()
        return LogisticAttack(0.0, float(np.log(prior / (1 - prior))), mean, scale)
    model = LogisticRegression(C=1.0 / l2 if l2 > 0 else np.inf, max_iter=int(max_iter), tol=tol)
    model.fit(z[:, None], y)
    return LogisticAttack(float(model.coef_[0, 0]), float(model.intercept_[0]), mean, scale)


@dataclass(frozen=True)
class MIAResult:
    """MIA efficacy (fraction of forget examples the attack calls non-member) and attack AUC of
    forget (positive) vs test (negative); `n_members`/`n_nonmembers` are the attack's training sizes."""

    efficacy: float
    auc: float
    n_members: int
    n_nonmembers: int
    attack: LogisticAttack | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        return {"mia/efficacy": self.efficacy, "mia/auc": self.auc}


def _attack(retain_conf, test_conf, seed):
    retain = _array("retain_conf", retain_conf).astype(np.float64)
    test = _array("test_conf", test_conf).astype(np.float64)
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral,)):
        raise MetricInputError(f"seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    n_members = min(len(test), len(retain))
    members = retain[np.sort(rng.choice(len(retain), size=n_members, replace=False))]
    x = np.concatenate([members, test])
    y = np.concatenate([np.ones(len(members)), np.zeros(len(test))])
    return fit_logistic_1d(x, y), n_members, len(test)


def mia_efficacy(retain_conf: Any, test_conf: Any, forget_conf: Any, *, seed: int = 0) -> float:
    """MIA efficacy as in the SalUn/RUM papers.

    Members: a random sample (seeded by `seed`) of `retain_conf` of the size of `test_conf` (all of
    retain when it is smaller); non-members: `test_conf`. A 1-D logistic attack (standardised
    feature, L2 = 1 on the slope) is fit on member=1 / non-member=0, and the result is the fraction
    of `forget_conf` it classifies as non-member (member probability < 0.5). Higher = the forget
    set looks more like unseen data. The signal is the true-class confidence by default, but any
    per-example score where members score higher works.
    """
    return mia(retain_conf, test_conf, forget_conf, seed=seed).efficacy


def mia_auc(forget_signal: Any, test_signal: Any) -> float:
    """AUC of separating forget (positive) from test (negative) by the signal: scikit-learn's
    `roc_auc_score` (ties count half, as in the Mann-Whitney U). 0.5 = forget indistinguishable from
    test; 1.0 = every forget example scores above every test example (it looks like training data)."""
    from sklearn.metrics import roc_auc_score

    f = _array("forget_signal", forget_signal).astype(np.float64)
    t = _array("test_signal", test_signal).astype(np.float64)
    return float(roc_auc_score(np.r_[np.ones(len(f)), np.zeros(len(t))], np.r_[f, t]))


def mia(retain_conf: Any, test_conf: Any, forget_conf: Any, *, seed: int = 0) -> MIAResult:
    """Both MIA numbers at once: `mia_efficacy` and `mia_auc(forget_conf, test_conf)`."""
    forget = _array("forget_conf", forget_conf).astype(np.float64)
    attack, n_members, n_nonmembers = _attack(retain_conf, test_conf, seed)
    efficacy = float(np.mean(attack.member_probability(forget) < 0.5))
    return MIAResult(efficacy, mia_auc(forget, test_conf), n_members, n_nonmembers, attack)


def mia_gap(mia_u: float, mia_r: float) -> float:
    """`|MIA(u) - MIA(r)|` (MIA efficacies of unlearned and retrained models)."""
    return abs(_fraction("mia_u", mia_u) - _fraction("mia_r", mia_r))


# --------------------------------------------------------------------------------------------
# entanglement


def entanglement_score(emb_forget: Any, emb_retain: Any, *, weighting: str = "size") -> float:
    """Entanglement score (ES) of forget and retain penultimate-layer embeddings [N, D].

    ES = within-set variance / squared distance between the two set means, where the within-set
    variance of a set is the mean squared Euclidean distance of its embeddings to the set's own mean.
    `weighting="size"` (default) averages the two sets' variances weighted by set size, i.e. the
    pooled within-set variance `(sum_f |z - mu_f|^2 + sum_r |z - mu_r|^2) / (n_f + n_r)`, so each
    example counts once; `weighting="equal"` takes the plain mean of the two sets' variances, so a
    small forget set counts as much as the large retain set. Higher = more entangled = harder to
    unlearn; identical means give `inf` (0 / 0, i.e. all embeddings equal, gives `nan`). The paper's
    constants differ, so compare ES values within this implementation only.
    """
    f = _array("emb_forget", emb_forget, ndim=2).astype(np.float64)
    r = _array("emb_retain", emb_retain, ndim=2).astype(np.float64)
    if f.shape[1] != r.shape[1]:
        raise MetricInputError(f"emb_forget has dimension {f.shape[1]} but emb_retain has {r.shape[1]}; they must match")
    mu_f, mu_r = f.mean(0), r.mean(0)
    ss_f = float(np.sum((f - mu_f) ** 2))
    ss_r = float(np.sum((r - mu_r) ** 2))
    if weighting == "size":
        within = (ss_f + ss_r) / (len(f) + len(r))
    elif weighting == "equal":
        within = 0.5 * (ss_f / len(f) + ss_r / len(r))
    else:
        raise MetricInputError(f"weighting must be 'size' or 'equal', got {weighting!r}")
    between = float(np.sum((mu_f - mu_r) ** 2))
    if between == 0.0:
        return float("nan") if within == 0.0 else float("inf")
    return within / between


# --------------------------------------------------------------------------------------------
# model outputs


@dataclass(frozen=True, eq=False)
class SplitOutputs:
    """One model's outputs on one split, as numpy arrays on the CPU.

    Build it from logits `SplitOutputs(logits [N, C], labels [N])` (the usual way; `pred` and
    `true_conf` are derived), or without logits from stored predictions:
    `SplitOutputs(None, labels, pred=..., true_conf=...)` (then only the `confidence` MIA signal is
    available). Torch tensors are accepted and copied to the CPU.
    """

    logits: np.ndarray | None
    labels: np.ndarray
    pred: np.ndarray | None = None  # argmax class [N]
    true_conf: np.ndarray | None = None  # softmax probability of the true class [N]

    def __post_init__(self):
        labels = _int_labels("labels", self.labels, allow_empty=True)
        object.__setattr__(self, "labels", labels)
        if self.logits is not None:
            if self.pred is not None or self.true_conf is not None:
                raise MetricInputError("give either logits or pred/true_conf, not both")
            logits = _array("logits", self.logits, ndim=2, allow_empty=True)
            if len(logits) != len(labels):
                raise MetricInputError(f"logits has {len(logits)} rows but labels has {len(labels)}; they must match")
            c = logits.shape[1]
            if len(labels) and (labels.min() < 0 or labels.max() >= c):
                bad = labels[(labels < 0) | (labels >= c)][0]
                raise MetricInputError(f"labels must be class indices in [0, {c}), got {int(bad)}")
            logits = logits.astype(np.float32, copy=False)
            object.__setattr__(self, "logits", logits)
            logp = special.log_softmax(logits.astype(np.float64), axis=1)
            object.__setattr__(self, "pred", logits.argmax(1).astype(np.int64) if len(labels) else np.zeros(0, np.int64))
            object.__setattr__(self, "true_conf", np.exp(logp[np.arange(len(labels)), labels]))
        else:
            if self.pred is None or self.true_conf is None:
                raise MetricInputError("without logits, both pred and true_conf are needed")
            pred = _int_labels("pred", self.pred, allow_empty=True)
            conf = _array("true_conf", self.true_conf, allow_empty=True).astype(np.float64)
            _same_length("pred", pred, "labels", labels)
            _same_length("true_conf", conf, "labels", labels)
            if len(conf) and (conf.min() < 0 or conf.max() > 1):
                bad = conf[(conf < 0) | (conf > 1)][0]
                raise MetricInputError(f"true_conf must be probabilities in [0, 1], got {float(bad)!r}")
            object.__setattr__(self, "pred", pred)
            object.__setattr__(self, "true_conf", conf)

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.labels

    def signal(self, name: str = "confidence") -> np.ndarray:
        """A per-example MIA signal by name (see `SIGNALS`); members are expected to score higher."""
        if name not in SIGNALS:
            raise MetricInputError(f"unknown MIA signal {name!r}; known: {', '.join(SIGNALS)}")
        return SIGNALS[name](self)

    def select(self, positions: Any) -> "SplitOutputs":
        """The outputs of a subset of this split's examples (positions within the split)."""
        pos = np.asarray(positions, dtype=np.int64)
        if self.logits is not None:
            return SplitOutputs(self.logits[pos], self.labels[pos])
        return SplitOutputs(None, self.labels[pos], pred=self.pred[pos], true_conf=self.true_conf[pos])


def _needs_logits(o: SplitOutputs, name: str) -> np.ndarray:
    if o.logits is None:
        raise MetricInputError(f"MIA signal {name!r} needs logits; these outputs hold only pred/true_conf")
    return special.log_softmax(o.logits.astype(np.float64), axis=1)


def _signal_confidence(o: SplitOutputs) -> np.ndarray:
    return o.true_conf


def _signal_max_confidence(o: SplitOutputs) -> np.ndarray:
    return np.exp(_needs_logits(o, "max_confidence").max(1))


def _signal_neg_entropy(o: SplitOutputs) -> np.ndarray:
    logp = _needs_logits(o, "neg_entropy")
    return np.sum(np.exp(logp) * logp, axis=1)


SIGNALS: dict[str, Callable[[SplitOutputs], np.ndarray]] = {
    "confidence": _signal_confidence,  # softmax probability of the true class (the default)
    "max_confidence": _signal_max_confidence,  # highest softmax probability
    "neg_entropy": _signal_neg_entropy,  # minus the entropy of the softmax
}

ModelOutputs = Mapping[str, SplitOutputs]
"""One model's outputs per split, keyed `forget`, `retain`, `test` (extra keys are ignored)."""


def _ids(name: str, ids: Any, n_train: int) -> np.ndarray:
    return train_ids(ids, n_train, what=name, error=MetricInputError)


def outputs_for(model: torch.nn.Module, data, forget_ids: Any, retain_ids: Any = None, *,
                batch_size: int = 1024, heldout=None) -> dict[str, SplitOutputs]:
    """Eval-mode outputs of `model` on forget, retain and test.

    `forget_ids` and `retain_ids` are train ids (= positions in `data.train`); `retain_ids=None`
    means train minus forget. `heldout`: a split that stands in for `test` (the validation split
    while selecting, so the reported test split is never used to choose anything; docs/design.md
    section 2). Uses `training.predict_logits`; the model's mode is restored.
    """

    n_train = len(data.train)
    forget = _ids("forget_ids", forget_ids, n_train)
    if retain_ids is None:
        keep = np.ones(n_train, dtype=bool)
        keep[forget] = False
        retain = np.flatnonzero(keep)
    else:
        retain = _ids("retain_ids", retain_ids, n_train)
    return split_outputs(model, data, forget, retain, batch_size=batch_size, heldout=heldout)


def split_outputs(model: torch.nn.Module, data, forget: np.ndarray, retain: np.ndarray, *, batch_size: int = 1024,
                  heldout=None) -> dict[str, SplitOutputs]:
    """`outputs_for` without its checks, for ids of a checked task (`task.UnlearnTask`, a
    `forget_sets.ForgetSet`): nothing is checked again."""
    splits = {"forget": data.train.subset(forget), "retain": data.train.subset(retain),
              "test": data.test if heldout is None else heldout}
    return {name: SplitOutputs(predict_logits(model, data, split, batch_size=batch_size), split.y)
            for name, split in splits.items()}


def embeddings(model: torch.nn.Module, data, split, *, batch_size: int = 1024) -> np.ndarray:
    """Penultimate-layer embeddings [N, D] (float32, CPU) of a split, via the model's `embed`
    method, in eval mode (the mode is restored). Feed them to `entanglement_score`."""

    if not callable(getattr(model, "embed", None)):
        raise MetricInputError(f"model {type(model).__name__} has no embed() method for penultimate-layer features")
    if len(split) == 0:
        return np.zeros((0, 0), np.float32)
    return eval_outputs(model, data, split, lambda x: model.embed(x).flatten(1), batch_size=batch_size).cpu().numpy()


# --------------------------------------------------------------------------------------------
# registry and evaluation

METRICS = Registry("metric", "mlflow_unlearn.metrics")
BUILTIN_METRICS = ("accuracy", "mia", "disagreement")


@dataclass(frozen=True)
class Shown:
    """Where one metric key is reported, declared with its metric (`shown={key: Shown(...)}` in
    `METRICS.register` or `declare_metric`). Every shown key is a column of `main`'s summary table
    (`summary_table.json`, per-seed `seed/<key>` metrics on each method run), a headline tag
    (`mlflow_unlearn.metric.<key>`) on the hook's result versions and part of the one-line summary
    `evaluate` prints; `table` also makes it a column of the markdown table in the `main` run's
    description, which stays narrow. Score keys (`higher_is_better`) also get a noise-floor value."""

    label: str  # the column header
    rank: int = 100  # column order, lower first: the built-ins use 0-9, so a plugin's columns come after
    table: bool = True


def declare_metric(*, higher_is_better: Mapping[str, bool] | None = None, shown: Mapping[str, Shown] | None = None):
    """Decorator for a plugin's metric (its entry point registers it): the keys a search may optimise
    and their direction, and where its keys are shown."""
    declared = {"higher_is_better": higher_is_better, "shown": shown}
    return declare(**{k: dict(v) for k, v in declared.items() if v})


def shown_keys(*, table_only: bool = False) -> dict[str, Shown]:
    """Every reported metric key -> where it is shown, in column order (registered metrics only)."""
    found: list[tuple[int, int, str, Shown]] = []
    seen: set[str] = set()
    for position, name in enumerate(METRICS.registered()):
        declared = METRICS.declared(name).get("shown") or {}
        if not isinstance(declared, Mapping) or not all(isinstance(v, Shown) for v in declared.values()):
            raise TypeError(f"metric {name!r} declares shown={declared!r}; it must be a dict of metric key -> "
                            f"metrics.Shown")
        for key, where in declared.items():
            if key not in seen and (where.table or not table_only):
                seen.add(key)
                found.append((where.rank, position, str(key), where))
    return {key: where for _, _, key, where in sorted(found, key=lambda f: (f[0], f[1]))}


def floor_key(key: str) -> str:
    """The noise-floor key of a score: `tow` -> `floor/tow`, `mia/gap` -> `floor/mia_gap`."""
    return "floor/" + key.replace("/", "_")


def objectives() -> dict[str, tuple[str, bool]]:
    """Every metric key a search can optimise: key -> (the registered metric that computes it,
    higher_is_better). A metric (built-in or plugin) declares its score keys when it is registered:
    `@METRICS.register("name", higher_is_better={"key": True})` or `_registry.declare(...)`."""
    out: dict[str, tuple[str, bool]] = {}
    for name in METRICS.registered():
        declared = METRICS.declared(name).get("higher_is_better") or {}
        if not isinstance(declared, Mapping):
            raise TypeError(f"metric {name!r} declares higher_is_better={declared!r}; it must be a dict of "
                            f"metric key -> True/False")
        for key, higher in declared.items():
            out.setdefault(str(key), (name, bool(higher)))
    return out


def objective(key: str) -> tuple[str, bool]:
    """(metric name, higher_is_better) of a search objective; an unknown key lists the valid ones."""
    known = objectives()
    if key not in known:
        raise MetricInputError(f"unknown objective {key!r}; valid: {', '.join(known)} (a metric declares its keys "
                               f"with higher_is_better when it is registered)")
    return known[key]


def _check_outputs(name: str, outputs: Any) -> None:
    if not isinstance(outputs, Mapping):
        raise MetricInputError(f"{name} must be a dict of split -> SplitOutputs, got {type(outputs).__name__}")
    missing = [s for s in SPLITS if s not in outputs]
    if missing:
        raise MetricInputError(f"{name} lacks split(s) {', '.join(map(repr, missing))}; it has {sorted(outputs)}")
    for s in SPLITS:
        if not isinstance(outputs[s], SplitOutputs):
            raise MetricInputError(f"{name}[{s!r}] must be a SplitOutputs, got {type(outputs[s]).__name__}")
        if len(outputs[s]) == 0:
            raise MetricInputError(f"{name}[{s!r}] is empty; every split needs at least one example")


def _check_reference(unlearned: ModelOutputs, reference: ModelOutputs) -> None:
    _check_outputs("reference", reference)
    for s in SPLITS:
        u, r = unlearned[s], reference[s]
        if len(u) != len(r):
            raise MetricInputError(f"reference[{s!r}] has {len(r)} examples but unlearned[{s!r}] has {len(u)}; "
                                   "both models must be evaluated on the same examples")
        if not np.array_equal(u.labels, r.labels):
            i = int(np.argmax(u.labels != r.labels))
            raise MetricInputError(f"labels of {s!r} differ between unlearned and reference at position {i} "
                                   f"({int(u.labels[i])} vs {int(r.labels[i])}); both must see the same examples in the same order")


def _acc(o: SplitOutputs) -> float:
    return accuracy(o.pred, o.labels)


@METRICS.register("accuracy", higher_is_better={"tow": True},
                  shown={"tow": Shown("ToW", 0), "forget/acc": Shown("forget acc", 4),
                         "retain/acc": Shown("retain acc", 5, table=False), "test/acc": Shown("test acc", 6)})
def accuracy_metrics(unlearned: ModelOutputs, reference: ModelOutputs | None = None) -> dict[str, float]:
    """`<split>/acc`; with a reference also `gap/<split>` and `tow`."""
    out = {f"{s}/acc": _acc(unlearned[s]) for s in SPLITS}
    if reference is not None:
        gaps = {s: accuracy_gap(out[f"{s}/acc"], _acc(reference[s])) for s in SPLITS}
        out.update({f"gap/{s}": g for s, g in gaps.items()})
        out["tow"] = tow(gaps["forget"], gaps["retain"], gaps["test"])
    return out


def _mia_of(o: ModelOutputs, seed: int, signal: str) -> MIAResult:
    return mia(o["retain"].signal(signal), o["test"].signal(signal), o["forget"].signal(signal), seed=seed)


@METRICS.register("mia", higher_is_better={"tow_mia": True, "mia/gap": False},
                  shown={"tow_mia": Shown("ToW-MIA", 1), "mia/gap": Shown("MIA gap", 2),
                         "mia/efficacy": Shown("MIA efficacy", 7, table=False),
                         "mia/auc": Shown("MIA AUC", 8, table=False)})
def mia_metrics(unlearned: ModelOutputs, reference: ModelOutputs | None = None, *, seed: int = 0,
                signal: str = "confidence") -> dict[str, float]:
    """`mia/efficacy`, `mia/auc`; with a reference also `mia/gap` and `tow_mia`."""
    res = _mia_of(unlearned, seed, signal)
    out = res.as_dict()
    if reference is not None:
        gap = mia_gap(res.efficacy, _mia_of(reference, seed, signal).efficacy)
        out["mia/gap"] = gap
        out["tow_mia"] = tow_mia(gap, accuracy_gap(_acc(unlearned["retain"]), _acc(reference["retain"])),
                                 accuracy_gap(_acc(unlearned["test"]), _acc(reference["test"])))
    return out


@METRICS.register("disagreement", higher_is_better={"tow_pe": True}, shown={"tow_pe": Shown("ToW-PE", 3)})
def disagreement_metrics(unlearned: ModelOutputs, reference: ModelOutputs | None = None) -> dict[str, float]:
    """With a reference: `disagree/<split>` and `tow_pe`; nothing without one."""
    if reference is None:
        return {}
    dis = {s: disagreement(unlearned[s].pred, reference[s].pred) for s in SPLITS}
    out = {f"disagree/{s}": d for s, d in dis.items()}
    out["tow_pe"] = tow_pe(dis["forget"], dis["retain"], dis["test"])
    return out


def _tier_positions(name: Any, selection: Any, n_forget: int) -> np.ndarray:
    if not isinstance(name, str) or not name or "/" in name:
        raise MetricInputError(f"tier names must be non-empty strings without '/', got {name!r}")
    sel = _to_numpy(selection)
    if sel.dtype == bool:
        if sel.shape != (n_forget,):
            raise MetricInputError(f"tier {name!r}: a boolean mask must have one entry per forget example "
                                   f"({n_forget}), got shape {tuple(sel.shape)}")
        return np.flatnonzero(sel)
    pos = _int_labels(f"tier {name!r}", sel, allow_empty=True)
    out = (pos < 0) | (pos >= n_forget)
    if out.any():
        raise MetricInputError(f"tier {name!r}: positions must be in [0, {n_forget}) (indices into the forget set), "
                               f"got {int(pos[out][0])}")
    return pos


def _tier_metrics(unlearned: ModelOutputs, reference: ModelOutputs | None,
                  tiers: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(tiers, Mapping):
        raise MetricInputError(f"tiers must be a dict of tier name -> mask or positions, got {type(tiers).__name__}")
    fu = unlearned["forget"]
    fr = None if reference is None else reference["forget"]
    out: dict[str, float] = {}
    for name, selection in tiers.items():
        pos = _tier_positions(name, selection, len(fu))
        key = f"tier/{name}"
        out[f"{key}/n"] = float(len(pos))
        if len(pos) == 0:  # an empty tier (small forget set, many tiers): nothing to measure
            out[f"{key}/forget_acc"] = float("nan")
            if fr is not None:
                out[f"{key}/gap"] = out[f"{key}/disagree"] = float("nan")
            continue
        acc_u = accuracy(fu.pred[pos], fu.labels[pos])
        out[f"{key}/forget_acc"] = acc_u
        if fr is not None:
            out[f"{key}/gap"] = accuracy_gap(acc_u, accuracy(fr.pred[pos], fr.labels[pos]))
            out[f"{key}/disagree"] = disagreement(fu.pred[pos], fr.pred[pos])
    return out


def _call_metric(name: str, fn: Callable[..., Any], unlearned, reference, extra_kwargs: dict) -> dict[str, float]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in extra_kwargs.items() if takes_any or k in params}
    result = fn(unlearned, reference, **kwargs)
    if not isinstance(result, Mapping):
        raise TypeError(f"metric {name!r} must return a dict of metric key -> number, got {type(result).__name__}")
    out = {}
    for key, value in result.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"metric {name!r} returned a bad key {key!r}; keys are non-empty strings")
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {name!r} returned {value!r} for {key!r}; values must be numbers") from None
    return out


def evaluate_unlearning(
    unlearned: ModelOutputs,
    reference: ModelOutputs | None = None,
    *,
    tiers: Mapping[str, Any] | None = None,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
    signal: str = "confidence",
) -> dict[str, float]:
    """All unlearning metrics of one model as a flat dict of fractions, keyed as in docs/design.md section 4.

    - `unlearned`, `reference`: `ModelOutputs` (dicts `forget`/`retain`/`test` -> `SplitOutputs`,
      e.g. from `outputs_for`) of the unlearned model and, optionally, of the retrained reference,
      evaluated on the same examples in the same order.
    - Always: `forget/acc`, `retain/acc`, `test/acc`, `mia/efficacy`, `mia/auc`.
    - With a reference also: `gap/forget|retain|test`, `tow`, `mia/gap`, `tow_mia`,
      `disagree/forget|retain|test`, `tow_pe`.
    - `tiers`: tier name -> boolean mask over the forget examples or positions into the forget set;
      gives `tier/<name>/n` and `tier/<name>/forget_acc`, plus `tier/<name>/gap` and
      `tier/<name>/disagree` with a reference (`nan` for an empty tier).
    - `seed`: the MIA's member sample. `signal`: the MIA signal (a `SIGNALS` name).
    - `metrics`: extra registered metric names (plugins) to run after the built-ins
      (`BUILTIN_METRICS`, always run); an unknown name raises the registry's error listing the
      known ones. A metric returning a key that is already set is an error.
    """
    _check_outputs("unlearned", unlearned)
    if reference is not None:
        _check_reference(unlearned, reference)
    if signal not in SIGNALS:
        raise MetricInputError(f"unknown MIA signal {signal!r}; known: {', '.join(SIGNALS)}")
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(BUILTIN_METRICS)
    for name in metrics or ():
        if name not in names:
            names.append(name)
    fns = [(name, METRICS.get(name)) for name in names]  # resolve all first: fail before computing
    out: dict[str, float] = {}
    for name, fn in fns:
        for key, value in _call_metric(name, fn, unlearned, reference, {"seed": seed, "signal": signal}).items():
            if key in out:
                raise ValueError(f"metric {name!r} returned key {key!r}, which another metric already set")
            out[key] = value
    if tiers:
        out.update(_tier_metrics(unlearned, reference, tiers))
    return out

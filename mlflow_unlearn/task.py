"""One unlearning task, validated once: the data, the ids to forget cut into tiers, the ids earlier
requests removed, and how the source was trained.

`UnlearnTask.build` is the one check of a task's ids (`ids.train_ids` on every tier and on the ids
forgotten before, tiers disjoint, none of them forgotten before, something left to retain).
`UnlearnTask.from_forget_set` builds one from a `ForgetSet`, whose constructor already checked its
ids against the same train split, and cuts it into tiers by C-proxy without checking again.
Everything below (the RUM executor, each step's `UnlearnData`, the outputs metrics are computed on)
takes the task and checks nothing: the type is the proof, so no check is cached on an array.
Core: numpy and torch, never mlflow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .algorithms import TrainRecipe, UnlearnData
from .data import ImageData
from .ids import check_something_retained, train_ids
from .memorization import DEFAULT_TIERS, cut_tiers

ALL_TIER = "all"  # the one tier of a whole-set plan


def _frozen(ids: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(ids, dtype=np.int64)
    out.setflags(write=False)  # a task is shared by every step below it: nobody may edit its ids
    return out


@dataclass(frozen=True)
class UnlearnTask:
    """The dataset, the forget set cut into disjoint tiers (name -> train ids, in the order a seeded
    algorithm draws from them: sorted for tiers cut by C-proxy), the ids
    earlier requests already removed (never retained, never in a tier) and, optionally, how the
    source was trained (`retrain` replays it). Build it with `build` or `from_forget_set`; the
    plain constructor trusts its arguments (for the derivations below)."""

    data: ImageData
    tiers: Mapping[str, np.ndarray]
    forgotten: np.ndarray = field(default_factory=lambda: _frozen(np.zeros(0, dtype=np.int64)))
    recipe: TrainRecipe | None = None
    augment: bool = False

    @classmethod
    def build(cls, data: ImageData, tiers: Mapping[str, Any], *, forgotten: Any = None,
              recipe: TrainRecipe | None = None, augment: bool = False,
              error: type[Exception] = ValueError) -> "UnlearnTask":
        """The one check of a task's ids; raises `error` naming the bad ids and the fix."""
        if not isinstance(data, ImageData):
            raise TypeError(f"data must be an ImageData (see mlflow_unlearn.data.load_dataset), got {type(data).__name__}")
        if not isinstance(tiers, Mapping) or not tiers:
            raise error(f"tiers must be a non-empty mapping of tier name -> train ids, got {type(tiers).__name__}")
        n = len(data.train)
        checked = {str(t): train_ids(v, n, what=f"tier {t!r}", allow_empty=True, error=error) for t, v in tiers.items()}
        owner = np.full(n, -1, dtype=np.int64)
        names = list(checked)
        for j, t in enumerate(names):
            clash = checked[t][owner[checked[t]] >= 0]
            if len(clash):
                raise error(f"tiers {names[int(owner[clash[0]])]!r} and {t!r} share ids {clash[:10].tolist()}; "
                            f"tiers must be disjoint")
            owner[checked[t]] = j
        if not (owner >= 0).any():
            raise error("every tier is empty: give at least one train id to forget")
        before = np.sort(train_ids(np.zeros(0) if forgotten is None else forgotten, n, what="forgotten",
                                   allow_empty=True, error=error))
        again = before[owner[before] >= 0]
        if len(again):
            raise error(f"ids {again[:10].tolist()} were forgotten by an earlier request and are in a tier again; "
                        f"leave them out of the tiers (they are no longer in the model's training data)")
        check_something_retained(int((owner >= 0).sum()) + len(before), n, what="the tiers and earlier requests",
                                 error=error)
        return cls._of(data, checked, before, recipe, augment)

    @classmethod
    def from_forget_set(cls, data: ImageData, forget_ids: np.ndarray, c_proxy: np.ndarray, *,
                        names: Sequence[str] = DEFAULT_TIERS, forgotten: np.ndarray | None = None,
                        recipe: TrainRecipe | None = None) -> "UnlearnTask":
        """The task of a checked forget set (`forget_sets.ForgetSet.ids`, sorted train ids of this
        split) and checked ids forgotten before (a version's lineage), with something left to
        retain (the caller checked: `request.prepare` does before it loads the data): the
        new ids cut into `names` tiers by C-proxy rank (one tier `all` when there are fewer ids
        than tiers). Nothing is checked again."""
        before = np.zeros(0, dtype=np.int64) if forgotten is None else np.asarray(forgotten, dtype=np.int64)
        new = np.setdiff1d(forget_ids, before)
        tiers = cut_tiers(new, np.asarray(c_proxy)[new], names) if len(new) >= len(names) else {ALL_TIER: new}
        return cls._of(data, tiers, np.sort(before), recipe, False)

    @classmethod
    def _of(cls, data, tiers, forgotten, recipe, augment) -> "UnlearnTask":
        return cls(data, MappingProxyType({t: _frozen(v) for t, v in tiers.items()}), _frozen(forgotten), recipe,
                   bool(augment))

    @property
    def n_train(self) -> int:
        return len(self.data.train)

    @property
    def forget_ids(self) -> np.ndarray:
        """Every id of every tier, sorted: what this task removes."""
        return np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *self.tiers.values()]))

    def retain_ids(self, excluded: np.ndarray | None = None) -> np.ndarray:
        """Train minus `excluded` (default: every tier) minus everything forgotten before."""
        keep = np.ones(self.n_train, dtype=bool)
        keep[self.forget_ids if excluded is None else excluded] = False
        keep[self.forgotten] = False
        return np.flatnonzero(keep)

    def merged(self) -> "UnlearnTask":
        """The same ids as one tier `all` (a whole-set plan's task), tier after tier: the order a
        seeded algorithm draws its batches from, so a whole-set plan gives the same result on the
        same tiers."""
        if list(self.tiers) == [ALL_TIER]:
            return self
        ids = np.concatenate([np.zeros(0, dtype=np.int64), *self.tiers.values()])
        return UnlearnTask(self.data, MappingProxyType({ALL_TIER: _frozen(ids)}), self.forgotten, self.recipe,
                           self.augment)

    def tier_positions(self) -> dict[str, np.ndarray]:
        """Tier -> positions of its ids within `forget_ids` (for per-tier metrics)."""
        ids = self.forget_ids
        return {t: np.searchsorted(ids, v) for t, v in self.tiers.items()}

    def unlearn_data(self, forget: np.ndarray | None = None, retain: np.ndarray | None = None) -> UnlearnData:
        """What an algorithm works on: `forget` (default: every tier) and `retain` (default:
        `retain_ids()`), both derived from this task, so `UnlearnData` checks nothing again."""
        device = self.data.device
        as_tensor = lambda ids: torch.tensor(np.asarray(ids), dtype=torch.long, device=device)  # a copy: ids are read-only
        return UnlearnData.trusted(self.data, as_tensor(self.forget_ids if forget is None else forget),
                                   as_tensor(self.retain_ids() if retain is None else retain), recipe=self.recipe,
                                   augment=self.augment)

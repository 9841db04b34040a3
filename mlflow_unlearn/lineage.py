"""Lineage: what a model version has forgotten so far, so deletion requests accumulate on the version
being served (issue 11). Every run that logs a model (train, unlearn, rum, retrain) writes one as
`manifest/lineage.json`:

    original_run    the training run: its training manifest, confidences (the C-proxy every later
                    version inherits) and model spec (the recipe a retrain replays)
    original_model  "name/version" of the trained version ("" when not known)
    forgotten       sorted train ids removed by every request so far (train ids = positions in the
                    training manifest, the same for the whole chain)
    requests        the chain, oldest first: for each request, the version it was applied to, the
                    digest and size of the requested ids, how many were new, the run and the method

A request on a version with lineage L forgets only the ids L has not already forgotten; its retain
set is train minus L.forgotten minus the request. No mlflow here: the edge (tracking) reads and
writes the JSON; this module checks it, since it comes from a registry anyone with write access
fills.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .forget_sets import forget_digest
from .ids import train_ids

LINEAGE_FORMAT = 1
LINEAGE_PATH = "manifest/lineage.json"
MAX_REQUESTS = 10_000  # a chain longer than this is not a chain this package wrote
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_REQUEST_KEYS = {"source": str, "forget_digest": str, "n_forget": int, "n_new": int, "run_id": str, "how": str}


class LineageError(ValueError):
    """A lineage record that is not one this package wrote; the message names the field."""


@dataclass(frozen=True)
class Lineage:
    original_run: str
    original_model: str = ""
    forgotten: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    requests: tuple[dict, ...] = ()

    @classmethod
    def original(cls, run_id: str, model: str = "") -> "Lineage":
        """The lineage of a trained model: nothing forgotten yet."""
        return cls(original_run=run_id, original_model=model)

    @property
    def forgotten_digest(self) -> str:
        return forget_digest(self.forgotten)

    def split(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(new, already): the sorted ids of a request this lineage has not / has already forgotten."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        already = np.isin(ids, self.forgotten)
        return ids[~already], ids[already]

    def after(self, *, source: str, forget_ids, run_id: str, how: str) -> "Lineage":
        """The lineage of a version made from this one by forgetting `forget_ids` (the whole request;
        ids already forgotten are counted, not added twice)."""
        requested = np.unique(np.asarray(forget_ids, dtype=np.int64))
        new, _ = self.split(requested)
        entry = {"source": str(source), "forget_digest": forget_digest(requested), "n_forget": int(len(requested)),
                 "n_new": int(len(new)), "run_id": str(run_id), "how": str(how)[:200]}
        return Lineage(self.original_run, self.original_model, np.union1d(self.forgotten, new).astype(np.int64),
                       (*self.requests, entry))

    def to_dict(self) -> dict[str, Any]:
        return {"format": LINEAGE_FORMAT, "original_run": self.original_run, "original_model": self.original_model,
                "forgotten": self.forgotten.tolist(), "forgotten_digest": self.forgotten_digest,
                "n_forgotten": int(len(self.forgotten)), "requests": [dict(r) for r in self.requests]}

    @classmethod
    def from_dict(cls, d: Any, *, n_train: int, where: str = "lineage") -> "Lineage":
        """Parse and check a lineage record (untrusted: it comes from the registry) of a model trained
        on `n_train` examples."""
        if not isinstance(d, dict):
            raise LineageError(f"{where} is not a JSON object")
        if d.get("format") != LINEAGE_FORMAT:
            raise LineageError(f"{where} has format {d.get('format')!r}; this version of mlflow-unlearn reads "
                               f"format {LINEAGE_FORMAT}")
        run = d.get("original_run")
        if not isinstance(run, str) or not _RUN_ID.match(run):
            raise LineageError(f"{where}: original_run is not an MLflow run id (32 hex digits)")
        model = d.get("original_model", "")
        if not isinstance(model, str) or len(model) > 500:
            raise LineageError(f"{where}: original_model is not a name/version string")
        raw = d.get("forgotten", [])
        if not isinstance(raw, list):
            raise LineageError(f"{where}: forgotten is not a list of train ids")
        forgotten = train_ids(raw, n_train, what=f"{where}: forgotten", allow_empty=True, error=LineageError)
        if "forgotten_digest" in d and d["forgotten_digest"] != forget_digest(forgotten):
            raise LineageError(f"{where}: forgotten_digest does not match the forgotten ids (the record was altered)")
        requests = d.get("requests", [])
        if not isinstance(requests, list) or len(requests) > MAX_REQUESTS:
            raise LineageError(f"{where}: requests is not a list of at most {MAX_REQUESTS} entries")
        chain = []
        for k, r in enumerate(requests):
            if not isinstance(r, dict) or not all(isinstance(r.get(key), typ) for key, typ in _REQUEST_KEYS.items()):
                raise LineageError(f"{where}: request {k} lacks one of {sorted(_REQUEST_KEYS)} (or has the wrong type)")
            chain.append({key: (r[key][:500] if isinstance(r[key], str) else r[key]) for key in _REQUEST_KEYS})
        return cls(run, model, np.sort(forgotten).astype(np.int64), tuple(chain))

"""lineage.Lineage: requests accumulate on a version; a record read from the registry is checked."""
from __future__ import annotations

import numpy as np
import pytest

from mlflow_unlearn.forget_sets import forget_digest
from mlflow_unlearn.lineage import LINEAGE_FORMAT, Lineage, LineageError

RUN = "0123456789abcdef0123456789abcdef"


def test_requests_accumulate_and_repeated_ids_are_counted_not_added():
    v1 = Lineage.original(RUN, "m/1")
    assert v1.forgotten.tolist() == [] and v1.requests == ()
    v2 = v1.after(source="m/1", forget_ids=[5, 3, 9], run_id="r2", how="rum")
    new, already = v2.split([9, 1, 3, 7])
    assert new.tolist() == [1, 7] and already.tolist() == [3, 9]
    v3 = v2.after(source="m/2", forget_ids=[9, 1, 3, 7], run_id="r3", how="rum")
    assert v3.forgotten.tolist() == [1, 3, 5, 7, 9] and v3.original_run == RUN and v3.original_model == "m/1"
    assert [(r["source"], r["n_forget"], r["n_new"]) for r in v3.requests] == [("m/1", 3, 3), ("m/2", 4, 2)]
    assert v3.requests[1]["forget_digest"] == forget_digest([1, 3, 7, 9])  # the request's digest, as attach names it
    assert v2.forgotten.tolist() == [3, 5, 9]  # the older lineage is unchanged
    d = v3.to_dict()
    assert d["n_forgotten"] == 5 and d["forgotten_digest"] == forget_digest([1, 3, 5, 7, 9])
    back = Lineage.from_dict(d, n_train=10)
    assert back.forgotten.tolist() == v3.forgotten.tolist() and back.requests == v3.requests


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(format=99), "format 99"),
    (lambda d: d.update(original_run="../../etc"), "original_run is not an MLflow run id"),
    (lambda d: d.update(forgotten=[1, 3, 99]), r"out of range: \[99\]"),
    (lambda d: d.update(forgotten=[1, 1]), "repeats ids"),
    (lambda d: d.update(forgotten=[1, 2, 3]), "forgotten_digest does not match"),
    (lambda d: d.update(forgotten="1,3"), "forgotten is not a list"),
    (lambda d: d["requests"].append({"source": "m/3"}), "request 2 lacks one of"),
    (lambda d: d.update(requests={"a": 1}), "requests is not a list"),
])
def test_a_forged_or_altered_record_is_refused_by_field(change, needle):
    d = Lineage.original(RUN, "m/1").after(source="m/1", forget_ids=[1, 3], run_id="r", how="rum").after(
        source="m/2", forget_ids=[5], run_id="r", how="rum").to_dict()
    change(d)
    with pytest.raises(LineageError, match=needle):
        Lineage.from_dict(d, n_train=10, where="lineage of m/3")


def test_not_a_record():
    for bad in ([], "x", None):
        with pytest.raises(LineageError, match="not a JSON object"):
            Lineage.from_dict(bad, n_train=10)
    assert LINEAGE_FORMAT == 1 and np.asarray(Lineage.original(RUN).forgotten).dtype == np.int64

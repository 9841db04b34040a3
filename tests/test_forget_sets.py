import json

import numpy as np
import pytest

from mlflow_unlearn.forget_sets import ForgetSetError, forget_digest, load_forget_set

LABELS = np.repeat(np.arange(5), 20)  # 100 train examples, 5 classes
C_PROXY = np.linspace(0.01, 0.99, 100)  # id 0 is the most memorised


@pytest.mark.parametrize("suffix,write", [
    (".txt", lambda p, ids: p.write_text("\n".join(map(str, ids)) + "\n")),
    (".json", lambda p, ids: p.write_text(json.dumps(ids))),
    (".npy", lambda p, ids: np.save(p, np.asarray(ids))),
    (".csv", lambda p, ids: p.write_text("id,reason\n" + "".join(f"{i},gdpr\n" for i in ids))),
])
def test_files_of_ids_in_every_format(tmp_path, suffix, write):
    path = tmp_path / f"forget{suffix}"
    write(path, [7, 3, 42])
    fs = load_forget_set(path, labels=LABELS)
    assert fs.ids.tolist() == [3, 7, 42]
    assert fs.digest == forget_digest([42, 7, 3])


def test_json_object_with_ids(tmp_path):
    p = tmp_path / "f.json"
    p.write_text(json.dumps({"ids": [1, 2], "request": "ticket-9"}))
    assert load_forget_set(p, labels=LABELS).ids.tolist() == [1, 2]


def test_specs():
    assert len(load_forget_set("random:10", labels=LABELS)) == 10
    assert load_forget_set("random:10", labels=LABELS, seed=1).ids.tolist() != load_forget_set("random:10", labels=LABELS).ids.tolist()
    assert load_forget_set("class:2", labels=LABELS).ids.tolist() == list(range(40, 60))
    assert load_forget_set("class:cat", labels=LABELS, classes=["a", "b", "cat", "d", "e"]).ids.tolist() == list(range(40, 60))
    mix = load_forget_set("mix:9", labels=LABELS, c_proxy=C_PROXY).ids
    assert len(mix) == 9
    assert (mix < 10).sum() == 3 and (mix >= 90).sum() == 3 and ((mix > 40) & (mix < 60)).sum() == 3
    tiers = load_forget_set("tiers:low=2,mid=3,high=4", labels=LABELS, c_proxy=C_PROXY).ids
    assert len(tiers) == 9


@pytest.mark.parametrize("ids,needle", [
    ([1, 2, 100], "100"), ([-1, 2], "-1"), ([3, 3, 4], "repeats ids [3]"), ([], "empty"),
    (list(range(100)), "all 100"), ([1.5], "not integers"),
])
def test_bad_ids_are_named(ids, needle):
    with pytest.raises(ForgetSetError) as e:
        load_forget_set(ids, labels=LABELS)
    assert needle in str(e.value)


@pytest.mark.parametrize("spec,needle", [
    ("random:0", "positive"), ("random:abc", "'abc'"), ("random:100", "random:100"), ("class:9", "class:9"),
    ("mix:5", None), ("tiers:low=2,mid", "mid"), ("frobnicate:3", None),
])
def test_bad_specs(spec, needle, tmp_path):
    with pytest.raises(ForgetSetError) as e:
        load_forget_set(spec, labels=LABELS, c_proxy=None if spec.startswith("mix") else C_PROXY)
    assert (needle or spec.split(":")[0]) in str(e.value) or "C-proxy" in str(e.value)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(ForgetSetError, match="does not exist"):
        load_forget_set(tmp_path / "nope.txt", labels=LABELS)
    bad = tmp_path / "ids.parquet"
    bad.write_text("x")
    with pytest.raises(ForgetSetError, match="unknown suffix"):
        load_forget_set(bad, labels=LABELS)
    garbage = tmp_path / "ids.txt"
    garbage.write_text("1 2 three")
    with pytest.raises(ForgetSetError, match="three"):
        load_forget_set(garbage, labels=LABELS)

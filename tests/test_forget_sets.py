import json

import numpy as np
import pytest

from mlflow_unlearn.forget_sets import ForgetSetError, forget_digest, load_forget_set, mix_forget_set, tiered_forget_set
from mlflow_unlearn.memorization import MemorizationError, tier_histogram, tiers_from_c_proxy

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
    with pytest.raises(ForgetSetError, match="value 3 is not an integer"):  # named by position: never quoted
        load_forget_set(garbage, labels=LABELS)


# ------------------------------------------------------------ chosen by memorisation rank: mix, tiers, calibration sets


def _c_proxy(n=600, seed=0):
    return np.random.default_rng(seed).random(n)


# ---------------------------------------------------------------- forget-set selection


def test_mix_takes_extremes_and_median_ranks():
    rng = np.random.default_rng(2)
    c = rng.permutation(100) / 100.0
    rank = np.empty(100, int)
    rank[np.argsort(-c)] = np.arange(100)  # 0 = highest C-proxy = least memorised
    ids = mix_forget_set(c, 9)
    assert ids.dtype == np.int64 and len(ids) == 9 and np.all(np.diff(ids) > 0)
    r = sorted(rank[ids].tolist())
    assert r[:3] == [0, 1, 2]  # the 3 highest C-proxy
    assert r[-3:] == [97, 98, 99]  # the 3 lowest C-proxy
    assert r[3:6] == [49, 50, 51]  # around the median (ranks 49.5 +- 1)
    # remainder to the first tiers: 10 = 4 + 3 + 3
    r = sorted(rank[mix_forget_set(c, 10)].tolist())
    assert r[:4] == [0, 1, 2, 3] and r[-3:] == [97, 98, 99] and all(47 <= x <= 52 for x in r[4:7])
    assert tier_histogram(mix_forget_set(c, 30), c) == {"low": 10, "mid": 10, "high": 10}
    # four tiers: windows centred on ranks 0, 33, 66, 99
    r = sorted(rank[mix_forget_set(c, 8, names=("a", "b", "c", "d"))].tolist())
    assert r == [0, 1, 33, 34, 66, 67, 98, 99]


def test_mix_near_whole_train_set_and_limits():
    c = np.linspace(1, 0, 10)  # id 0 least memorised
    assert len(np.unique(mix_forget_set(c, 9))) == 9  # windows never overlap
    for bad in (0, -3, 10, 11, 2.5):
        with pytest.raises(MemorizationError) as e:
            mix_forget_set(c, bad)
        assert repr(bad) in str(e.value) or str(bad) in str(e.value)


def test_mix_seed_only_breaks_ties():
    c = np.linspace(0, 1, 60)
    assert np.array_equal(mix_forget_set(c, 9, seed=0), mix_forget_set(c, 9, seed=5))
    flat = np.full(60, 0.5)
    a, b = mix_forget_set(flat, 9, seed=0), mix_forget_set(flat, 9, seed=1)
    assert np.array_equal(a, mix_forget_set(flat, 9, seed=0)) and not np.array_equal(a, b)


def test_tiered_forget_set_counts_per_train_bin():
    rng = np.random.default_rng(3)
    c = rng.random(300)
    counts = {"low": 4, "mid": 0, "high": 11}
    ids = tiered_forget_set(c, counts, seed=7)
    assert ids.dtype == np.int64 and len(np.unique(ids)) == 15
    assert tier_histogram(ids, c) == {"low": 4, "mid": 0, "high": 11}
    assert np.array_equal(ids, tiered_forget_set(c, counts, seed=7))
    assert not np.array_equal(ids, tiered_forget_set(c, counts, seed=8))
    # omitted names count 0; key order does not matter
    assert tier_histogram(tiered_forget_set(c, {"high": 5, "low": 2}), c) == {"low": 2, "mid": 0, "high": 5}


@pytest.mark.parametrize("counts,needles", [
    ({"low": 101}, ["'low'", "101", "100"]),
    ({"low": -1}, ["'low'", "-1"]),
    ({"medium": 3}, ["'medium'", "low, mid, high"]),
    ({"low": 0, "high": 0}, ["total", "0"]),
    ({"low": 1.5}, ["'low'", "1.5"]),
])
def test_tiered_forget_set_errors_name_tier_and_sizes(counts, needles):
    with pytest.raises(MemorizationError) as e:
        tiered_forget_set(np.random.default_rng(0).random(300), counts)
    assert all(n in str(e.value) for n in needles), str(e.value)


def test_calibration_sets_mirror_the_request_and_are_disjoint():
    from mlflow_unlearn.forget_sets import calibration_forget_sets

    c = _c_proxy()
    forget = mix_forget_set(c, 60)
    sets = calibration_forget_sets(c, forget, 2)
    assert [len(s) for s in sets] == [60, 60]
    assert not set(sets[0]) & set(sets[1]) and not (set(sets[0]) | set(sets[1])) & set(forget)
    for s in sets:
        assert tier_histogram(s, c) == tier_histogram(forget, c)  # the same composition by train-set bin
        # tier by tier, the stand-ins sit next to the request's examples in C-proxy
        for name, ids in tiers_from_c_proxy(s, c).items():
            target = tiers_from_c_proxy(forget, c)[name]
            assert abs(c[ids].mean() - c[target].mean()) < 0.1


def test_calibration_sets_are_deterministic_and_work_for_random_requests():
    from mlflow_unlearn.forget_sets import calibration_forget_sets

    c = _c_proxy()
    forget = np.sort(np.random.default_rng(1).choice(600, 45, replace=False))
    a, b = calibration_forget_sets(c, forget, 3), calibration_forget_sets(c, forget, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(tier_histogram(x, c) == tier_histogram(forget, c) for x in a)


def test_calibration_request_too_large_names_sizes_and_fix():
    from mlflow_unlearn.forget_sets import calibration_forget_sets

    c = _c_proxy()
    with pytest.raises(MemorizationError) as e:
        calibration_forget_sets(c, mix_forget_set(c, 240), 2)  # 80 per bin of 200: 3 x 80 > 200
    msg = str(e.value)
    assert "200" in msg and "80" in msg and "--calibration-sets 1" in msg
    with pytest.raises(MemorizationError, match="smaller forget set"):
        calibration_forget_sets(c, mix_forget_set(c, 360), 1)  # 120 per bin: not even one set fits
    with pytest.raises(MemorizationError, match="calibration sets"):
        calibration_forget_sets(c, mix_forget_set(c, 30), 0)


def test_parse_errors_name_the_position_not_the_content(tmp_path):
    from mlflow_unlearn.forget_sets import ForgetSetError, read_ids_file

    secret = tmp_path / "leak.txt"
    secret.write_text("1\n2\nroot:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ForgetSetError, match="value 3 is not an integer train id") as info:
        read_ids_file(secret)
    assert "root" not in str(info.value).replace("leak.txt", "")
    table = tmp_path / "leak.csv"
    table.write_text("id\n1\nMLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=abc\n")
    with pytest.raises(ForgetSetError, match="row 2 is not an integer train id") as info:
        read_ids_file(table)
    assert "abc" not in str(info.value) and "SECRET" not in str(info.value)


def test_one_calibration_pool_serves_every_request_it_can_match():
    """The pool (what one calibration reference is retrained without) is the k calibration sets of
    the canonical mix request: it holds the extreme tail, depends on no request, and a request's
    calibration sets are drawn inside it, disjoint from the request, with its bin histogram and,
    tier by tier, next to its C-proxy."""
    from mlflow_unlearn.forget_sets import calibration_forget_sets, calibration_pool

    c = _c_proxy()
    pool = calibration_pool(c, 60, 2)
    assert len(pool) == 120 and np.array_equal(pool, calibration_pool(c, 60, 2))
    assert not np.isin(pool, mix_forget_set(c, 60)).any()
    rank = np.argsort(np.argsort(c))  # 0 = the most memorised (lowest C-proxy)
    assert (rank[pool] < 60).sum() == 40  # the tail: 2 x 20 stand-ins for the 20 most memorised
    for request in (mix_forget_set(c, 60), mix_forget_set(c, 30), np.sort(np.random.default_rng(3).choice(600, 24, replace=False))):
        sets = calibration_forget_sets(c, request, 2, pool=pool)
        assert all(np.isin(s, pool).all() and not np.isin(s, request).any() for s in sets)
        assert not set(sets[0]) & set(sets[1])
        assert all(tier_histogram(s, c) == tier_histogram(request, c) for s in sets)
    high = tiers_from_c_proxy(mix_forget_set(c, 30), c)["high"]
    for s in calibration_forget_sets(c, mix_forget_set(c, 30), 2, pool=pool):
        assert rank[tiers_from_c_proxy(s, c)["high"]].max() < 60  # the extreme tail stays in the extreme tail
        assert abs(c[tiers_from_c_proxy(s, c)["high"]].mean() - c[high].mean()) < 0.1


def test_a_request_the_pool_cannot_match_names_the_counts():
    from mlflow_unlearn.forget_sets import calibration_forget_sets, calibration_pool

    c = _c_proxy()
    pool = calibration_pool(c, 30, 2)  # 20 per bin, next to the canonical windows of 10
    with pytest.raises(MemorizationError) as e:  # 15 per bin, 5 of them in the pool: 15 left, 2 sets need 30
        calibration_forget_sets(c, mix_forget_set(c, 45), 2, pool=pool)
    msg = str(e.value)
    assert "calibration pool holds 15" in msg and "need 30" in msg and "--calibration-sets 1" in msg


@pytest.mark.parametrize("arr,kw", [(np.array([1, "a", None], dtype=object), {"allow_pickle": True}),
                                    (np.array(["0123", "5"]), {}), (np.zeros(3, dtype=[("a", "i4")]), {}),
                                    (np.arange(6).reshape(2, 3), {}), (np.array([1 + 2j]), {})])
def test_a_npy_that_is_not_a_1d_numeric_array_is_refused_without_quoting_it(tmp_path, arr, kw):
    from mlflow_unlearn.forget_sets import ForgetSetError, read_ids_and_digest

    path = tmp_path / "ids.npy"
    np.save(path, arr, **kw)
    with pytest.raises(ForgetSetError) as e:
        read_ids_and_digest(path)
    assert "0123" not in str(e.value) and str(tmp_path) not in str(e.value)

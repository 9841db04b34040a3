import numpy as np
import pytest
import torch
from PIL import Image

from mlflow_unlearn.data import DatasetError, DatasetSpec, augment_batch, load_dataset


def make_imagefolder(root, n_per_class=3, size=12, classes=("cat", "dog"), splits=("train", "test")):
    rng = np.random.RandomState(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


def test_digits_has_stable_ids_and_fixed_test_split(digits):
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert torch.equal(digits.train.ids, torch.arange(len(digits.train)))
    assert len(digits.train) + len(digits.test) == 1797
    again = load_dataset(DatasetSpec("digits", seed=5))
    assert torch.equal(again.test.x, digits.test.x)  # the test split does not depend on the seed
    assert again.digest == digits.digest


def test_subset_and_validation_split_are_seeded(digits):
    a = load_dataset(DatasetSpec("digits", subset=300, val_fraction=0.1, seed=1))
    b = load_dataset(DatasetSpec("digits", subset=300, val_fraction=0.1, seed=1))
    c = load_dataset(DatasetSpec("digits", subset=300, val_fraction=0.1, seed=2))
    assert len(a.train) == 270 and len(a.val) == 30
    assert torch.equal(a.train.x, b.train.x) and a.digest == b.digest
    assert a.digest != c.digest
    assert torch.equal(a.train.ids, torch.arange(270))
    assert set(a.source_index).isdisjoint(set(a.val.ids.tolist()))


def test_imagefolder_tree_and_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_UNLEARN_CACHE", str(tmp_path / "cache"))
    make_imagefolder(tmp_path / "tree")
    data = load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    assert data.classes == ["cat", "dog"]
    assert data.input_shape == (3, 12, 12) and len(data.train) == 6 and len(data.test) == 6
    m = data.manifest()
    assert m["ids"] == list(range(6)) and m["labels"] == [0, 0, 0, 1, 1, 1]
    assert m["dataset_digest"] == data.digest
    # second load comes from the decoded cache and is identical
    assert load_dataset(f"imagefolder:{tmp_path / 'tree'}").digest == data.digest


@pytest.mark.parametrize("name", ["mnist", "", "imagefolder:"])
def test_unknown_dataset_lists_valid_names(name):
    with pytest.raises(DatasetError) as e:
        DatasetSpec(name=name)
    assert "digits" in str(e.value)


def test_imagefolder_without_test_folder_names_it(tmp_path):
    make_imagefolder(tmp_path / "tree", splits=("train",))
    with pytest.raises(DatasetError, match=r"test/"):
        load_dataset(f"imagefolder:{tmp_path / 'tree'}")


def test_imagefolder_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")


@pytest.mark.parametrize("kw,match", [({"val_fraction": 20}, "not a percentage"), ({"subset": 0}, "subset")])
def test_bad_spec_values(kw, match):
    with pytest.raises(DatasetError, match=match):
        DatasetSpec("digits", **kw)


def test_augmentation_is_a_seeded_crop_and_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = augment_batch(x, pad=2, generator=g1), augment_batch(x, pad=2, generator=g2)
    assert a.shape == x.shape and torch.equal(a, b)
    # with no padding, the only change is a horizontal flip of whole images
    c = augment_batch(x, pad=0, generator=torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(c[i], x[i]) or torch.equal(c[i], x[i].flip(-1))
    # a crop keeps an inner window of the image: some original pixel rows survive intact
    shifted = augment_batch(x, pad=2, flip=False, generator=torch.Generator().manual_seed(3))
    assert any(torch.equal(shifted[0, 0, r, 2:6], x[0, 0, rr, 2 + dx:6 + dx]) for r in range(8) for rr in range(8) for dx in (-2, -1, 0, 1, 2) if 0 <= 2 + dx and 6 + dx <= 8)


def test_a_spec_reading_outside_the_data_roots_is_refused_without_naming_the_path(tmp_path):
    from mlflow_unlearn.data import DatasetError, DatasetSpec

    inside, outside = tmp_path / "data" / "tree", tmp_path / "secret-home" / "tree"
    make_imagefolder(inside)
    DatasetSpec(name=f"imagefolder:{inside}").check_within([str(tmp_path / "data")])
    DatasetSpec(name="digits").check_within([])  # embedded: reads no host path
    (tmp_path / "data" / "escape").symlink_to(tmp_path / "secret-home")
    messages = set()
    for spec in (DatasetSpec(name=f"imagefolder:{outside}"),  # does not exist
                 DatasetSpec(name=f"imagefolder:{inside}"),  # exists, but no root allows it
                 DatasetSpec(name=f"imagefolder:{tmp_path / 'data' / 'escape' / 'tree'}"),  # out through a symlink
                 DatasetSpec(name="cifar10", root=str(tmp_path / "secret-home"))):
        roots = [] if spec.name.endswith(str(inside)) else [str(tmp_path / "data")]
        with pytest.raises(DatasetError) as e:
            spec.check_within(roots)
        assert str(tmp_path) not in str(e.value) and "--data-root" in str(e.value)
        messages.add(str(e.value))
    assert len(messages) == 1  # the same words whether the path exists or not


def test_noisy_digits_flips_a_seeded_share_of_train_labels_only(digits):
    clean = load_dataset(DatasetSpec("digits", val_fraction=0.1))
    noisy = load_dataset(DatasetSpec("digits-noisy", val_fraction=0.1))
    n = len(noisy.train)
    assert len(noisy.flipped_ids) == round(0.1 * n) == 129  # exactly round(rate x n_train), not a coin per example
    changed = np.flatnonzero((noisy.train.y != clean.train.y).numpy())
    np.testing.assert_array_equal(changed, noisy.flipped_ids)  # every flipped label differs, nothing else moved
    np.testing.assert_array_equal(noisy.clean_labels, clean.train.y.numpy()[noisy.flipped_ids])
    assert torch.equal(noisy.train.x, clean.train.x)  # the images are the clean ones
    assert torch.equal(noisy.val.y, clean.val.y) and torch.equal(noisy.test.y, clean.test.y)  # selection and test clean
    assert noisy.digest != clean.digest  # the labels are part of what a model was trained on
    # symmetric: the flipped labels spread over the other classes
    assert len(np.unique(noisy.train.y.numpy()[noisy.flipped_ids])) == 10
    again = load_dataset(DatasetSpec("digits-noisy", val_fraction=0.1))
    np.testing.assert_array_equal(again.flipped_ids, noisy.flipped_ids)
    assert again.digest == noisy.digest
    other = load_dataset(DatasetSpec("digits-noisy", val_fraction=0.1, seed=1))
    assert not np.array_equal(other.flipped_ids, noisy.flipped_ids)


def test_noisy_digits_manifest_records_the_flipped_ids_and_their_clean_labels():
    data = load_dataset(DatasetSpec("digits-noisy:0.2"))
    m = data.manifest()
    assert m["label_noise"] == 0.2 and m["dataset"] == "digits-noisy:0.2"
    assert len(m["flipped_ids"]) == round(0.2 * len(data.train))
    assert all(m["labels"][i] != c for i, c in zip(m["flipped_ids"], m["clean_labels"]))
    assert "flipped_ids" not in load_dataset("digits").manifest()
    assert load_dataset("digits-noisy:0").flipped_ids is None  # rate 0: the clean labels


@pytest.mark.parametrize("name", ["digits-noisy:abc", "digits-noisy:0.5", "digits-noisy:-0.1", "digits-noisy:10",
                                  "digits-noisy:", "digits-noisy:nan"])
def test_bad_noise_rate_names_the_accepted_form(name):
    with pytest.raises(DatasetError) as e:
        DatasetSpec(name=name)
    msg = str(e.value)
    assert "[0, 0.5)" in msg and "digits-noisy:0.1" in msg


def test_a_long_bad_noise_rate_is_not_quoted_back_whole():
    with pytest.raises(DatasetError) as e:
        DatasetSpec(name="digits-noisy:" + "x" * 5000)
    assert len(str(e.value)) < 400

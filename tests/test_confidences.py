import copy

import numpy as np
import pytest
import torch

from mlflow_unlearn.confidences import ConfidenceRecorder
from mlflow_unlearn.data import DatasetSpec, load_dataset
from mlflow_unlearn.models import build_model
from mlflow_unlearn.training import TrainConfig, train_model


def test_recorded_confidences_equal_a_separate_pass_over_the_same_batches():
    """What the recorder keeps from the training forward pass is what a second forward pass of the same
    (augmented) batch with the same weights gives, under the right example ids and epoch."""
    data = load_dataset(DatasetSpec("digits", subset=200))
    model = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=0, width=8)
    recorder = ConfidenceRecorder(len(data.train))
    expected = np.full((2, len(data.train)), np.nan)

    def check(model, ids, inputs, labels, epoch, **_):
        twin = copy.deepcopy(model)  # same weights, same (train) mode: BN uses the batch's statistics
        with torch.no_grad():
            p = torch.softmax(twin(inputs), 1).gather(1, labels[:, None]).squeeze(1)
        expected[epoch, ids.numpy()] = p.numpy()

    train_model(model, data, TrainConfig(epochs=2, batch_size=32, augment=True, seed=3), recorder=recorder,
                on_batch=check, progress=False, eval_test=False)
    recorded = recorder.true_class_prob()
    assert recorded.shape == (2, 200) and not np.isnan(recorded).any()
    np.testing.assert_allclose(recorded, expected, atol=1e-5)
    np.testing.assert_allclose(recorder.proxies()["c_proxy"], expected.mean(0), atol=1e-5)


def test_c_proxy_ranks_mislabelled_digits_among_the_lowest():
    data = load_dataset("digits")
    rng = np.random.RandomState(0)
    flipped = rng.choice(len(data.train), size=30, replace=False)
    y = data.train.y.clone()
    y[flipped] = (y[flipped] + torch.from_numpy(rng.randint(1, 10, size=30))) % 10  # always a wrong class
    data.train.y = y
    model = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=0, width=16)
    recorder = ConfidenceRecorder(len(data.train))
    train_model(model, data, TrainConfig(epochs=12, lr=0.05, batch_size=64), recorder=recorder, progress=False, eval_test=False)
    c = recorder.proxies()["c_proxy"]
    lowest = set(np.argsort(c)[: int(0.05 * len(c))])  # the 5% least confident (most memorised)
    assert len(lowest & set(flipped)) >= 27, f"only {len(lowest & set(flipped))} of 30 mislabelled in the lowest 5%"
    assert np.median(c[flipped]) < 0.2 < np.median(c)


def test_recorder_api_for_custom_loops():
    rec = ConfidenceRecorder(n_samples=4)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    rec.update(torch.tensor([0, 2]), logits, torch.tensor([0, 0]))
    rec.end_epoch()
    rec.update([1, 3], logits, [1, 1])
    rec.end_epoch()
    tp = rec.true_class_prob()
    p = torch.softmax(logits, 1)
    assert tp.shape == (2, 4)
    assert tp[0, 0] == pytest.approx(p[0, 0].item()) and tp[0, 2] == pytest.approx(p[1, 0].item())
    assert np.isnan(tp[0, 1]) and np.isnan(tp[1, 0])  # unseen that epoch
    proxies = rec.proxies()
    assert proxies["learning_events"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert set(proxies) == {"c_proxy", "max_conf", "entropy", "learning_events"}


def test_recorder_rejects_mismatched_batches():
    rec = ConfidenceRecorder(3)
    with pytest.raises(ValueError, match="batch size"):
        rec.update([0, 1], torch.zeros(3, 2), [0, 1])
    with pytest.raises(RuntimeError, match="end_epoch"):
        rec.end_epoch()
    with pytest.raises(ValueError, match="n_samples"):
        ConfidenceRecorder(0)


def test_save_confidences_writes_the_artifact_layout(tmp_path):
    """The pure half of tracking.log_confidences: the files an original run's confidences/ holds."""
    from mlflow_unlearn.confidences import PROXY_NAMES, save_confidences

    rec = ConfidenceRecorder(4)
    for epoch in range(2):
        rec.update(torch.arange(4), torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 1, 0, 0]))
        rec.end_epoch()
    proxies = save_confidences(rec, tmp_path / "confidences")
    assert sorted(p.name for p in (tmp_path / "confidences").iterdir()) == [
        "history.npz", "proxies.csv", "proxies.npz", "true_class_prob.npy"]
    prob = np.load(tmp_path / "confidences" / "true_class_prob.npy")
    assert prob.dtype == np.float16 and prob.shape == (2, 4)
    lines = (tmp_path / "confidences" / "proxies.csv").read_text().splitlines()
    assert lines[0] == "id," + ",".join(PROXY_NAMES) and len(lines) == 5
    assert proxies["c_proxy"][3] < 0.1 < 0.8 < proxies["c_proxy"][0]  # id 3 is confidently wrong: memorised-looking


def test_save_confidences_writes_the_heldout_record_and_refuses_a_bad_one(tmp_path):
    from mlflow_unlearn.confidences import HELDOUT_FILE, heldout_c_proxy, save_confidences

    rec, held = ConfidenceRecorder(2), ConfidenceRecorder(3)
    for epoch in range(2):
        rec.update(torch.arange(2), torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]))
        rec.end_epoch()
        held.update(torch.arange(3), torch.tensor([[2.0, 0.0], [0.0, 2.0], [float(epoch), 0.0]]), torch.tensor([0, 0, 0]))
        held.end_epoch()
    save_confidences(rec, tmp_path / "c", heldout=held)
    prob = np.load(tmp_path / "c" / HELDOUT_FILE)
    assert prob.dtype == np.float16 and prob.shape == (2, 3)
    proxy = heldout_c_proxy(prob)
    assert proxy[1] < 0.2 < proxy[2] < 0.7 < proxy[0]  # mean over the two epochs: 0.5 then 0.73 for id 2
    with pytest.raises(ValueError, match=r"\[epochs, n_heldout\].*shape \(3,\)"):
        save_confidences(rec, tmp_path / "d", heldout=np.ones(3))

import pytest
import torch

from mlflow_unlearn.data import DatasetSpec, load_dataset
from mlflow_unlearn.models import build_model
from mlflow_unlearn.progress import ListLogger
from mlflow_unlearn.training import TrainConfig, TrainConfigError, train_model


@pytest.fixture(scope="module")
def small():
    return load_dataset(DatasetSpec("digits", subset=300))


def run(data, seed):
    model = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed, width=8)
    log = ListLogger()
    hist = train_model(model, data, TrainConfig(epochs=3, lr=0.05, batch_size=32, seed=seed, augment=True), log=log, progress=False)
    return model, hist, log


def test_training_is_reproducible_on_cpu_and_learns(small):
    a, hist, log = run(small, 0)
    b, _, _ = run(small, 0)
    c, _, _ = run(small, 1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.fc.weight, c.fc.weight)
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]
    assert hist[-1]["train/acc"] > hist[0]["train/acc"]
    assert [step for step, _ in log.records] == [0, 1, 2]
    assert {"train/loss", "train/acc", "test/acc", "time/epoch_s"} <= set(log.records[0][1])


def test_train_ids_restrict_training_to_those_examples(small):
    seen = set()
    model = build_model("small_cnn", num_classes=10, input_shape=small.input_shape, seed=0, width=8)
    train_model(model, small, TrainConfig(epochs=1, batch_size=16), train_ids=torch.arange(0, 50), progress=False,
                eval_test=False, on_batch=lambda ids, **_: seen.update(ids.tolist()))
    assert seen == set(range(50))


@pytest.mark.parametrize("kw,name", [({"epochs": 0}, "epochs"), ({"lr": -0.1}, "lr"), ({"lr": 0}, "lr"),
                                     ({"batch_size": 0}, "batch_size"), ({"label_smoothing": 10}, "label_smoothing")])
def test_bad_settings_name_the_value(kw, name):
    with pytest.raises(TrainConfigError) as e:
        TrainConfig(**kw)
    assert name in str(e.value) and repr(list(kw.values())[0]) in str(e.value)


def test_heldout_confidences_are_recorded_per_epoch_without_changing_training():
    """The validation split's eval-mode confidences after every epoch (the gate's held-out C-proxy):
    one row per epoch, the last equal to the trained model's, and the weights bit-identical to a
    run that records nothing (no RNG drawn, no batch-norm statistics touched)."""
    from mlflow_unlearn.confidences import ConfidenceRecorder
    from mlflow_unlearn.training import predict_logits

    data = load_dataset(DatasetSpec("digits", subset=300, val_fraction=0.2))
    config = TrainConfig(epochs=3, lr=0.05, batch_size=32, seed=0, augment=True)
    plain = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=0, width=8)
    train_model(plain, data, config, progress=False, eval_test=False)
    recorded = build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=0, width=8)
    heldout = ConfidenceRecorder(len(data.val))
    train_model(recorded, data, config, progress=False, eval_test=False, heldout=data.val, heldout_recorder=heldout)
    for (k, va), vb in zip(plain.state_dict().items(), recorded.state_dict().values()):
        assert torch.equal(va, vb), k
    prob = heldout.true_class_prob()
    assert prob.shape == (3, len(data.val)) and not (prob[0] == prob[-1]).all()
    final = torch.softmax(predict_logits(recorded, data, data.val), 1).gather(1, data.val.y[:, None]).squeeze(1)
    assert torch.allclose(torch.from_numpy(prob[-1]), final, atol=1e-5)


def test_heldout_recording_needs_a_recorder_of_the_splits_size(small):
    from mlflow_unlearn.confidences import ConfidenceRecorder

    model = build_model("small_cnn", num_classes=10, input_shape=small.input_shape, seed=0, width=8)
    with pytest.raises(TrainConfigError, match="7 slots but the held-out split has 60"):
        train_model(model, small, TrainConfig(epochs=1), progress=False, heldout=small.test.subset(torch.arange(60)),
                    heldout_recorder=ConfidenceRecorder(7))
    with pytest.raises(TrainConfigError, match="pass both or neither"):
        train_model(model, small, TrainConfig(epochs=1), progress=False, heldout=small.test)


def test_one_retrain_serves_the_algorithm_and_the_calibration_reference():
    """`retrain_from_scratch` is the package's one retrain: the `retrain` algorithm (with a recipe)
    and the search's reference (`tuning.train_reference`) give bit-identical weights for the same
    recipe, retain set and seed, and the algorithm's cost is epochs x retain example passes."""
    from mlflow_unlearn import tuning
    from mlflow_unlearn.algorithms import TrainRecipe, UnlearnData, run_algorithm
    from mlflow_unlearn.compute import ComputeMeter
    from mlflow_unlearn.data import DatasetSpec, load_dataset
    from mlflow_unlearn.models import build_model
    from mlflow_unlearn.training import retrain_from_scratch

    data = load_dataset(DatasetSpec("digits", subset=120))
    build = lambda seed: build_model("small_cnn", num_classes=10, input_shape=data.input_shape, seed=seed, width=4)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=16)
    forget = list(range(10))
    retain = [i for i in range(len(data.train)) if i not in forget]
    direct = retrain_from_scratch(build, config, data, retain, seed=3)
    meter = ComputeMeter()
    algorithm = run_algorithm("retrain", build(0), UnlearnData.from_forget(data, forget, recipe=TrainRecipe(build, config)),
                              seed=3, meter=meter)
    reference, _ = tuning.train_reference(build, config, data, forget, seed=3)
    for other in (algorithm, reference):
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in direct.state_dict().items())
    assert meter.train_passes == 2 * len(retain) and meter.eval_passes == 0

"""The training recipe's stabilisers by hand: schedules, weight averaging, batch-norm re-estimation, determinism."""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
from test_classifier import _write_toy_set

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.model.evaluation import evaluate
from heatmap_templates.model.recipe import (
    SCHEDULES,
    averaging_start,
    recalibrate_batch_norm,
    uses_early_stopping,
    weight_averager,
)
from heatmap_templates.model.training import TrainConfig, train


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_starts_peaks_and_ends_where_it_says(name: str) -> None:
    rate = SCHEDULES[name](1e-3, 10, 5, 2)  # 10 epochs of 5 steps, 2 warm-up epochs
    values = [float(rate(step)) if callable(rate) else rate for step in range(50)]
    if name == "constant":
        assert values == [1e-3] * 50 and uses_early_stopping(name)
        return
    assert not uses_early_stopping(name)
    assert values[0] == pytest.approx(1e-4) and values[10] == pytest.approx(1e-3)  # warm-up from a tenth to the peak
    assert all(a <= b for a, b in itertools.pairwise(values[:11])) and all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert values[-1] == pytest.approx(1e-5, rel=0.2)  # the cosine ends near 1 % of the peak


def test_averaging_starts_at_the_last_share_of_epochs() -> None:
    assert averaging_start(20, 0.25) == 15 and averaging_start(4, 0.25) == 3 and averaging_start(10, 0.0) is None


def test_weight_averager_puts_the_mean_of_the_last_epochs_into_the_model() -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    averager = weight_averager(start_epoch=1)
    averager.set_model(model)
    snapshots = []
    for epoch, value in enumerate((1.0, 2.0, 4.0)):
        model.set_weights([np.full(w.shape, value, np.float32) for w in model.get_weights()])
        snapshots.append(value)
        averager.on_epoch_end(epoch)
    averager.on_train_end()
    assert all(np.allclose(w, 3.0) for w in model.get_weights())  # the mean of epochs 1 and 2, not epoch 0


def test_batch_norm_is_re_estimated_as_the_mean_over_all_batches() -> None:
    inputs = keras.Input((4,))
    normalised = keras.layers.BatchNormalization(momentum=0.9, name="bn")(keras.layers.Dense(3, name="dense")(inputs))
    model = keras.Model(inputs, normalised)
    layer = model.get_layer("bn")
    layer.moving_mean.assign(np.full(3, 99.0, np.float32))
    rng = np.random.default_rng(0)
    batches = [rng.normal(k, 1.0, (16, 4)).astype(np.float32) for k in range(5)]
    assert recalibrate_batch_norm(model, batches)
    features = [keras.Model(inputs, model.get_layer("dense").output)(batch).numpy() for batch in batches]
    np.testing.assert_allclose(layer.moving_mean.numpy(), np.mean([f.mean(axis=0) for f in features], axis=0), rtol=1e-4, atol=1e-5)
    assert layer.momentum == 0.9  # restored
    assert not recalibrate_batch_norm(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), batches)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_toy_set(tmp_path_factory.mktemp("recipe") / "data")


def test_default_recipe_is_deterministic_and_averages_its_last_epochs(toy: Path) -> None:
    config = replace(TrainConfig(backbone="small", input_size=32, batch_size=8, val_fraction=0.25, test_fraction=0.25), epochs=4)
    dataset = load_dataset(toy)
    first, second = train(dataset, config), train(dataset, config)
    assert all(np.array_equal(a, b) for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True))
    phase = first.info.training["phases"][0]
    assert phase["schedule"] == "cosine" and phase["averaged_epochs"] == 1 and phase["batch_norm_recalibrated"]
    assert phase["epochs_run"] == 4 and not phase["stopped_early"] and first.info.training["augmented"]
    # The validation report scores the delivered (averaged) model, as `hmt evaluate --split val` does from the file.
    assert first.val_report == evaluate(first.model, first.info, dataset, split="val").report
    assert first.info.training["val_report"] == first.val_report and first.val_report["n"] == len(first.info.split["val"])
    plain = train(dataset, replace(config, average_last=0.0))
    assert not plain.info.training["phases"][0]["batch_norm_recalibrated"]
    assert not all(np.array_equal(a, b) for a, b in zip(first.model.get_weights(), plain.model.get_weights(), strict=True))


def test_label_smoothing_moves_targets_towards_uniform_for_every_head() -> None:
    from heatmap_templates.model.objectives import Objective

    probabilities = np.array([[0.7, 0.2, 0.1]], np.float32)
    softmax, _ = Objective("softmax", ["a", "b", "c"]).loss_and_metrics(np.array([0, 1, 2]), label_smoothing=0.3)
    by_hand = -(0.8 * np.log(0.7) + 0.1 * np.log(0.2) + 0.1 * np.log(0.1))  # targets 1 - 0.3 + 0.1, 0.1, 0.1
    assert float(softmax(np.array([[1.0, 0.0, 0.0]]), probabilities)) == pytest.approx(by_hand, rel=1e-5)
    sigmoid, _ = Objective("sigmoid", ["no", "yes"]).loss_and_metrics(np.array([0, 1]), label_smoothing=0.2)
    by_hand = -(0.9 * np.log(0.8) + 0.1 * np.log(0.2))  # target 1 - 0.2 / 2
    assert float(sigmoid(np.array([[1.0]]), np.array([[0.8]], np.float32))) == pytest.approx(by_hand, rel=1e-5)
    # Findings: positives weighted by negatives / positives (here 2 / 1), unknown (-1) left out.
    findings = Objective("sigmoids", ["x", "y"])
    train_labels = np.array([[1, 0], [0, 1], [0, -1]])
    targets, outputs = np.array([[1.0, -1.0], [0.0, 1.0]], np.float32), np.array([[0.8, 0.5], [0.3, 0.6]], np.float32)
    plain, _ = findings.loss_and_metrics(train_labels)
    smoothed, _ = findings.loss_and_metrics(train_labels, label_smoothing=0.2)

    def bce(target: float, p: float) -> float:
        return -(target * np.log(p) + (1 - target) * np.log(1 - p))

    first = 2.0 * bce(0.9, 0.8)  # the unknown second finding does not count
    second = (bce(0.1, 0.3) + 1.0 * bce(0.9, 0.6)) / 2  # finding y: 1 negative / 1 positive
    assert np.asarray(smoothed(targets, outputs)) == pytest.approx([first, second], rel=1e-5)
    assert np.asarray(plain(targets, outputs)) == pytest.approx([2.0 * bce(1, 0.8), (bce(0, 0.3) + bce(1, 0.6)) / 2], rel=1e-5)
    with pytest.raises(Exception, match="label smoothing"):
        TrainConfig(label_smoothing=1.0).validate()


def test_weight_decay_shrinks_kernels_only_by_rate_times_decay() -> None:
    from heatmap_templates.model.training import optimizer

    assert isinstance(optimizer(1e-3, 0.0), keras.optimizers.Adam) and not isinstance(optimizer(1e-3, 0.0), keras.optimizers.AdamW)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))))
    model.layers[2].gamma.assign(np.full(4, 1.5, np.float32))
    for layer in (model.layers[1], model.layers[3]):
        layer.bias.assign(np.full(layer.bias.shape, 0.3, np.float32))
    before = {variable.path: keras.ops.convert_to_numpy(variable) for variable in model.trainable_variables}
    adamw = optimizer(0.1, 0.2)
    adamw.apply_gradients([(keras.ops.zeros_like(variable), variable) for variable in model.trainable_variables])
    for variable in model.trainable_variables:  # a zero gradient moves nothing but the decay: w <- w (1 - lr wd)
        expected = before[variable.path] * (1 - 0.1 * 0.2) if variable.path.endswith("kernel") else before[variable.path]
        assert keras.ops.convert_to_numpy(variable) == pytest.approx(expected, rel=1e-6), variable.path
    with pytest.raises(Exception, match="weight decay"):
        TrainConfig(weight_decay=1.0).validate()

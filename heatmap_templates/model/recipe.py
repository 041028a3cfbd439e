"""The training recipe's stabilisers: learning-rate schedules, weight averaging, batch-norm recalibration.

On small real data (cxr4: 1.2k training images, 150 validation) a constant learning rate of 1e-3
left the ``small`` CNN's validation accuracy swinging between 0.36 and 0.82 from one epoch to the
next, and early stopping picked whichever epoch happened to be lucky. The default recipe instead
warms the learning rate up over the first epochs, decays it along a cosine to nearly zero, averages
the weights of the last epochs (stochastic weight averaging, Izmailov et al. 2018) and then
re-estimates the batch-norm statistics of the averaged network on the training images. The
benchmark is ``benchmarks/bench_training_recipe.py`` (results in ``benchmarks/RESULTS.md``).
Adding a schedule is registering one function here.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from heatmap_templates.registry import Registry

DEFAULT_SCHEDULE = "cosine"
_FINAL_LR_FRACTION = 0.01  # the cosine ends at 1 % of the peak rate, not 0, so the last epochs still move

ScheduleFactory = Callable[[float, int, int, int], object]  # (peak lr, epochs, steps per epoch, warm-up epochs) -> lr or schedule
SCHEDULES: Registry[ScheduleFactory] = Registry("learning-rate schedule", parameter="schedule")


@SCHEDULES.register("constant", help="the same rate every step, with early stopping on validation loss")
def _constant(learning_rate: float, epochs: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    return learning_rate


@SCHEDULES.register("cosine", help="linear warm-up, then cosine decay to 1 % of the rate over the epochs")
def _cosine(learning_rate: float, epochs: int, steps_per_epoch: int, warmup_epochs: int) -> object:
    import keras

    total = max(1, epochs * steps_per_epoch)
    warmup = min(max(0, warmup_epochs * steps_per_epoch), total - 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, total, alpha=_FINAL_LR_FRACTION)
    # From a tenth of the rate up to it over the warm-up, then the cosine down to 1 % of it.
    return keras.optimizers.schedules.CosineDecay(learning_rate / 10.0, total - warmup, alpha=_FINAL_LR_FRACTION,
                                                  warmup_target=learning_rate, warmup_steps=warmup)


def uses_early_stopping(schedule: str) -> bool:
    """A decaying schedule sets the training length itself; only a constant rate needs early stopping."""
    return SCHEDULES.check(schedule) == "constant"


def averaging_start(epochs: int, average_last: float) -> int | None:
    """The first epoch (0-based) whose weights join the average of the last ``average_last`` share, or None."""
    if average_last <= 0:
        return None
    return max(0, epochs - max(1, math.ceil(average_last * epochs)))


def weight_averager(start_epoch: int):
    """A callback that keeps the running mean of the model's weights at the end of each epoch from ``start_epoch``
    and puts it into the model when training ends."""
    import keras

    class WeightAverage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.mean: list[np.ndarray] | None = None
            self.count = 0

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch < start_epoch:
                return
            weights = self.model.get_weights()
            self.count += 1
            if self.mean is None:
                self.mean = [np.array(w, dtype=np.float64) for w in weights]
            else:
                for mean, value in zip(self.mean, weights, strict=True):
                    mean += (value - mean) / self.count

        def on_train_end(self, logs: dict | None = None) -> None:
            if self.mean is not None:
                self.model.set_weights([mean.astype(value.dtype) for mean, value in zip(self.mean, self.model.get_weights(), strict=True)])

    return WeightAverage()


def recalibrate_batch_norm(model, batches) -> bool:
    """Re-estimate the moving statistics of the model's trainable batch-norm layers on ``batches``.

    Averaged weights need statistics of their own (an average of the epochs' statistics does not
    describe the averaged network). Only batch norm moves: the batches run forward in training mode,
    no weight is updated. Returns whether the model had such layers.
    """
    import keras

    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers:
        return False
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
    momenta = [layer.momentum for layer in layers]
    try:
        for count, batch in enumerate(batches, start=1):
            for layer in layers:  # a cumulative mean: batch k weighs 1/k
                layer.momentum = 1.0 - 1.0 / count
            model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return True


def _all_layers(model):
    from heatmap_templates.model.layers import walk_layers

    return [layer for _, layer in walk_layers(model)]

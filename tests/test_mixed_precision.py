"""Mixed precision (`CamEngine(..., mixed_precision=True)`, `hmt heatmaps --mixed-precision`).

The copy must really compute in float16 (a model loaded from a .keras file keeps its float32
policies whatever the global policy says), keep nested layer names, and give maps and
probabilities that agree with float32 ones. CPUs run float16 slowly, so the models are tiny.
"""
from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from test_heatmaps import make_centroid_model, make_phantoms

from heatmap_templates.errors import HmtError
from heatmap_templates.explain.cam import CamEngine, mixed_precision_copy
from heatmap_templates.model.layers import resolve_layer
from heatmap_templates.model.model_file import ModelInfo, load_model, save_model
from heatmap_templates.store import open_heatmaps

SIDE = 40


def _seeded(model: keras.Model, seed: int) -> keras.Model:
    """Overwrite every weight with seeded normal values, so maps are reproducible and non-trivial."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def flat_model() -> keras.Model:
    """Conv stack -> global pooling -> softmax: the shape of a small hmt classifier."""
    inputs = keras.Input((SIDE, SIDE, 1))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    hidden = keras.layers.MaxPooling2D(2)(hidden)
    hidden = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(hidden)
    pooled = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(pooled)
    return _seeded(keras.Model(inputs, outputs, name="flat"), 1)


def nested_model() -> keras.Model:
    """A Functional base used as one layer of a Functional model (the transfer-learning shape)."""
    base_in = keras.Input((SIDE, SIDE, 3))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(base_in)
    hidden = keras.layers.MaxPooling2D(2, name="block1_pool")(hidden)
    hidden = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="block2_conv")(hidden)
    base = keras.Model(base_in, hidden, name="base")
    inputs = keras.Input((SIDE, SIDE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base(inputs))
    outputs = keras.layers.Dense(4, name="logits")(pooled)  # linear head: the engine applies softmax
    return _seeded(keras.Model(inputs, outputs, name="nested"), 2)


def images(channels: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 1, size=(n, SIDE, SIDE, channels)).astype(np.float32)


def per_image_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def assert_maps_agree(half: np.ndarray, full: np.ndarray) -> None:
    """Per map: correlation >= 0.99 where the float32 map has structure; where ReLU left the float32
    map empty, the float16 one is (nearly) empty too."""
    half = half.reshape(-1, half.shape[-2] * half.shape[-1]).astype(np.float64)
    full = full.reshape(half.shape).astype(np.float64)
    live = full.std(axis=1) > 0
    assert live.sum() >= len(live) // 2, "most reference maps must have structure for the test to mean something"
    assert np.all(per_image_correlation(half[live], full[live]) >= 0.99)
    assert np.all(half[~live].max(axis=1, initial=0.0) <= 1e-2 * full.max())
    assert np.all(np.isfinite(half))


def test_copy_computes_conv_layers_in_float16_and_keeps_the_head_and_weights_in_float32() -> None:
    model = flat_model()
    copy = mixed_precision_copy(model)
    for name in ("conv1", "conv2"):
        layer = copy.get_layer(name)
        assert (layer.compute_dtype, layer.variable_dtype) == ("float16", "float32")
        assert model.get_layer(name).compute_dtype == "float32"  # the original is untouched
    assert copy.get_layer("predictions").compute_dtype == "float32"
    for original, copied in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(original, copied)
    assert copy(images(1)).dtype == "float32"


def test_copy_of_a_model_loaded_from_a_keras_file_computes_in_float16(tmp_path: Path) -> None:
    path = save_model(flat_model(), ModelInfo(class_names=["a", "b", "c"], backbone="custom", input_size=(SIDE, SIDE),
                                              channels=1, preprocessing="unit", cam_layer="conv2"), tmp_path / "m.keras")
    loaded, _ = load_model(path)
    assert loaded.get_layer("conv2").compute_dtype == "float32"
    assert mixed_precision_copy(loaded).get_layer("conv2").compute_dtype == "float16"


@pytest.mark.parametrize(("method", "score"), [("gradcam", "logit"), ("hirescam", "probability")])
def test_mixed_precision_maps_and_probabilities_agree_with_float32(method: str, score: str) -> None:
    model = flat_model()
    x = images(1)
    full = CamEngine(model, layer="conv2", method=method, score=score)(x, "predicted")
    half_engine = CamEngine(model, layer="conv2", method=method, score=score, mixed_precision=True)
    half = half_engine(x, "predicted")
    assert half_engine.mixed_precision and half_engine.model is not model
    assert half.raw.dtype == half.upsampled.dtype == half.probabilities.dtype == np.float32
    np.testing.assert_array_equal(half.targets, full.targets)
    np.testing.assert_allclose(half.probabilities, full.probabilities, atol=1e-2)
    assert_maps_agree(half.upsampled, full.upsampled)


def test_nested_base_resolves_by_path_and_runs_in_float16() -> None:
    model = nested_model()
    x = images(3)
    engine = CamEngine(model, layer="base/block2_conv", mixed_precision=True)
    assert engine.layer == "base/block2_conv"
    assert resolve_layer(engine.model, engine.layer)[1].compute_dtype == "float16"
    _, inner = resolve_layer(engine.model, "block1_conv")  # a plain name still finds the nested layer
    assert inner.compute_dtype == "float16"
    assert engine.model.get_layer("logits").compute_dtype == "float32"
    full = CamEngine(model, layer="base/block2_conv").all_classes(x)
    half = engine.all_classes(x)
    np.testing.assert_allclose(half.probabilities, full.probabilities, atol=1e-2)
    assert_maps_agree(half.upsampled, full.upsampled)


def test_default_engine_keeps_the_callers_model() -> None:
    model = flat_model()
    engine = CamEngine(model)
    assert engine.model is model and not engine.mixed_precision


def test_subclassed_model_is_a_user_error() -> None:
    class Subclassed(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="subclassed")
            self.conv = keras.layers.Conv2D(4, 3)
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.head = keras.layers.Dense(2, activation="softmax")

        def call(self, inputs):
            return self.head(self.pool(self.conv(inputs)))

    model = Subclassed()
    model(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(HmtError, match="subclassed"):
        mixed_precision_copy(model)


def test_cli_flag_runs_and_is_recorded_in_the_store(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from hmt_cli.main import run

    data = make_phantoms(tmp_path / "data", n_per_class=2, size=48)
    model = make_centroid_model(data, tmp_path / "model.keras", input_side=32)
    outputs = {}
    for flag in ([], ["--mixed-precision"]):
        out = tmp_path / f"heatmaps{len(flag)}.h5"
        monkeypatch.setattr(sys, "argv", ["hmt", "heatmaps", str(model), str(data), "--out", str(out), "--json", *flag])
        with pytest.raises(SystemExit) as exit_info:
            run()
        assert exit_info.value.code == 0, capsys.readouterr().err
        assert '"computed": 8' in capsys.readouterr().out
        outputs[bool(flag)] = open_heatmaps(out)
    assert outputs[True].settings.mixed_precision is True
    assert outputs[False].settings.mixed_precision is False
    half, full = (next(outputs[key].iter_batches(batch_size=len(outputs[key]))) for key in (True, False))
    assert half.paths == full.paths
    np.testing.assert_allclose(half.probabilities, full.probabilities, atol=1e-2)
    assert_maps_agree(half.raw, full.raw)

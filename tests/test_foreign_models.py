"""Models researchers bring from elsewhere: a legacy .h5 file, preprocessing inside the model (Rescaling),
one or three input channels, a head that is a separate Activation layer, a one-output sigmoid, and a
TensorFlow SavedModel folder (refused with how to convert it). Each is checked against an equivalent
model hmt already reads, map for map."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates.errors import BadFileError
from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.model.model_file import load_model
from heatmap_templates.store import open_heatmaps
from heatmap_templates.synth import synthesize_dataset

SIZE = 32
CLASSES = ("covid", "normal")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("foreign") / "data"
    synthesize_dataset(root, n_per_class=3, size=SIZE, seed=5, classes=CLASSES, workers=1, probability_samples=4)
    return root


def _model(*, channels: int = 1, rescaling: bool = False, units: int = 2, separate_activation: bool = False,
           activation: str = "softmax", seed: int = 0) -> keras.Model:
    """conv -> relu conv 'features' -> GAP -> dense head; the same weights for every variant of one seed
    (a three-channel model's first kernel is the one-channel kernel split evenly over the channels)."""
    rng = np.random.default_rng(seed)
    first_kernel = rng.normal(0, 0.4, (3, 3, 1, 6)).astype(np.float32)
    rest = [rng.normal(0, 0.3, (6,)).astype(np.float32), rng.normal(0, 0.3, (3, 3, 6, 8)).astype(np.float32),
            rng.normal(0, 0.1, (8,)).astype(np.float32), rng.normal(0, 0.5, (8, units)).astype(np.float32),
            rng.normal(0, 0.1, (units,)).astype(np.float32)]
    inputs = keras.Input((SIZE, SIZE, channels))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs) if rescaling else inputs
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if separate_activation:
        x = keras.layers.Activation(activation, name="head_activation")(keras.layers.Dense(units, name="logits")(x))
    else:
        x = keras.layers.Dense(units, activation=activation, name="logits")(x)
    model = keras.Model(inputs, x)
    kernel = np.repeat(first_kernel / channels, channels, axis=2)
    model.set_weights([kernel, *rest])
    return model


def _store(model_path: Path, data: Path, out: Path, **options) -> dict[str, np.ndarray]:
    extract_heatmaps(model_path, data, out, classes=list(options.pop("classes", CLASSES)), batch_size=4, **options)
    reader = open_heatmaps(out)
    batch = next(reader.iter_batches(len(reader)))
    return {"probabilities": batch.probabilities, "raw": batch.raw, "upsampled": batch.upsampled,
            "predicted": batch.predicted, "settings": reader.settings}


def _assert_same_maps(first: dict, second: dict) -> None:
    assert first["raw"].max() > 0  # the comparison is not of empty maps
    np.testing.assert_allclose(first["probabilities"], second["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first["raw"], second["raw"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(first["predicted"], second["predicted"])


def test_a_legacy_h5_model_gives_the_maps_of_the_same_model_as_a_keras_archive(data: Path, tmp_path: Path) -> None:
    model = _model()
    model.save(tmp_path / "model.keras")
    model.save(tmp_path / "model.h5")
    loaded, info = load_model(tmp_path / "model.h5", classes=list(CLASSES))
    assert info.backbone == "user" and info.head == "softmax" and info.cam_layer == "features"
    _assert_same_maps(_store(tmp_path / "model.h5", data, tmp_path / "h5.h5"),
                      _store(tmp_path / "model.keras", data, tmp_path / "keras.h5"))


def test_a_model_that_rescales_inside_takes_pixels_and_matches_the_unit_model(data: Path, tmp_path: Path) -> None:
    _model(rescaling=True).save(tmp_path / "rescaling.keras")
    _model().save(tmp_path / "plain.keras")
    _, info = load_model(tmp_path / "rescaling.keras", classes=list(CLASSES), preprocessing="pixels")
    assert info.cam_layer == "features"  # the Rescaling layer is 4-D but not a CAM candidate
    inside = _store(tmp_path / "rescaling.keras", data, tmp_path / "inside.h5", preprocessing="pixels")
    assert inside["settings"].preprocessing == "pixels"
    _assert_same_maps(inside, _store(tmp_path / "plain.keras", data, tmp_path / "plain.h5", preprocessing="unit"))


def test_one_and_three_channel_models_see_the_same_gray_image(data: Path, tmp_path: Path) -> None:
    _model(channels=1).save(tmp_path / "gray.keras")
    _model(channels=3).save(tmp_path / "rgb.keras")
    assert load_model(tmp_path / "gray.keras", classes=list(CLASSES))[1].channels == 1
    assert load_model(tmp_path / "rgb.keras", classes=list(CLASSES))[1].channels == 3
    _assert_same_maps(_store(tmp_path / "gray.keras", data, tmp_path / "gray.h5"),
                      _store(tmp_path / "rgb.keras", data, tmp_path / "rgb.h5"))


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_a_separate_activation_head_is_read_like_a_fused_one(data: Path, tmp_path: Path, score: str) -> None:
    _model(separate_activation=True).save(tmp_path / "separate.keras")
    _model().save(tmp_path / "fused.keras")
    assert load_model(tmp_path / "separate.keras", classes=list(CLASSES))[1].head == "softmax"
    _assert_same_maps(_store(tmp_path / "separate.keras", data, tmp_path / "separate.h5", score=score),
                      _store(tmp_path / "fused.keras", data, tmp_path / "fused.h5", score=score))


@pytest.mark.parametrize("separate_activation", [False, True])
def test_a_one_output_sigmoid_model_gives_both_classes_maps(data: Path, tmp_path: Path, separate_activation: bool) -> None:
    """Class POS explains the logit z, class NEG explains -z: with HiResCAM (linear in the gradient) the two
    maps are the positive and negative parts of one signed map, never both on at a pixel."""
    model = _model(units=1, activation="sigmoid", separate_activation=separate_activation)
    model.save(tmp_path / "binary.keras")
    _, info = load_model(tmp_path / "binary.keras", classes=["normal", "covid"])
    assert info.head == "sigmoid" and info.class_names == ["normal", "covid"]
    stored = _store(tmp_path / "binary.keras", data, tmp_path / "binary.h5", classes=["normal", "covid"], method="hirescam")
    p = model.predict_on_batch(_inputs(data)).reshape(-1)
    np.testing.assert_allclose(stored["probabilities"], np.stack([1 - p, p], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stored["predicted"], (p >= 0.5).astype(int))
    negative, positive = stored["raw"][:, 0], stored["raw"][:, 1]
    assert positive.max() > 0 and negative.max() > 0
    assert np.all(np.minimum(negative, positive) <= 1e-6 * max(negative.max(), positive.max()))
    threshold = float(np.median(p))
    moved = _store(tmp_path / "binary.keras", data, tmp_path / "moved.h5", classes=["normal", "covid"], threshold=threshold)
    np.testing.assert_array_equal(moved["predicted"], (p >= threshold).astype(int))
    assert moved["settings"].threshold == pytest.approx(threshold)


def _inputs(data: Path) -> np.ndarray:
    """The unit-scaled model inputs of the data set in store order."""
    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.data.preprocess import load_model_image, to_model_input

    images = np.stack([load_model_image(sample.path, (SIZE, SIZE)) for sample in load_dataset(data).samples])
    return to_model_input(images, 1, "unit")


def test_a_savedmodel_folder_is_refused_with_how_to_convert_it(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "exported"
    _model().export(str(folder), verbose=False)
    with pytest.raises(BadFileError, match=r"SavedModel.*\.save\('model\.keras'\)"):
        load_model(folder, classes=list(CLASSES))
    code, _, err = run_hmt(["heatmaps", folder, data, "--classes", ",".join(CLASSES), "--out", tmp_path / "h.h5"],
                           capsys, monkeypatch)
    assert_user_error(code, err, "exported: a TensorFlow SavedModel folder", "save('model.keras')")

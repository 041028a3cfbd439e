"""The classifier stage and `hmt train` / `hmt evaluate`: backbones, weights, metadata, determinism, errors."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates import errors
from heatmap_templates.data import preprocess
from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.data.preprocess import to_model_input
from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.model import backbones, input_pipeline, model_file, objectives, training
from heatmap_templates.model import evaluation as evaluation_module
from heatmap_templates.model import layers as model_layers
from heatmap_templates.model.model_file import ModelInfo
from heatmap_templates.model.training import TrainConfig
from heatmap_templates.numeric import metrics
from heatmap_templates.project import load_project, record_project

TOY_CLASSES = ("covid", "normal", "virus")


def _write_toy_set(root: Path, n_per_class: int = 8, size: int = 40) -> Path:
    """Three classes of noisy PNGs: a bright blob on the left (covid), none (normal), on the right (virus)."""
    rng = np.random.default_rng(0)
    for label, blob_x in zip(TOY_CLASSES, (size // 4, None, 3 * size // 4), strict=True):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(n_per_class):
            image = (rng.random((size, size)) * 60).astype(np.uint8)
            if blob_x is not None:
                center = (blob_x + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-6, 7)))
                cv2.circle(image, center, size // 7, 255, -1)
            cv2.imwrite(str(folder / f"{label}_{index:03d}.png"), image)
    return root


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_toy_set(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="module")
def toy_config() -> TrainConfig:
    return TrainConfig(backbone="small", epochs=4, input_size=32, batch_size=8, val_fraction=0.25, test_fraction=0.25)


@pytest.fixture(scope="module")
def trained_small(toy_dir: Path, toy_config: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, training.TrainResult]:
    """A `small` model trained once on the toy set and saved; shared by the evaluation and metadata tests."""
    result = training.train(load_dataset(toy_dir), toy_config)
    path = model_file.save_model(result.model, result.info, tmp_path_factory.mktemp("model") / "small.keras")
    return path, result


# --------------------------------------------------------------------------- backbones


# Per registered backbone: (input size, expected default CAM layer, fine-tuned blocks); a new backbone needs a row.
BACKBONE_CASES = {
    "vgg19": (32, "vgg19/block5_conv4", 0),
    "vgg16": (32, "vgg16/block5_conv3", 1),
    "resnet50": (32, "resnet50/conv5_block3_out", 0),
    "xception": (71, "xception/block14_sepconv2_act", 0),
    "small": (32, "block4_relu", 0),
}


@pytest.mark.parametrize("backbone", backbones.BACKBONES.names())
def test_each_backbone_builds_and_trains_one_epoch(toy_dir: Path, backbone: str) -> None:
    size, cam_layer, fine_tune = BACKBONE_CASES[backbone]
    config = TrainConfig(backbone=backbone, weights="none", epochs=1, input_size=size, batch_size=8, val_fraction=0.25,
                         test_fraction=0.25, fine_tune_blocks=fine_tune, fine_tune_epochs=1)
    dataset = load_dataset(toy_dir)
    before = None
    if fine_tune:
        with training.seeded(config.seed):  # train() builds its model right after seeding the same way
            untrained = backbones.build_model(backbone, 3, size, "none")
        before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model_layers.find_base(untrained).layers}
    result = training.train(dataset, config)
    model, info = result.model, result.info

    assert model.input_shape == (None, size, size, backbones.BACKBONES[backbone].channels)
    assert model.layers[-1].name == "predictions" and model.layers[-1].get_config()["activation"] == "softmax"
    assert model.output_shape == (None, 3)
    assert info.cam_layer == cam_layer
    target = model
    for name in cam_layer.split("/"):
        target = target.get_layer(name)  # reachable by its nested name: no "Graph disconnected"
    assert len(target.output.shape) == 4
    assert result.test_report is not None and result.test_report["n"] == len(info.split["test"])
    assert sum(1 for row in result.history if row["phase"] != "fine-tune") == 1
    assert info.training["cached_features"] is (backbone != "small")

    if backbone != "small":
        # the cached-feature head is the full model's head: same probabilities either way
        images, _ = preprocess.load_images(dataset.samples[:6], info.input_size, errors.SkipLog())
        features = training.pooled_features(model, images, info)
        via_head = training.head_model(model).predict_on_batch(features)
        via_model = model.predict_on_batch(evaluation_module.model_input(images, info))
        np.testing.assert_allclose(via_head, via_model, rtol=1e-4, atol=1e-6)
    if fine_tune:
        # the starting weights of every run are the same (seed 0): block5 moved, block4 did not
        base = model_layers.find_base(model)
        assert [row["phase"] for row in result.history] == ["head", "fine-tune"]
        assert not np.array_equal(base.get_layer("block5_conv1").get_weights()[0], before["block5_conv1"][0])
        np.testing.assert_array_equal(base.get_layer("block4_conv1").get_weights()[0], before["block4_conv1"][0])
        assert not base.trainable


def test_local_weights_file_round_trip(tmp_path: Path) -> None:
    first = backbones.build_model("vgg16", 2, 32, "none")
    path = tmp_path / "vgg16_notop.weights.h5"
    model_layers.find_base(first).save_weights(path)
    loaded = backbones.build_model("vgg16", 2, 32, str(path))
    fresh = backbones.build_model("vgg16", 2, 32, "none")
    for saved, restored, _fresh in zip(model_layers.find_base(first).get_weights(), model_layers.find_base(loaded).get_weights(),
                                       model_layers.find_base(fresh).get_weights(), strict=True):
        np.testing.assert_array_equal(saved, restored)
    assert not all(np.array_equal(a, b) for a, b in zip(model_layers.find_base(first).get_weights(), model_layers.find_base(fresh).get_weights(), strict=True))
    with pytest.raises(BadFileError, match="cannot load these weights"):
        backbones.build_model("vgg19", 2, 32, str(path))
    with pytest.raises(BadFileError, match="weights file not found"):
        backbones.build_model("vgg16", 2, 32, str(tmp_path / "missing.h5"))


def _fail_download(*args: object, **kwargs: object) -> None:
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] Temporary failure in name resolution")


def test_imagenet_download_failure_suggests_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras.src.utils.file_utils as file_utils

    monkeypatch.setattr(file_utils, "get_file", _fail_download)  # no network is touched
    with pytest.raises(HmtError, match=r"could not download the ImageNet weights for vgg16.*set parameter 'weights' to the path"):
        backbones.build_model("vgg16", 2, 32, "imagenet")
    with pytest.raises(HmtError, match="no ImageNet weights"):
        backbones.build_model("small", 2, 32, "imagenet")


def test_cli_imagenet_failure_is_one_line(toy_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import keras.src.utils.file_utils as file_utils

    monkeypatch.setattr(file_utils, "get_file", _fail_download)
    code, _, err = run_hmt(["train", str(toy_dir), "--backbone", "vgg16", "--input-size", "32", "--epochs", "1",
                            "--out", str(tmp_path / "m.keras"), "--project-dir", str(tmp_path)], capsys, monkeypatch)
    assert_user_error(code, err, "ImageNet weights", "set --weights to the path")


# --------------------------------------------------------------------------- metadata and files


def test_metadata_round_trip_all_fields(tmp_path: Path) -> None:
    model = backbones.build_model("small", 3, 32, "none")
    info = ModelInfo(
        class_names=["a", "b", "c"], backbone="small", input_size=(32, 32), channels=1, preprocessing="unit",
        cam_layer="block4_relu", training={"config": {"epochs": 3}, "history": [{"loss": 0.5, "val_loss": None}]},
        dataset_fingerprint="f" * 64, split={"train": ["a/1.png"], "val": ["b/2.png"], "test": ["c/3.png"]}, hmt_version="9.9",
    )
    path = model_file.save_model(model, info, tmp_path / "out" / "model.keras")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.keras"]  # no temporary file left behind
    with zipfile.ZipFile(path) as archive:
        assert model_file.INFO_MEMBER in archive.namelist()
    import keras

    plain = keras.models.load_model(path, safe_mode=True)  # still an ordinary Keras file
    assert plain.output_shape == (None, 3)
    loaded, loaded_info = model_file.load_model(path)
    assert loaded_info == info
    assert model_file.read_model_info(path) == info
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(HmtError, match="must end in .keras"):
        model_file.save_model(model, info, tmp_path / "model.h5")


def test_malformed_metadata_is_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    backbones.build_model("small", 2, 32, "none").save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(model_file.INFO_MEMBER, json.dumps({"class_names": ["a", "b"]}))
    with pytest.raises(BadFileError, match="lacks backbone"):
        model_file.load_model(path)


def test_user_model_needs_class_names(tmp_path: Path) -> None:
    import keras

    user = keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Conv2D(4, 3, name="conv"), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(2, activation="softmax")])
    path = tmp_path / "user.keras"
    user.save(path)
    with pytest.raises(HmtError, match="parameter 'classes'"):
        model_file.load_model(path)
    _, info = model_file.load_model(path, classes=["cat", "dog"], preprocessing="tf")
    assert (info.input_size, info.channels, info.preprocessing, info.cam_layer) == ((24, 24), 3, "tf", "conv")
    with pytest.raises(BadFileError, match="does not match"):
        model_file.load_model(path, classes=["a", "b", "c"])


def test_lambda_layer_refused_in_safe_mode(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(keras.layers.Lambda(lambda x: x * 2.0)(inputs)))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(BadFileError, match="pass parameter 'unsafe' only if you trust the file"):
        model_file.load_model(path, classes=["a", "b"])
    model, _ = model_file.load_model(path, classes=["a", "b"], unsafe=True)
    assert model.output_shape == (None, 2)


# --------------------------------------------------------------------------- training behaviour


def test_fixed_seed_gives_identical_weights(toy_dir: Path) -> None:
    config = TrainConfig(backbone="small", epochs=2, input_size=32, batch_size=8, augment=True, val_fraction=0.25, test_fraction=0.25)
    dataset = load_dataset(toy_dir)
    first = training.train(dataset, config).model.get_weights()
    second = training.train(dataset, config).model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    other = training.train(dataset, TrainConfig(**{**config.__dict__, "seed": 1})).model.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_split_is_recorded_patient_free_and_class_weights_balanced(trained_small) -> None:
    _, result = trained_small
    split = result.info.split
    all_paths = split["train"] + split["val"] + split["test"]
    assert len(all_paths) == len(set(all_paths)) == 3 * 8
    assert all(not Path(p).is_absolute() for p in all_paths)
    weights = result.info.training["class_weights"]
    assert set(weights) == set(TOY_CLASSES)
    labels = np.array([0] * 6 + [1] * 2)
    assert objectives.balanced_class_weights(labels, 2) == pytest.approx({0: 8 / (2 * 6), 1: 8 / (2 * 2)})


def test_augmentation_stays_in_range_and_varies() -> None:
    import tensorflow as tf

    batch = np.zeros((4, 32, 32), np.float32)
    batch[:, 12:20, 12:20] = 1.0
    out = input_pipeline.augment_images(tf.constant(batch), tf.constant([3, 0], tf.int64)).numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out[0], out[1])
    square_mass = (out - np.median(out, axis=(1, 2), keepdims=True)).clip(0).sum(axis=(1, 2))
    assert np.all((square_mass > 40) & (square_mass < 90))  # the 8 x 8 square is moved and scaled a little, not lost


@pytest.mark.parametrize("mode", preprocess.PREPROCESSING.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_one_file_gives_the_same_tensor_through_numpy_and_tf_data(mode: str, channels: int, tmp_path: Path) -> None:
    """Extraction's numpy path and training's tf.data path feed a model the same numbers for the same file, and both
    equal the mode's definition computed here by hand: (pixel / 255 * multiplier - mean) / std per channel."""
    rng = np.random.default_rng(7)
    picture = (np.linspace(0, 255, 50)[None, :] * np.ones((37, 1)) * 0.7 + rng.integers(0, 70, (37, 50))).astype(np.uint8)
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), picture)
    image = preprocess.load_model_image(path, (24, 32))
    numpy_input = to_model_input(image[None], channels, mode)
    info = ModelInfo(class_names=["a", "b"], backbone="small", input_size=(24, 32), channels=channels, preprocessing=mode,
                     cam_layer=None)
    (pipeline_input, _), = training.image_pipeline(image[None], np.zeros((1, 2), np.float32), info, batch_size=1)
    entry = preprocess.PREPROCESSING[mode]
    mean, std = np.array(entry.mean), np.array(entry.std)
    if channels == 1:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    by_hand = (image[None, ..., None] / 255.0 * entry.multiplier - mean) / std
    assert numpy_input.shape == tuple(pipeline_input.shape) == (1, 24, 32, channels)
    np.testing.assert_allclose(pipeline_input.numpy(), numpy_input, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(numpy_input, by_hand, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- evaluation


def test_evaluate_uses_the_stored_split_only_for_the_training_data(trained_small, toy_dir: Path, tmp_path: Path) -> None:
    path, result = trained_small
    model, info = model_file.load_model(path)
    evaluation = evaluation_module.evaluate(model, info, load_dataset(toy_dir), split="test")
    assert evaluation.split == "test" and evaluation.report["n"] == len(info.split["test"])
    assert evaluation.report["confusion_matrix"] == result.test_report["confusion_matrix"]
    assert set(evaluation.report["binary_readings"]) == {"covid_vs_noncovid", "normal_vs_abnormal"}

    changed = shutil.copytree(toy_dir, tmp_path / "copy")
    cv2.imwrite(str(changed / "normal" / "normal_000.png"), np.zeros((40, 40), np.uint8))
    evaluation = evaluation_module.evaluate(model, info, load_dataset(changed), split="test")
    assert evaluation.split == "all" and evaluation.report["n"] == 24 and evaluation.notes

    images, kept = preprocess.load_images(load_dataset(toy_dir).samples, info.input_size, errors.SkipLog())
    labels = np.array([info.class_names.index(s.label) for s in kept])
    expected = metrics.classification_report(evaluation_module.predict_probabilities(model, info, images), labels, info.class_names)
    assert evaluation_module.evaluate(model, info, load_dataset(toy_dir), split="all").report == expected


def test_cli_train_then_evaluate_from_the_project_record(toy_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_hmt(["train", str(toy_dir), "--backbone", "small", "--input-size", "32", "--epochs", "2",
                              "--batch-size", "8", "--val-fraction", "0.25", "--test-fraction", "0.25", "--json"], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    model_path = tmp_path / "templates_out" / "model.keras"
    for name in ("model.keras", "model.history.csv", "model.curves.png", "model.evaluation.json", "model.confusion.png", "project.json"):
        assert (tmp_path / "templates_out" / name).is_file(), name
    assert "train epoch 1/2" in err
    history_rows = (tmp_path / "templates_out" / "model.history.csv").read_text().strip().splitlines()
    assert len(history_rows) == 1 + summary["epochs_run"]
    assert load_project()["model"] == str(model_path.resolve())

    code, out, err = run_hmt(["evaluate", "--json", "--out", "eval"], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert report["split"] == "test" and report["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_cli_evaluate_user_model(toy_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import keras

    user = keras.Sequential([keras.Input((20, 20, 1)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, activation="softmax")])
    path = tmp_path / "user.keras"
    user.save(path)
    code, _, err = run_hmt(["evaluate", str(path), str(toy_dir)], capsys, monkeypatch)
    assert_user_error(code, err, "user.keras", "--classes")
    code, out, err = run_hmt(["evaluate", str(path), str(toy_dir), "--classes", ",".join(TOY_CLASSES)], capsys, monkeypatch)
    assert code == 0, err
    assert "split all" in out and "covid vs noncovid" in out and "summed probabilities" in out and "mapped arg-max" in out


def test_cli_error_paths(toy_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("hello")
    code, _, err = run_hmt(["evaluate", str(not_a_model), str(toy_dir)], capsys, monkeypatch)
    assert_user_error(code, err, "notes.keras", "not a Keras model")

    fake_zip = tmp_path / "fake.keras"
    with zipfile.ZipFile(fake_zip, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    code, _, err = run_hmt(["evaluate", str(fake_zip), str(toy_dir), "--classes", "a,b"], capsys, monkeypatch)
    assert_user_error(code, err, "fake.keras", "cannot load the model")

    one_class = tmp_path / "one"
    shutil.copytree(toy_dir / "covid", one_class / "covid")
    code, _, err = run_hmt(["train", str(one_class), "--backbone", "small", "--out", str(tmp_path / "m.keras")], capsys, monkeypatch)
    assert_user_error(code, err, "at least 2 class")
    (one_class / "normal").mkdir()
    code, _, err = run_hmt(["train", str(one_class), "--backbone", "small", "--out", str(tmp_path / "m.keras")], capsys, monkeypatch)
    assert_user_error(code, err, "normal", "no images")

    code, _, err = run_hmt(["train", str(toy_dir), "--backbone", "alexnet"], capsys, monkeypatch)
    assert_user_error(code, err, "unknown backbone")

    code, _, err = run_hmt(["train", str(toy_dir), "--weights", str(tmp_path / "vgg19_notop.h5")], capsys, monkeypatch)
    assert_user_error(code, err, "vgg19_notop.h5", "weights file not found")

    monkeypatch.chdir(tmp_path)
    code, _, err = run_hmt(["evaluate"], capsys, monkeypatch)
    assert_user_error(code, err, "no previous `hmt train` recorded")


def test_project_record_keeps_other_keys(tmp_path: Path) -> None:
    (tmp_path / "model.keras").touch()
    record_project(model=tmp_path / "model.keras", data=tmp_path, folder=tmp_path / "proj", templates="t.h5")
    record_project(model=tmp_path / "model.keras", data=tmp_path / "data", folder=tmp_path / "proj")
    record = load_project(tmp_path / "proj")
    assert record["templates"] == "t.h5" and record["data"] == str((tmp_path / "data").resolve())
    (tmp_path / "proj" / "project.json").write_text("{broken")
    with pytest.raises(BadFileError, match="project.json"):
        load_project(tmp_path / "proj")

"""Extraction stage (`heatmaps.py`, `hmt heatmaps`): the store holds exactly what the CAM engine gives.

A tiny Functional CNN on 64 px phantoms (model input 48 px, so decoding resizes) keeps this fast.
Its head is a nearest-class-centroid classifier on the pooled features, so that predictions are
a mix of correct and incorrect ones and every class's map differs. ``make_phantoms`` and
``make_centroid_model`` are shared with test_build.py.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import bad_inputs
import numpy as np
import pytest

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.data.decode import decode_image
from heatmap_templates.data.preprocess import resize_gray, to_model_input
from heatmap_templates.errors import BadFileError, HmtError, display_path
from heatmap_templates.explain.heatmaps import default_store_path, extract_heatmaps, iter_model_batches
from heatmap_templates.files import file_sha256
from heatmap_templates.store import open_heatmaps
from heatmap_templates.synth import CLASSES, synthesize_dataset

IMAGE_SIDE = 64
INPUT_SIDE = 48


# ----------------------------------------------------------------------------- shared builders


def make_phantoms(out: Path, *, n_per_class: int = 6, size: int = IMAGE_SIDE, seed: int = 3) -> Path:
    """A small class-per-folder phantom data set (one worker: spawning processes costs more here)."""
    synthesize_dataset(out, n_per_class=n_per_class, size=size, seed=seed, workers=1, probability_samples=1)
    return out


def make_centroid_model(data: Path, path: Path, input_side: int = INPUT_SIDE) -> Path:
    """Save a two-conv Functional CNN whose softmax head is a nearest-centroid classifier of ``data``.

    Conv kernels come from a seeded numpy generator; the dense layer scores each class by the
    (whitened) distance of the image's pooled features to that class's mean, minus the mean
    over classes (softmax ignores a shift common to all classes, and it makes the maps differ).
    """
    import keras

    from heatmap_templates.explain.heatmaps import load_for_model
    from heatmap_templates.model.model_file import ModelInfo, save_model

    names = list(CLASSES)
    inputs = keras.Input((input_side, input_side, 1))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    hidden = keras.layers.MaxPooling2D(2)(hidden)
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(hidden)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(len(names), activation="softmax", name="predictions")(pooled)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for name in ("conv1", "features"):
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([rng.normal(0, 0.5, kernel.shape).astype(np.float32), np.full(bias.shape, 0.01, np.float32)])

    samples = load_dataset(data).samples
    inputs_array = np.stack([load_for_model(s.path, (input_side, input_side), 1, "unit")[0] for s in samples])
    labels = np.array([names.index(s.label) for s in samples])
    pooled_values = keras.Model(inputs, pooled)(inputs_array).numpy().astype(np.float64)
    scale = pooled_values.std(axis=0) + 1e-6
    centroids = np.stack([pooled_values[labels == k].mean(axis=0) for k in range(len(names))]) / scale
    spread = np.var(pooled_values / scale)
    weights = (2 * centroids / scale).T / spread
    biases = -(centroids**2).sum(axis=1) / spread
    weights -= weights.mean(axis=1, keepdims=True)
    biases -= biases.mean()
    model.get_layer("predictions").set_weights([weights.astype(np.float32), biases.astype(np.float32)])

    info = ModelInfo(class_names=names, backbone="custom", input_size=(input_side, input_side), channels=1,
                     preprocessing="unit", cam_layer="features")
    return save_model(model, info, path)


def model_inputs(paths: list[Path], input_side: int = INPUT_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Independent preprocessing: decode, resize, quantise to the stored uint8 image, to model input."""
    images = np.stack([
        np.clip(np.rint(resize_gray(decode_image(p).pixels, (input_side, input_side)) * 255.0), 0, 255).astype(np.uint8)
        for p in paths
    ])
    return to_model_input(images.astype(np.float32) / 255.0, 1, "unit"), images


def write_manifest(path: Path, rows: list[tuple[Path, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([str(image), label] for image, label in rows)
    return path


class RecordingProgress:
    """Progress sink that remembers what it was told."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.advanced = 0
        self.finished = False

    def start(self, total: int | None, description: str) -> None:
        self.total = total

    def advance(self, n: int = 1) -> None:
        self.advanced += n

    def finish(self) -> None:
        self.finished = True


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("heatmaps")
    data = make_phantoms(root / "phantoms")
    model = make_centroid_model(data, root / "model.keras")
    store = root / "heatmaps.h5"
    progress = RecordingProgress()
    summary = extract_heatmaps(model, data, store, batch_size=5, progress=progress)
    return {"root": root, "data": data, "model": model, "store": store, "summary": summary, "progress": progress}


# ----------------------------------------------------------------------------- library


def test_store_holds_what_the_cam_engine_gives_in_dataset_order(workspace: dict) -> None:
    from heatmap_templates.explain.cam import CamEngine
    from heatmap_templates.model.model_file import load_model

    samples = load_dataset(workspace["data"]).samples
    reader = open_heatmaps(workspace["store"])
    assert reader.paths == [display_path(s.path) for s in samples]
    assert reader.sha256 == [file_sha256(s.path) for s in samples]

    inputs, images = model_inputs([s.path for s in samples])
    model, info = load_model(workspace["model"])
    expected = CamEngine(model, layer="features").all_classes(inputs)
    stored = next(reader.iter_batches(len(reader)))
    np.testing.assert_array_equal(stored.images, images)
    np.testing.assert_allclose(stored.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored.raw, expected.raw, rtol=1e-4, atol=1e-6 * expected.raw.max())
    assert stored.upsampled.dtype == np.float32 and stored.upsampled.shape == (len(samples), 4, INPUT_SIDE, INPUT_SIDE)
    np.testing.assert_allclose(stored.upsampled, expected.upsampled, rtol=1e-4, atol=1e-6 * expected.upsampled.max())

    labels = np.array([info.class_names.index(s.label) for s in samples])
    predicted = expected.probabilities.argmax(axis=1)
    np.testing.assert_array_equal(stored.labels, labels)
    np.testing.assert_array_equal(stored.predicted, predicted)
    np.testing.assert_array_equal(stored.correct, labels == predicted)
    assert 0 < stored.correct.sum() < len(samples), "the test model should be right on some images and wrong on others"
    # Every class has its own map (the store is not one map repeated).
    assert not np.allclose(stored.raw[:, 0], stored.raw[:, 1])

    summary = workspace["summary"]
    assert (summary.total, summary.computed, summary.resumed, summary.unlabelled) == (24, 24, 0, 0)
    assert (summary.correct, summary.incorrect) == (int(stored.correct.sum()), int((~stored.correct).sum()))
    assert summary.per_class == {name: 6 for name in CLASSES}
    assert summary.skipped == []
    assert (reader.settings.layer, reader.settings.cam_method, reader.settings.score) == ("features", "gradcam", "logit")
    progress = workspace["progress"]
    assert (progress.total, progress.advanced, progress.finished) == (24, 24, True)


def test_rerun_computes_nothing_and_reports_all_as_already_stored(workspace: dict) -> None:
    before = open_heatmaps(workspace["store"])
    summary = extract_heatmaps(workspace["model"], workspace["data"], workspace["store"], batch_size=5)
    assert (summary.computed, summary.resumed, summary.correct, summary.incorrect) == (0, 24, 0, 0)
    after = open_heatmaps(workspace["store"])
    assert after.paths == before.paths and after.pending_shards == 0
    np.testing.assert_array_equal(after.probabilities, before.probabilities)


def test_resume_after_a_partial_run_computes_only_the_rest(workspace: dict, tmp_path: Path) -> None:
    samples = load_dataset(workspace["data"]).samples
    first_half = write_manifest(tmp_path / "half.csv", [(s.path, s.label) for s in samples[::2]])
    store = tmp_path / "resumed.h5"
    assert extract_heatmaps(workspace["model"], first_half, store, batch_size=8).computed == 12
    summary = extract_heatmaps(workspace["model"], workspace["data"], store, batch_size=8)
    assert (summary.computed, summary.resumed) == (12, 12)
    full, resumed = open_heatmaps(workspace["store"]), open_heatmaps(store)
    assert sorted(resumed.paths) == sorted(full.paths)
    order = [full.paths.index(p) for p in resumed.paths]
    np.testing.assert_allclose(resumed.probabilities, full.probabilities[order], rtol=1e-5, atol=1e-6)


def _other_model(workspace: dict) -> Path:
    """The same architecture with one weight changed: another model file hash."""
    from heatmap_templates.model.model_file import load_model, save_model

    model, info = load_model(workspace["model"])
    kernel, bias = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel * 1.01, bias])
    return save_model(model, info, workspace["root"] / "other_model.keras")


@pytest.mark.parametrize(("change", "setting"), [
    ({"method": "gradcampp"}, "cam_method"),
    ({"score": "probability"}, "score"),
    ({"layer": "conv1"}, "layer"),
    ({"model": "other"}, "model_sha256"),
])
def test_store_made_with_other_settings_is_refused_in_one_line(workspace: dict, change: dict, setting: str) -> None:
    options = dict(change)
    model = _other_model(workspace) if options.pop("model", None) else workspace["model"]
    with pytest.raises(BadFileError) as error:
        extract_heatmaps(model, workspace["data"], workspace["store"], **options)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(workspace["store"])) and f"made with {setting}=" in message
    assert len(open_heatmaps(workspace["store"])) == 24


def test_bad_images_are_skipped_and_listed(workspace: dict, tmp_path: Path) -> None:
    phantoms = load_dataset(workspace["data"]).samples
    data = tmp_path / "mixed"
    (data / "normal").mkdir(parents=True)
    for sample in phantoms[:2]:
        (data / "normal" / Path(sample.path).name).write_bytes(Path(sample.path).read_bytes())
    bad = bad_inputs.write_bad_images(data / "covid")
    (data / "covid" / "good.png").write_bytes(Path(phantoms[6].path).read_bytes())
    try:
        summary = extract_heatmaps(workspace["model"], data, tmp_path / "mixed.h5", batch_size=4)
    finally:
        (data / "covid" / "unreadable.png").chmod(0o644)
    readable_anyway = os.geteuid() == 0  # root reads a chmod-0 file: it is a valid image then
    expected_bad = {display_path(b.path): b.reason for b in bad if not (b.needs_non_root and readable_anyway)}
    loop = next(b for b in bad if b.kind == "symlink_loop")
    expected_bad[display_path(loop.path.with_name("loop_b.png"))] = loop.reason  # the loop's other link is bad too
    skipped = {p.path: p.reason for p in summary.skipped}
    assert set(skipped) == set(expected_bad)
    for path, reason in expected_bad.items():
        assert reason.lower() in skipped[path].lower(), (path, skipped[path])
    stored = open_heatmaps(tmp_path / "mixed.h5")
    expected_good = 3 + (1 if readable_anyway else 0)
    assert summary.computed == len(stored) == expected_good
    assert not set(stored.paths) & set(expected_bad)


def test_strict_run_stops_at_the_first_bad_file(workspace: dict, tmp_path: Path) -> None:
    data = tmp_path / "strict"
    (data / "normal").mkdir(parents=True)
    (data / "normal" / "good.png").write_bytes(Path(load_dataset(workspace["data"]).samples[0].path).read_bytes())
    (data / "covid").mkdir()
    bad_inputs.write_truncated_png(data / "covid")
    with pytest.raises(HmtError, match="truncated PNG"):
        extract_heatmaps(workspace["model"], data, tmp_path / "strict.h5", strict=True)


def test_labels_outside_the_model_are_stored_as_minus_one(workspace: dict, tmp_path: Path) -> None:
    samples = load_dataset(workspace["data"]).samples
    manifest = write_manifest(tmp_path / "manifest.csv", [
        (samples[0].path, samples[0].label), (samples[7].path, "pneumothorax"), (samples[13].path, samples[13].label),
        (samples[20].path, "pneumothorax"),
    ])
    summary = extract_heatmaps(workspace["model"], manifest, tmp_path / "labels.h5")
    stored = open_heatmaps(tmp_path / "labels.h5")
    np.testing.assert_array_equal(stored.labels, [CLASSES.index(samples[0].label), -1, CLASSES.index(samples[13].label), -1])
    assert not stored.correct[[1, 3]].any()
    assert summary.unlabelled == 2 and summary.correct + summary.incorrect == 2
    assert summary.per_class["pneumothorax"] == 2


def test_iter_model_batches_keeps_order_and_logs_bad_files(tmp_path: Path, workspace: dict) -> None:
    from heatmap_templates.errors import SkipLog

    samples = load_dataset(workspace["data"]).samples[:5]
    bad = bad_inputs.write_text_as_png(tmp_path)
    paths = [samples[0].path, samples[1].path, bad.path, samples[2].path, samples[3].path, samples[4].path]
    log = SkipLog()
    batches = list(iter_model_batches(paths, (INPUT_SIDE, INPUT_SIDE), 1, "unit", batch_size=4, skip_log=log))
    assert [b.positions.tolist() for b in batches] == [[0, 1, 3], [4, 5]]
    inputs, images = model_inputs([Path(p) for p in paths if p != bad.path])
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), images)
    np.testing.assert_allclose(np.concatenate([b.inputs for b in batches]), inputs)
    assert [p.path for p in log.problems] == [display_path(bad.path)] and bad.reason in log.problems[0].reason


def test_default_store_path_is_named_by_model_hash_and_settings(workspace: dict) -> None:
    path = default_store_path(workspace["model"], "gradcam", "logit", "somewhere")
    assert path == Path("somewhere") / f"heatmaps_{file_sha256(workspace['model'])[:12]}_gradcam_logit.h5"


# ----------------------------------------------------------------------------- CLI


def _hmt_in_process(*args: str):
    from typer.testing import CliRunner

    from hmt_cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, list(args))


def test_cli_heatmaps_summary_and_json(workspace: dict, tmp_path: Path) -> None:
    out = tmp_path / "cli.h5"
    result = _hmt_in_process("heatmaps", str(workspace["model"]), str(workspace["data"]), "--out", str(out), "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert f"heatmaps: {out}" in result.stdout and "computed 24 images" in result.stdout and "0 already stored" in result.stdout
    assert "covid: 6" in result.stdout and "skipped" not in result.stdout
    assert open_heatmaps(out).attrs["command"].startswith("hmt ")
    result = _hmt_in_process("heatmaps", str(workspace["model"]), str(workspace["data"]), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["computed"], summary["resumed"], summary["out"], summary["skipped"]) == (0, 24, str(out), [])


def test_cli_missing_model_exits_2_with_one_line(tmp_path: Path, workspace: dict, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    from hmt_cli.main import run

    missing = tmp_path / "missing.keras"
    monkeypatch.setattr(sys, "argv", ["hmt", "heatmaps", str(missing), str(workspace["data"]), "--out", str(tmp_path / "x.h5")])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"hmt: error: {missing}: no such model file"
    assert not (tmp_path / "x.h5").exists()


def test_evaluate_predictions_equal_the_stored_predictions_image_by_image(workspace: dict, tmp_path: Path) -> None:
    """`hmt evaluate --predictions` and `hmt heatmaps` feed the model the same numbers (one image -> input path)."""
    out = tmp_path / "predictions.csv"
    result = _hmt_in_process("evaluate", str(workspace["model"]), str(workspace["data"]), "--split", "all",
                             "--predictions", str(out))
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    reader = open_heatmaps(workspace["store"])
    names = reader.class_names
    stored = {path: index for index, path in enumerate(reader.paths)}
    assert sorted(row["path"] for row in rows) == sorted(reader.paths)
    for row in rows:
        index = stored[row["path"]]
        assert row["label"] == names[reader.labels[index]] and row["predicted"] == names[reader.predicted[index]]
        np.testing.assert_allclose([float(row[f"p_{name}"]) for name in names], reader.probabilities[index], rtol=1e-5, atol=1e-6)

"""Training against the shortcut: the attention prior (a penalty on explanation mass outside the lungs) and
outside-lungs augmentation (heatmap_templates/model/attention_prior.py, analysis/prior_masks.py, `hmt train`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates.errors import HmtError

SIZE = 48
EPOCHS = 8


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 48-px covid/normal phantom whose covid images carry a planted shortcut outside the lungs (half of them, and
    those without lesions), and two `small` models trained on it with the same seed: without and with the prior
    (the phantom's exact lung masks as the user's masks)."""
    from heatmap_templates.analysis.prior_masks import LungMasks
    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.model.training import TrainConfig, train
    from heatmap_templates.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("prior_phantom") / "data"
    synthesize_dataset(root, n_per_class=32, size=SIZE, seed=1, classes=("covid", "normal"), workers=1,
                       probability_samples=4, shortcuts={"covid": 0.5}, shortcut_lesions=0.0)
    dataset = load_dataset(root)
    lungs = root / "ground_truth" / "lungs"

    def config(**fields) -> TrainConfig:
        return TrainConfig(**{"backbone": "small", "input_size": SIZE, "epochs": EPOCHS, "batch_size": 16, "learning_rate": 3e-3,
                              "val_fraction": 0.2, "test_fraction": 0.2, "augment": True, "seed": 0, **fields})

    plain = train(dataset, config())
    prior = train(dataset, config(attention_prior="lungs:1"), masks=LungMasks(root, lungs))
    return {"root": root, "dataset": dataset, "lungs": lungs, "plain": plain, "prior": prior, "config": config}


def _outside_energy(result, phantom: dict) -> float:
    """Mean share of every class's Grad-CAM mass (hmt's CAM engine, upsampled maps) outside the true lungs, over
    every phantom image: 1 - lung-field energy."""
    from heatmap_templates.data.preprocess import load_model_image, to_model_input
    from heatmap_templates.explain.cam import CamEngine
    from heatmap_templates.numeric.metrics import lung_field_energy

    root = phantom["root"]
    samples = phantom["dataset"].samples
    images = np.stack([load_model_image(sample.path, (SIZE, SIZE)) for sample in samples])
    maps = CamEngine(result.model, result.info.cam_layer).all_classes(to_model_input(images, 1, "unit")).upsampled
    shares = []
    for sample, image_maps in zip(samples, maps, strict=True):
        mask = cv2.imread(str(phantom["lungs"] / Path(sample.path).relative_to(root)), cv2.IMREAD_GRAYSCALE) > 0
        shares.append(1.0 - lung_field_energy(image_maps, mask))
    return float(np.mean(shares))


def test_the_penalty_lowers_the_cam_energy_outside_the_lungs(phantom: dict) -> None:
    plain, prior = _outside_energy(phantom["plain"], phantom), _outside_energy(phantom["prior"], phantom)
    assert prior < plain - 0.08, (plain, prior)


def test_the_prior_is_recorded_with_its_masks_per_class(phantom: dict) -> None:
    training = phantom["prior"].info.training
    record = training["attention_prior"]
    assert training["config"]["attention_prior"] == "lungs:1" and training["config"]["prior_penalty"] == "cam"
    assert record["penalty"] == "cam" and record["weight"] == 1.0 and record["outside_lungs_augment"] == 0.0
    assert record["masks"] == "user" and record["masks_folder"].endswith("lungs")
    train_counts = training["split_counts"]["train"]
    assert record["mask_counts"] == {label: {"user": count, "segmentation+reference": 0, "segmentation": 0, "reference": 0, "unaligned reference": 0}
                                     for label, count in train_counts.items()}
    assert "attention_prior" not in phantom["plain"].info.training
    assert all("prior_penalty" not in row for row in training["history"])  # the history keeps its columns


def test_outside_share_of_a_hand_computed_map() -> None:
    import tensorflow as tf

    from heatmap_templates.model.attention_prior import _at_layer, outside_share

    cams = tf.constant([[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (N=1, K=2, 2, 2)
    outside = tf.constant([[[0.0, 1.0], [1.0, 0.0]]])
    assert np.allclose(outside_share(cams, outside).numpy(), [[2.0 / 4.0, 0.0]], atol=1e-6)
    mask = np.zeros((1, 4, 4), np.float32)
    mask[0, :2, :2] = 1.0  # a full cell
    mask[0, 2, 2:] = 1.0  # half of a cell
    assert np.allclose(_at_layer(tf.constant(mask), tf.zeros((1, 2, 2, 3))).numpy()[0], [[1.0, 0.0], [0.0, 0.5]])


def test_the_mask_channel_follows_the_image_through_the_augmentation() -> None:
    import tensorflow as tf

    from heatmap_templates.model import input_pipeline

    rng = np.random.default_rng(0)
    image = rng.random((3, 24, 24)).astype(np.float32)
    mask = np.zeros((3, 24, 24), np.float32)
    mask[:, 6:14, 4:20] = 1.0
    seed = tf.constant([5, 0], tf.int64)
    out = input_pipeline._warp_channels(tf.constant(np.stack([image, mask], axis=-1)), seed, [0]).numpy()
    assert np.allclose(out[..., 0], input_pipeline.augment_images(tf.constant(image), seed).numpy(), atol=1e-6)
    warped_mask, _ = input_pipeline._warp(tf.constant(mask[..., None]), seed)
    assert np.allclose(out[..., 1], warped_mask.numpy()[..., 0], atol=1e-6)
    assert not np.allclose(out[..., 1], mask)


def test_the_weight_is_chosen_on_the_validation_split() -> None:
    from heatmap_templates.model.attention_prior import choose_weight, validation_accuracy

    numbers = {0.3: (0.03, 0.50, 1.00), 1.0: (0.05, 0.30, 0.99), 3.0: (0.30, 0.10, 0.95)}  # val loss, outside share, accuracy
    weight, trained, table = choose_weight(lambda w: f"model {w}", lambda m: numbers[float(m.split()[1])])
    assert weight == 1.0 and trained == "model 1.0"  # 3.0 lowers the share more but costs 5 points of accuracy
    assert [row["weight"] for row in table] == [0.3, 1.0, 3.0] and table[2]["val_outside_share"] == 0.10
    assert table[1]["val_accuracy"] == 0.99
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert validation_accuracy(probabilities, np.eye(2)[[0, 1, 1, 1]], "softmax") == 0.75  # the third is wrong


def test_streaming_training_keeps_working_with_the_prior(phantom: dict) -> None:
    from heatmap_templates.analysis.prior_masks import LungMasks
    from heatmap_templates.model.attention_prior import WEIGHT_GRID
    from heatmap_templates.model.training import train

    config = phantom["config"](attention_prior="lungs", memory_budget_gb=1e-6, epochs=1)  # the weight chosen, from disk
    result = train(phantom["dataset"], config, masks=LungMasks(phantom["root"], phantom["lungs"]))
    record = result.info.training["attention_prior"]
    assert result.info.training["streamed_from_disk"] and record["weight"] in WEIGHT_GRID
    assert all(0.0 < row["val_outside_share"] < 1.0 for row in record["weight_choice"])


def test_outside_lungs_augmentation_trains_from_the_cli_and_is_recorded(phantom: dict, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_hmt(["train", phantom["root"], "--backbone", "small", "--input-size", SIZE, "--epochs", 2,
                              "--batch-size", 16, "--val-fraction", 0.2, "--test-fraction", 0.2,
                              "--outside-lungs-augment", 0.5, "--out", tmp_path / "m.keras",
                              "--project-dir", tmp_path, "--json"], capsys, monkeypatch)
    assert code == 0, err
    record = json.loads(out)["attention_prior"]
    assert record["penalty"] is None and record["outside_lungs_augment"] == 0.5 and record["removal"] == "road"
    assert record["masks"] == "lung_fields"  # hmt's segmentation united with the reference's lungs moved back
    counts = json.loads(out)["split_counts"]["train"]
    assert {label: by["segmentation+reference"] + by["reference"] for label, by in record["mask_counts"].items()} == counts


def test_cached_feature_training_refuses_the_prior_in_one_line(capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from heatmap_templates.model.training import TrainConfig

    with pytest.raises(HmtError, match="cached-feature training"):
        TrainConfig(backbone="vgg16", weights="none", outside_lungs_augment=0.5).validate()
    TrainConfig(backbone="vgg16", weights="none", attention_prior="lungs", augment=True).validate()  # images: fine
    code, _, err = run_hmt(["train", tmp_path, "--backbone", "vgg16", "--weights", "none", "--attention-prior", "lungs"],
                           capsys, monkeypatch)
    assert_user_error(code, err, "cached-feature training", "--attention-prior", "--augment")


def _train_with_masks(phantom: dict, masks: Path, tmp_path: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    return run_hmt(["train", phantom["root"], "--backbone", "small", "--input-size", SIZE, "--epochs", 1,
                    "--val-fraction", 0.2, "--test-fraction", 0.2, "--attention-prior", "lungs:1", "--prior-masks", masks,
                    "--out", tmp_path / "m.keras", "--project-dir", tmp_path], capsys, monkeypatch)


def test_missing_or_wrong_size_masks_stop_with_one_line_naming_the_file(phantom: dict, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    masks = tmp_path / "masks"
    shutil.copytree(phantom["lungs"], masks)
    for path in (masks / "covid").glob("*.png"):
        path.unlink()
    code, _, err = _train_with_masks(phantom, masks, tmp_path, capsys, monkeypatch)
    line = assert_user_error(code, err, "no mask for the training image covid/", "--prior-masks", str(masks / "covid"))
    assert ".png" in line
    shutil.rmtree(masks)
    shutil.copytree(phantom["lungs"], masks)
    for path in (masks / "normal").glob("*.png"):
        cv2.imwrite(str(path), np.zeros((SIZE - 8, SIZE), np.uint8))
    code, _, err = _train_with_masks(phantom, masks, tmp_path, capsys, monkeypatch)
    assert_user_error(code, err, str(masks / "normal"), f"the mask is {SIZE}x{SIZE - 8} px", f"is {SIZE}x{SIZE} px")
    code, _, err = run_hmt(["train", phantom["root"], "--prior-masks", masks], capsys, monkeypatch)
    assert_user_error(code, err, "--prior-masks", "--attention-prior")


def test_where_segmentation_declines_the_reference_lungs_are_moved_back(phantom: dict) -> None:
    from heatmap_templates.analysis.prior_masks import LungMasks
    from heatmap_templates.data.preprocess import load_model_image

    samples = phantom["dataset"].samples[:12]
    images = np.stack([load_model_image(sample.path, (SIZE, SIZE)) for sample in samples])
    images[:2] = 128  # no contrast: the segmentation declines, whatever the class
    source = LungMasks(phantom["root"])
    masks = source.masks(samples, images)
    assert masks.shape == images.shape and all(0.1 < mask.mean() < 0.6 for mask in masks)
    counts = source.summary()["mask_counts"]
    # a flat image cannot be registered either: the reference only resized, said so
    assert sum(by["unaligned reference"] for by in counts.values()) == 2
    assert sum(by["segmentation+reference"] for by in counts.values()) == 10


def test_lungs_without_a_weight_trains_each_weight_and_delivers_the_chosen_one(phantom: dict) -> None:
    """`lungs` alone: each weight of the grid is trained from the same start and judged on the validation split; the
    model delivered is the chosen weight's (its validation accuracy is the one recorded for that weight)."""
    from heatmap_templates.analysis.prior_masks import LungMasks
    from heatmap_templates.model.attention_prior import WEIGHT_GRID
    from heatmap_templates.model.training import train

    result = train(phantom["dataset"], phantom["config"](attention_prior="lungs", epochs=2),
                   masks=LungMasks(phantom["root"], phantom["lungs"]))
    record = result.info.training["attention_prior"]
    table = record["weight_choice"]
    assert [row["weight"] for row in table] == list(WEIGHT_GRID) and record["weight"] in WEIGHT_GRID
    chosen = next(row for row in table if row["weight"] == record["weight"])
    best = max(row["val_accuracy"] for row in table)
    assert chosen["val_accuracy"] >= best - 0.02
    assert all(chosen["val_outside_share"] <= row["val_outside_share"] for row in table if row["val_accuracy"] >= best - 0.02)
    assert result.val_report is not None and result.val_report["accuracy"] == pytest.approx(chosen["val_accuracy"])
    assert len({row["val_outside_share"] for row in table}) == len(table)  # three models, not one trained on


def test_the_validation_judge_reads_the_share_of_the_masks_it_was_given(phantom: dict) -> None:
    """The judge streams (input, outside share) batches from the mask rows; its share equals the penalty computed at
    once on every image with ``1 - mask`` (a judge that read the mask channel as the outside share, or mixed up rows,
    would differ), and its accuracy is the model's own on those images."""
    import tensorflow as tf

    from heatmap_templates.analysis.prior_masks import LungMasks
    from heatmap_templates.data.preprocess import load_model_image, to_model_input
    from heatmap_templates.model.attention_prior import ModelTap, cam_energy_penalty, validation_judge

    result = phantom["prior"]
    model, info = result.model, result.info
    samples = phantom["dataset"].samples[:20]
    images = np.stack([load_model_image(sample.path, (SIZE, SIZE)) for sample in samples])
    targets = np.eye(2, dtype=np.float32)[[info.class_names.index(sample.label) for sample in samples]]
    source = LungMasks(phantom["root"], phantom["lungs"])
    judge = validation_judge(info, "categorical_crossentropy", images, targets, source, samples, batch_size=7, seed=0)
    _, share, accuracy = judge((model,))
    masks = LungMasks(phantom["root"], phantom["lungs"]).masks(samples, images)
    inputs = tf.convert_to_tensor(to_model_input(images, info.channels, info.preprocessing))
    _, expected = cam_energy_penalty(ModelTap(model, info.cam_layer, str(info.head)), inputs,
                                     tf.convert_to_tensor(1.0 - masks.astype(np.float32)), False)
    assert share == pytest.approx(float(expected), rel=1e-4)
    _, inside = cam_energy_penalty(ModelTap(model, info.cam_layer, str(info.head)), inputs,
                                   tf.convert_to_tensor(masks.astype(np.float32)), False)
    assert abs(share - float(inside)) > 0.05  # the two readings of the mask channel are told apart
    predicted = np.argmax(model.predict(inputs, verbose=0), axis=1)
    assert accuracy == pytest.approx(float((predicted == targets.argmax(axis=1)).mean()))


def test_the_reference_is_built_from_across_the_training_images(phantom: dict) -> None:
    """A split ordered so that its first images have no lungs to register to (flat here; one class in a class-ordered
    split): `prepare` builds the reference from an even sample of every image, so even a chunk of those first images
    gets masks; from the first chunk alone there is no reference."""
    from heatmap_templates.analysis.prior_masks import LungMasks
    from heatmap_templates.data.preprocess import load_model_image

    samples = phantom["dataset"].samples[:12]
    images = np.stack([load_model_image(sample.path, (SIZE, SIZE)) for sample in samples])
    images[:4] = 128
    with pytest.raises(HmtError, match="no lung mask"):
        LungMasks(phantom["root"]).masks(samples[:4], images[:4])
    source = LungMasks(phantom["root"])
    source.prepare(images)
    masks = source.masks(samples[:4], images[:4])
    assert all(0.1 < mask.mean() < 0.6 for mask in masks)

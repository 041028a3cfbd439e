"""Classification metrics and the papers' binary readings against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from heatmap_templates.errors import HmtError
from heatmap_templates.numeric import metrics

CLASSES = ["bacteria", "covid", "normal", "virus"]
# Five images chosen so that summed-probability and arg-max readings disagree (rows 0 and 3).
PROBS = np.array(
    [
        [0.30, 0.40, 0.00, 0.30],  # covid: arg-max covid, but summed covid 0.4 -> non-covid
        [0.10, 0.80, 0.05, 0.05],  # covid
        [0.20, 0.10, 0.60, 0.10],  # normal
        [0.25, 0.05, 0.40, 0.30],  # virus: arg-max normal, but summed abnormal 0.6 -> abnormal
        [0.60, 0.30, 0.05, 0.05],  # bacteria
    ]
)
TRUE = np.array([1, 1, 2, 3, 0])


def _brute_force_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_auc_hand_computed_with_ties() -> None:
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # 0.5 vs 0.5 is a tie (counts 1/2): (0.5 + 1 + 1 + 1) / 4
    assert metrics.roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert metrics.roc_auc([3, 3, 3], [1, 0, 1]) == pytest.approx(0.5)


def test_auc_matches_pairwise_counting_on_random_tied_scores() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        scores = rng.integers(0, 5, size=40).astype(float)
        positive = rng.random(40) < 0.4
        if positive.all() or not positive.any():
            continue
        assert metrics.roc_auc(scores, positive) == pytest.approx(_brute_force_auc(scores, positive))


def test_auc_undefined_is_none_not_nan() -> None:
    assert metrics.roc_auc([0.2, 0.3], [1, 1]) is None
    with pytest.raises(HmtError):
        metrics.roc_auc([0.2, float("nan")], [1, 0])


def test_confusion_matrix_and_per_class_scores() -> None:
    report = metrics.classification_report(PROBS, TRUE, CLASSES)
    assert report["confusion_matrix"] == [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert report["accuracy"] == pytest.approx(0.8)
    normal = report["per_class"]["normal"]
    assert (normal["precision"], normal["recall"], normal["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    virus = report["per_class"]["virus"]
    assert (virus["precision"], virus["recall"], virus["f1"], virus["support"]) == (0.0, 0.0, 0.0, 1)
    # virus column [.3, .05, .1, .3, .05], positive row 3 (0.3): tie with row 0, beats the rest
    assert virus["auc"] == pytest.approx(0.875)
    assert report["macro"]["recall"] == pytest.approx((1 + 1 + 1 + 0) / 4)


def test_binary_readings_summed_and_argmax() -> None:
    readings = metrics.binary_readings(PROBS, TRUE, CLASSES)
    covid = readings["covid_vs_noncovid"]
    assert (covid["n_positive"], covid["n_negative"]) == (2, 3)
    summed = covid["summed_probability"]
    assert (summed["tp"], summed["fn"], summed["tn"], summed["fp"]) == (1, 1, 3, 0)
    assert summed["accuracy"] == pytest.approx(0.8)
    assert summed["sensitivity"] == pytest.approx(0.5)
    assert summed["specificity"] == pytest.approx(1.0)
    assert summed["f1"] == pytest.approx(2 / 3)
    assert summed["auc"] == pytest.approx(1.0)
    assert covid["argmax"]["accuracy"] == pytest.approx(1.0)

    abnormal = readings["normal_vs_abnormal"]
    assert abnormal["positive"] == "abnormal"
    assert abnormal["summed_probability"]["accuracy"] == pytest.approx(1.0)
    argmax = abnormal["argmax"]
    assert (argmax["tp"], argmax["fn"], argmax["tn"], argmax["fp"]) == (3, 1, 1, 0)
    assert argmax["sensitivity"] == pytest.approx(0.75)
    assert argmax["f1"] == pytest.approx(2 * 0.75 / 1.75)


def test_binary_readings_only_for_classes_that_allow_them() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert metrics.binary_readings(probs, [0, 1], ["cat", "dog"]) == {}
    assert set(metrics.binary_readings(probs, [0, 1], ["COVID-19", "normal"])) == {"covid_vs_noncovid", "normal_vs_abnormal"}


def test_report_has_no_nan_for_absent_classes() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    report = metrics.classification_report(probs, [0, 0], ["a", "b", "c"])
    flat = [report["accuracy"], report["macro"]["f1"]] + [v for c in report["per_class"].values() for v in c.values() if v is not None]
    assert all(math.isfinite(v) for v in flat)
    assert report["per_class"]["b"]["auc"] is None
    assert report["macro"]["auc"] is None


def test_bad_shapes_are_user_errors() -> None:
    with pytest.raises(HmtError):
        metrics.classification_report(np.ones((2, 3)) / 3, [0, 1], ["a", "b"])
    with pytest.raises(HmtError):
        metrics.confusion_matrix([0, 5], [0, 1], 3)


# --------------------------------------------------------------------------- localisation against annotations


def test_pointing_game_energy_and_iou_by_hand() -> None:
    score = np.array([[0.0, 1.0, 2.0],
                      [0.0, 4.0, 1.0],
                      [-3.0, 0.0, 2.0]])
    mask = np.array([[False, False, True],
                     [False, True, True],
                     [False, False, False]])
    assert metrics.pointing_game(score, mask) is True  # the maximum 4 is at (1, 1), inside
    assert metrics.pointing_game(score, ~mask) is False
    # positive mass 10 (negatives carry none); inside: 2 + 4 + 1 = 7
    assert metrics.energy_pointing_game(score, mask) == pytest.approx(0.7)
    top = metrics.top_region(score, 2 / 9)  # the two largest: 4 and a tie of 2s -> 3 pixels at the cut
    np.testing.assert_array_equal(top, score >= 2.0)
    assert metrics.iou(top, mask) == pytest.approx(2 / 4)  # {(0,2),(1,1)} shared; union adds (2,2),(1,2)
    assert metrics.iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) is None
    assert metrics.pointing_game(score, np.zeros_like(mask)) is None
    assert metrics.energy_pointing_game(-np.abs(score), mask) is None


def test_otsu_region_and_all_scores_together() -> None:
    score = np.zeros((10, 10))
    score[2:5, 3:7] = 1.0  # a clean two-level map: Otsu separates the levels exactly
    np.testing.assert_array_equal(metrics.otsu_region(score), score > 0.5)
    scores = metrics.localisation_scores(score, score > 0.5, top_fraction=0.12)
    assert scores == {"pixel_auc": 1.0, "pointing_game": True, "energy_pointing_game": 1.0, "iou_otsu": 1.0, "iou_top_12": 1.0}
    assert not metrics.otsu_region(np.ones((3, 3))).any()
    with pytest.raises(HmtError, match="one shape"):
        metrics.localisation_scores(score, np.ones((3, 3), bool))


def test_annotation_masks_and_boxes_of_the_phantom_agree(tmp_path) -> None:
    """The phantom's lesion truth as a mask folder and as a box CSV: boxes cover the masks, at any input size."""
    from heatmap_templates.analysis.annotations import read_annotations
    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.synth import synthesize_dataset

    synthesize_dataset(tmp_path / "data", n_per_class=3, size=64, seed=2, classes=("covid", "normal"), workers=1, probability_samples=2)
    samples = load_dataset(tmp_path / "data").samples
    images = [(str(s.path), s.label, tmp_path / "data") for s in samples]
    masks = read_annotations(tmp_path / "data" / "ground_truth" / "masks", images, (32, 32))
    boxes = read_annotations(tmp_path / "data" / "ground_truth" / "boxes.csv", images, (32, 32))
    covid = [s for s in samples if s.label == "covid"]
    assert len(boxes) == len(covid)  # normals have no lesion, hence no box
    for sample in covid:
        mask, box = masks.for_image(sample.path, "covid"), boxes.for_image(sample.path, "covid")
        assert mask.shape == box.shape == (32, 32) and mask.any()
        assert (box | ~mask).all()  # every annotated pixel lies in a box
        assert box.sum() < 0.6 * box.size
    assert masks.for_image(covid[0].path, "normal") is None

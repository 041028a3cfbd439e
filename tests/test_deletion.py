"""Deletion baselines that compare like with like: the body, random smooth regions, the moved region, MoRF and LeRF,
per-image AOPC with intervals, and the lungs against an equal area elsewhere (issue 27)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from heatmap_templates.analysis.deletion_regions import body_mask, moved_region, smooth_random_region
from heatmap_templates.analysis.faithfulness import ImageCase, deletion_test
from heatmap_templates.synth.render import render_phantom

# --------------------------------------------------------------------------- regions


def test_otsu_body_agrees_with_the_phantoms_exact_body() -> None:
    for index, label in enumerate(("normal", "covid", "bacteria")):
        phantom = render_phantom(index, label, 128)
        exact = phantom.body_mask
        assert exact is not None and 0.4 < exact.mean() < 0.95
        found = body_mask(phantom.image, phantom.lung_mask)
        dice = 2 * (found & exact).sum() / (found.sum() + exact.sum())
        assert dice > 0.95, (label, dice)
        assert (phantom.lung_mask <= exact).all()  # the truth is consistent: lungs lie inside the body


def test_smooth_regions_have_the_area_asked_for_lie_inside_what_is_allowed_and_grow_smoother_with_the_cell() -> None:
    allowed = np.zeros((64, 64), bool)
    allowed[8:56, 10:50] = True
    components = {}
    for cell in (1.0, 6.0):
        counts = []
        for seed in range(5):
            region = smooth_random_region((64, 64), 300, cell, allowed, np.random.default_rng(seed))
            assert region.sum() == 300 and not (region & ~allowed).any()
            counts.append(ndimage.label(region)[1])
        components[cell] = np.mean(counts)
    assert components[6.0] * 4 < components[1.0]  # one CAM cell of smoothness: a few blobs, not speckle
    spill = smooth_random_region((64, 64), 2000, 3.0, allowed, np.random.default_rng(0))  # more than allowed: all of it, then more
    assert spill.sum() == 2000 and (spill | ~allowed).all() is not None and spill[allowed].all()


def test_a_moved_region_keeps_its_shape_stays_in_the_body_and_leaves_its_place() -> None:
    body = np.zeros((60, 60), bool)
    body[5:55, 8:52] = True
    region = np.zeros((60, 60), bool)
    region[10:20, 12:18] = True
    region[14:16, 18:25] = True  # an L-like shape
    for seed in range(10):
        moved = moved_region(region, body, np.random.default_rng(seed))
        assert moved is not None and moved.sum() == region.sum() and not (moved & ~body).any()
        assert (moved & region).sum() < 0.5 * region.sum()
        dy, dx = np.argwhere(moved)[0] - np.argwhere(region)[0]
        np.testing.assert_array_equal(np.roll(region, (dy, dx), axis=(0, 1)), moved)  # the same shape, shifted
    too_big = np.zeros((60, 60), bool)
    too_big[5:45, 8:52] = True  # no other place inside the body overlaps it by less than half
    assert moved_region(too_big, body, np.random.default_rng(0)) is None


# --------------------------------------------------------------------------- the test


def _textured_image() -> np.ndarray:
    rng = np.random.default_rng(11)
    image = np.full((40, 40), 0.05)
    structure = ndimage.gaussian_filter(rng.standard_normal((34, 32)), 1.5)
    image[3:37, 4:36] = 0.5 + 0.3 * structure / np.abs(structure).max()  # smooth structure: imputation restores a lone
    # pixel from its neighbours, not the inside of a region
    return image.astype(np.float32)


def _change_reader(original: np.ndarray):
    """A 'model' that reacts to any change of the image, wherever it is: p falls with the mean absolute change."""
    def predict(images: np.ndarray) -> np.ndarray:
        p = np.clip(1.0 - 20.0 * np.abs(np.asarray(images) - original).mean(axis=(1, 2)), 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1)
    return predict


def test_region_baselines_remove_what_contiguity_adds_and_scattered_pixels_do_not() -> None:
    """A ranking that marks a random blob, read by a model that reacts to any change alike, "beats" scattered random
    pixels (imputation fills scattered pixels back, not a region's inside), but not the same blob moved, and random
    smooth regions remove at least as much as it: the region baselines measure what a ranking adds beyond being a
    region."""
    image = _textured_image()
    body = np.zeros((40, 40), bool)
    body[3:37, 4:36] = True
    rng = np.random.default_rng(12)
    cases = []
    for i in range(10):
        blob = np.zeros((40, 40))
        y, x = rng.integers(8, 26), rng.integers(9, 24)
        blob[y:y + 8, x:x + 8] = 1.0
        cases.append(ImageCase(image, ndimage.gaussian_filter(blob, 3.0), None, np.random.default_rng(i), body))
    result = deletion_test(_change_reader(image), cases, np.ones(10, int), np.ones(10, int), [None] * 10,
                           fractions=(0.0, 0.05, 0.1, 0.2), removal="road", draws=4, cell=3.0, seed=1)
    ratios = result.ratios
    assert ratios["heatmap_vs_random"]["ci"][0] > 1.4  # measured 1.62-2.12
    low, high = ratios["heatmap_vs_moved"]["ci"]
    assert 0.8 < low < 1.0 < high < 1.4 and ratios["heatmap_vs_moved"]["n"] == 10  # measured 0.93-1.30
    assert ratios["heatmap_vs_smooth"]["ci"][1] < ratios["heatmap_vs_random"]["ci"][0]
    assert result.curves["smooth"]["aopc"] > 1.4 * result.curves["random"]["aopc"]
    assert result.body == {"given": 10, "otsu": 0}


def _half_reader(images: np.ndarray) -> np.ndarray:
    """A 'model' that reads the brightness of the left half only."""
    p = 1.0 / (1.0 + np.exp(-20.0 * (np.asarray(images)[:, :, :10].mean(axis=(1, 2)) - 0.6)))
    return np.stack([1.0 - p, p], axis=1)


def test_most_relevant_first_hurts_least_relevant_first_does_not_and_per_image_aopc_is_kept() -> None:
    image = np.full((20, 20), 0.3, np.float32)
    image[:, :10] = 0.9
    left = np.tile(np.linspace(2.0, 1.0, 20), (20, 1))  # the left half ranked first, the right half last
    right = left[:, ::-1].copy()
    cases = [ImageCase(image, left, right, np.random.default_rng(i)) for i in range(6)]
    result = deletion_test(_half_reader, cases, np.ones(6, int), np.ones(6, int), [None] * 6, fractions=(0.0, 0.2, 0.4),
                           removal="constant", draws=2, cell=2.0)
    heatmap, template = result.curves["heatmap"], result.curves["template"]
    assert heatmap["lerf"]["aopc"] == pytest.approx(0.0, abs=1e-9)  # the least relevant 40 %: the right half, unread
    assert heatmap["morf_minus_lerf"]["ci"][0] > 0.05
    assert template["aopc"] == pytest.approx(0.0, abs=1e-9) and template["morf_minus_lerf"]["ci"][1] < -0.05
    assert len(heatmap["per_image_aopc"]) == 6 and np.mean(heatmap["per_image_aopc"]) == pytest.approx(heatmap["aopc"])
    assert heatmap["aopc_ci"][0] <= heatmap["aopc"] <= heatmap["aopc_ci"][1]
    record = result.to_dict()
    assert record["layout"] == 2 and record["template_vs_random"] == record["ratios"]["template_vs_random"]["value"]


def _lung_reader(lungs: np.ndarray):
    weights = np.where(lungs, 1.0, 0.0)

    def predict(images: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-((np.asarray(images) * weights).sum(axis=(1, 2)) / weights.sum() - 0.5) * 10))
        return np.stack([1.0 - p, p], axis=1)
    return predict


def test_the_lungs_are_compared_with_an_equal_area_inside_the_body_and_outside_the_lungs() -> None:
    """A model that reads only the lungs: removing the lungs hurts, removing regions of their area elsewhere in the
    body changes no lung pixel and so nothing; a model that reads only the air outside the body: the elsewhere regions
    stay inside the body (no change either)."""
    lungs = np.zeros((32, 32), bool)
    lungs[8:20, 6:13] = lungs[8:20, 18:25] = True
    body = np.zeros((32, 32), bool)
    body[3:30, 3:29] = True
    rng = np.random.default_rng(3)
    images = [np.where(lungs, 0.9, np.where(body, 0.5, 0.05)) + rng.uniform(-0.05, 0.05, (32, 32)) for _ in range(5)]
    cases = [ImageCase(image.astype(np.float32), image, None, np.random.default_rng(i), body) for i, image in enumerate(images)]
    for reads, lung_drop in ((lungs, True), (~body, False)):
        result = deletion_test(_lung_reader(reads), cases, np.ones(5, int), np.ones(5, int), [lungs] * 5, fractions=(0.0,),
                               removal="constant", draws=3, cell=2.0)
        elsewhere = result.regions["lungs_area_elsewhere"]
        assert elsewhere["drop"] == 0.0 and elsewhere["n"] == 5 and len(elsewhere["per_image_drop"]) == 5
        comparison = result.comparisons["lungs_vs_elsewhere"]
        assert (comparison["ci"][0] > 0.1) == lung_drop and comparison["n"] == 5


# --------------------------------------------------------------------------- earlier checks

LAYOUT_1 = {  # a faithfulness check as evaluate-templates stored it before per-image AOPC and region baselines
    "fractions": [0.0, 0.1, 0.2], "removal": "road", "n_images": 4, "notes": [], "template_vs_random": 5.0,
    "curves": {name: {"probability": [0.9, p, p - 0.1], "drop": [0.0, 0.9 - p, 1.0 - p], "accuracy": [1.0, 0.75, 0.5],
                      "area": 0.15, "aopc": aopc, "n": 4}
               for name, p, aopc in (("heatmap", 0.5, 0.3), ("template", 0.6, 0.25), ("random", 0.88, 0.05))},
    "regions": {"outside_lungs": {"probability": 0.3, "drop": 0.6, "accuracy": 0.25, "accuracy_before": 1.0, "n": 4},
                "lungs": {"probability": 0.7, "drop": 0.2, "accuracy": 0.75, "accuracy_before": 1.0, "n": 4}},
}


def test_a_check_of_the_earlier_layout_still_prints_draws_and_renders() -> None:
    from heatmap_templates.present.figures.checks import deletion_figure
    from heatmap_templates.present.report.html import deletion_html
    from hmt_cli.compare import deletion_lines

    lines = "\n".join(deletion_lines(LAYOUT_1))
    assert "5.0 x as much as random deletion" in lines and "0.300  (n=4)" in lines and "remove the lungs" in lines
    figure = deletion_figure(LAYOUT_1, "single")
    assert len(figure.axes[0].lines) == 3 and len(figure.axes[1].patches) == 2
    page = deletion_html(LAYOUT_1, lambda name: name, {"deletion": "figures/deletion.png"})
    assert 'data-key="deletion-ratio">5.000<' in page and 'data-key="deletion-heatmap-aopc">0.300<' in page


def test_a_check_of_the_new_layout_prints_every_baseline_and_interval() -> None:
    from heatmap_templates.present.figures.checks import deletion_figure
    from hmt_cli.compare import deletion_lines

    image = np.full((20, 20), 0.3, np.float32)
    image[:, :10] = 0.9
    left = np.tile(np.linspace(2.0, 1.0, 20), (20, 1))
    lungs = np.zeros((20, 20), bool)
    lungs[4:14, 2:8] = True
    cases = [ImageCase(image, left, left[:, ::-1].copy(), np.random.default_rng(i)) for i in range(4)]
    record = deletion_test(_half_reader, cases, np.ones(4, int), np.ones(4, int), [lungs] * 4, fractions=(0.0, 0.2, 0.4),
                           removal="constant", draws=2, cell=2.0).to_dict()
    lines = "\n".join(deletion_lines(record))
    smooth = record["ratios"]["template_vs_smooth"]
    assert f"template / smooth regions: {smooth['value']:.2f} [{smooth['ci'][0]:.2f}, {smooth['ci'][1]:.2f}] (n=4)" in lines
    assert "heatmap LeRF" in lines and "moved template" in lines and "lungs vs an equal area elsewhere" in lines
    figure = deletion_figure(record, "single")
    assert len(figure.axes[0].lines) >= 8 and len(figure.axes[1].patches) == 3  # 2 rankings x 2 orders, 4 baselines

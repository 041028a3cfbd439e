"""Do the templates tell the truth? Randomisation sanity checks, deletion faithfulness and localisation,
against hand-computed cases, an image-only map (Sobel edges, registered as a CAM method here) that must be flagged,
and the planted-shortcut phantom (session fixture), whose trained model's template must not be. Each audited fault of
tests/faults/ makes some of these fail (`make faults`)."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates.analysis.faithfulness import (
    REMOVALS,
    ImageCase,
    deletion_test,
    noisy_linear_imputation,
    top_mask,
)
from heatmap_templates.analysis.sanity import (
    VARIANTS,
    SanityResult,
    flag,
    randomisation_steps,
    reinitialise,
    template_similarity,
)
from heatmap_templates.files import file_sha256
from heatmap_templates.templates.templates_file import read_checks

# --------------------------------------------------------------------------- removal


def test_noisy_linear_imputation_by_hand() -> None:
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[:9, :11]
    ramp = (0.02 * columns + 0.03 * rows + 0.1).astype(np.float64)  # a plane: every weighted neighbour mean reproduces it
    removed = np.zeros(ramp.shape, bool)
    removed[2:7, 3:9] = True
    np.testing.assert_allclose(noisy_linear_imputation(ramp, removed, rng, noise=0.0), ramp, atol=1e-6)

    image = np.arange(9, dtype=np.float64).reshape(3, 3) / 10
    centre = np.zeros((3, 3), bool)
    centre[1, 1] = True
    direct, diagonal = image[[0, 1, 1, 2], [1, 0, 2, 1]].sum(), image[[0, 0, 2, 2], [0, 2, 0, 2]].sum()
    expected = direct / 6 + diagonal / 12  # ROAD's weights: 1/6 direct, 1/12 diagonal, summing to 1
    assert noisy_linear_imputation(image, centre, rng, noise=0.0)[1, 1] == pytest.approx(expected, abs=1e-6)
    corner = np.zeros((3, 3), bool)
    corner[0, 0] = True  # two direct neighbours and one diagonal: the weights renormalise to 1/6 + 1/6 + 1/12
    value = (image[0, 1] / 6 + image[1, 0] / 6 + image[1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    assert noisy_linear_imputation(image, corner, rng, noise=0.0)[0, 0] == pytest.approx(value, abs=1e-6)
    noisy = noisy_linear_imputation(ramp, removed, np.random.default_rng(1), noise=0.01)
    assert 0.003 < np.std(noisy[removed] - ramp[removed]) < 0.02 and np.array_equal(noisy[~removed], ramp[~removed].astype(np.float32))


@pytest.mark.parametrize("removal", REMOVALS.names())
def test_every_removal_changes_only_the_removed_pixels(removal: str) -> None:
    image = np.random.default_rng(2).random((16, 16)).astype(np.float32)
    removed = np.zeros((16, 16), bool)
    removed[4:9, 2:12] = True
    filled = REMOVALS[removal](image, removed, np.random.default_rng(3))
    assert filled.shape == image.shape and filled.dtype == np.float32 and np.isfinite(filled).all()
    np.testing.assert_array_equal(filled[~removed], image[~removed])
    assert not np.array_equal(filled[removed], image[removed])


def test_top_mask_takes_exactly_the_share_asked_for() -> None:
    ranking = np.zeros((10, 10))
    ranking[0, :5] = 1.0  # ties beyond the cut are broken by the tie-breaker
    mask = top_mask(ranking, 0.03, np.arange(100.0).reshape(10, 10))
    assert mask.sum() == 3 and mask[0, 2:5].all()
    assert not top_mask(ranking, 0.0, np.zeros((10, 10))).any()


# --------------------------------------------------------------------------- the deletion test


def _left_half_model(images: np.ndarray) -> np.ndarray:
    """A 'model' that looks only at the left half: p(class 1) rises with its brightness."""
    p = 1.0 / (1.0 + np.exp(-20.0 * (images[:, :, :8].mean(axis=(1, 2)) - 0.7)))
    return np.stack([1.0 - p, p], axis=1)


def test_deletion_of_what_the_model_uses_hurts_and_of_nothing_changes_nothing() -> None:
    rng = np.random.default_rng(4)
    cases = []
    for _ in range(6):
        image = np.full((16, 16), 0.2, np.float32)
        image[:, :8] = 0.9  # bright left half: the model says class 1
        right_map = np.zeros((16, 16))
        right_map[:, 8:] = 1.0  # a map that marks the half the model ignores
        left_map = 1.0 - right_map
        cases.append(ImageCase(image, left_map, right_map, np.random.default_rng(rng.integers(1000))))
    lungs = [np.pad(np.ones((8, 8), bool), 4) for _ in cases]
    result = deletion_test(_left_half_model, cases, np.ones(6, int), np.ones(6, int), lungs, fractions=(0.0, 0.25, 0.5),
                           removal="constant")
    heatmap, template, random = (result.curves[name] for name in ("heatmap", "template", "random"))
    original = _left_half_model(np.stack([case.image for case in cases]))[:, 1].mean()
    for curve in (heatmap, template, random):
        assert curve["probability"][0] == pytest.approx(original) and curve["drop"][0] == 0.0  # q = 0: nothing removed
    assert heatmap["probability"][-1] < 0.05 and heatmap["accuracy"][-1] == 0.0  # the left half, filled with the mean gray
    assert template["probability"][-1] == pytest.approx(original) and template["aopc"] == pytest.approx(0.0)
    assert heatmap["area"] < random["area"] and random["aopc"] > 0
    assert result.to_dict()["template_vs_random"] == pytest.approx(0.0)
    assert set(result.regions) == {"outside_lungs", "lungs", "lungs_area_elsewhere"} and result.regions["lungs"]["n"] == 6


def _reader(region: np.ndarray, seed: int):
    """A 'model' whose probability moves with any change of the pixels of ``region`` and with no other pixel."""
    weights = np.where(region, np.random.default_rng(seed).uniform(0.5, 1.5, region.shape), 0.0)

    def predict(images: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(np.asarray(images, np.float64) * weights).sum(axis=(1, 2)) / weights.sum() * 4 + 2))
        return np.stack([1.0 - p, p], axis=1)

    return predict


@pytest.mark.parametrize("removal", REMOVALS.names())
def test_each_fixed_region_removes_its_own_pixels_under_its_own_label(removal: str) -> None:
    """Removing "lungs" changes only lung pixels (a model that reads only the rest does not move) and removing
    "outside_lungs" only the rest (a model that reads only the lungs does not move); each changes what it removes."""
    rng = np.random.default_rng(6)
    lungs = np.zeros((16, 16), bool)
    lungs[3:13, 2:7] = lungs[3:13, 9:14] = True
    images = [np.where(lungs, 0.8, 0.15) + rng.uniform(-0.1, 0.1, (16, 16)) for _ in range(4)]
    cases = [ImageCase(image.astype(np.float32), image, None, np.random.default_rng(i)) for i, image in enumerate(images)]
    drops = {}
    for reads in ("lungs", "outside_lungs"):
        predict = _reader(lungs if reads == "lungs" else ~lungs, seed=7)
        result = deletion_test(predict, cases, np.ones(4, int), np.ones(4, int), [lungs] * 4, fractions=(0.0,), removal=removal)
        assert set(result.regions) == {"lungs", "outside_lungs", "lungs_area_elsewhere"}
        assert all(r["n"] == 4 for r in result.regions.values())
        drops[reads] = {name: region["drop"] for name, region in result.regions.items()}
    assert drops["outside_lungs"]["lungs"] == 0.0 and drops["lungs"]["outside_lungs"] == 0.0  # nothing else changed
    assert abs(drops["lungs"]["lungs"]) > 0.01 and abs(drops["outside_lungs"]["outside_lungs"]) > 0.01


# --------------------------------------------------------------------------- randomisation


def test_steps_run_from_the_head_down_and_reinitialise_only_their_layers(shortcut_phantom: dict) -> None:
    from heatmap_templates.analysis.sanity import model_copy
    from heatmap_templates.model.model_file import load_model

    model, _ = load_model(shortcut_phantom["model"])
    steps = randomisation_steps(model)
    assert [step.name for step in steps] == ["predictions", "head_dense", "block4", "block3", "block2", "block1"]
    copy = model_copy(model)
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in copy.layers}
    reinitialise([copy.get_layer(layer.name) for layer in steps[2].layers], seed=0)
    for layer in copy.layers:
        changed = any(not np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights(), strict=True))
        assert changed == (layer.name in {l.name for l in steps[2].layers} and bool(layer.weights)), layer.name
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), [w for name in before for w in before[name]], strict=True))
    assert len(randomisation_steps(model, max_steps=3)) == 3


def _move_off_initial_draws(model) -> None:
    """Shift every weight by a positive amount, as training would move it: a re-initialised weight then differs from
    it whatever its initializer (ones, zeros or a random draw)."""
    rng = np.random.default_rng(9)
    model.set_weights([w + rng.uniform(0.05, 0.15, w.shape).astype(w.dtype) for w in model.get_weights()])


def _layer_weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


def _assert_randomised_as_named(variant: str, trained: dict, steps: list, seen: list[dict]) -> None:
    """After step k (``seen[k]``: the network's weights when step k's maps were computed), cascading has the layers of
    steps 1..k re-initialised, independent those of step k alone; every other layer keeps its trained weights."""
    assert len(seen) == len(steps)
    for k, weights in enumerate(seen):
        randomised = {layer.name for step in (steps[:k + 1] if variant == "cascading" else steps[k:k + 1]) for layer in step.layers}
        for name, values in weights.items():
            equal = [np.array_equal(a, b) for a, b in zip(trained[name], values, strict=True)]
            assert (not any(equal)) if name in randomised else all(equal), (variant, steps[k].name, name)


@pytest.mark.parametrize("variant", VARIANTS.names())
def test_each_variant_randomises_the_steps_it_names(variant: str) -> None:
    import keras

    from heatmap_templates.analysis.sanity import _randomise_steps, model_copy
    from heatmap_templates.model.backbones import build_model
    from heatmap_templates.progress import NullProgress

    keras.utils.set_random_seed(0)
    trained = build_model("small", 2, 16, "none", dense_units=4, dropout=0.0)
    _move_off_initial_draws(trained)
    steps = randomisation_steps(trained)
    network = model_copy(trained)
    seen: list[dict] = []

    def templates_now() -> dict:
        seen.append(_layer_weights(network))
        return {}

    result = SanityResult(variant, [step.name for step in steps], {}, {})
    _randomise_steps(result, steps, trained, network, templates_now, {}, [], cascading=VARIANTS[variant], seed=0,
                     keep_templates=False, progress=NullProgress())
    assert [step.name for step in steps] == ["predictions", "head_dense", "block4", "block3", "block2", "block1"]
    _assert_randomised_as_named(variant, _layer_weights(trained), steps, seen)


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho written out: the Pearson correlation (numpy) of the two maps' ranks (ties share their mean rank)."""
    from scipy.stats import rankdata

    return float(np.corrcoef(rankdata(a.ravel()), rankdata(b.ravel()))[0, 1])


def test_template_similarity_by_hand() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(5)
    template = rng.random((12, 12))
    same = template_similarity(template, template * 3 + 1)  # a monotone transform: ranks and structure unchanged
    assert same["spearman"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0) and not same["all_zero"]
    flipped = template_similarity(template, -template)
    assert flipped["spearman"] == pytest.approx(-1.0)
    curved = np.exp(8 * template)  # monotone, far from linear: the ranks agree exactly, the values do not
    assert np.corrcoef(template.ravel(), curved.ravel())[0, 1] < 0.9  # Pearson would say so
    assert template_similarity(template, curved)["spearman"] == pytest.approx(1.0, abs=1e-12)
    noisy = template**3 + 0.05 * rng.random((12, 12))
    expected = _rank_correlation(template, noisy)
    assert abs(np.corrcoef(template.ravel(), noisy.ravel())[0, 1] - expected) > 0.01
    result = template_similarity(template, noisy)
    assert result["spearman"] == pytest.approx(expected, abs=1e-12)
    on_its_range = (noisy - noisy.min()) / (noisy.max() - noisy.min()) * (template.max() - template.min()) + template.min()
    ssim = structural_similarity(template, on_its_range, data_range=template.max() - template.min())  # scikit-image itself
    assert result["ssim"] == pytest.approx(ssim, abs=1e-12) and 0.0 < ssim < 0.99
    assert template_similarity(template, np.zeros((12, 12))) == {"spearman": None, "ssim": None, "all_zero": True, "constant": True,
                                                                 "original_all_zero": False}
    assert template_similarity(np.zeros((12, 12)), np.zeros((12, 12)))["original_all_zero"]


def _entry(spearman: float | None, *, all_zero: bool = False, original_all_zero: bool = False) -> dict:
    return {"step": "s", "spearman": spearman, "ssim": None, "all_zero": all_zero, "constant": all_zero,
            "original_all_zero": original_all_zero}


def test_sanity_flag_by_hand() -> None:
    """Flagged: |rho| >= 0.5 at the end (cascading: the last step; independent: every step), or all zero where the
    trained template was all zero too; an all-zero map where the trained one was not is lost."""
    template = np.random.default_rng(8).random((12, 12))
    zeros = np.zeros((12, 12))
    similarity = {
        "image_only": [template_similarity(template, template), template_similarity(template, template)],
        "inverted": [_entry(0.2), template_similarity(template, -template)],
        "inverted_just": [_entry(0.9), _entry(-0.5)],
        "lost": [_entry(0.9), _entry(0.49)],
        "lost_inverted": [_entry(-0.9), _entry(-0.49)],
        "gone_to_zero": [_entry(0.9), template_similarity(template, zeros)],
        "zero_before_and_after": [template_similarity(zeros, zeros), template_similarity(zeros, zeros)],
        "late": [_entry(0.1), _entry(0.8)],
        "constant": [_entry(0.9), _entry(None)],
    }
    cascading = SanityResult("cascading", ["a", "b"], {}, similarity)
    assert flag(cascading) == ["image_only", "inverted", "inverted_just", "zero_before_and_after", "late"]
    independent = SanityResult("independent", ["a", "b"], {}, similarity)
    assert flag(independent) == ["image_only", "inverted_just", "zero_before_and_after"]
    assert flag(SanityResult("cascading", [], {}, {"none": []})) == []


def _sobel(activations, masked):
    """An image-only 'CAM' (``Inputs.MASKED_SCORES``, which hands it the input batch): the Sobel edge magnitude of the
    image, area-averaged to the layer's resolution, the same for every class; no weight of the model enters it (the
    edge detector Adebayo et al. compare saliency maps with)."""
    import tensorflow as tf

    edges = tf.image.sobel_edges(masked.images[..., :1])  # (N, H, W, 1, 2)
    magnitude = tf.sqrt(tf.reduce_sum(edges**2, axis=-1))
    small = tf.image.resize(magnitude, tf.shape(activations)[1:3], method="area")[..., 0]
    return tf.repeat(small[:, tf.newaxis], masked.num_classes, axis=1)


@pytest.fixture(scope="module")
def image_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A `small` model never trained (its weights moved off their initial draws), its store and templates (every image
    a member) made with the CAM method `sobel`, an image-only map registered for this module's tests alone."""
    import keras

    from heatmap_templates.explain.cam_methods import METHODS, CamMethod, Inputs
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.model import backbones, model_file
    from heatmap_templates.model.layers import default_cam_layer
    from heatmap_templates.synth import synthesize_dataset
    from heatmap_templates.templates.build import BuildConfig, build_templates

    root = tmp_path_factory.mktemp("image_only")
    synthesize_dataset(root / "data", n_per_class=4, size=48, seed=2, classes=("covid", "normal"), workers=1,
                       probability_samples=4)
    keras.utils.set_random_seed(0)
    model = backbones.build_model("small", 2, 48, "none", dense_units=8, dropout=0.0)
    _move_off_initial_draws(model)
    info = model_file.ModelInfo(class_names=["covid", "normal"], backbone="small", input_size=(48, 48), channels=1,
                                preprocessing="unit", cam_layer=default_cam_layer(model))
    path = model_file.save_model(model, info, root / "model.keras")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(METHODS._entries, "sobel", CamMethod(_sobel, Inputs.MASKED_SCORES))
        patch.setitem(METHODS._help, "sobel", "the image's Sobel edge magnitude (a test baseline)")
        extract_heatmaps(path, root / "data", root / "heatmaps.h5", method="sobel", batch_size=8)
        build_templates(root / "heatmaps.h5", None, root / "templates.h5", config=BuildConfig(
            include="all", bootstrap_replicates=4, n_components=2, reference_iterations=1, batch_size=8))
        yield {"model": path, "store": root / "heatmaps.h5", "templates": root / "templates.h5"}


@pytest.mark.parametrize("variant", VARIANTS.names())
def test_the_flag_fires_on_an_image_only_map_and_the_variant_randomises_what_it_names(image_only: dict, variant: str,
                                                                                    monkeypatch) -> None:
    """A template of maps that do not depend on the model survives every step and is flagged; run_sanity's network has
    the weights its variant names at every step (the trained model's Grad-CAM template is not flagged: the phantom
    test below)."""
    import heatmap_templates.analysis.sanity as sanity
    from heatmap_templates.model.model_file import load_model

    seen: list[dict] = []
    maps_of = sanity._maps_of

    def spy(engine, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        seen.append(_layer_weights(engine.model))
        return maps_of(engine, inputs, batch_size)

    monkeypatch.setattr(sanity, "_maps_of", spy)
    result = sanity.run_sanity(image_only["templates"], image_only["store"], sample=4, variant=variant)
    assert result.flagged == ["covid", "normal"]
    assert all(entry["spearman"] > 0.99 for entries in result.similarity.values() for entry in entries)
    trained, _ = load_model(image_only["model"])
    _assert_randomised_as_named(variant, _layer_weights(trained), randomisation_steps(trained), seen)


def test_sanity_faithfulness_and_localisation_on_the_phantom(shortcut_phantom: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    templates = tmp_path / "templates.h5"
    shutil.copy(shortcut_phantom["templates"], templates)
    model_hash = file_sha256(shortcut_phantom["model"])
    code, out, err = run_hmt(["sanity", templates, "--heatmaps", shortcut_phantom["store"], "--sample", "12", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    sanity = json.loads(out)
    assert file_sha256(shortcut_phantom["model"]) == model_hash  # the model file is untouched
    entries = sanity["similarity"]["covid"]
    assert [entry["step"] for entry in entries] == sanity["steps"] and len(entries) == 6
    assert entries[-1]["all_zero"] or abs(entries[-1]["spearman"]) < 0.5  # fully randomised: the template no longer holds
    assert sanity["flagged"] == []

    annotations = shortcut_phantom["data"] / "ground_truth" / "masks"
    code, out, err = run_hmt(["evaluate-templates", templates, shortcut_phantom["data"], "--faithfulness", "--deletion-sample", "8",
                              "--annotations", annotations, "--json"], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    deletion = report["faithfulness"]
    assert deletion["fractions"][0] == 0.0 and deletion["curves"]["heatmap"]["drop"][0] == 0.0
    assert deletion["curves"]["heatmap"]["aopc"] > deletion["curves"]["random"]["aopc"]  # the model uses what its maps mark
    assert deletion["body"] == {"given": deletion["n_images"], "otsu": 0}  # the phantom's exact body masks, found by themselves
    assert set(deletion["ratios"]) == {f"{r}_vs_{b}" for r in ("heatmap", "template") for b in ("random", "smooth", "moved")}
    assert all(len(curve["per_image_aopc"]) == deletion["n_images"] for curve in deletion["curves"].values())
    covid = report["localisation"]["templates"]["covid"]
    assert covid["annotated_members"] == read_checks(templates)["localisation"]["templates"]["covid"]["annotated_members"] > 0
    assert covid["pixel_auc"] > 0.7  # the covid template lies on the planted lesions (measured 0.94)
    assert set(read_checks(templates)) == {"sanity", "faithfulness", "localisation"}

    code, out, err = run_hmt(["figures", templates, "--out", tmp_path / "figures", "--format", "png", "--dpi", "40", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert {"sanity", "deletion"} <= set(json.loads(out)["figures"])

    from heatmap_templates.present.report import write_report

    page = write_report(templates, tmp_path / "report", heatmaps=shortcut_phantom["store"], gallery_size=1).index.read_text()
    for ranking, curve in deletion["curves"].items():
        assert f'data-key="deletion-{ranking}-aopc">{curve["aopc"]:.3f}<' in page
    ratio = deletion["ratios"]["template_vs_smooth"]
    assert f'data-key="deletion-ratio-template_vs_smooth">{ratio["value"]:.3f}<' in page
    assert f'{ratio["value"]:.2f} [{ratio["ci"][0]:.2f}, {ratio["ci"][1]:.2f}]' in page
    assert entries[-1]["spearman"] is None or f'data-key="sanity-covid-5">{entries[-1]["spearman"]:.3f}<' in page
    assert "figures/sanity.png" in page and "figures/deletion.png" in page


def test_kept_sanity_templates_are_the_ones_compared(shortcut_phantom: dict) -> None:
    from heatmap_templates.analysis.sanity import run_sanity

    result = run_sanity(shortcut_phantom["templates"], shortcut_phantom["store"], sample=4, keep_templates=True)
    kept = result.templates["covid"]
    assert len(kept) == len(result.steps) + 1
    for entry, randomised in zip(result.similarity["covid"], kept[1:], strict=True):
        assert template_similarity(kept[0], randomised) == {key: entry[key] for key in entry if key != "step"}


def test_data_randomisation_with_a_model_trained_on_shuffled_labels(shortcut_phantom: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    shuffled = tmp_path / "shuffled.keras"
    code, _, err = run_hmt(["train", shortcut_phantom["data"], "--backbone", "small", "--input-size", "64", "--epochs", "1",
                            "--no-augment", "--shuffle-labels", "--out", shuffled, "--project-dir", tmp_path], capsys, monkeypatch)
    assert code == 0, err
    templates = tmp_path / "templates.h5"
    shutil.copy(shortcut_phantom["templates"], templates)
    code, out, err = run_hmt(["sanity", templates, "--heatmaps", shortcut_phantom["store"], "--sample", "6", "--variant",
                              "independent", "--shuffled-model", shuffled, "--json"], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    assert result["variant"] == "independent" and set(result["data_randomisation"]) == {"covid"}
    code, _, err = run_hmt(["sanity", templates, "--heatmaps", shortcut_phantom["store"], "--variant", "sideways"], capsys, monkeypatch)
    assert_user_error(code, err, "unknown variant 'sideways'")


def test_a_result_stored_under_the_signed_rule_is_shown_by_todays_rule() -> None:
    """A sanity result stored before the |rho| rule lists only what the signed rule flagged; the report recomputes the
    flags from the stored similarities (virus at rho -0.55 after the last step, as cxr4's, is flagged today)."""
    from heatmap_templates.analysis.sanity import flagged_of
    from heatmap_templates.present.report.html import checks_html

    stored = {"variant": "cascading", "steps": ["predictions", "block1"], "sample": {"covid": 3, "virus": 3},
              "flagged": [], "flag_spearman": 0.5,
              "similarity": {"covid": [{"spearman": 0.9, "ssim": 0.8, "all_zero": False, "constant": False},
                                       {"spearman": -0.12, "ssim": 0.1, "all_zero": False, "constant": False}],
                             "virus": [{"spearman": 0.56, "ssim": 0.4, "all_zero": False, "constant": False},
                                       {"spearman": -0.55, "ssim": 0.2, "all_zero": False, "constant": False}]}}
    assert flagged_of(stored) == ["virus"]
    independent = dict(stored, variant="independent")
    assert flagged_of(independent) == ["virus"]  # |rho| >= 0.5 at every step
    independent["similarity"] = dict(stored["similarity"], virus=[{"spearman": 0.2, "all_zero": False}, {"spearman": -0.55}])
    assert flagged_of(independent) == []
    html = checks_html({"sanity": stored}, lambda name: name, {})
    assert "<strong>virus</strong>" in html

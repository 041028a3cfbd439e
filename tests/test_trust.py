"""Do the templates tell the truth? Randomisation sanity checks, deletion faithfulness and localisation,
against hand-computed cases and on the planted-shortcut phantom (session fixture)."""
from __future__ import annotations

import json
import shutil
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
from heatmap_templates.analysis.sanity import randomisation_steps, reinitialise, template_similarity
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
    assert set(result.regions) == {"outside_lungs", "lungs"} and result.regions["lungs"]["n"] == 6


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


def test_template_similarity_by_hand() -> None:
    template = np.random.default_rng(5).random((12, 12))
    same = template_similarity(template, template * 3 + 1)  # a monotone transform: ranks and structure unchanged
    assert same["spearman"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0) and not same["all_zero"]
    flipped = template_similarity(template, -template)
    assert flipped["spearman"] == pytest.approx(-1.0)
    assert template_similarity(template, np.zeros((12, 12))) == {"spearman": None, "ssim": None, "all_zero": True, "constant": True}


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
    assert entries[-1]["all_zero"] or entries[-1]["spearman"] < 0.5  # fully randomised: the template no longer holds
    assert sanity["flagged"] == []

    annotations = shortcut_phantom["data"] / "ground_truth" / "masks"
    code, out, err = run_hmt(["evaluate-templates", templates, shortcut_phantom["data"], "--faithfulness", "--deletion-sample", "8",
                              "--annotations", annotations, "--json"], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    deletion = report["faithfulness"]
    assert deletion["fractions"][0] == 0.0 and deletion["curves"]["heatmap"]["drop"][0] == 0.0
    assert deletion["curves"]["heatmap"]["aopc"] > deletion["curves"]["random"]["aopc"]  # the model uses what its maps mark
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

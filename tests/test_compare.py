"""Scoring images against templates (compare.py, `hmt compare`, `hmt evaluate-templates`) and the
heatmap measures added to metrics.py. One tiny phantom set, model and templates file serve every test."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates.analysis.compare import Comparer, evaluate_templates, separation_report, template_match_report
from heatmap_templates.analysis.scoring import atypical_reading
from heatmap_templates.analysis.similarity import cosine_similarity, masked_pearson, similarity_scores
from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.numeric import metrics

SIZE = 64
CLASSES = ("covid", "normal")
N_PER_CLASS = 6


# --------------------------------------------------------------------------- fixtures


def _tiny_model(seed: int, path: Path, data: Path | None = None) -> Path:
    """A `small` classifier (seeded) saved with hmt metadata; fitted for a few epochs on ``data``
    when given, so that every class's Grad-CAM maps are alive (a random net leaves some all zero)."""
    import keras

    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.data.decode import decode_image
    from heatmap_templates.data.preprocess import resize_gray
    from heatmap_templates.model import backbones, model_file
    from heatmap_templates.model import layers as model_layers

    keras.utils.set_random_seed(seed)
    model = backbones.build_model("small", len(CLASSES), SIZE, "none", dense_units=8, dropout=0.0)
    if data is not None:
        samples = load_dataset(data).samples
        images = np.stack([resize_gray(decode_image(s.path).pixels, (SIZE, SIZE)) for s in samples])[..., None]
        labels = np.array([CLASSES.index(s.label) for s in samples])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        model.fit(images, labels, epochs=4, batch_size=4, verbose=0)
    info = model_file.ModelInfo(class_names=list(CLASSES), backbone="small", input_size=(SIZE, SIZE), channels=1,
                                preprocessing="unit", cam_layer=model_layers.default_cam_layer(model))
    return model_file.save_model(model, info, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Phantoms, a model, its heatmap store and a templates file with both classes (members: every image of the class)."""
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.synth import synthesize_dataset
    from heatmap_templates.templates.build import BuildConfig, build_templates

    root = tmp_path_factory.mktemp("compare")
    data = root / "data"
    synthesize_dataset(data, n_per_class=N_PER_CLASS, size=SIZE, seed=3, classes=CLASSES, workers=1, probability_samples=4)
    model = _tiny_model(0, root / "model.keras", data)
    store = root / "heatmaps.h5"
    extract_heatmaps(model, data, store, batch_size=8)
    templates = root / "templates.h5"
    build_templates(store, None, templates, config=BuildConfig(include="all", bootstrap_replicates=4, n_components=2,
                                                               reference_iterations=1, batch_size=8))
    return {"root": root, "data": data, "model": model, "store": store, "templates": templates}


@pytest.fixture(scope="module")
def comparer(setup: dict) -> Comparer:
    return Comparer(setup["templates"])


# --------------------------------------------------------------------------- metrics additions


def test_lung_field_energy_by_hand() -> None:
    mask = np.zeros((2, 3), bool)
    mask[0, :2] = True  # 2 of 6 pixels
    maps = np.array([
        [[1.0, 3.0, 0.0], [2.0, 0.0, 2.0]],  # 4 of 8 inside
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # no mass: the mask's area share
        [[-5.0, 1.0, np.nan], [1.0, 0.0, 0.0]],  # negatives and NaN carry no mass: 1 of 2 inside
    ])
    np.testing.assert_allclose(metrics.lung_field_energy(maps, mask), [0.5, 1 / 3, 0.5])
    assert metrics.lung_field_energy(maps[0], mask) == pytest.approx(0.5)
    with pytest.raises(HmtError, match="do not match"):
        metrics.lung_field_energy(maps, np.ones((3, 3), bool))


def test_pixel_auc_by_hand() -> None:
    truth = np.array([[0.0, 1.0], [0.9, 0.2]])  # positives (> 0.5): (0, 1) and (1, 0)
    assert metrics.pixel_auc(np.array([[0.1, 0.9], [0.8, 0.2]]), truth) == 1.0
    assert metrics.pixel_auc(np.array([[0.9, 0.1], [0.2, 0.8]]), truth) == 0.0
    # positives score 0.5 and 0.3, negatives 0.4 and 0.3: pairs (0.5>0.4, 0.5>0.3, 0.3<0.4, 0.3=0.3) -> 2.5 / 4
    assert metrics.pixel_auc(np.array([[0.4, 0.5], [0.3, 0.3]]), truth) == pytest.approx(0.625)
    assert metrics.pixel_auc(np.ones((2, 2)), np.zeros((2, 2))) is None
    # only (0, 1) is positive at 0.95: its 0.5 beats 0.1 and 0.2 but not 0.8
    assert metrics.pixel_auc(np.array([[0.1, 0.5], [0.8, 0.2]]), truth, threshold=0.95) == pytest.approx(2 / 3)


def test_percentile_rank_and_atypical_reading_by_hand() -> None:
    loo = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert metrics.percentile_rank(0.35, loo) == 30.0
    assert metrics.percentile_rank(0.3, loo) == 25.0  # ties count one half
    # the 5th percentile of 0.1..1.0 by linear interpolation: 0.1 + 0.05 * 9 * 0.1 = 0.145
    low = atypical_reading(0.12, loo, 5.0)
    assert low is not None and low.atypical and low.threshold == pytest.approx(0.145) and low.percentile_rank == 10.0
    high = atypical_reading(0.15, loo, 5.0)
    assert high is not None and not high.atypical
    assert atypical_reading(0.35, loo, 50.0).atypical  # median 0.55
    assert atypical_reading(0.5, np.array([0.7]), 5.0) is None  # one value is no distribution
    with pytest.raises(HmtError):
        metrics.percentile_rank(0.5, np.zeros(0))


def test_similarity_measures_by_hand() -> None:
    template = np.array([[1.0, 2.0], [3.0, 4.0]])
    maps = np.stack([template * 2 + 1, -template, np.zeros((2, 2))])
    np.testing.assert_allclose(similarity_scores(maps, template, "pearson"), [1.0, -1.0, 0.0])
    np.testing.assert_allclose(cosine_similarity(maps[:1], template), [(template * 2 + 1).ravel() @ template.ravel()
                                                                         / np.linalg.norm(template * 2 + 1) / np.linalg.norm(template)])
    np.testing.assert_allclose(cosine_similarity(maps[2:], template), [0.0])
    mask = np.array([[True, False], [True, True]])
    other = np.array([[1.0, 100.0], [3.0, 4.0]])  # equal to the template inside the mask
    assert masked_pearson(other[None], template, mask)[0] == pytest.approx(1.0)
    assert np.corrcoef(other.ravel(), template.ravel())[0, 1] < 0.9
    ramp = np.add.outer(np.arange(16.0), np.arange(16.0))
    ssim = similarity_scores(np.stack([ramp, ramp[::-1], ramp * 0.5]), ramp, "ssim")
    assert ssim[0] == pytest.approx(1.0) and ssim[1] < 0.5 and 0.5 < ssim[2] < 1.0
    with pytest.raises(HmtError, match="unknown similarity"):
        similarity_scores(maps, template, "euclid")


def test_template_match_and_separation_reports_by_hand() -> None:
    report = template_match_report(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b"])
    assert report["n"] == 3 and report["correct"] == 2 and report["accuracy"] == pytest.approx(2 / 3)
    assert {key: report["per_class"]["a"][key] for key in ("n", "correct", "accuracy")} == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert report["per_class"]["a"]["accuracy_ci"] == [0.0, 1.0]  # two images, one hit: a resample's share is 0, 1/2 or 1
    separation = separation_report([0.9, 0.8, 0.3, 0.5], [True, True, False, False], [False, None, True, False])
    assert separation["auc"] == 1.0 and separation["n_correct"] == 2 and separation["n_misclassified"] == 2
    assert separation["atypical_share_correct"] == 0.0 and separation["atypical_share_misclassified"] == 0.5
    undefined = separation_report([0.9, 0.8], [True, True], [False, False])
    assert undefined["auc"] is None and undefined["auc_undefined_reason"] == "no misclassified images"


# --------------------------------------------------------------------------- comparer


def _warp_by_hand(plane: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear warp into the reference frame with SciPy: ``matrix`` (2, 3) maps image (x, y) to reference (x, y), so
    each reference pixel reads the image at the inverse map (SciPy's (row, column) order), 0 outside the image."""
    from scipy.ndimage import affine_transform

    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (x, y) <-> (row, column)
    rows_columns = swap @ inverse @ swap
    return affine_transform(np.asarray(plane, np.float64), rows_columns[:2, :2], offset=rows_columns[:2, 2], output_shape=shape,
                            order=1, mode="grid-constant", cval=0.0)


def test_similarities_equal_a_recomputation_by_hand(setup: dict, comparer: Comparer) -> None:
    """Decode, classify, register to the stored reference, normalise and correlate, step by step: the warp (SciPy),
    the minmax normalisation and the Pearson correlation (numpy) written out here, not the library's."""
    from heatmap_templates.explain.cam import CamEngine
    from heatmap_templates.explain.heatmaps import load_for_model
    from heatmap_templates.model.model_file import load_model
    from heatmap_templates.templates.prepare import registrar_for
    from heatmap_templates.templates.templates_file import read_templates

    path = setup["data"] / "covid" / "covid_0002.png"
    [result] = comparer.compare([path]).results
    stored = read_templates(setup["templates"])
    model, info = load_model(setup["model"])
    model_input, image_u8 = load_for_model(path, info.input_size, info.channels, info.preprocessing)
    cam = CamEngine(model, layer=stored.settings.layer, method=stored.settings.cam_method).all_classes(model_input[None])
    registrar = registrar_for(stored.settings.registration, stored.reference_image, stored.lung_mask)
    alignment = registrar.estimate(image_u8.astype(np.float32) / 255.0)
    assert result.predicted == CLASSES[int(cam.probabilities[0].argmax())]
    assert stored.settings.normalisation == "minmax" and alignment.image_shape == cam.upsampled.shape[-2:]
    for k, name in enumerate(CLASSES):
        registered = _warp_by_hand(cam.upsampled[0, k], alignment.matrix, stored.reference_image.shape)
        spread = registered.max() - registered.min()
        normalised = (registered - registered.min()) / spread if spread > 0 else np.zeros_like(registered)  # minmax
        expected = np.corrcoef(normalised.ravel(), np.asarray(stored.templates[name].mean, np.float64).ravel())[0, 1]
        assert result.similarities[name] == pytest.approx(expected, abs=1e-5)  # the store's upsampler vs TensorFlow's
        assert result.probabilities[name] == pytest.approx(float(cam.probabilities[0, k]), abs=1e-6)
    assert result.best_match == max(result.similarities, key=result.similarities.get)
    assert result.registration_method == alignment.method


def test_template_member_correlates_highly_with_its_class(setup: dict, comparer: Comparer) -> None:
    """A member image scores at least its own leave-one-out correlation (the template includes it)."""
    from heatmap_templates.templates.templates_file import read_templates

    stored = read_templates(setup["templates"])
    template = stored.templates["normal"]
    member = template.members[0]
    [result] = comparer.compare([member.path]).results
    assert result.similarities["normal"] >= template.loo_correlations[0] - 1e-6
    assert result.similarities["normal"] > 0.5


def test_atypical_flag_uses_the_stored_distribution(setup: dict, comparer: Comparer) -> None:
    run = comparer.compare([setup["data"] / "normal"])
    assert len(run.results) == N_PER_CLASS and not run.skipped
    for result in run.results:
        loo = comparer.file.templates[result.predicted].loo_correlations
        expected = atypical_reading(result.predicted_correlation, loo, 5.0)
        assert result.atypical == expected.atypical and result.percentile_rank == pytest.approx(expected.percentile_rank)
        assert result.predicted_similarity == result.predicted_correlation  # pearson: the same number
        assert 0.0 <= result.lung_field_energy <= 1.0
    for percentile, bound in ((100.0, np.max), (0.0, np.min)):  # atypical: below the distribution's maximum / minimum
        for result in Comparer(setup["templates"], atypical_percentile=percentile).compare([setup["data"] / "normal"]).results:
            loo = comparer.file.templates[result.predicted].loo_correlations
            assert result.atypical == (result.predicted_correlation < bound(loo))


def test_other_similarities_keep_pearson_for_the_atypical_flag(setup: dict, comparer: Comparer) -> None:
    path = setup["data"] / "covid" / "covid_0000.png"
    [plain] = comparer.compare([path]).results
    [lungs] = Comparer(setup["templates"], similarity="pearson-lungs").compare([path]).results
    assert lungs.predicted_correlation == pytest.approx(plain.predicted_correlation)
    assert lungs.similarities != plain.similarities
    assert all(-1.0 <= value <= 1.0 for value in lungs.similarities.values())


def test_model_of_another_sha_is_refused(setup: dict, tmp_path: Path) -> None:
    other = _tiny_model(1, tmp_path / "other.keras")
    with pytest.raises(BadFileError) as error:
        Comparer(setup["templates"], model=other)
    assert "other.keras" in str(error.value) and "templates.h5" in str(error.value)


def test_moved_model_needs_model_option(setup: dict) -> None:
    moved = setup["model"].with_name("moved.keras")
    setup["model"].rename(moved)
    try:
        with pytest.raises(HmtError, match="give it with parameter 'model'"):
            Comparer(setup["templates"])
        [result] = Comparer(setup["templates"], model=moved).compare([setup["data"] / "covid" / "covid_0001.png"]).results
        assert set(result.similarities) == set(CLASSES)
    finally:
        moved.rename(setup["model"])


def test_folder_with_a_bad_image_skips_and_reports(setup: dict, comparer: Comparer, tmp_path: Path) -> None:
    folder = tmp_path / "mixed" / "nested"
    folder.mkdir(parents=True)
    shutil.copy(setup["data"] / "covid" / "covid_0000.png", folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")
    run = comparer.compare([tmp_path / "mixed", tmp_path / "missing.png"])
    assert [Path(r.path).name for r in run.results] == ["good.png"]
    assert sorted(Path(p.path).name for p in run.skipped) == ["broken.png", "missing.png"]
    assert json.loads(json.dumps(run.to_dict()))["skipped"][0]["reason"]


# --------------------------------------------------------------------------- evaluate-templates


def test_evaluate_templates_numbers_by_hand(setup: dict, comparer: Comparer) -> None:
    report = evaluate_templates(setup["templates"], setup["data"])
    results = comparer.compare([setup["data"] / name for name in CLASSES]).results
    truths = [Path(r.path).parent.name for r in results]
    assert report.n_images == len(results) == 2 * N_PER_CLASS
    matched = [r.best_match == t for r, t in zip(results, truths, strict=True)]
    assert report.template_match["accuracy"] == pytest.approx(np.mean(matched))
    correct = np.array([r.predicted == t for r, t in zip(results, truths, strict=True)])
    assert report.classification["accuracy"] == pytest.approx(correct.mean())
    scores = np.array([r.predicted_similarity for r in results])
    separation = report.correct_vs_misclassified
    if correct.all() or not correct.any():
        assert separation["auc"] is None and separation["auc_undefined_reason"]
    else:  # Mann-Whitney by brute force over (correct, misclassified) pairs
        pairs = [(a > b) + 0.5 * (a == b) for a in scores[correct] for b in scores[~correct]]
        assert separation["auc"] == pytest.approx(np.mean(pairs))
    lungs = comparer.lung_mask
    for name in CLASSES:
        energies = [r.lung_field_energy for r, t in zip(results, truths, strict=True) if t == name]
        assert report.lung_field_energy["by_true_class"][name]["mean"] == pytest.approx(np.mean(energies))
        mean = comparer.file.templates[name].mean
        assert report.lung_field_energy["templates"][name] == pytest.approx(mean[lungs].sum() / mean.sum())
    assert report.lung_field_energy["lung_area_fraction"] == pytest.approx(lungs.mean())


# --------------------------------------------------------------------------- CLI


def test_cli_table_json_csv_and_figure(setup: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    pair = [str(setup["data"] / "covid" / "covid_0000.png"), str(setup["data"] / "normal" / "normal_0000.png")]
    templates = ["--templates", str(setup["templates"])]
    code, out, _ = run_hmt(["compare", *pair, *templates, "--csv", str(tmp_path / "scores.csv"), "--figure", str(tmp_path / "figures")],
                           capsys, monkeypatch)
    assert code == 0
    assert "covid_0000.png" in out and "normal_0000.png" in out and "best match" in out
    with open(tmp_path / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["path"]).name for row in rows] == ["covid_0000.png", "normal_0000.png"]
    assert {"path", "predicted", "best_match", "atypical", "percentile_rank", "p_covid", "sim_normal"} <= set(rows[0])
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["00000_covid_0000.png", "00001_normal_0000.png"]
    code, out, _ = run_hmt(["compare", pair[0], str(setup["data"] / "normal"), *templates, "--json", "--figure", str(tmp_path / "one.png")],
                           capsys, monkeypatch)
    document = json.loads(out)
    assert code == 0 and len(document["results"]) == 1 + N_PER_CLASS and document["template_classes"] == list(CLASSES)
    first = document["results"][0]
    assert set(first["similarities"]) == set(CLASSES) and isinstance(first["atypical"], bool)
    assert (tmp_path / "one.png").stat().st_size > 0 and not list(tmp_path.glob("one*.png"))[1:]


def test_cli_evaluate_templates_json(setup: dict, capsys, monkeypatch) -> None:
    code, out, _ = run_hmt(["evaluate-templates", str(setup["templates"]), str(setup["data"]), "--json"], capsys, monkeypatch)
    assert code == 0
    document = json.loads(out)
    assert document["n_images"] == 2 * N_PER_CLASS
    assert {"template_match", "correct_vs_misclassified", "lung_field_energy", "classification"} <= set(document)
    code, out, _ = run_hmt(["evaluate-templates", str(setup["templates"]), str(setup["data"])], capsys, monkeypatch)
    assert code == 0 and "template-match accuracy" in out and "lung-field energy" in out


def test_cli_user_errors_are_one_line(setup: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    image = str(setup["data"] / "covid" / "covid_0000.png")
    code, _, err = run_hmt(["compare", image, "--templates", str(tmp_path / "none.h5")], capsys, monkeypatch)
    assert_user_error(code, err, "none.h5")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"this is not HDF5" * 10)
    code, _, err = run_hmt(["compare", image, "--templates", str(corrupt)], capsys, monkeypatch)
    assert_user_error(code, err, "corrupt.h5")
    code, _, err = run_hmt(["compare", str(tmp_path / "missing.png"), "--templates", str(setup["templates"])], capsys, monkeypatch)
    assert_user_error(code, err, "no image could be scored", "missing.png")
    code, _, err = run_hmt(["compare", image, "--templates", str(setup["templates"]), "--similarity", "euclid"], capsys, monkeypatch)
    assert_user_error(code, err, "euclid")

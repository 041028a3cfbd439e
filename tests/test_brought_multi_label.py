"""A multi-label model a researcher brings (no hmt metadata, one output per finding) with a CheXpert-style CSV
(1 positive, 0 negative, -1 uncertain, blank unknown; finding columns named otherwise than anything hmt knows):
heatmaps, build-templates, evaluate, compare and evaluate-templates, with --labels, --uncertain and --head. Also the
head override on its own: a linear output (logits) read as independent sigmoids or as one sigmoid, against a
hand-computed Grad-CAM."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt
from scipy.stats import mannwhitneyu

from heatmap_templates.errors import HmtError
from heatmap_templates.explain.cam import CamEngine
from heatmap_templates.model.heads import head_kind
from heatmap_templates.model.model_file import load_model
from heatmap_templates.store import open_heatmaps
from heatmap_templates.templates.templates_file import read_templates

SIZE = 32
PHANTOM_FINDINGS = ("bacteria", "covid", "virus")
COLUMNS = ["Bacteria", "Covid Pneumonia", "Virus"]  # the CSV's finding columns, in the model's output order
LABELS = ",".join(COLUMNS)


def _model(activation: str = "linear", units: int = 3, seed: int = 0, bias: np.ndarray | None = None) -> keras.Model:
    """conv -> relu conv 'features' -> GAP -> dense (the same weights for every activation of one seed)."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(units, activation=activation, name="findings")(x))
    model.set_weights([rng.normal(0, 0.4, (3, 3, 1, 6)).astype(np.float32), rng.normal(0, 0.3, (6,)).astype(np.float32),
                       rng.normal(0, 0.3, (3, 3, 6, 8)).astype(np.float32), rng.normal(0, 0.1, (8,)).astype(np.float32),
                       rng.normal(0, 0.5, (8, units)).astype(np.float32),
                       np.zeros(units, np.float32) if bias is None else bias.astype(np.float32)])
    return model


def _cell(rng: np.random.Generator, truth: str) -> str:
    """A CheXpert cell for a planted finding: mostly the truth, sometimes uncertain (-1) or blank."""
    draw = rng.uniform()
    return "-1" if draw < 0.15 else "" if draw < 0.25 else truth


@pytest.fixture(scope="module")
def brought(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Phantoms, a CheXpert-style CSV of them and a logits model whose biases centre each finding's logits (about
    half the images predicted positive), saved without hmt metadata."""
    from heatmap_templates.data.preprocess import load_model_image, to_model_input
    from heatmap_templates.synth import synthesize_multi_label

    root = tmp_path_factory.mktemp("brought")
    synthesize_multi_label(root / "data", n_images=24, size=SIZE, seed=3, findings=PHANTOM_FINDINGS, probability_samples=4)
    with open(root / "data" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(0)
    with open(root / "data" / "findings.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Sex", *COLUMNS])
        for row in rows:
            writer.writerow([row["path"], "F", *(_cell(rng, row[name]) for name in PHANTOM_FINDINGS)])
    inputs = to_model_input(np.stack([load_model_image(root / "data" / row["path"], (SIZE, SIZE)) for row in rows]), 1, "unit")
    model = _model(bias=-np.median(_model().predict_on_batch(inputs), axis=0))
    model.save(root / "model.keras")
    logits = {(root / "data" / row["path"]).resolve().as_posix(): z for row, z in zip(rows, model.predict_on_batch(inputs), strict=True)}
    return {"root": root, "data": root / "data", "csv": root / "data" / "findings.csv", "model": root / "model.keras",
            "logits": logits, "store": root / "heatmaps.h5", "templates": root / "templates.h5"}


def _expected_findings(csv_path: Path, uncertain: int) -> dict[str, list[int]]:
    """Each image's findings by its path as the CSV says: blank -1 (unknown), -1 read as ``uncertain``."""
    with open(csv_path, newline="") as handle:
        return {(csv_path.parent / row["Path"]).resolve().as_posix():
                [-1 if not row[name] else uncertain if row[name] == "-1" else int(row[name]) for name in COLUMNS]
                for row in csv.DictReader(handle)}


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    return float(mannwhitneyu(scores[positive], scores[~positive]).statistic / (positive.sum() * (~positive).sum()))


def test_brought_multi_label_model_through_heatmaps_templates_evaluate_and_compare(
        brought: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    heatmaps = ["heatmaps", brought["model"], brought["csv"], "--labels", LABELS, "--uncertain", "zero", "--head", "sigmoids",
                "--out", brought["store"], "--json"]
    code, out, err = run_hmt(heatmaps, capsys, monkeypatch)
    assert code == 0, err
    reader = open_heatmaps(brought["store"])
    settings = reader.settings
    assert (reader.class_names, settings.head, settings.labels, settings.uncertain) == (COLUMNS, "sigmoids", tuple(COLUMNS), "zero")
    expected = _expected_findings(brought["csv"], uncertain=0)
    np.testing.assert_array_equal(reader.labels, [expected[Path(path).resolve().as_posix()] for path in reader.paths])
    assert json.loads(out)["unlabelled"] == int((reader.labels < 0).any(axis=1).sum()) > 0  # blank cells stay unknown
    logits = np.stack([brought["logits"][Path(path).resolve().as_posix()] for path in reader.paths])
    np.testing.assert_allclose(reader.probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)  # sigmoid(logit)
    np.testing.assert_array_equal(reader.predicted, reader.probabilities >= 0.5)

    # build-templates: MODEL DATA with the same options resumes the store (nothing recomputed), one template per finding
    code, out, err = run_hmt(["build-templates", brought["model"], brought["csv"], "--heatmaps", brought["store"],
                              "--labels", LABELS, "--uncertain", "zero", "--head", "sigmoids", "--all-classes",
                              "--out", brought["templates"], "--registration", "none", "--bootstrap", "2",
                              "--components", "1", "--json"], capsys, monkeypatch)
    assert code == 0, err
    built = read_templates(brought["templates"])
    for k, name in enumerate(COLUMNS):
        members = np.flatnonzero((reader.labels[:, k] == 1) & reader.predicted[:, k].astype(bool))
        if len(members):
            assert [m.path for m in built.templates[name].members] == [reader.paths[i] for i in members]
    assert built.templates and built.settings.labels == tuple(COLUMNS)

    # evaluate: every image (no split column), per-finding AUC with unknown findings left out
    code, out, err = run_hmt(["evaluate", brought["model"], brought["csv"], "--labels", LABELS, "--uncertain", "zero",
                              "--head", "sigmoids", "--json"], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert report["split"] == "all" and "no split column" in report["notes"][0]
    for k, name in enumerate(COLUMNS):
        known = reader.labels[:, k] >= 0
        assert report["per_finding"][name]["n"] == int(known.sum())
        assert report["per_finding"][name]["auc"] == pytest.approx(
            _auc(reader.probabilities[known, k], reader.labels[known, k] == 1), abs=1e-6)

    # compare and evaluate-templates read the CSV as the store recorded (no --labels, --uncertain or --head again)
    code, out, err = run_hmt(["compare", brought["csv"], "--templates", brought["templates"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    results = json.loads(out)["results"]
    assert len(results) == len(reader)
    for result in results:
        assert list(result["label"].values()) == expected[Path(result["path"]).resolve().as_posix()]
        assert set(result["similarities"]) == set(built.templates)
    code, out, err = run_hmt(["evaluate-templates", brought["templates"], brought["csv"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["n_images"] == len(reader)


def test_a_resume_keeps_the_label_policy_and_labels_need_a_multi_label_head(
        brought: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "heatmaps.h5"
    base = ["heatmaps", brought["model"], brought["csv"], "--labels", LABELS, "--head", "sigmoids", "--out", store]
    code, _, err = run_hmt(base, capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_hmt([*base, "--uncertain", "one"], capsys, monkeypatch)
    assert_user_error(code, err, "uncertain")
    code, _, err = run_hmt(["build-templates", "--heatmaps", store, "--all-classes", "--labels", LABELS, "--out",
                            tmp_path / "t.h5"], capsys, monkeypatch)
    assert_user_error(code, err, "--labels: say how MODEL and DATA are read")
    code, _, err = run_hmt(["heatmaps", brought["model"], brought["csv"], "--classes", LABELS, "--head", "sigmoids", "--out", store],
                           capsys, monkeypatch)  # the same columns, but not recorded as --labels
    assert_user_error(code, err, "labels")
    code, _, err = run_hmt(["heatmaps", brought["model"], brought["csv"], "--labels", LABELS, "--out", tmp_path / "h.h5"],
                           capsys, monkeypatch)
    assert_user_error(code, err, "--head sigmoids")  # a linear output is exclusive classes unless named otherwise
    code, _, err = run_hmt(["heatmaps", brought["model"], brought["csv"], "--classes", LABELS, "--labels", "Bacteria,Virus",
                            "--head", "sigmoids", "--out", tmp_path / "h2.h5"], capsys, monkeypatch)
    assert_user_error(code, err, "--labels names 2 finding columns")


def test_evaluate_takes_the_csv_split_column_for_a_model_without_a_recorded_split(
        brought: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(brought["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    split_csv = brought["data"] / "split.csv"
    with open(split_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "split"])
        writer.writeheader()
        writer.writerows({**row, "split": "test" if index % 3 == 0 else "train"} for index, row in enumerate(rows))
    code, out, err = run_hmt(["evaluate", brought["model"], split_csv, "--labels", LABELS, "--head", "sigmoids", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert report["split"] == "test" and report["n"] == len(range(0, len(rows), 3))

    # a split column without rows of the split asked for: every image, with a note naming that split
    with open(split_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "split"])
        writer.writeheader()
        writer.writerows({**row, "split": "val" if index % 3 == 0 else "train"} for index, row in enumerate(rows))
    for split in ("test", "train"):
        code, out, err = run_hmt(["evaluate", brought["model"], split_csv, "--labels", LABELS, "--head", "sigmoids",
                                  "--split", split, "--json"], capsys, monkeypatch)
        assert code == 0, err
        report = json.loads(out)
        if split == "test":
            assert (report["split"], report["requested_split"], report["n"]) == ("all", "test", len(rows))
            assert "split column has no test rows" in report["notes"][0] and "instead of the test split" in report["notes"][0]
        else:
            assert (report["split"], report["n"]) == ("train", len(rows) - len(range(0, len(rows), 3)))


@pytest.fixture(scope="module")
def torch_input(brought: dict) -> dict:
    """A store of the brought model fed `torch` inputs from `minmax`-scaled pixels (neither the default) and templates
    of every finding built from it."""
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.templates.build import BuildConfig, build_templates

    store, templates = brought["root"] / "torch_heatmaps.h5", brought["root"] / "torch_templates.h5"
    extract_heatmaps(brought["model"], brought["csv"], store, labels=COLUMNS, uncertain="zero", head="sigmoids",
                     preprocessing="torch", intensity="minmax", batch_size=8)
    build_templates(store, None, templates, config=BuildConfig(include="all", registration="none", bootstrap_replicates=2,
                                                               n_components=1, batch_size=8))
    return {"store": store, "templates": templates}


def test_sanity_feeds_a_brought_model_the_input_its_maps_were_made_with(torch_input: dict, monkeypatch) -> None:
    """With no weight re-initialised, every step's maps are the trained model's: its sample template must be the one of
    the stored maps, which a model fed `unit` inputs instead of the recorded `torch` ones does not make."""
    import heatmap_templates.analysis.sanity as sanity

    loaded = []
    load = sanity._load_built_model

    def spy(*args, **kwargs):
        loaded.append(load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(sanity, "_load_built_model", spy)
    monkeypatch.setattr(sanity, "reinitialise", lambda layers, seed: None)
    result = sanity.run_sanity(torch_input["templates"], torch_input["store"], sample=4, keep_templates=True)
    info = loaded[0][1]
    assert (info.preprocessing, info.intensity, info.head, info.class_names) == ("torch", "minmax", "sigmoids", COLUMNS)
    assert result.templates and set(result.templates) == set(read_templates(torch_input["templates"]).templates)
    for trained, *steps in result.templates.values():
        for step in steps:
            np.testing.assert_allclose(step, trained, rtol=1e-4, atol=1e-5)


def test_build_templates_resumes_a_store_made_with_an_intensity(torch_input: dict, brought: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture, monkeypatch) -> None:
    base = ["build-templates", brought["model"], brought["csv"], "--heatmaps", torch_input["store"], "--labels", LABELS,
            "--uncertain", "zero", "--head", "sigmoids", "--preprocessing", "torch", "--all-classes", "--registration", "none",
            "--bootstrap", "2", "--components", "1", "--out", tmp_path / "t.h5"]
    code, _, err = run_hmt(base, capsys, monkeypatch)  # the default intensity (bits) is not the store's
    assert_user_error(code, err, "intensity")
    code, out, err = run_hmt([*base, "--intensity", "minmax"], capsys, monkeypatch)
    assert code == 0, err
    assert "(0 computed, 24 reused, 0 skipped)" in out


def test_compare_reads_a_csv_with_a_path_column_as_a_manifest_and_skips_any_other(
        torch_input: dict, brought: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    """A stray CSV among the inputs (a shell glob's scores.csv) is a bad input skipped at the end, not a manifest that
    stops the run; a CSV with a path column (here `Path`) is read as one."""
    scores = tmp_path / "scores.csv"
    scores.write_text("image,similarity\na.png,0.5\n")
    image = next(brought["data"].rglob("*.png"))
    code, out, err = run_hmt(["compare", image, scores, "--templates", torch_input["templates"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    run = json.loads(out)
    assert [Path(result["path"]).resolve() for result in run["results"]] == [image.resolve()]
    assert [Path(problem["path"]).resolve() for problem in run["skipped"]] == [scores.resolve()]
    code, out, err = run_hmt(["compare", brought["csv"], scores, "--templates", torch_input["templates"], "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    run = json.loads(out)
    expected = _expected_findings(brought["csv"], uncertain=0)
    assert len(run["results"]) == len(expected) and len(run["skipped"]) == 1
    for result in run["results"]:
        assert list(result["label"].values()) == expected[Path(result["path"]).resolve().as_posix()]
    code, _, err = run_hmt(["compare", image, scores, "--labels", LABELS, "--templates", torch_input["templates"]],
                           capsys, monkeypatch)
    assert_user_error(code, err, "none is among the inputs")


def test_label_settings_are_identity_settings_and_older_files_read_as_their_defaults() -> None:
    from heatmap_templates.errors import BadFileError
    from heatmap_templates.store.settings import HeatmapSettings

    older = HeatmapSettings.from_dict({"model_sha256": "ab" * 32, "class_names": COLUMNS, "layer": "features",
                                       "cam_method": "gradcam", "score": "logit", "input_size": [SIZE, SIZE]})
    assert (older.head, older.labels, older.uncertain) == (None, None, None)  # schema 1: no head; no labels before them
    now = HeatmapSettings.of(older.to_dict() | {"head": "sigmoids"})
    older.check_same("old.h5", now, resume=True)  # a file without a head made its maps with the head read from the model
    with pytest.raises(BadFileError, match=r"made with head=\"linear\""):
        HeatmapSettings.of(now.to_dict() | {"head": "linear"}).check_same("x.h5", now)
    for key, value in (("labels", COLUMNS), ("uncertain", "zero")):
        with pytest.raises(BadFileError, match=f"made with {key}=null"):
            now.check_same("x.h5", HeatmapSettings.of(now.to_dict() | {key: value}))
    assert HeatmapSettings.of(now.to_dict() | {"labels": COLUMNS}).labels == tuple(COLUMNS)


# --------------------------------------------------------------------------- the head override, hand-computed


def _hand_model(units: int) -> keras.Model:
    """A 1x1 conv 'features' (ReLU) -> GAP -> linear dense: z = mean(A) @ W + b, Grad-CAM's weights W / (h w)."""
    inputs = keras.Input((4, 4, 1))
    features = keras.layers.Conv2D(2, 1, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, keras.layers.Dense(units, name="logits")(pooled))
    model.set_weights([np.array([[[[1.0, -0.5]]]], np.float32), np.array([0.0, 0.6], np.float32),
                       np.array([[0.8, -1.2, 0.3], [-0.4, 0.9, 0.7]], np.float32)[:, :units],
                       np.array([0.1, -0.2, 0.05], np.float32)[:units]])
    return model


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4 images and their feature maps A (N, 4, 4, 2), by hand: A = relu(x * (1, -0.5) + (0, 0.6))."""
    x = np.linspace(0.0, 1.0, 32, dtype=np.float32).reshape(2, 4, 4, 1)
    x[1] = x[1, ::-1]
    return x, np.maximum(0.0, x * np.array([1.0, -0.5]) + np.array([0.0, 0.6]))


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_a_linear_output_read_as_independent_sigmoids_explains_its_logits(score: str) -> None:
    model = _hand_model(3)
    x, activations = _hand_case()
    weights, bias = model.get_weights()[2:]
    z = activations.mean(axis=(1, 2)) @ weights + bias  # (2, 3) logits, by hand
    p = 1.0 / (1.0 + np.exp(-z))
    logit_maps = np.einsum("nhwc,ck->nkhw", activations, weights / 16.0)  # Grad-CAM of z_k: weights W_ck / (h w)
    expected = np.maximum(0.0, logit_maps * (p * (1 - p))[:, :, None, None] if score == "probability" else logit_maps)
    engine = CamEngine(model, layer="features", score=score, head="sigmoids")
    result = engine.all_classes(x)
    np.testing.assert_allclose(result.probabilities, p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.raw, expected, rtol=1e-4, atol=1e-6)
    assert CamEngine(model, layer="features").head == "linear"  # read, not named: exclusive classes (softmax)


def test_a_one_unit_linear_output_read_as_one_sigmoid_and_the_override_rules() -> None:
    model = _hand_model(1)
    x, activations = _hand_case()
    weights, bias = model.get_weights()[2:]
    z = (activations.mean(axis=(1, 2)) @ weights + bias)[:, 0]
    p = 1.0 / (1.0 + np.exp(-z))
    signed = np.einsum("nhwc,c->nhw", activations, weights[:, 0] / 16.0)
    result = CamEngine(model, layer="features", head="sigmoid").all_classes(x)
    np.testing.assert_allclose(result.probabilities, np.stack([1 - p, p], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.raw[:, 1], np.maximum(0.0, signed), rtol=1e-4, atol=1e-6)  # class 1: z
    np.testing.assert_allclose(result.raw[:, 0], np.maximum(0.0, -signed), rtol=1e-4, atol=1e-6)  # class 0: -z
    assert head_kind("linear", 3, "softmax") == "linear" and head_kind("sigmoid", 3, "sigmoids") == "sigmoids"
    with pytest.raises(HmtError, match="only a linear output"):
        head_kind("softmax", 3, "sigmoids")
    with pytest.raises(HmtError, match="reads one output unit"):
        head_kind("linear", 3, "sigmoid")
    with pytest.raises(HmtError, match="read as the head kind"):
        head_kind("linear", 1)


def test_a_named_head_must_match_a_recorded_one(brought: dict, tmp_path: Path) -> None:
    from heatmap_templates.model.model_file import ModelInfo, save_model

    model = _model(activation="sigmoid")
    info = ModelInfo(class_names=COLUMNS, backbone="user", input_size=(SIZE, SIZE), channels=1, preprocessing="unit",
                     cam_layer="features")
    path = save_model(model, info, tmp_path / "recorded.keras")
    assert load_model(path, head="sigmoids")[1].head == "sigmoids"
    with pytest.raises(HmtError, match="does not match the model's recorded head"):
        load_model(path, head="softmax")
    _, info = load_model(brought["model"], labels=COLUMNS, head="sigmoids")
    assert info.class_names == COLUMNS and info.head == "sigmoids"

"""The synthetic chest phantom: determinism, prefix property, ground-truth consistency, output layout, CLI."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.errors import HmtError
from heatmap_templates.synth import (
    CLASSES,
    SHORTCUTS,
    canonical_lesion_probability,
    canonical_lung_mask,
    carries_shortcut,
    phantom_seed,
    pose_matrix,
    read_poses,
    read_shortcuts,
    render_phantom,
    shortcut_mask,
    synthesize_dataset,
    synthesize_multi_label,
)
from hmt_cli.main import run

SIZE = 64
LESION_CLASSES = ("bacteria", "covid", "virus")


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "set"
    synthesize_dataset(out, n_per_class=3, size=SIZE, seed=7, probability_samples=12, workers=1)
    return out


def test_layout_and_formats(phantom_set: Path) -> None:
    truth = phantom_set / "ground_truth"
    for label in CLASSES:
        for index in range(3):
            image = _read_gray(phantom_set / label / f"{label}_{index:04d}.png")
            mask = _read_gray(truth / "masks" / label / f"{label}_{index:04d}.png")
            assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
        probability = np.load(truth / f"lesion_probability_{label}.npy")
        assert probability.dtype == np.float32 and probability.shape == (SIZE, SIZE)
    lungs = _read_gray(truth / "canonical_lungs.png")
    assert np.array_equal(lungs > 127, canonical_lung_mask(SIZE))
    assert (truth / "README.md").read_text().startswith("# Phantom ground truth")
    with open(phantom_set / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and len({row["patient_id"] for row in rows}) == 12
    dataset = load_dataset(phantom_set)  # the ground_truth folder is not a class
    assert dataset.counts() == {label: 3 for label in CLASSES}


def test_same_seed_gives_identical_bytes_for_any_workers_and_other_seed_differs(tmp_path: Path) -> None:
    for name, seed, workers in (("a", 1, 1), ("b", 1, 2), ("c", 2, 1)):
        synthesize_dataset(tmp_path / name, n_per_class=2, size=SIZE, seed=seed, probability_samples=4, workers=workers)
    first, again, other = (_files(tmp_path / name) for name in "abc")
    assert first == again
    assert first.keys() == other.keys()
    for label in CLASSES:
        key = f"{label}/{label}_0000.png"
        assert first[key] != other[key]


def test_smaller_set_is_a_prefix_and_classes_are_independent(tmp_path: Path) -> None:
    synthesize_dataset(tmp_path / "small", n_per_class=2, size=SIZE, seed=3, classes=("virus", "covid"), probability_samples=2, workers=1)
    synthesize_dataset(tmp_path / "large", n_per_class=4, size=SIZE, seed=3, probability_samples=2, workers=1)
    small, large = _files(tmp_path / "small"), _files(tmp_path / "large")
    images = [key for key in small if key.endswith(".png") and "canonical" not in key]
    assert len(images) == 16  # 2 classes x 2 images + their lesion, body and lung masks
    for key in images:
        assert small[key] == large[key], key
    small_poses = read_poses(tmp_path / "small")
    large_poses = read_poses(tmp_path / "large")
    for path, pose in small_poses.items():
        assert np.allclose(pose.matrix, large_poses[path].matrix)


@pytest.mark.parametrize("label", CLASSES)
def test_lesion_pixels_are_where_the_mask_says(label: str) -> None:
    for index in range(4):
        seed = phantom_seed(11, label, index)
        with_lesions = render_phantom(seed, label, 96)
        without = render_phantom(seed, label, 96, include_lesions=False)
        mask = with_lesions.lesion_mask
        assert np.array_equal(without.lesion_mask, mask)
        if label == "normal":
            assert not mask.any() and not with_lesions.canonical_lesion_mask.any()
            assert np.array_equal(with_lesions.image, without.image)
            continue
        assert mask.sum() > 20
        gain_inside = float((with_lesions.image[mask] - without.image[mask]).mean())
        change_outside = float(np.abs(with_lesions.image[~mask] - without.image[~mask]).mean())
        assert gain_inside > 0.05
        assert change_outside < 0.01


@pytest.mark.parametrize("label", LESION_CLASSES)
def test_mask_maps_back_into_the_canonical_lungs(label: str) -> None:
    lungs = cv2.dilate(canonical_lung_mask(96).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    for index in range(4):
        phantom = render_phantom(phantom_seed(5, label, index), label, 96)
        back = cv2.warpAffine(phantom.lesion_mask.astype(np.float32), cv2.invertAffineTransform(phantom.pose.matrix), (96, 96)) >= 0.5
        assert back.sum() > 0
        assert (back & lungs).sum() >= 0.97 * back.sum()
        canonical = phantom.canonical_lesion_mask
        iou = (back & canonical).sum() / (back | canonical).sum()
        assert iou > 0.75
        assert not (canonical & ~canonical_lung_mask(96)).any()
        own_lungs = cv2.dilate(phantom.lung_mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert not (phantom.lesion_mask & ~own_lungs).any()


def _canonical_masks(label: str, count: int, size: int = 96) -> list[np.ndarray]:
    return [render_phantom(phantom_seed(21, label, index), label, size).canonical_lesion_mask for index in range(count)]


def _lung_geometry(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: how far down the lungs (0 apex .. 1 base) and how lateral (0 medial .. 1 chest wall)."""
    lungs = canonical_lung_mask(size)
    rows = np.flatnonzero(lungs.any(axis=1))
    ys, xs = np.mgrid[0:size, 0:size]
    height = (ys - rows[0]) / (rows[-1] - rows[0])
    lateral = np.zeros((size, size))
    half = size // 2
    for row in rows:
        for side, columns in ((-1, np.flatnonzero(lungs[row, :half])), (1, half + np.flatnonzero(lungs[row, half:]))):
            if columns.size:
                outer, inner = (columns[0], columns[-1]) if side < 0 else (columns[-1], columns[0])
                span = max(abs(outer - inner), 1)
                lateral[row, columns] = np.abs(columns - inner) / span
    return height, lateral


def test_lesion_locations_follow_each_class_pattern() -> None:
    size = 96
    height, lateral = _lung_geometry(size)
    half = size // 2
    for mask in _canonical_masks("covid", 6):
        assert mask[:, :half].any() and mask[:, half:].any()  # bilateral
        assert height[mask].mean() > 0.55  # lower zones
        assert lateral[mask].mean() > 0.6  # peripheral
    for mask in _canonical_masks("virus", 6):
        assert mask[:, :half].any() and mask[:, half:].any()
        assert lateral[mask].mean() < 0.5  # perihilar
        assert 0.25 < height[mask].mean() < 0.7
    for mask in _canonical_masks("bacteria", 8):
        assert mask.sum() > 0
        assert mask[:, :half].any() != mask[:, half:].any()  # one lung only


def test_poses_csv_matches_the_applied_warp(phantom_set: Path) -> None:
    poses = read_poses(phantom_set)
    assert len(poses) == 12
    for path, pose in poses.items():
        label, name = path.split("/")
        index = int(name.removesuffix(".png").split("_")[1])
        assert np.allclose(pose.matrix, pose_matrix(pose.dx, pose.dy, pose.angle_deg, pose.scale, SIZE), atol=1e-6)
        assert abs(pose.angle_deg) <= 8 and 0.9 <= pose.scale <= 1.1 and max(abs(pose.dx), abs(pose.dy)) <= 0.03 * SIZE
        phantom = render_phantom(phantom_seed(7, label, index), label, SIZE)
        warped = cv2.warpAffine(phantom.canonical_lesion_mask.astype(np.float32), pose.matrix, (SIZE, SIZE)) >= 0.5
        written = _read_gray(phantom_set / "ground_truth" / "masks" / path) > 127
        assert np.array_equal(warped, written)
        written_image = _read_gray(phantom_set / path)
        assert np.array_equal(written_image, np.round(phantom.image * 255).astype(np.uint8))


def test_lesion_probability_maps() -> None:
    lungs = canonical_lung_mask(64)
    assert not canonical_lesion_probability("normal", 64, 5, 0).any()
    for label in LESION_CLASSES:
        probability = canonical_lesion_probability(label, 64, 16, 0)
        assert probability.dtype == np.float32 and probability.min() >= 0 and probability.max() <= 1
        assert probability.max() > 0.2
        assert not probability[~lungs].any()
    assert np.array_equal(canonical_lesion_probability("virus", 64, 8, 1), canonical_lesion_probability("virus", 64, 8, 1))


def test_classical_lung_segmentation_finds_the_lungs() -> None:
    """Threshold + morphology + two largest components must recover the posed lung fields (registration relies on it)."""
    size = 128
    for index in range(6):
        phantom = render_phantom(phantom_seed(2, "normal", index), "normal", size)
        image = np.round(phantom.image * 255).astype(np.uint8)
        blurred = cv2.GaussianBlur(image, (0, 0), 1.5)
        threshold = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
        dark = cv2.morphologyEx((blurred <= threshold).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(dark)
        touches_border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        areas = {component: stats[component, cv2.CC_STAT_AREA] for component in range(1, count) if component not in touches_border}
        largest = sorted(areas, key=areas.get, reverse=True)[:2]
        found = cv2.morphologyEx(np.isin(labels, largest).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8)) > 0
        iou = (found & phantom.lung_mask).sum() / (found | phantom.lung_mask).sum()
        assert len(largest) == 2 and iou > 0.7, iou


@pytest.mark.parametrize(
    "kwargs",
    [{"n_per_class": 0}, {"size": 16}, {"seed": -1}, {"classes": ("covid", "flu")}, {"classes": ()}, {"classes": ("covid", "covid")},
     {"probability_samples": 0}],
)
def test_bad_arguments_raise_user_errors(tmp_path: Path, kwargs: dict) -> None:
    arguments = {"n_per_class": 1, "size": SIZE, "seed": 0, "probability_samples": 1, **kwargs}
    with pytest.raises(HmtError):
        synthesize_dataset(tmp_path / "out", workers=1, **arguments)


def test_refuses_a_foreign_folder_and_replaces_a_previous_output(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(HmtError, match="not a previous `hmt synth` output"):
        synthesize_dataset(foreign, n_per_class=1, size=SIZE, probability_samples=1, workers=1)
    assert (foreign / "notes.txt").read_text() == "mine"

    out = tmp_path / "out"
    synthesize_dataset(out, n_per_class=3, size=SIZE, probability_samples=1, workers=1)
    (out / "covid" / "keep_me.txt").write_text("user file")  # the new set replaces the whole folder: refused, kept
    with pytest.raises(HmtError, match=r"holds files that `hmt synth` did not write \(covid/keep_me.txt\)"):
        synthesize_dataset(out, n_per_class=1, size=SIZE, classes=("covid",), probability_samples=1, workers=1)
    assert len(list((out / "covid").iterdir())) == 4 and (out / "virus").is_dir()
    (out / "covid" / "keep_me.txt").unlink()
    synthesize_dataset(out, n_per_class=1, size=SIZE, classes=("covid",), probability_samples=1, workers=1)
    assert sorted(path.name for path in (out / "covid").iterdir()) == ["covid_0000.png"]
    assert not (out / "virus").exists()
    assert sorted(path.name for path in (out / "ground_truth").glob("*.npy")) == ["lesion_probability_covid.npy"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["foreign", "out"], "no temporary or old folder left"


def _hmt_in_process(arguments: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run the `hmt` entry point in this process (fast); returns exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["hmt", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        run()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_cli_writes_the_set_preview_and_json(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out, grid = tmp_path / "set", tmp_path / "grid.png"
    code, stdout, stderr = _hmt_in_process(["synth", str(out), "--n-per-class", "2", "--size", "64", "--seed", "4", "--workers", "1",
                                            "--classes", "covid,normal", "--preview", str(grid), "--json"], capsys, monkeypatch)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["counts"] == {"covid": 2, "normal": 2} and summary["preview"] == str(grid)
    assert (out / "covid" / "covid_0001.png").is_file() and (out / "ground_truth" / "poses.csv").is_file()
    preview = cv2.imread(str(grid))
    assert preview is not None and preview.shape[0] > 200


@pytest.mark.parametrize(
    "arguments",
    [["--n-per-class", "0"], ["--classes", "covid,flu"], ["--size", "8"], ["--n-per-class", "two"], ["--workers", "0"]],
)
def test_cli_bad_arguments_exit_2(tmp_path: Path, arguments: list[str], capsys: pytest.CaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, stderr = _hmt_in_process(["synth", str(tmp_path / "out"), *arguments], capsys, monkeypatch)
    assert code == 2
    assert "Traceback" not in stderr
    assert not (tmp_path / "out" / "ground_truth").exists()


def test_cli_refuses_a_non_empty_folder_with_one_line(tmp_path: Path) -> None:
    """As a real process: exit code 2 and one line on stderr, the folder untouched."""
    (tmp_path / "photo.jpg").write_bytes(b"x")
    result = subprocess.run([sys.executable, "-c", "from hmt_cli.main import run; run()", "synth", str(tmp_path), "--size", "64"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a previous `hmt synth` output" in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["photo.jpg"]


# ----------------------------------------------------------------------------- canonical chest, pose spread


def test_canonical_chest_is_the_mean_image_in_the_canonical_frame(phantom_set: Path) -> None:
    truth = phantom_set / "ground_truth"
    chest = _read_gray(truth / "canonical_chest.png")
    assert chest.dtype == np.uint8 and chest.shape == (SIZE, SIZE)
    warped_back = np.zeros((SIZE, SIZE), np.float64)
    poses = read_poses(phantom_set)
    for path, pose in poses.items():
        image = _read_gray(phantom_set / path).astype(np.float32)
        warped_back += cv2.warpAffine(image, pose.matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                      borderValue=10.0)
    warped_back /= len(poses)
    inside = canonical_lung_mask(SIZE) | (chest > 40)  # the body, where no image border reaches after the inverse warp
    assert np.corrcoef(chest[inside].astype(np.float64), warped_back[inside])[0, 1] > 0.95
    assert np.corrcoef(chest.ravel().astype(np.float64), warped_back.ravel())[0, 1] > 0.95
    assert "canonical_chest.png" in (truth / "README.md").read_text()


def test_pose_spread_scales_the_poses_and_is_recorded(tmp_path: Path) -> None:
    default, wide = tmp_path / "default", tmp_path / "wide"
    for out, spread in ((default, 1.0), (wide, 2.0)):
        synthesize_dataset(out, n_per_class=4, size=SIZE, seed=5, classes=("covid", "normal"), probability_samples=1, workers=1,
                           pose_spread=spread)
        assert json.loads((out / "ground_truth" / "synth.json").read_text())["pose_spread"] == spread
    narrow_poses, wide_poses = read_poses(default), read_poses(wide)
    assert narrow_poses.keys() == wide_poses.keys()
    for path, narrow in narrow_poses.items():
        broad = wide_poses[path]
        assert np.allclose([broad.dx, broad.dy, broad.angle_deg], [2 * narrow.dx, 2 * narrow.dy, 2 * narrow.angle_deg])
        assert np.isclose(np.log(broad.scale), 2 * np.log(narrow.scale))
        assert np.allclose(broad.matrix, pose_matrix(broad.dx, broad.dy, broad.angle_deg, broad.scale, SIZE))
    spread_of = {name: np.std([[p.dx, p.dy, p.angle_deg] for p in poses.values()], axis=0)
                 for name, poses in (("narrow", narrow_poses), ("wide", wide_poses))}
    assert np.allclose(spread_of["wide"], 2 * spread_of["narrow"])
    # The default is the explicit spread 1: same bytes, and the images differ once the poses do.
    assert (default / "covid" / "covid_0000.png").read_bytes() != (wide / "covid" / "covid_0000.png").read_bytes()
    rendered = render_phantom(phantom_seed(5, "covid", 0), "covid", SIZE)
    assert np.array_equal(_read_gray(default / "covid" / "covid_0000.png"), np.round(rendered.image * 255).astype(np.uint8))


def test_pose_spread_zero_leaves_every_chest_in_the_canonical_frame_and_bad_spreads_are_refused(tmp_path: Path) -> None:
    phantom = render_phantom(phantom_seed(1, "virus", 0), "virus", SIZE, pose_spread=0.0)
    assert phantom.pose.dx == 0 and phantom.pose.dy == 0 and phantom.pose.angle_deg == 0 and phantom.pose.scale == 1
    assert np.array_equal(phantom.lesion_mask, phantom.canonical_lesion_mask)
    for spread in (-0.5, 4.5, float("nan")):
        with pytest.raises(HmtError, match="pose spread"):
            synthesize_dataset(tmp_path / "out", n_per_class=1, size=SIZE, probability_samples=1, workers=1, pose_spread=spread)


def test_cli_pose_spread(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "set"
    code, _, stderr = _hmt_in_process(["synth", str(out), "-n", "1", "--size", "64", "--classes", "covid", "--workers", "1",
                                       "--pose-spread", "2.5"], capsys, monkeypatch)
    assert code == 0, stderr
    assert json.loads((out / "ground_truth" / "synth.json").read_text())["pose_spread"] == 2.5
    code, _, stderr = _hmt_in_process(["synth", str(tmp_path / "bad"), "--pose-spread", "-1"], capsys, monkeypatch)
    assert code == 2 and "pose spread" in stderr and "Traceback" not in stderr


# ----------------------------------------------------------------------------- templates against the ground truth


def _templates_file(path: Path, maps: dict[str, np.ndarray]) -> Path:
    """A templates file whose class templates are built from copies of the given maps."""
    from heatmap_templates.templates.accumulator import ClassAccumulator, Member
    from heatmap_templates.templates.templates_file import save_templates

    shape = next(iter(maps.values())).shape
    settings = {"model_sha256": "cd" * 32, "class_names": list(CLASSES), "layer": "block4_relu", "cam_method": "gradcam",
                "score": "logit", "input_size": list(shape), "registration": "affine", "normalisation": "minmax"}
    templates = []
    for name, values in maps.items():
        accumulator = ClassAccumulator(name, shape, pca_size=8, n_components=2, bootstrap_replicates=4)
        accumulator.add(np.stack([values, values]), [Member(f"{name}/{name}_{i:04d}.png", "", 0.9, 1.0, "affine") for i in range(2)])
        templates.append(accumulator.finalize())
    return save_templates(path, settings, templates)


def test_ground_truth_localisation_scores_perfect_and_inverted_templates(phantom_set: Path, tmp_path: Path) -> None:
    from heatmap_templates.synth import ground_truth_localisation

    truth = phantom_set / "ground_truth"
    covid = np.load(truth / "lesion_probability_covid.npy")
    virus = np.load(truth / "lesion_probability_virus.npy")
    noise = np.random.default_rng(0).uniform(0, 1, covid.shape)
    path = _templates_file(tmp_path / "templates.h5", {"covid": covid, "virus": -virus, "normal": noise})
    scores = ground_truth_localisation(path, phantom_set)
    assert set(scores) == set(CLASSES)
    assert scores["covid"]["members"] == 2 and scores["covid"]["auc_frame"] == 1.0 and scores["covid"]["auc_lungs"] == 1.0
    assert scores["virus"]["auc_frame"] == 0.0 and scores["virus"]["auc_lungs"] == 0.0
    assert scores["bacteria"] == {"members": 0, "auc_frame": None, "auc_lungs": None}  # no template
    assert scores["normal"]["members"] == 2 and scores["normal"]["auc_frame"] is None  # no lesion pixels
    # A higher threshold keeps fewer positives; the perfect template stays perfect.
    assert ground_truth_localisation(path, phantom_set, threshold_fraction=0.9)["covid"]["auc_frame"] == 1.0

    # Templates at half the resolution: the lesion maps are shrunk to them (INTER_AREA), still near perfect.
    half = (SIZE // 2, SIZE // 2)
    small = _templates_file(tmp_path / "small.h5", {"covid": cv2.resize(covid, half, interpolation=cv2.INTER_AREA)})
    assert ground_truth_localisation(small, phantom_set)["covid"]["auc_frame"] == 1.0


def test_ground_truth_localisation_refuses_other_proportions_and_foreign_folders(phantom_set: Path, tmp_path: Path) -> None:
    from heatmap_templates.synth import ground_truth_localisation

    oblong = _templates_file(tmp_path / "oblong.h5", {"covid": np.ones((SIZE // 2, SIZE // 4)) * np.arange(SIZE // 4)})
    with pytest.raises(HmtError, match="aspect ratio"):
        ground_truth_localisation(oblong, phantom_set)
    with pytest.raises(HmtError, match="not a `hmt synth` output"):
        ground_truth_localisation(oblong, tmp_path)
    with pytest.raises(HmtError, match="threshold_fraction"):
        ground_truth_localisation(oblong, phantom_set, threshold_fraction=0.0)


def test_multi_label_set_plants_each_finding_independently_with_its_mask(tmp_path: Path) -> None:
    findings = ("bacteria", "covid", "virus")
    summary = synthesize_multi_label(tmp_path / "ml", n_images=40, size=64, seed=3, findings=findings, prevalence=0.5)
    dataset = load_dataset(tmp_path / "ml" / "manifest.csv", labels=list(findings))
    assert dataset.multi_label and len(dataset.samples) == 40
    matrix = dataset.finding_matrix()
    assert matrix.shape == (40, 3)
    assert {name: int(column.sum()) for name, column in zip(findings, matrix.T, strict=True)} == summary.counts
    assert (matrix.sum(axis=1) >= 2).any() and (matrix.sum(axis=1) == 0).any()  # co-occurring and empty images
    for sample, row in zip(dataset.samples, matrix, strict=True):
        for name, present in zip(findings, row, strict=True):
            mask_path = tmp_path / "ml" / "ground_truth" / "masks" / name / Path(sample.path).name
            assert mask_path.exists() == bool(present)
            if present:
                assert (_read_gray(mask_path) > 0).any()
    again = synthesize_multi_label(tmp_path / "again", n_images=40, size=64, seed=3, findings=findings, prevalence=0.5)
    assert again.counts == summary.counts
    assert _files(tmp_path / "ml" / "images") == _files(tmp_path / "again" / "images")


def test_multi_label_refuses_normal_and_bad_prevalence(tmp_path: Path) -> None:
    with pytest.raises(HmtError, match="lesion types"):
        synthesize_multi_label(tmp_path / "a", n_images=4, size=64, findings=("covid", "normal"))
    with pytest.raises(HmtError, match="prevalence"):
        synthesize_multi_label(tmp_path / "b", n_images=4, size=64, prevalence=1.5)


@pytest.mark.parametrize("style", SHORTCUTS.names())
def test_planted_shortcut_is_in_the_chosen_share_of_images_where_its_mask_says(tmp_path: Path, style: str) -> None:
    plain = tmp_path / "plain"
    planted = tmp_path / "planted"
    synthesize_dataset(plain, n_per_class=12, size=SIZE, seed=4, classes=("covid", "normal"), workers=1, probability_samples=2)
    summary = synthesize_dataset(planted, n_per_class=12, size=SIZE, seed=4, classes=("covid", "normal"), workers=1,
                                 probability_samples=2, shortcuts={"covid": 0.5}, shortcut_style=style)
    carried = read_shortcuts(planted)
    assert len(carried) == 24 and not any(carried[p] for p in carried if p.startswith("normal/"))
    tagged = [p for p, value in carried.items() if value]
    assert summary.shortcuts == {"covid": len(tagged)} and 2 <= len(tagged) <= 10
    assert tagged == [p for p in carried if p.startswith("covid/") and carries_shortcut(4, "covid", int(p[-8:-4]), 0.5)]
    for path in carried:
        before, after = (_read_gray(root / path).astype(float) for root in (plain, planted))
        mask = shortcut_mask(planted, path)
        if path in tagged:
            assert mask is not None and mask.any()
            assert np.abs(after - before)[mask].mean() > 60  # a bright object where the mask is
            near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            assert np.abs(after - before)[~near].max() <= 2  # elsewhere only the detector blur's tail
        else:
            assert mask is None and np.array_equal(after, before)  # images without it are untouched
    assert read_shortcuts(plain) == {path: False for path in carried}
    with open(planted / "manifest.csv", newline="") as handle:  # the tags in the manifest, so commands can select them
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows if row["shortcut"] == "1"] == tagged and len(rows) == 24
    with open(plain / "manifest.csv", newline="") as handle:
        assert "shortcut" not in (csv.DictReader(handle).fieldnames or [])


def test_each_images_body_and_lungs_are_written_as_rendered(tmp_path: Path) -> None:
    synthesize_dataset(tmp_path, n_per_class=2, size=SIZE, seed=6, classes=("bacteria",), workers=1, probability_samples=2)
    for index in range(2):
        phantom = render_phantom(phantom_seed(6, "bacteria", index), "bacteria", SIZE)
        name = f"bacteria/bacteria_{index:04d}.png"
        body = _read_gray(tmp_path / "ground_truth" / "body" / name) > 0
        lungs = _read_gray(tmp_path / "ground_truth" / "lungs" / name) > 0
        np.testing.assert_array_equal(body, phantom.body_mask)
        np.testing.assert_array_equal(lungs, phantom.lung_mask)
        image = _read_gray(tmp_path / name).astype(float)
        assert image[body].mean() > image[~body].mean() + 60 and (lungs <= body).all()


def test_shortcut_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(HmtError, match="not one of the classes"):
        synthesize_dataset(tmp_path / "a", n_per_class=2, size=SIZE, classes=("covid", "normal"), shortcuts={"virus": 0.5})
    with pytest.raises(HmtError, match=r"in \(0, 1\]"):
        synthesize_dataset(tmp_path / "b", n_per_class=2, size=SIZE, classes=("covid", "normal"), shortcuts={"covid": 0.0})
    with pytest.raises(HmtError, match="parameter 'shortcut_lesions' must be between 0 and 1"):
        synthesize_dataset(tmp_path / "c", n_per_class=2, size=SIZE, classes=("covid",), shortcuts={"covid": 0.5}, shortcut_lesions=1.5)


def test_shortcut_lesions_scale_only_the_tagged_images_lesions(tmp_path: Path) -> None:
    full, faint = tmp_path / "full", tmp_path / "faint"
    common = dict(n_per_class=10, size=SIZE, seed=5, classes=("covid",), workers=1, probability_samples=2, shortcuts={"covid": 0.5})
    synthesize_dataset(full, **common)
    synthesize_dataset(faint, **common, shortcut_lesions=0.0)
    carried = read_shortcuts(faint)
    assert carried == read_shortcuts(full) and any(carried.values()) and not all(carried.values())
    assert json.loads((faint / "ground_truth" / "synth.json").read_text())["shortcut_lesions"] == 0.0
    for path, tagged in carried.items():
        same_image = np.array_equal(_read_gray(full / path), _read_gray(faint / path))
        masks = [_read_gray(root / "ground_truth" / "masks" / path) for root in (full, faint)]
        if tagged:  # the same image without its lesions: no lesion mask, the lesion pixels darker, the marker kept
            assert not same_image and masks[0].any() and not masks[1].any()
            lesion = masks[0] > 0
            assert (_read_gray(full / path).astype(float) - _read_gray(faint / path))[lesion].mean() > 5
            assert np.array_equal(shortcut_mask(full, path), shortcut_mask(faint, path))
        else:
            assert same_image and np.array_equal(*masks)
    one = render_phantom(3, "covid", SIZE, lesion_scale=0.5)
    assert one.lesion_mask.sum() < render_phantom(3, "covid", SIZE).lesion_mask.sum()
    with pytest.raises(HmtError, match="lesion scale"):
        render_phantom(3, "covid", SIZE, lesion_scale=-0.1)

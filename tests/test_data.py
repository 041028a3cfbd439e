"""Input stage: every format decodes to the right pixel values, every bad kind gives its reason, splits group patients."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import bad_inputs
import numpy as np
import pytest

from heatmap_templates.data.datasets import (
    Dataset,
    Sample,
    check_dataset,
    decode_samples,
    load_dataset,
    patient_id_from_name,
    split_dataset,
)
from heatmap_templates.data.decode import decode_image
from heatmap_templates.errors import BadImageError, HmtError, Problem, SkipLog, display_path
from heatmap_templates.files import file_sha256

# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("writer", bad_inputs.VALID_IMAGE_WRITERS, ids=lambda writer: writer.__name__[len("write_"):])
def test_valid_formats_decode_to_expected_pixels(writer, tmp_path: Path) -> None:
    case = writer(tmp_path)
    decoded = decode_image(case.path)
    assert decoded.pixels.dtype == np.float32
    assert decoded.pixels.shape == case.expected.shape
    np.testing.assert_allclose(decoded.pixels, case.expected, atol=case.atol, rtol=0)
    assert decoded.original_size == case.expected.shape
    assert decoded.source_format == case.source_format
    assert decoded.bit_depth == case.bit_depth
    assert decoded.pixel_spacing == case.pixel_spacing


@pytest.mark.parametrize("writer", bad_inputs.BAD_IMAGE_WRITERS, ids=lambda writer: writer.__name__[len("write_"):])
def test_bad_images_raise_bad_image_error_naming_file(writer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = writer(tmp_path)
    if case.needs_non_root and os.geteuid() == 0:
        _deny_reading(monkeypatch, case.path)
    with pytest.raises(BadImageError) as caught:
        decode_image(case.path)
    error = caught.value
    assert case.reason in error.reason
    assert error.path == display_path(case.path)
    message = str(error)
    assert "\n" not in message and message.startswith(error.path)
    message.encode("utf-8")  # printable even for file names that are not valid UTF-8


def _deny_reading(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Root can read a chmod-000 file, so simulate the kernel refusing it."""
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(denied):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)


def test_non_utf8_name_accepts_bytes_path_and_escapes_it(tmp_path: Path) -> None:
    case = bad_inputs.write_non_utf8_name(tmp_path)
    with pytest.raises(BadImageError) as caught:
        decode_image(os.fsencode(case.path))
    assert "bad_name_\\xff\\xfe.png" in str(caught.value)


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    case = bad_inputs.write_png_gray8(tmp_path)
    assert decode_image(case.path, max_pixels=32 * 32).pixels.shape == (32, 32)
    with pytest.raises(BadImageError, match="over the limit of 1000"):
        decode_image(case.path, max_pixels=1000)


def test_dicom_detected_by_preamble_not_suffix(tmp_path: Path) -> None:
    case = bad_inputs.write_dicom_mono2_windowed(tmp_path)
    disguised = tmp_path / "scan.png"
    case.path.rename(disguised)
    decoded = decode_image(disguised)
    assert decoded.source_format == "dicom"
    np.testing.assert_allclose(decoded.pixels, case.expected, atol=case.atol)


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    from PIL import Image

    image = np.zeros((16, 32), np.uint8)
    image[:, :16] = 255  # left half white, 32 wide and 16 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(image).save(path, exif=exif, quality=95)
    decoded = decode_image(path)
    assert decoded.pixels.shape == (32, 16)
    assert decoded.pixels[:8].mean() > 0.9 and decoded.pixels[-8:].mean() < 0.1  # white half now on top


# --------------------------------------------------------------------------- data sets


@pytest.mark.parametrize("writer", bad_inputs.BAD_DATASET_WRITERS, ids=lambda writer: writer.__name__[len("write_"):])
def test_bad_datasets(writer, tmp_path: Path) -> None:
    case = writer(tmp_path)
    classes = ["covid", "normal"] if case.kind == "csv_unknown_label" else None
    if case.fatal:
        with pytest.raises(HmtError) as caught:
            load_dataset(case.path, classes=classes)
        assert case.message in str(caught.value) and "\n" not in str(caught.value)
        return
    dataset = load_dataset(case.path, classes=classes)
    assert dataset.counts() == {"covid": 2, "normal": 2}
    assert len(dataset.problems) == 1 and case.message in dataset.problems[0].reason
    with pytest.raises(HmtError, match=case.message):
        load_dataset(case.path, classes=classes, strict=True)


def test_missing_dataset_path(tmp_path: Path) -> None:
    with pytest.raises(HmtError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_folder_dataset_discovery(tmp_path: Path) -> None:
    root = bad_inputs.write_class_folders(tmp_path / "set", {"virus": 2, "covid": 3})
    (root / "covid" / "nested").mkdir()
    bad_inputs.write_png_gray8(root / "covid" / "nested")
    (root / "covid" / ".hidden.png").write_bytes(b"x")
    (root / "covid" / "notes.txt").write_text("ignored")
    (root / ".git").mkdir()
    (root / "ground_truth" / "masks").mkdir(parents=True)
    bad_inputs.write_dicom_mono1(root / "virus")  # no suffix: found by its DICM preamble
    dataset = load_dataset(root)
    assert dataset.source == "folder" and dataset.root == root.resolve()
    assert dataset.class_names == ["covid", "virus"]
    assert dataset.counts() == {"covid": 4, "virus": 3}
    names = {sample.path.name for sample in dataset.samples}
    assert "gray8.png" in names and "mono1_no_suffix" in names and ".hidden.png" not in names
    assert dataset.problems == []
    ordered = load_dataset(root, classes=["virus", "covid"])
    assert ordered.class_names == ["virus", "covid"]
    with pytest.raises(HmtError, match="no class folder for normal"):
        load_dataset(root, classes=["covid", "normal"])


def test_folder_named_like_image_is_reported(tmp_path: Path) -> None:
    root = bad_inputs.write_class_folders(tmp_path / "set", {"a": 1, "b": 1})
    (root / "a" / "odd.png").mkdir()
    dataset = load_dataset(root)
    assert [problem.reason for problem in dataset.problems] == ["is a directory, not an image file"]
    with pytest.raises(BadImageError, match="odd.png: is a directory"):
        load_dataset(root, strict=True)


def test_csv_manifest_with_split_and_patient_columns(tmp_path: Path) -> None:
    root = bad_inputs.write_class_folders(tmp_path / "set", {"covid": 2, "normal": 2})
    manifest = root / "lists" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "path,label,split,patient_id\n"
        "../covid/covid_000.png,covid,train,p1\n"
        f"{root / 'covid' / 'covid_001.png'},covid,Test,p2\n"
        "../normal/normal_000.png,normal,validation,\n"
        "../normal/normal_001.png,normal,,p4\n"
    )
    dataset = load_dataset(manifest)
    assert dataset.source == "csv" and dataset.root == manifest.parent.resolve()
    assert [(s.path.name, s.split, s.patient_id) for s in dataset.samples] == [
        ("covid_000.png", "train", "p1"),
        ("covid_001.png", "test", "p2"),
        ("normal_000.png", "val", None),
        ("normal_001.png", None, "p4"),
    ]
    assert all(sample.path.is_file() for sample in dataset.samples)


def test_csv_unknown_split_value_is_an_error(tmp_path: Path) -> None:
    root = bad_inputs.write_class_folders(tmp_path / "set", {"covid": 1, "normal": 1})
    manifest = root / "m.csv"
    manifest.write_text("path,label,split\ncovid/covid_000.png,covid,holdout\nnormal/normal_000.png,normal,train\n")
    with pytest.raises(HmtError, match="row 2: unknown split 'holdout'"):
        load_dataset(manifest)


def test_csv_missing_path_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\na.png,x\n")
    with pytest.raises(HmtError, match="no 'path' column"):
        load_dataset(manifest)


def test_csv_without_usable_rows(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nmissing_a.png,a\nmissing_b.png,b\n")
    with pytest.raises(HmtError, match="no usable rows"):
        load_dataset(manifest)


def test_cxr4_manifest_loads(cxr4_dir: Path) -> None:
    dataset = load_dataset(cxr4_dir / "manifest.csv")
    assert dataset.counts() == {"bacteria": 400, "covid": 307, "normal": 418, "virus": 400}
    assert dataset.problems == []


# --------------------------------------------------------------------------- skip log and whole-set pass


def test_skip_log_collects_and_strict_raises() -> None:
    log = SkipLog()
    log.add("a.png", "truncated PNG")
    log.add(b"b\xff.png", "empty file")
    assert len(log) == 2
    assert log.problems == [Problem("a.png", "truncated PNG"), Problem("b\\xff.png", "empty file")]
    assert log.summary_lines() == ["skipped 2 files:", "  a.png: truncated PNG", "  b\\xff.png: empty file"]
    assert log.summary_lines(limit=1)[-1] == "  ... and 1 more"
    assert SkipLog().summary_lines() == []
    with pytest.raises(BadImageError, match="c.png: zero"):
        SkipLog(strict=True).add("c.png", "zero")


def test_check_dataset_skips_bad_files_and_goes_on(tmp_path: Path) -> None:
    root = bad_inputs.write_class_folders(tmp_path / "set", {"covid": 2, "normal": 3})
    written = [bad_inputs.write_truncated_png(root / "covid"), bad_inputs.write_zero_byte(root / "normal")]
    report = check_dataset(load_dataset(root))
    assert report.images_by_class == {"covid": 2, "normal": 3}
    assert report.images_by_format == {"png": 5}
    assert sorted(problem.path for problem in report.problems) == sorted(str(case.path) for case in written)
    with pytest.raises(BadImageError, match="truncated PNG"):
        check_dataset(load_dataset(root), strict=True)


def test_decode_samples_reports_progress(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.events: list[tuple] = []

        def start(self, total, description) -> None:
            self.events.append(("start", total))

        def advance(self, n: int = 1) -> None:
            self.events.append(("advance", n))

        def finish(self) -> None:
            self.events.append(("finish",))

    good = bad_inputs.write_png_gray8(tmp_path)
    bad = bad_inputs.write_zero_byte(tmp_path)
    samples = [Sample(good.path, "a"), Sample(bad.path, "a")]
    recorder, log = Recorder(), SkipLog()
    decoded = list(decode_samples(samples, skip_log=log, progress=recorder, total=2))
    assert [sample.path for sample, _ in decoded] == [good.path]
    assert recorder.events == [("start", 2), ("advance", 1), ("advance", 1), ("finish",)]
    assert len(log) == 1


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --------------------------------------------------------------------------- patient ids and splits


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("kermany_person1010_bacteria_2941.png", "person1010"),
        ("person77_virus_12.jpeg", "person77"),
        ("kermany_IM-0001-0001.png", "IM-0001"),
        ("kermany_IM-0115-0001-0002.png", "IM-0115"),
        ("kermany_NORMAL2-IM-0001-0001.png", "NORMAL2-IM-0001"),
        ("ieee8023_p112_1.CXRCTThoraximagesofCOVID-19fromSingapore.pdf-000-fig1a.png", "ieee8023-p112"),
        ("figure1_COVID-00015a.png", "figure1-COVID-00015"),
        ("figure1_COVID-00015b.png", "figure1-COVID-00015"),
        ("figure1_COVID-00016.png", "figure1-COVID-00016"),
        ("actualmed_ANON119_CR.1.2.840.113564.png", "actualmed-ANON119"),
        ("twitter_1245.png", None),
        ("covid_0001.png", None),
    ],
)
def test_default_patient_rules(name: str, patient: str | None) -> None:
    assert patient_id_from_name(name) == patient


def test_user_patient_regex_overrides(tmp_path: Path) -> None:
    assert patient_id_from_name("case-17_view2.png", r"case-(\d+)_") == "17"
    assert patient_id_from_name("kermany_person5_virus_1.png", r"case-(\d+)_") is None
    with pytest.raises(HmtError, match="exactly one group"):
        load_dataset(tmp_path, patient_regex=r"(a)(b)")


def _synthetic_dataset(seed: int = 0) -> Dataset:
    """Three classes, patients with 1-4 images each, some images without a patient."""
    rng = np.random.default_rng(seed)
    samples = []
    for label, n_patients in (("covid", 30), ("normal", 45), ("virus", 12)):
        for patient in range(n_patients):
            for image in range(int(rng.integers(1, 5))):
                samples.append(Sample(Path(f"/d/{label}/{label}_person{patient}_{image}.png"), label, f"{label}-person{patient}"))
        samples += [Sample(Path(f"/d/{label}/twitter_{label}{i}.png"), label, None) for i in range(5)]
    return Dataset(Path("/d"), samples, ["covid", "normal", "virus"], "folder", [])


def _assert_valid_split(dataset: Dataset, splits: dict[str, list[Sample]], fractions: tuple[float, float, float], tolerance: float) -> None:
    assert sorted(str(s.path) for part in splits.values() for s in part) == sorted(str(s.path) for s in dataset.samples)
    owner: dict[str, str] = {}
    for name, part in splits.items():
        for sample in part:
            if sample.patient_id is not None:
                assert owner.setdefault(sample.patient_id, name) == name, f"patient {sample.patient_id} in two splits"
    totals = dataset.counts()
    for name, share in zip(("train", "val", "test"), fractions, strict=True):
        counts = Counter(sample.label for sample in splits[name])
        for label, total in totals.items():
            assert counts[label] >= 1, f"{label} missing from {name}"
            assert abs(counts[label] / total - share) <= tolerance, (name, label, counts[label], total)


def test_split_groups_patients_stratifies_and_is_deterministic() -> None:
    dataset = _synthetic_dataset()
    splits = split_dataset(dataset, fractions=(0.6, 0.2, 0.2), seed=3)
    _assert_valid_split(dataset, splits, (0.6, 0.2, 0.2), tolerance=0.12)
    assert splits == split_dataset(dataset, fractions=(0.6, 0.2, 0.2), seed=3)
    assert splits != split_dataset(dataset, fractions=(0.6, 0.2, 0.2), seed=4)


def test_split_gives_every_class_every_split_even_when_small() -> None:
    samples = [Sample(Path(f"/d/{label}/{label}{i}.png"), label) for label in ("a", "b") for i in range(3)]
    splits = split_dataset(Dataset(Path("/d"), samples, ["a", "b"], "folder", []), seed=0)
    for part in splits.values():
        assert sorted(sample.label for sample in part) == ["a", "b"]


def test_split_honours_csv_split_column() -> None:
    samples = [Sample(Path(f"/d/{label}{i}.png"), label, f"p{label}{i // 2}", "test" if i < 2 else None) for label in ("a", "b") for i in range(20)]
    dataset = Dataset(Path("/d"), samples, ["a", "b"], "csv", [])
    splits = split_dataset(dataset, seed=0)
    given = {sample.path for sample in samples if sample.split == "test"}
    assert given <= {sample.path for sample in splits["test"]}
    _assert_valid_split(dataset, splits, (0.8, 0.1, 0.1), tolerance=0.15)
    conflicting = samples[:1] + [Sample(samples[1].path, "a", samples[0].patient_id, "train")] + samples[2:]
    with pytest.raises(HmtError, match="more than one split"):
        split_dataset(Dataset(Path("/d"), conflicting, ["a", "b"], "csv", []))


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_split_rejects_bad_fractions(fractions) -> None:
    with pytest.raises(HmtError, match="fraction"):
        split_dataset(_synthetic_dataset(), fractions=fractions)


def test_split_on_real_cxr4_names(cxr4_dir: Path) -> None:
    dataset = load_dataset(cxr4_dir)
    by_patient = Counter(sample.patient_id for sample in dataset.samples if sample.patient_id)
    assert by_patient["figure1-COVID-00039"] == 3  # figure1 a/b/c images are one patient
    assert all(sample.patient_id is None for sample in dataset.samples if sample.path.name.startswith("twitter_"))
    assert sum(sample.patient_id is None for sample in dataset.samples) == sum(s.path.name.startswith("twitter_") for s in dataset.samples)
    splits = split_dataset(dataset, seed=0)
    _assert_valid_split(dataset, splits, (0.8, 0.1, 0.1), tolerance=0.05)


# --------------------------------------------------------------------------- CLI


def _hmt(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI as the console script does (``run()`` maps user errors to exit code 2)."""
    command = [sys.executable, "-c", "from hmt_cli.main import run; run()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_cli_check_reports_counts_and_skipped_files(tmp_path: Path) -> None:
    root = bad_inputs.write_class_folders(tmp_path / "set", {"covid": 2, "normal": 2})
    bad = bad_inputs.write_truncated_jpeg(root / "normal")
    result = _hmt("check", str(root), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images_by_class"] == {"covid": 2, "normal": 2}
    assert report["images_by_format"] == {"png": 4}
    assert report["skipped"] == [{"path": str(bad.path), "reason": "truncated JPEG (no end-of-image marker)"}]

    strict = _hmt("check", str(root), "--strict")
    assert strict.returncode == 2
    assert strict.stderr.strip().splitlines() == [f"hmt: error: {bad.path}: truncated JPEG (no end-of-image marker)"]


def test_cli_check_missing_dataset_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _hmt("check", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"hmt: error: {tmp_path / 'missing'}: data set path does not exist"]


def test_image_size_reads_the_header_as_decoding_turns_it(tmp_path) -> None:
    """A JPEG whose EXIF orientation turns it (6: 90 degrees) has the decoded image's sides, not the header's."""
    import numpy as np
    from PIL import Image

    from heatmap_templates.data.decode import decode_image, image_size

    picture = Image.fromarray((np.arange(40 * 60).reshape(40, 60) % 251).astype("uint8"))
    exif = picture.getexif()
    exif[0x0112] = 6
    picture.save(tmp_path / "turned.jpg", exif=exif)
    picture.save(tmp_path / "plain.png")
    assert image_size(tmp_path / "turned.jpg") == decode_image(tmp_path / "turned.jpg").pixels.shape[:2] == (60, 40)
    assert image_size(tmp_path / "plain.png") == (40, 60)

"""Figures: every requested format written, embedded fonts, byte-identical reruns, shared colour scales, CLI errors.

Templates files are built here from random maps with ClassAccumulator (no TensorFlow), so the tests stay fast.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.present import figures


def _blob(shape: tuple[int, int], centre: tuple[float, float], width: float) -> np.ndarray:
    rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (2 * width ** 2))


def _comparison(out: Path, **overrides) -> Path:
    rng = np.random.default_rng(1)
    image = np.clip(0.5 + 0.2 * rng.standard_normal((40, 40)), 0, 1)
    arguments = dict(
        image=image, heatmap=_blob((40, 40), (15, 12), 5), template=_blob((40, 40), (18, 16), 7), title="patient_1.png",
        out=out, class_name="covid", similarity=0.734, reference_image=image, dpi=60,
    )
    arguments.update(overrides)
    return figures.comparison_figure(arguments.pop("image"), arguments.pop("heatmap"), arguments.pop("template"), **arguments)


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_comparison_figure_writes_each_format_identically_twice(tmp_path: Path, suffix: str) -> None:
    first = _comparison(tmp_path / f"a.{suffix}")
    second = _comparison(tmp_path / f"b.{suffix}")
    assert first == tmp_path / f"a.{suffix}"
    assert first.stat().st_size > 1000
    assert first.read_bytes() == second.read_bytes()


def test_comparison_figure_handles_other_shapes_nan_and_no_reference(tmp_path: Path) -> None:
    heatmap = _blob((20, 20), (8, 8), 3)
    heatmap[0, 0] = np.nan
    path = _comparison(tmp_path / "c.png", heatmap=heatmap, reference_image=None, similarity=float("nan"))
    assert path.is_file()


def test_comparison_figure_refuses_unknown_format_and_colour_map(tmp_path: Path) -> None:
    with pytest.raises(HmtError, match="unknown figure format"):
        _comparison(tmp_path / "c.gif")
    with pytest.raises(HmtError, match="unknown colour map"):
        _comparison(tmp_path / "c.png", cmap="no-such-map")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- the paper figure set

CLASSES = ("covid", "normal", "pneumonia")
SHAPE = (32, 32)


def _templates_file(folder: Path, *, classes: tuple[str, ...] = CLASSES, with_record: bool = True, with_reference: bool = True) -> Path:
    """A real templates file from random blob maps (one blob position per class), with or without a model record
    and reference chest image."""
    from heatmap_templates.templates.accumulator import ClassAccumulator, Member
    from heatmap_templates.templates.templates_file import save_templates

    rng = np.random.default_rng(7)
    templates = []
    for index, name in enumerate(classes):
        centre = (8 + 7 * index, 10 + 5 * index)
        maps = np.stack([_blob(SHAPE, (centre[0] + rng.normal(0, 2), centre[1] + rng.normal(0, 2)), 4 + index) +
                         0.1 * rng.random(SHAPE) for _ in range(6 + index)])
        members = [Member(f"{name}/{i}.png", f"{name}{i:03d}", 0.9, 0.8, "affine") for i in range(len(maps))]
        accumulator = ClassAccumulator(name, SHAPE, n_components=4, bootstrap_replicates=4, pca_size=16)
        accumulator.add(maps, members)
        template = accumulator.finalize()
        template.compute_leave_one_out([maps])
        templates.append(template)
    model = folder / "model.keras"
    settings = {"model_sha256": "0" * 64, "model_path": str(model), "class_names": list(classes), "layer": "conv",
                "cam_method": "gradcam", "score": "logit", "input_size": list(SHAPE), "registration": "affine",
                "normalisation": "minmax"}
    reference = np.clip(0.6 - 0.4 * _blob(SHAPE, (14, 9), 5) - 0.4 * _blob(SHAPE, (14, 23), 5), 0, 1)
    lungs = reference < 0.4
    if with_record:
        (folder / "model.history.csv").write_text(
            "phase,epoch,loss,accuracy,val_loss,val_accuracy,seconds\n"
            "train,1,1.2,0.4,1.3,0.35,1.0\ntrain,2,0.9,0.6,1.0,0.55,1.0\ntrain,3,0.7,0.7,0.9,0.6,1.0\n", encoding="utf-8")
        confusion = [[3, 1, 0], [0, 4, 0], [1, 0, 3]][:len(classes)]
        (folder / "model.evaluation.json").write_text(json.dumps(
            {"split": "test", "n": 12, "class_names": list(classes), "confusion_matrix": [row[:len(classes)] for row in confusion]}),
            encoding="utf-8")
    if not with_reference:
        reference = lungs = None
    return save_templates(folder / "templates.h5", settings, templates, reference_image=reference, lung_mask=lungs)


@pytest.fixture(scope="module")
def templates_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _templates_file(tmp_path_factory.mktemp("templates"))


@pytest.fixture(scope="module")
def paper_set(templates_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[figures.FiguresSummary, figures.FiguresSummary]:
    """The full figure set in every format, drawn twice into two folders (for the determinism check)."""
    runs = []
    for name in ("first", "second"):
        runs.append(figures.template_figures(templates_path, tmp_path_factory.mktemp(name), dpi=40, width="single"))
    return runs[0], runs[1]


EXPECTED_FIGURES = ("template_means", "template_std", "eigen_heatmaps", "similarity", "loo_correlations",
                    "confusion_matrix", "training_curves")


def test_every_figure_is_written_in_every_format(paper_set) -> None:
    summary, _ = paper_set
    assert tuple(summary.figures) == EXPECTED_FIGURES
    for name in EXPECTED_FIGURES:
        assert [path.name for path in summary.figures[name]] == [f"{name}.pdf", f"{name}.svg", f"{name}.png"]
    assert summary.files == [path for paths in summary.figures.values() for path in paths]
    assert all(path.is_file() and path.stat().st_size > 500 for path in summary.files)
    assert summary.notes == []


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # IHDR width


def test_figures_are_one_journal_column_wide(paper_set) -> None:
    summary, _ = paper_set  # drawn at --width single and 40 dpi: 3.5 in = 140 px
    for name in ("template_means", "template_std", "similarity", "confusion_matrix", "training_curves"):
        assert _png_width(summary.figures[name][2]) == 140, name
    assert _png_width(summary.figures["eigen_heatmaps"][2]) <= 140


def test_identical_input_gives_identical_bytes(paper_set) -> None:
    first, second = paper_set
    assert first.out_dir != second.out_dir
    for a, b in zip(first.files, second.files, strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two runs"


def test_pdf_fonts_are_embedded_truetype_and_files_carry_no_dates(paper_set) -> None:
    summary, _ = paper_set
    for path in summary.files:
        data = path.read_bytes()
        if path.suffix == ".pdf":
            assert b"/FontFile2" in data  # TrueType (Type 42) font programs embedded
            assert b"/Type3" not in data and b"/FontType 3" not in data
            assert b"/CreationDate" not in data
        elif path.suffix == ".svg":
            assert b"<dc:date>" not in data
            assert b"<text" not in data  # text drawn as paths: no font needed to view it
        else:
            assert data.startswith(b"\x89PNG") and b"tIME" not in data and b"Software" not in data


def test_class_panels_share_one_colour_scale(paper_set, templates_path: Path) -> None:
    from heatmap_templates.templates.templates_file import read_templates

    summary, _ = paper_set
    file = read_templates(templates_path)
    means = summary.colour_scales["template_means"]
    assert list(means) == list(CLASSES)
    assert len(set(means.values())) == 1
    lowest = min(float(t.mean.min()) for t in file.templates.values())
    highest = max(float(t.mean.max()) for t in file.templates.values())
    assert means["covid"] == pytest.approx((lowest, highest))
    stds = summary.colour_scales["template_std"]
    assert len(set(stds.values())) == 1
    assert stds["normal"][1] == pytest.approx(max(float(t.std.max()) for t in file.templates.values()))
    eigen = summary.colour_scales["eigen_heatmaps"]
    assert len(eigen) == 3 * len(CLASSES)  # top 3 components of each class
    assert len(set(eigen.values())) == 1
    low, high = next(iter(eigen.values()))
    assert low == -high > -np.inf and high > 0  # diverging scale centred at 0


class _RecordingProgress:
    def __init__(self) -> None:
        self.events: list[str] = []

    def start(self, total: int | None, description: str) -> None:
        self.events.append(f"start {total}")

    def advance(self, n: int = 1) -> None:
        self.events.append("advance")

    def finish(self) -> None:
        self.events.append("finish")


def test_missing_model_record_and_single_class_are_skipped_with_notes(tmp_path: Path) -> None:
    import matplotlib

    path = _templates_file(tmp_path, classes=("covid",), with_record=False, with_reference=False)
    style_before = dict(matplotlib.rcParams)
    progress = _RecordingProgress()
    summary = figures.template_figures(path, tmp_path / "out", formats="png", dpi=30, width="double", components=2, cmap="jet",
                                       progress=progress)
    assert dict(matplotlib.rcParams) == style_before  # publication style does not leak into the caller's matplotlib
    assert progress.events == ["start 7", *["advance"] * 7, "finish"]
    assert tuple(summary.figures) == ("template_means", "template_std", "eigen_heatmaps", "loo_correlations")
    assert [path.name for path in summary.files] == [f"{name}.png" for name in summary.figures]
    assert len(summary.colour_scales["eigen_heatmaps"]) == 2
    joined = "\n".join(summary.notes)
    assert "similarity matrix skipped" in joined
    assert "training curves skipped" in joined and "confusion matrix skipped" in joined


def test_bad_arguments_raise_user_errors(templates_path: Path, tmp_path: Path) -> None:
    with pytest.raises(HmtError, match="unknown figure format gif"):
        figures.template_figures(templates_path, tmp_path, formats="png,gif")
    with pytest.raises(HmtError, match="unknown colour map"):
        figures.template_figures(templates_path, tmp_path, cmap="rainbowish")
    with pytest.raises(HmtError, match="unknown figure width"):
        figures.template_figures(templates_path, tmp_path, width="triple")
    with pytest.raises(BadFileError, match="no such file"):
        figures.template_figures(tmp_path / "missing.h5", tmp_path)
    assert figures.parse_formats(" PNG, pdf ,png") == ("png", "pdf")


# --------------------------------------------------------------------------- CLI


def test_cli_writes_figures_and_lists_them_as_json(templates_path: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hmt_cli.main import _register_commands, app

    _register_commands()  # in this process: a child costs seconds of imports on a busy CI machine
    result = CliRunner().invoke(app, ["figures", str(templates_path), "--out", str(tmp_path / "figs"), "--format", "png",
                                      "--dpi", "30", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert [Path(path).name for path in listing["files"]] == [f"{name}.png" for name in EXPECTED_FIGURES]
    assert all(Path(path).is_file() for path in listing["files"])
    assert listing["colour_scales"]["template_means"]["covid"] == listing["colour_scales"]["template_means"]["pneumonia"]
    assert listing["notes"] == []


def test_cli_user_error_in_a_real_process_is_one_line_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    result = subprocess.run([sys.executable, "-m", "hmt_cli.main", "figures", str(junk), "--out", str(tmp_path / "figs")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hmt: error: {junk}: not a readable HDF5 file"
    assert not (tmp_path / "figs").exists()


def test_cli_user_errors_exit_2_with_one_line(templates_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    import h5py

    from hmt_cli.main import run

    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as handle:
        handle.attrs["kind"] = "something-else"
    out = str(tmp_path / "figs")
    for arguments, expected in [
        ([str(tmp_path / "nothing.h5")], f"{tmp_path / 'nothing.h5'}: no such file"),
        ([str(foreign)], str(foreign)),
        ([str(templates_path), "--format", "pdf,tiff"], "unknown figure format tiff"),
        ([str(templates_path), "--cmap", "no-such-map"], "unknown colour map 'no-such-map'"),
        ([str(templates_path), "--width", "wide"], "unknown figure width 'wide'"),
    ]:
        monkeypatch.setattr(sys, "argv", ["hmt", "figures", *arguments, "--out", out])
        with pytest.raises(SystemExit) as exit_info:
            run()
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and error.startswith("hmt: error: ") and expected in error, error
    assert not (tmp_path / "figs").exists()


def test_classifier_record_figures_still_write_png(tmp_path: Path) -> None:
    history = [{"phase": "head", "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4},
               {"phase": "fine-tune", "loss": 0.8, "accuracy": 0.7, "val_loss": None, "val_accuracy": None}]
    curves = figures.training_curves(history, tmp_path / "curves.png", dpi=30)
    confusion = figures.confusion_matrix_figure([[2, 1], [0, 3]], ["a", "b"], tmp_path / "confusion.png", title="test", dpi=30)
    assert curves.read_bytes().startswith(b"\x89PNG") and confusion.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(HmtError, match="does not fit 3 classes"):
        figures.confusion_matrix_figure([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "bad.png")
    with pytest.raises(HmtError, match="no training history"):
        figures.training_curves([], tmp_path / "empty.png")

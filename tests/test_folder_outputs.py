"""Folder outputs (`hmt synth`, `hmt figures`): what an earlier output may hold, and folders that cannot be swapped.

A rerun replaces only the files the command itself wrote (their exact names: synth's for the classes its synth.json
records, figures' for the templates file's classes), and refuses a folder holding anything else before any work. A
folder that cannot be replaced whole by renames (a symbolic link, the working directory given as `.`, a tmpfs or bind
mount) gets the new files moved in one by one: it stays what it was, and only the earlier output's files go.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from cli_helpers import run_hmt
from prerequisites import mounted
from test_figures import _templates_file

from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.files import atomic_folder, is_mount_point
from heatmap_templates.present.figures import template_figures
from heatmap_templates.synth import synthesize_dataset, synthesize_multi_label

SMALL = {"n_per_class": 1, "size": 64, "probability_samples": 1, "workers": 1}
SYNTH = ["synth", "-n", "1", "--size", "64", "--workers", "1"]


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _templates_file(tmp_path_factory.mktemp("templates"))


# --------------------------------------------------------------------------- what an earlier output may hold


@pytest.mark.parametrize("foreign", ["ground_truth/notes.md", "ground_truth/results.csv", "extra/extra_1.png",
                                     "extra/extra_0001.png", "virus/virus_0000.png", "ground_truth/masks/virus/virus_0000.png",
                                     "ground_truth/lesion_probability_virus.npy", "covid/covid_1.png", "covid/normal_0000.png",
                                     "images/img_0000.png", "ground_truth/synth.json.bak"])
def test_synth_refuses_a_set_holding_any_file_it_did_not_write(tmp_path: Path, foreign: str) -> None:
    out = tmp_path / "set"
    synthesize_dataset(out, classes=("covid", "normal"), shortcuts={"covid": 1.0}, **SMALL)
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("the user's")
    before = _files(out)
    with pytest.raises(HmtError, match=re.escape(f"{out}: holds files that `hmt synth` did not write ({foreign})")):
        synthesize_dataset(out, classes=("covid",), **SMALL)
    assert _files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    (out / foreign).unlink()
    synthesize_dataset(out, classes=("covid",), **SMALL)  # what synth wrote itself is replaced
    assert sorted(p.name for p in out.iterdir()) == ["covid", "ground_truth", "manifest.csv"]


@pytest.mark.parametrize("foreign", ["ground_truth/README.md", "ground_truth/boxes.csv", "covid/covid_0000.png",
                                     "ground_truth/masks/normal/img_0000.png", "images/covid_0000.png"])
def test_synth_refuses_a_multi_label_set_holding_a_file_it_did_not_write(tmp_path: Path, foreign: str) -> None:
    out = tmp_path / "set"
    synthesize_multi_label(out, n_images=4, size=64, probability_samples=1, findings=("covid", "virus"))
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("the user's")
    with pytest.raises(HmtError, match=re.escape(f"did not write ({foreign})")):
        synthesize_multi_label(out, n_images=2, size=64, probability_samples=1, findings=("covid",))
    assert (out / foreign).read_text() == "the user's"


def test_figures_refuse_a_folder_holding_any_file_they_do_not_draw(templates: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    template_figures(templates, out, formats="png", dpi=20)
    for foreign in ["strategies_notes.png", "strategies_.png", "template_means.jpg", "notes.md", "similarity.png.bak"]:
        (out / foreign).write_text("the user's")
        with pytest.raises(BadFileError, match=re.escape(f"{out}: holds files that are not hmt figures ({foreign})")):
            template_figures(templates, out, formats="png", dpi=20)
        assert (out / foreign).read_text() == "the user's"
        (out / foreign).unlink()
    (out / "strategies_covid.png").write_text("an earlier class's strategies")  # a name figures draws for this file
    template_figures(templates, out, formats="png", dpi=20)
    assert not (out / "strategies_covid.png").exists(), "an earlier figure this run does not draw is stale"


def test_figures_rerun_with_fewer_formats_keeps_the_other_formats(templates: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    template_figures(templates, out, formats="pdf,png", dpi=20)
    pdfs = {name: data for name, data in _files(out).items() if name.endswith(".pdf")}
    assert len(pdfs) == 7
    summary = template_figures(templates, out, formats="png", dpi=30)
    assert {name: data for name, data in _files(out).items() if name.endswith(".pdf")} == pdfs
    assert sorted(p.name for p in out.iterdir()) == sorted([*pdfs, *(p.name for p in summary.files)])
    assert all(p.suffix == ".png" for p in summary.files)
    assert any("kept 7 earlier figure files in the formats not drawn this time (pdf)" in note for note in summary.notes)


# --------------------------------------------------------------------------- folders that cannot be swapped


def test_a_symlinked_output_folder_stays_a_link_and_gets_the_new_output(templates: Path, tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    synthesize_dataset(link, classes=("covid", "normal"), **SMALL)
    synthesize_dataset(link, classes=("virus",), **SMALL)
    assert link.is_symlink() and link.resolve() == real
    assert sorted(p.name for p in real.iterdir()) == ["ground_truth", "manifest.csv", "virus"]
    assert sorted(p.name for p in (real / "ground_truth" / "masks").iterdir()) == ["virus"]
    figures_real, figures_link = tmp_path / "figures_real", tmp_path / "figures_link"
    figures_real.mkdir()
    figures_link.symlink_to(figures_real, target_is_directory=True)
    template_figures(templates, figures_link, formats="png", dpi=20)
    assert figures_link.is_symlink() and (figures_real / "template_means.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures_link", "figures_real", "link", "real"], "no leftovers"


def test_a_failed_run_into_a_symlinked_folder_leaves_it_as_it_was(tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    (real / "a.txt").write_text("earlier")
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(RuntimeError, match="drawing failed"), atomic_folder(link, earlier=["a.txt"]) as folder:
        (folder / "a.txt").write_text("new")
        raise RuntimeError("drawing failed")
    assert _files(real) == {"a.txt": b"earlier"} and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"], "the temporary folder is removed"
    with atomic_folder(link, earlier=["a.txt"]) as folder:
        (folder / "b.txt").write_text("new")
    assert _files(real) == {"b.txt": b"new"}


def test_the_working_directory_as_the_output_folder(templates: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name, arguments in [("phantoms", [*SYNTH, "."]), ("phantoms", [*SYNTH, ".", "--classes", "covid"]),
                            ("figures", ["figures", templates, "--out", ".", "--format", "png", "--dpi", "20"])]:
        (tmp_path / name).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / name)
        code, _, err = run_hmt(arguments, capsys, monkeypatch)
        assert code == 0, err
        assert Path.cwd() == tmp_path / name and (Path.cwd() / "..").resolve() == tmp_path  # still the folder in place
        assert os.listdir(".") and set(os.listdir(".")) == {p.name for p in (tmp_path / name).iterdir()}
    assert sorted(os.listdir(tmp_path / "phantoms")) == ["covid", "ground_truth", "manifest.csv"]
    assert (tmp_path / "figures" / "template_means.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "phantoms"], "no leftovers"


def test_a_mount_point_output_folder_gets_its_output_written_in(templates: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    disk, figures = tmp_path / "disk", tmp_path / "figures_disk"
    with mounted("tmpfs", disk, "-t", "tmpfs", "-o", "size=8m"), mounted("tmpfs", figures, "-t", "tmpfs", "-o", "size=8m"):
        for classes in ("covid,normal", "virus"):
            code, _, err = run_hmt([*SYNTH, disk, "--classes", classes], capsys, monkeypatch)
            assert code == 0, err
        assert os.path.ismount(disk) and sorted(os.listdir(disk)) == ["ground_truth", "manifest.csv", "virus"]
        code, _, err = run_hmt(["figures", templates, "--out", figures, "--format", "png", "--dpi", "20"], capsys, monkeypatch)
        assert code == 0, err
        assert os.path.ismount(figures) and "template_means.png" in os.listdir(figures)
        assert not [p for p in [*disk.rglob("*"), *figures.rglob("*")] if ".tmp-" in p.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "figures_disk"], "no leftovers beside"


def test_a_bind_mount_of_the_same_file_system_is_written_in(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "volume"
    source.mkdir()
    with mounted(source, target, "--bind"):
        assert is_mount_point(target) and not os.path.ismount(target)  # os.path.ismount misses it: same device
        synthesize_dataset(target, classes=("covid", "normal"), **SMALL)
        synthesize_dataset(target, classes=("normal",), **SMALL)
        assert sorted(os.listdir(source)) == ["ground_truth", "manifest.csv", "normal"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "volume"]

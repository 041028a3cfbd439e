"""`hmt contrast` on the planted-shortcut phantom: a planted marker found where it is, a null not flagged, paired
mode, the contrast stored, drawn and reported, and bad groups refused with one line (issue 28)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from cli_helpers import run_hmt

from heatmap_templates.analysis.contrast import ContrastSettings, run_contrast
from heatmap_templates.numeric.resample import downsample
from heatmap_templates.templates.templates_file import read_contrasts

TAGGED, UNTAGGED = "column:shortcut=1@covid", "column:shortcut=0,label=covid@covid"


def _marker_share(data: Path, shape: tuple[int, int]) -> np.ndarray:
    """Per cell of the contrast grid, the share of tagged images whose marker covers it (poses move the chest, not
    the marker: it is burned on the detector, and the canonical frame differs from the image frame by a few pixels)."""
    masks = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0 for path in sorted((data / "ground_truth" / "shortcut_masks").rglob("*.png"))]
    assert masks
    return downsample(np.mean(masks, axis=0), shape)


@pytest.fixture
def templates(shortcut_phantom: dict, tmp_path: Path) -> Path:
    copy = tmp_path / "templates.h5"
    shutil.copy(shortcut_phantom["templates"], copy)
    return copy


def test_a_planted_marker_is_found_on_the_marker_and_stored_drawn_and_reported(shortcut_phantom: dict, templates: Path,
                                                                              tmp_path: Path, capsys, monkeypatch) -> None:
    manifest = shortcut_phantom["data"] / "manifest.csv"
    code, out, err = run_hmt(["contrast", templates, TAGGED, UNTAGGED, "--columns", manifest, "--heatmaps",
                              shortcut_phantom["store"], "--permutations", "400", "--tail", "greater", "--json"], capsys, monkeypatch)
    assert code == 0, err
    record = json.loads(out)
    assert record["n_a"] + record["n_b"] == 60 and record["n_a"] > 10 and not record["paired"]
    found = [c for c in record["clusters"] if c["direction"] == "a > b"]
    assert found, record
    share = _marker_share(shortcut_phantom["data"], tuple(record["shape"]))
    from scipy import ndimage

    near_marker = ndimage.maximum_filter(share, size=3)  # a marker cell or its neighbour (one CAM cell of registration)
    assert share.max() > 0 and share[-3:, :].max() == 0  # the marker sits at the top
    # a cluster of "tagged > untagged" peaks on the marker (its largest may be elsewhere: normalisation moves the rest)
    assert any(near_marker[tuple(c["peak"])] >= 0.5 * share.max() for c in found), (found, share.round(2))
    stored = read_contrasts(templates)[record["name"]]
    assert stored["maps"]["t"].shape == tuple(record["shape"]) and stored["clusters"] == record["clusters"]
    assert int((stored["maps"]["p"] < 0.05).sum()) == record["significant_pixels"] == sum(c["pixels"] for c in record["clusters"])
    code, out, err = run_hmt(["figures", templates, "--out", tmp_path / "figures", "--format", "png", "--dpi", "40", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    drawn = [name for name in json.loads(out)["figures"] if name.startswith("contrast_")]
    assert len(drawn) == 1

    from heatmap_templates.present.report import write_report

    page = write_report(templates, tmp_path / "report", heatmaps=shortcut_phantom["store"], gallery_size=1).index.read_text()
    assert f">{len(record['clusters'])}</span> significant cluster(s)" in page and "figures/contrast_" in page


def _halves_csv(data: Path, out: Path) -> Path:
    """The untagged covid images in two arbitrary halves (a column `half`): two samples of one population."""
    with open(data / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["label"] == "covid" and row["shortcut"] == "0"]
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "half", "patient_id"])
        for number, row in enumerate(rows):
            writer.writerow([str(data / row["path"]), "ab"[number % 2], row["patient_id"]])
    return out


def test_a_null_contrast_is_not_flagged_and_the_null_check_reports_its_share(shortcut_phantom: dict, templates: Path,
                                                                           tmp_path: Path) -> None:
    halves = _halves_csv(shortcut_phantom["data"], tmp_path / "halves.csv")
    result = run_contrast(templates, "column:half=a@covid", "column:half=b@covid", heatmaps=shortcut_phantom["store"],
                          columns=halves, settings=ContrastSettings(permutations=300, null_check=6, seed=3))
    assert result.n[0] >= 10 and result.n[1] >= 10 and not (result.test.p < 0.05).any() and result.clusters == []
    check = result.null_check
    assert check is not None and check["runs"] == 6 and 0 <= check["with_significant_pixels"] <= 6
    assert check["share_ci"][0] <= check["share"] <= check["share_ci"][1]


def test_a_patient_in_both_groups_is_permuted_image_by_image_with_a_note(shortcut_phantom: dict, templates: Path,
                                                                       tmp_path: Path) -> None:
    """One patient with an image in each group: the t-map is still that of the groups asked for (the same as with
    every image its own patient), the permutations move images, and a note says so."""
    halves = _halves_csv(shortcut_phantom["data"], tmp_path / "halves.csv")
    settings = ContrastSettings(permutations=50)
    separate = run_contrast(templates, "column:half=a@covid", "column:half=b@covid", heatmaps=shortcut_phantom["store"],
                            columns=halves, settings=settings)
    rows = halves.read_text().splitlines()
    rows[1], rows[2] = rows[1].rsplit(",", 1)[0] + ",shared", rows[2].rsplit(",", 1)[0] + ",shared"  # halves a and b
    halves.write_text("\n".join(rows) + "\n")
    result = run_contrast(templates, "column:half=a@covid", "column:half=b@covid", heatmaps=shortcut_phantom["store"],
                          columns=halves, settings=settings)
    assert not separate.notes and result.notes and "1 patient(s) have images in both groups" in result.notes[0]
    np.testing.assert_allclose(result.test.t, separate.test.t, rtol=1e-6, atol=1e-9)


def test_paired_differences_find_a_change_planted_in_a_second_store(shortcut_phantom: dict, templates: Path,
                                                                    tmp_path: Path) -> None:
    """A second store of the same images whose maps gain a blob in one corner: the paired contrast (first store minus
    second) finds it there, with A < B; the store against itself has no difference at all."""
    other = tmp_path / "other.h5"
    shutil.copy(shortcut_phantom["store"], other)
    with h5py.File(other, "r+") as handle:
        raw = handle["raw"][...]
        height, width = raw.shape[-2:]
        raw[..., height - 3:, width - 3:] += raw.max() * 0.8
        handle["raw"][...] = raw
    result = run_contrast(templates, "class:covid", heatmaps=shortcut_phantom["store"], other=other,
                          settings=ContrastSettings(permutations=300))
    assert result.paired and result.n[0] == result.n[1] and result.clusters
    # the blob raises B in the corner (A < B there); normalisation lowers the rest of B's maps a little (A > B elsewhere)
    corner = [c for c in result.clusters if c["direction"] == "a < b"]
    assert len(corner) == 1 and corner[0]["peak_frame"][0] > 0.6 and corner[0]["peak_frame"][1] > 0.6
    same = run_contrast(templates, "class:covid", heatmaps=shortcut_phantom["store"], other=shortcut_phantom["store"],
                        settings=ContrastSettings(permutations=50))
    assert not same.test.t.any() and same.clusters == []
    store = Path(shortcut_phantom["store"])
    assert result.name == f"class:covid ({store.name} - other.h5)"  # file names only: reports are shared
    assert same.name == f"class:covid ({store.parent.name}/{store.name} - {store.parent.name}/{store.name})"  # alike: with folders


@pytest.mark.parametrize(("groups", "message"), [
    (["column:shortcut=1@covid", "images:covid"], "share"),
    (["images:covid", "images:nothing"], "no class 'nothing'"),
    (["kind:covid", "images:normal"], "write one of class:NAME"),
    (["strategy:normal/1", "images:covid"], "no strategies of class 'normal'"),  # normal has no template
    (["column:patient_id=covid_0001@covid", "images:normal"], "at least 2 per group"),
])
def test_bad_groups_are_refused_with_one_line(shortcut_phantom: dict, templates: Path, groups: list[str], message: str,
                                             capsys, monkeypatch) -> None:
    code, out, err = run_hmt(["contrast", templates, *groups, "--columns", shortcut_phantom["data"] / "manifest.csv",
                              "--heatmaps", shortcut_phantom["store"], "--permutations", "10"], capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_second_store_of_other_images_is_refused(shortcut_phantom: dict, templates: Path, capsys, monkeypatch) -> None:
    other = Path(__file__).resolve().parent / "data" / "heatmaps_v3.h5"
    code, out, err = run_hmt(["contrast", templates, "class:covid", "--other", other, "--heatmaps", shortcut_phantom["store"]],
                             capsys, monkeypatch)
    assert code == 2 and "a paired contrast needs the same images" in err and len(err.strip().splitlines()) == 1


def test_a_rebuild_drops_the_contrasts_of_the_templates_it_replaces(shortcut_phantom: dict, templates: Path) -> None:
    from heatmap_templates.templates.build import BuildConfig, build_templates
    from heatmap_templates.templates.templates_file import save_contrast

    result = run_contrast(templates, "class:covid", "images:normal", heatmaps=shortcut_phantom["store"],
                          settings=ContrastSettings(permutations=20))
    save_contrast(templates, result.name, result.to_dict(), {"t": result.test.t, "p": result.test.p})
    assert list(read_contrasts(templates)) == [result.name]
    build_templates(shortcut_phantom["store"], ["covid"], templates, config=BuildConfig(
        reference=str(shortcut_phantom["data"] / "ground_truth" / "canonical_chest.png"), bootstrap_replicates=4, n_components=2))
    assert read_contrasts(templates) == {}  # its numbers described the templates it was run on


def test_a_minimum_difference_narrows_significance_to_a_subset_and_is_recorded(shortcut_phantom: dict, templates: Path,
                                                                              capsys, monkeypatch) -> None:
    manifest = shortcut_phantom["data"] / "manifest.csv"
    common = ["contrast", templates, TAGGED, UNTAGGED, "--columns", manifest, "--heatmaps", shortcut_phantom["store"],
              "--permutations", "300", "--tail", "greater"]
    code, _, err = run_hmt(common + ["--name", "plain"], capsys, monkeypatch)
    assert code == 0, err
    code, out, err = run_hmt(common + ["--name", "beyond", "--min-difference", "0.2"], capsys, monkeypatch)
    assert code == 0, err
    assert "H0: difference <= 0.2 (TREAT)" in out  # one-sided: greater
    stored = read_contrasts(templates)
    plain, beyond = stored["plain"], stored["beyond"]
    assert beyond["settings"]["min_difference"] == 0.2 and plain["settings"]["min_difference"] == 0.0
    np.testing.assert_allclose(beyond["maps"]["t"], plain["maps"]["t"])  # the t-map is the data's, not the shifted test's
    narrowed, everywhere = beyond["maps"]["p"] < 0.05, plain["maps"]["p"] < 0.05
    assert not (narrowed & ~everywhere).any() and narrowed.sum() < everywhere.sum()
    code, _, err = run_hmt(common + ["--min-difference", "-0.1"], capsys, monkeypatch)
    assert code == 2 and "--min-difference" in err and len(err.strip().splitlines()) == 1

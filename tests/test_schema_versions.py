"""Each file kind has its own schema version; files of every earlier version (kept in tests/data/) still read."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_hmt

from heatmap_templates.errors import BadFileError
from heatmap_templates.store import HEATMAPS, TEMPLATES, file_kind, open_heatmaps
from heatmap_templates.templates.templates_file import load_accumulator, read_templates

DATA = Path(__file__).resolve().parent / "data"
HEATMAP_FILES = {version: DATA / f"heatmaps_v{version}.h5" for version in (1, 2, 3)}
TEMPLATE_FILES = {version: DATA / f"templates_v{version}.h5" for version in (1, 2, 3, 4, 5, 6, 7)}


def test_every_readable_version_has_a_file_here() -> None:
    assert set(HEATMAP_FILES) == set(HEATMAPS.readable) and HEATMAPS.version == max(HEATMAPS.readable)
    assert set(TEMPLATE_FILES) == set(TEMPLATES.readable) and TEMPLATES.version == max(TEMPLATES.readable)


@pytest.mark.parametrize("version", sorted(HEATMAP_FILES))
def test_heatmap_store_of_each_version_reads(version: int) -> None:
    path = HEATMAP_FILES[version]
    assert file_kind(path) == HEATMAPS
    reader = open_heatmaps(path)
    assert reader.attrs["schema_version"] == version and reader.class_names == ["covid", "normal"]
    assert len(reader) == 6 and reader.labels.tolist() == [0, 1, 0, 1, 0, 1] and reader.correct.tolist()[-1] is False
    (batch,) = reader.iter_batches(8)
    assert batch.images.shape == (6, 8, 8) and batch.images.dtype == np.uint8
    assert batch.raw.shape == (6, 2, 3, 3) and batch.maps_for(1).shape == (6, 8, 8)


@pytest.mark.parametrize("version", sorted(TEMPLATE_FILES))
def test_templates_file_of_each_version_reads(version: int) -> None:
    path = TEMPLATE_FILES[version]
    assert file_kind(path) == TEMPLATES
    data = read_templates(path, load_state=True)
    assert data.attrs["schema_version"] == version and list(data.templates) == ["covid", "normal"]
    covid = data.templates["covid"]
    assert covid.count == 3 and len(covid.members) == 3 and covid.mean.shape == (8, 8) and len(covid.loo_correlations) == 3
    accumulator = load_accumulator(path, "covid")
    np.testing.assert_allclose(accumulator.finalize().mean, covid.mean, atol=1e-6)
    assert data.reference_image.shape == (8, 8) and data.lung_mask.sum() == 16


@pytest.mark.parametrize("path", [*HEATMAP_FILES.values(), *TEMPLATE_FILES.values()], ids=lambda path: path.name)
def test_inspect_reads_each_version(path: Path, capsys, monkeypatch) -> None:
    code, out, err = run_hmt(["inspect", str(path), "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["attrs"]["schema_version"] in (HEATMAPS.readable + TEMPLATES.readable)


def test_a_newer_version_is_refused_naming_the_versions_read(tmp_path: Path) -> None:
    import h5py

    newer = tmp_path / "newer.h5"
    newer.write_bytes(TEMPLATE_FILES[TEMPLATES.version].read_bytes())
    with h5py.File(newer, "a") as handle:
        handle.attrs["schema_version"] = TEMPLATES.version + 1
    with pytest.raises(BadFileError, match=f"unknown schema version {TEMPLATES.version + 1} .*reads hmt-templates versions"):
        read_templates(newer)


def test_strategies_read_from_schema_4_and_are_absent_before() -> None:
    from heatmap_templates.templates.templates_file import read_strategies

    for version, path in TEMPLATE_FILES.items():
        strategies = read_strategies(path)
        if version < 4:
            assert strategies == {}
        elif version > 4:
            assert list(strategies) == ["covid"]
        else:
            assert list(strategies) == ["covid"] and strategies["covid"].k == 2
            assert sum(s.size for s in strategies["covid"].strategies) == 3


def test_checks_read_from_schema_5_and_are_absent_before() -> None:
    from heatmap_templates.templates.templates_file import read_checks

    for version, path in TEMPLATE_FILES.items():
        checks = read_checks(path)
        assert (list(checks) == ["localisation"]) if version >= 5 else checks == {}


def test_contrasts_read_from_version_6_and_earlier_files_have_none() -> None:
    from heatmap_templates.templates.templates_file import read_contrasts

    assert all(read_contrasts(TEMPLATE_FILES[version]) == {} for version in range(1, 6))
    (contrast,) = read_contrasts(TEMPLATE_FILES[6]).values()
    assert contrast["group_a"] == "class:covid" and contrast["maps"]["t"].shape == (3, 3) and len(contrast["clusters"]) == 2
    assert "tfce" not in contrast["maps"] and contrast["maps"]["t"][1, 1] == pytest.approx(-3.1)


def test_zones_read_from_version_7_and_earlier_files_have_none() -> None:
    from heatmap_templates.analysis.zones import ZONE_NAMES
    from heatmap_templates.templates.templates_file import read_zones

    assert all(read_zones(TEMPLATE_FILES[version]) is None for version in range(1, 7))
    zones = read_zones(TEMPLATE_FILES[7])
    assert zones is not None and zones["names"] == list(ZONE_NAMES) and zones["atlas_labels"].shape == (8, 8)
    assert set(zones["classes"]) == {"covid", "normal"}
    assert sum(row["share"] for row in zones["classes"]["covid"]["zones"].values()) == pytest.approx(1.0)

"""Anatomical zones (issue 29): the atlas partitions the frame, shares sum to 1, a map in one zone reads as that zone,
the phantom's planted lesion priors read as their zones, and `hmt zones` stores, draws and reports its table."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_hmt
from scipy import stats

from heatmap_templates.analysis.zones import (
    LUNG_ZONES,
    ZONE_NAMES,
    ZoneAtlas,
    zone_atlas,
    zone_of,
    zone_profile,
    zone_shares,
)
from heatmap_templates.errors import HmtError
from heatmap_templates.synth.anatomy import canonical_body_mask, canonical_lung_mask
from heatmap_templates.synth.render import canonical_lesion_probability

SIZE = 128


@pytest.fixture(scope="module")
def atlas() -> ZoneAtlas:
    return zone_atlas(canonical_lung_mask(SIZE), canonical_body_mask(SIZE), SIZE / 16, source="phantom")


def test_the_atlas_partitions_the_frame_into_every_named_zone(atlas: ZoneAtlas) -> None:
    assert atlas.labels.shape == (SIZE, SIZE) and atlas.labels.min() >= 0 and atlas.labels.max() < len(ZONE_NAMES)
    assert atlas.areas.sum() == pytest.approx(1.0)
    assert all(atlas.mask(name).any() for name in ZONE_NAMES), [n for n in ZONE_NAMES if not atlas.mask(n).any()]
    assert len(ZONE_NAMES) == 18 and len(LUNG_ZONES) == 12 and len(set(ZONE_NAMES)) == 18
    lungs = canonical_lung_mask(SIZE)
    border = atlas.mask("border")
    assert border[0].all() and border[:, -1].all() and not border[SIZE // 2, SIZE // 2]  # one cell wide, at the edge
    lung_pixels = np.isin(atlas.labels, [ZONE_NAMES.index(z) for z in LUNG_ZONES])
    assert not (lung_pixels & ~lungs).any()  # lung zones hold lung pixels only
    # ... and every lung pixel off the border, but for specks apart from the two lung fields (the heart's cut leaves one)
    assert (lungs & ~border & ~lung_pixels).sum() <= 0.005 * lungs.sum()
    right = np.nonzero(np.isin(atlas.labels, [ZONE_NAMES.index(z) for z in LUNG_ZONES if z.startswith("right")]))[1]
    left = np.nonzero(np.isin(atlas.labels, [ZONE_NAMES.index(z) for z in LUNG_ZONES if z.startswith("left")]))[1]
    assert right.max() < left.min()  # the patient's right lung is on the image's left (PA view)


def test_zones_sit_where_their_names_say(atlas: ZoneAtlas) -> None:
    centre = {name: np.argwhere(atlas.mask(name)).mean(axis=0) for name in ZONE_NAMES}
    for side in ("right", "left"):
        for depth in ("central", "peripheral"):
            rows = [centre[f"{side}_{level}_{depth}"][0] for level in ("upper", "middle", "lower")]
            assert rows == sorted(rows)  # upper above middle above lower
        for level in ("upper", "middle", "lower"):
            central, peripheral = centre[f"{side}_{level}_central"][1], centre[f"{side}_{level}_peripheral"][1]
            assert abs(central - SIZE / 2) < abs(peripheral - SIZE / 2)  # central nearer the midline
    assert centre["upper_body"][0] < centre["right_upper_central"][0] < centre["below_diaphragm"][0]
    assert abs(centre["mediastinum"][1] - SIZE / 2) < SIZE * 0.05
    assert zone_of(atlas, 0.0, 0.0) == "border"


def test_shares_sum_to_one_and_a_map_in_one_zone_reads_as_that_zone(atlas: ZoneAtlas) -> None:
    maps = np.random.default_rng(0).random((5, SIZE, SIZE)) - 0.3  # negative parts are left out
    shares = zone_shares(maps, atlas)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    positive = np.clip(maps[0], 0, None)
    expected = [positive[atlas.mask(name)].sum() / positive.sum() for name in ZONE_NAMES]  # by hand, zone by zone
    np.testing.assert_allclose(shares[0], expected)
    for name in ZONE_NAMES:
        profile = zone_profile(atlas.mask(name).astype(float), atlas)
        assert profile[name]["share"] == pytest.approx(1.0)
        assert profile[name]["enrichment"] == pytest.approx(1.0 / atlas.areas[ZONE_NAMES.index(name)])
    assert np.isnan(zone_shares(np.zeros((1, SIZE, SIZE)), atlas)).all()  # no positive energy: undefined


@pytest.mark.parametrize(("label", "depth"), [("covid", "peripheral"), ("virus", "central")])
def test_the_planted_lesion_priors_read_as_their_zones(atlas: ZoneAtlas, label: str, depth: str) -> None:
    """covid's planted lesions are peripheral and lower-zone, virus's perihilar (central): the priors' own profiles
    say so, and their lung-zone enrichments differ in rank (the validation's yardstick)."""
    prior = canonical_lesion_probability(label, SIZE, 64, seed=0)
    profile = zone_profile(prior, atlas)
    lung = {zone: profile[zone]["enrichment"] for zone in LUNG_ZONES}
    top = max(lung, key=lung.get)
    assert top.endswith(depth), (label, top)
    assert sum(profile[zone]["share"] for zone in LUNG_ZONES) > 0.9  # lesions lie in the lungs
    if label == "covid":
        assert all(lung[f"{side}_lower_peripheral"] > lung[f"{side}_upper_central"] for side in ("right", "left"))
    other = zone_profile(canonical_lesion_probability("virus" if label == "covid" else "covid", SIZE, 64, seed=0), atlas)
    rho = stats.spearmanr([lung[z] for z in LUNG_ZONES], [other[z]["enrichment"] for z in LUNG_ZONES]).statistic
    assert rho < 0.5  # the two priors rank the lung zones differently


def test_one_lung_is_refused() -> None:
    lungs = np.zeros((32, 32), bool)
    lungs[8:20, 4:12] = True
    with pytest.raises(HmtError, match="two lung fields"):
        zone_atlas(lungs, np.ones((32, 32), bool), 2)


def test_hmt_zones_stores_draws_and_reports_its_table(shortcut_phantom: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    from heatmap_templates.templates.templates_file import read_zones

    templates = tmp_path / "templates.h5"
    shutil.copy(shortcut_phantom["templates"], templates)
    code, out, err = run_hmt(["zones", templates, "--heatmaps", shortcut_phantom["store"], "--truth", shortcut_phantom["data"],
                              "--json"], capsys, monkeypatch)
    assert code == 0, err
    record = json.loads(out)
    covid = record["classes"]["covid"]
    assert record["atlas"]["source"] == "phantom" and covid["interval"].startswith("bootstrap over patients")
    assert sum(row["share"] for row in covid["zones"].values()) == pytest.approx(1.0)
    for row in covid["zones"].values():
        if row["enrichment"] is not None:
            assert row["share_ci"][0] <= row["share"] <= row["share_ci"][1]
    stored = read_zones(templates)
    assert stored is not None and stored["classes"]["covid"]["zones"] == covid["zones"]
    code, out, err = run_hmt(["zones", templates, "--json"], capsys, monkeypatch)  # no store: the template's replicates
    assert code == 0 and json.loads(out)["classes"]["covid"]["interval"] == "the template's bootstrap replicates"
    stored = read_zones(templates)  # replaced by the second run
    assert stored is not None and stored["atlas"]["source"] == "reference"
    code, out, err = run_hmt(["figures", templates, "--out", tmp_path / "figures", "--format", "png", "--dpi", "40", "--json"],
                             capsys, monkeypatch)
    assert code == 0 and "zones" in json.loads(out)["figures"]

    from heatmap_templates.present.report import write_report

    page = write_report(templates, tmp_path / "report", heatmaps=shortcut_phantom["store"], gallery_size=1).index.read_text()
    border = stored["classes"]["covid"]["zones"]["border"]
    assert "<h3>Zones</h3>" in page and "figures/zones.png" in page
    assert f'{border["enrichment"]:.2f} [{border["enrichment_ci"][0]:.2f}, {border["enrichment_ci"][1]:.2f}]' in page


def test_compare_zones_puts_each_images_profile_beside_its_templates(shortcut_phantom: dict, capsys, monkeypatch) -> None:
    images = sorted((shortcut_phantom["data"] / "covid").glob("*.png"))[:2]
    code, out, err = run_hmt(["compare", *images, "--templates", shortcut_phantom["templates"], "--zones", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    for entry in json.loads(out)["results"]:
        zones = entry["zones"]
        if entry["predicted"] != "covid":
            assert zones is None  # no template of the predicted class to compare with
            continue
        assert set(zones["image"]) == set(ZONE_NAMES) and sum(zones["image"].values()) == pytest.approx(1.0, abs=1e-4)
        assert sum(zones["template"].values()) == pytest.approx(1.0, abs=1e-4) and len(zones["image_most_enriched"]) == 3


def test_a_trained_models_templates_read_as_the_planted_lesions_do(zone_phantom: dict) -> None:
    """At 96 px: over the 12 lung zones, the covid and virus templates rank the zones as their planted lesion priors
    do (measured Spearman 0.74-0.94 over three seeds; the benchmark asks 0.8 of a fully trained model), covid's most
    enriched lung zone is peripheral and virus's central."""
    from heatmap_templates.analysis.zone_report import run_zones
    from heatmap_templates.synth.ground_truth import canonical_anatomy, read_lesion_truth
    from heatmap_templates.templates.templates_file import read_templates

    frame = read_templates(zone_phantom["templates"]).reference_image
    lungs, body = canonical_anatomy(zone_phantom["data"], frame.shape)
    record, atlas = run_zones(zone_phantom["templates"], zone_phantom["store"], lungs=lungs, body=body)
    truth = read_lesion_truth(zone_phantom["data"]).resized(frame.shape)
    for label, depth in (("covid", "peripheral"), ("virus", "central")):
        zones = record["classes"][label]["zones"]
        prior = zone_profile(truth.probabilities[label], atlas)
        template = [zones[z]["enrichment"] for z in LUNG_ZONES]
        rho = stats.spearmanr(template, [prior[z]["enrichment"] for z in LUNG_ZONES]).statistic
        assert rho >= 0.5, (label, rho)
        assert LUNG_ZONES[int(np.argmax(template))].endswith(depth), (label, template)


@pytest.mark.parametrize("shift", [0.0, -0.05], ids=["minmax maps", "maps with negative values"])
def test_zone_intervals_draw_a_patients_images_together(atlas: ZoneAtlas, shift: float) -> None:
    """Three copies of each of 12 patients' maps: drawn by patient, the interval is exactly that of the 12 maps once
    each (a resample's three copies weigh alike); drawn image by image, it is narrower, as if there were 36 patients."""
    from heatmap_templates.analysis.zone_report import member_bootstrap

    rng = np.random.default_rng(3)
    distinct = rng.random((12, *atlas.labels.shape)) ** 4 + shift
    copies = np.repeat(distinct, 3, axis=0)
    patients = [f"p{i}" for i in range(12) for _ in range(3)]
    _, once = member_bootstrap(distinct, atlas, seed=5)
    shares, by_patient = member_bootstrap(copies, atlas, patients=patients, seed=5)
    _, by_image = member_bootstrap(copies, atlas, seed=5)
    assert np.allclose(np.array(by_patient, float), np.array(once, float), equal_nan=True)
    width = np.nanmean(np.diff(np.array(by_patient, float), axis=1))
    assert np.nanmean(np.diff(np.array(by_image, float), axis=1)) < 0.75 * width
    with pytest.raises(HmtError, match="one patient per member"):
        member_bootstrap(copies, atlas, patients=patients[:-1])

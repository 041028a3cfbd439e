"""Strategies in `hmt report`: the sentence, the table's strategy columns against the stored labels and an independent
Pearson correlation, the per-strategy and atypical galleries, the spectral embedding's SVG against the stored
coordinates, its size, and its tooltip and enlarged view in a real browser."""
from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from browser import Browser
from test_report import parse

from heatmap_templates.analysis.scoring import TemplateScorer
from heatmap_templates.analysis.strategies import StrategySettings
from heatmap_templates.analysis.strategy_search import add_strategies
from heatmap_templates.present.report import write_report
from heatmap_templates.present.report.embedding import FAN_STEP, INSET, PLOT, embedding_svg
from heatmap_templates.store import open_heatmaps
from heatmap_templates.templates.templates_file import read_strategies, read_templates

GALLERY = 6


@pytest.fixture(scope="module")
def split(shortcut_phantom: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shortcut phantom's covid class split into its strategies (on a copy of the templates file) and its report."""
    root = tmp_path_factory.mktemp("report_strategies")
    templates = root / "templates.h5"
    shutil.copy(shortcut_phantom["templates"], templates)
    add_strategies(templates, shortcut_phantom["store"], ["covid"])
    result = read_strategies(templates)["covid"]
    assert result.k >= 2, "the planted marker is a strategy of its own (tests/test_strategies.py)"
    summary = write_report(templates, root / "report", heatmaps=shortcut_phantom["store"], gallery_size=GALLERY)
    page = parse(summary.index)
    data = json.loads(page.rows_json)
    rows = [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]
    return {**shortcut_phantom, "templates": templates, "summary": summary, "result": result, "page": page, "rows": rows,
            "text": summary.index.read_text(encoding="utf-8")}


def _members(split: dict) -> list[tuple[int, int]]:
    """(store row, stored strategy 0-based) of each covid member, in the template's member order."""
    where = {path: i for i, path in enumerate(open_heatmaps(split["store"]).paths)}
    members = read_templates(split["templates"]).templates["covid"].members
    return [(where[m.path], int(label)) for m, label in zip(members, split["result"].labels, strict=True)]


def _gallery_rows(text: str, title: str) -> list[int]:
    """The store rows of the gallery under the heading that starts with ``title``, in page order."""
    start = text.index(f"<h3>{title}")
    end = text.find("<h3>", start + 4)
    return [int(key.split("-")[0]) for key in re.findall(r'<img data-thumb="([0-9]+-[0-9]+)"', text[start:end if end > 0 else None])]


def test_a_split_class_says_so_in_a_sentence_and_one_strategy_does_not(split: dict, tmp_path: Path) -> None:
    result = split["result"]
    clusters = ", ".join(f"{i + 1} ({s.size} members, consistency {s.consistency:.2f})" for i, s in enumerate(result.strategies))
    assert split["page"].keyed["strategy-covid-sentence"] == (
        f"covid has {result.k} strategies: {clusters}; K chosen by the eigengap of the members' graph Laplacian.")
    assert split["text"].count('<svg class="embedding"') == 1 and split["text"].count('<svg class="spectrum"') == 1

    one = tmp_path / "one.h5"
    shutil.copy(split["templates"], one)
    add_strategies(one, split["store"], ["covid"], StrategySettings(k=1, stability_resamples=0))
    summary = write_report(one, tmp_path / "report", heatmaps=split["store"], gallery_size=1)
    page = parse(summary.index)
    text = summary.index.read_text(encoding="utf-8")
    assert "strategy-covid-sentence" not in page.keyed and "strategies:" not in text
    assert "form one strategy (K = 1, given)" in text
    assert 'class="embedding"' not in text and "Strategy 1: its most typical" not in text
    columns = json.loads(page.rows_json)["columns"]
    assert all(row[columns.index("strategy")] is None for row in json.loads(page.rows_json)["rows"])


def test_the_strategy_column_holds_the_stored_labels(split: dict) -> None:
    rows = split["rows"]
    members = _members(split)
    for row, label in members:
        assert rows[row]["strategy"] == label + 1, rows[row]["path"]
    member_rows = {row for row, _ in members}
    assert all(row["strategy"] is None and row["strategy_similarity"] is None for row in rows if row["index"] not in member_rows)
    options = re.search(r'<select id="filter-strategy">(.*?)</select>', split["text"]).group(1)
    assert re.findall(r"<option>([^<]*)</option>", options) == [str(n + 1) for n in range(split["result"].k)] + ["none"]
    with open(split["summary"].out / "images.csv", encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    assert "strategy" in header and "strategy_similarity" in header


def test_typicality_is_the_pearson_correlation_with_the_own_strategy_prototype(split: dict) -> None:
    """The table's number for a few members of each strategy against numpy's correlation of the member's prepared map
    with its strategy's stored prototype."""
    rows, result = split["rows"], split["result"]
    members = _members(split)
    chosen = [row for label in range(result.k) for row in [r for r, own in members if own == label][:3]]
    reader = open_heatmaps(split["store"])
    scorer = TemplateScorer(split["templates"])
    (batch,) = reader.iter_batches(len(chosen), chosen)
    maps = scorer.prepare_maps(batch.images, batch.raw).maps[:, scorer.template_classes.index("covid")]
    for row, prepared in zip(chosen, maps, strict=True):
        prototype = np.asarray(result.strategies[rows[row]["strategy"] - 1].mean)
        expected = np.corrcoef(np.ravel(prepared).astype(np.float64), prototype.ravel())[0, 1]
        assert rows[row]["strategy_similarity"] == pytest.approx(expected, abs=2e-4), rows[row]["path"]


def test_galleries_rank_members_against_their_own_strategy(split: dict) -> None:
    """Each strategy's gallery: its most typical members; the atypical gallery: the members least similar to their
    own strategy's prototype (those of the typical gallery aside), and its note says so."""
    rows, text = split["rows"], split["text"]
    similarity = {row["index"]: row["strategy_similarity"] for row in rows if row["strategy"] is not None}
    for label in range(split["result"].k):
        shown = _gallery_rows(text, f"Strategy {label + 1}: its most typical members")
        own = sorted((v for r, v in similarity.items() if rows[r]["strategy"] == label + 1), reverse=True)
        assert shown and all(rows[r]["strategy"] == label + 1 for r in shown)
        assert [similarity[r] for r in shown] == own[:len(shown)]
    typical = set(_gallery_rows(text, "Most typical members"))
    atypical = _gallery_rows(text, "Most atypical members (lowest strategy similarity")
    assert len(atypical) == min(GALLERY, len(similarity) - len(typical))
    assert [similarity[r] for r in atypical] == sorted(v for r, v in similarity.items() if r not in typical)[:len(atypical)]
    assert "ranked against its own strategy's prototype" in text


def _embedding(text: str) -> ET.Element:
    return ET.fromstring(re.search(r'<svg class="embedding".*?</svg>', text, re.DOTALL).group(0))


def test_the_embedding_has_one_point_per_clustered_member_at_its_coordinates(split: dict) -> None:
    result = split["result"]
    svg = _embedding(split["text"])
    points = [(int(g.get("data-s")), use) for g in svg.iter("g") if g.get("data-s") for use in g.iter("use")]
    clustered = np.isfinite(result.embedding).all(axis=1)
    assert len(points) == int(clustered.sum())
    position = {row: i for i, (row, _) in enumerate(_members(split))}
    stored = np.asarray([result.embedding[position[int(use.get("data-r"))]] for _, use in points])
    assert sorted(position[int(use.get("data-r"))] for _, use in points) == list(np.flatnonzero(clustered))
    assert all(number == result.labels[position[int(use.get("data-r"))]] + 1 for number, use in points)
    drawn = np.asarray([[float(use.get("x")), float(use.get("y"))] for _, use in points])
    expected = np.zeros_like(drawn)
    for axis, (low, high) in ((0, (PLOT[0] + INSET, PLOT[2] - INSET)), (1, (PLOT[3] - INSET, PLOT[1] + INSET))):
        values = stored[:, axis]  # their range onto the plot's (y up), drawn to 1 decimal
        expected[:, axis] = low + (values - values.min()) / (values.max() - values.min()) * (high - low)
    crowded = (np.hypot(*(expected[:, None, :] - expected[None, :, :]).transpose(2, 0, 1)) < 0.5).sum(axis=1) > 1
    assert np.abs(expected[~crowded] - drawn[~crowded]).max(initial=0.0) <= 0.05 + 1e-9  # a point alone: at its place
    if crowded.any():  # points at one place: fanned out around it, each distinct, none far
        assert len({(x, y) for x, y in drawn[crowded]}) == int(crowded.sum())
        assert np.hypot(*(expected[crowded] - drawn[crowded]).T).max() <= FAN_STEP * np.sqrt(crowded.sum()) + 1.0
    assert drawn[:, 0].min() >= PLOT[0] and drawn[:, 0].max() <= PLOT[2] and drawn[:, 1].min() >= PLOT[1] and drawn[:, 1].max() <= PLOT[3]
    colours = {g.get("data-s"): g.get("fill") for g in svg.iter("g") if g.get("data-s")}
    markers = {g.get("data-s"): {use.get("href") for use in g.iter("use")} for g in svg.iter("g") if g.get("data-s")}
    assert len(set(colours.values())) == len(colours) and all(len(m) == 1 for m in markers.values())
    assert len({next(iter(m)) for m in markers.values()}) == len(markers), "a marker shape per strategy"
    assert all(use.get("style") is None for _, use in points)
    spectrum = ET.fromstring(re.search(r'<svg class="spectrum".*?</svg>', split["text"], re.DOTALL).group(0))
    bars = [rect for rect in spectrum.iter("rect") if rect.find("title") is not None]
    assert len(bars) == len(result.eigenvalues) and f"K = {result.k} (eigengap)" in "".join(spectrum.itertext())


def test_points_at_one_place_are_fanned_out_and_single_points_stay() -> None:
    from heatmap_templates.present.report.embedding import fan_out

    xs = np.array([50.0] * 30 + [100.0, 200.0])
    ys = np.array([60.0] * 30 + [100.0, 150.0])
    fanned_x, fanned_y = fan_out(xs, ys, (0.0, 0.0, 400.0, 300.0))
    assert len({(round(x, 1), round(y, 1)) for x, y in zip(fanned_x[:30], fanned_y[:30], strict=True)}) == 30
    distances = np.hypot(fanned_x[:30] - 50.0, fanned_y[:30] - 60.0)
    assert distances[0] == 0.0 and distances.max() <= FAN_STEP * np.sqrt(29) + 1e-9
    assert (fanned_x[30:] == xs[30:]).all() and (fanned_y[30:] == ys[30:]).all()


def test_the_embedding_stays_small_and_the_report_light() -> None:
    """1219 points (cxr4's training store) in six strategies fit in 150 kB; the phantom report's page in 2 MB."""
    rng = np.random.default_rng(0)
    points = [[i, float(x), float(y), int(s)] for i, (x, y, s) in enumerate(zip(rng.normal(size=1219), rng.normal(size=1219),
                                                                               rng.integers(0, 6, 1219), strict=True))]
    svg = embedding_svg("covid", 1, points, 6)
    assert len(svg.encode("utf-8")) < 150_000
    assert len(ET.fromstring(svg).findall(".//g[@data-s]/use")) == 1219


def test_the_report_page_stays_under_two_megabytes(split: dict) -> None:
    assert split["summary"].page_bytes < 2 * 1024 * 1024


# --------------------------------------------------------------------------- in a real browser


# The first point (in a gallery or not) that no other point covers, scrolled into view: the one a mouse reaches.
TOPMOST = """(function (inGallery) {
  var points = document.querySelectorAll("svg.embedding [data-r]");
  for (var i = 0; i < points.length; i++) {
    var p = points[i], key = p.dataset.r + "-" + p.ownerSVGElement.dataset.k;
    var shown = !!document.querySelector('.gallery button[data-thumb="' + key + '"]');
    var any = !!document.querySelector('.gallery button[data-thumb^="' + p.dataset.r + '-"]');
    if (inGallery ? !shown : any) continue;
    p.scrollIntoView({block: "center"});
    var box = p.getBoundingClientRect();
    if (document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2) === p) return p.dataset.r;
  }
  return null;
})(%s)"""
TIP = "document.getElementById('embedding-tip')"
OPEN = "document.getElementById('lightbox').classList.contains('open')"


def test_a_point_shows_its_tooltip_and_opens_its_view_or_row(split: dict, browser: Browser) -> None:
    """Hover shows the thumbnail and numbers; click or Enter opens the enlarged view of a gallery image (focus back on
    the point when it closes); a point outside the galleries goes to its row; the arrow keys move between points."""
    browser.resize(1280, 900)
    browser.open(split["summary"].index.resolve().as_uri())
    rows = split["rows"]
    shown = browser.evaluate(TOPMOST % "true")
    assert shown is not None, "a gallery image's point that the mouse can reach"
    point = f"svg.embedding [data-r='{shown}']"
    browser.hover(point)
    assert not browser.evaluate(f"{TIP}.hidden")
    assert Path(rows[int(shown)]["path"]).name in browser.evaluate(f"{TIP}.textContent")
    key = shown + "-" + browser.evaluate("document.querySelector('svg.embedding').dataset.k")
    assert browser.evaluate(f"{TIP}.querySelector('img').src === document.querySelector('.gallery img[data-thumb=\"{key}\"]').src")
    browser.click(point)
    assert browser.evaluate(OPEN)
    assert browser.evaluate(f"document.getElementById('lightbox-caption').textContent === "
                            f"document.querySelector('.gallery button[data-thumb=\"{key}\"]').dataset.caption")
    browser.press("Escape")
    assert not browser.evaluate(OPEN) and browser.evaluate("document.activeElement.dataset.r") == shown
    browser.press("Enter")
    assert browser.evaluate(OPEN), "Enter on a focused point opens the view"
    browser.press("Escape")
    browser.press("ArrowRight")
    moved = browser.evaluate("document.activeElement.dataset.r")
    assert moved not in (None, shown) and Path(rows[int(moved)]["path"]).name in browser.evaluate(f"{TIP}.textContent")
    assert browser.evaluate("document.querySelectorAll('svg.embedding [tabindex=\"0\"]').length") == 1, "one tab stop per plot"

    other = browser.evaluate(TOPMOST % "false")
    assert other is not None, "a point outside the galleries that the mouse can reach"
    browser.hover(f"svg.embedding [data-r='{other}']")
    text = browser.evaluate(f"{TIP}.textContent")
    assert browser.evaluate(f"{TIP}.querySelector('img') === null") and f"{rows[int(other)]['strategy_similarity']:.3f}" in text
    browser.click(f"svg.embedding [data-r='{other}']")
    assert not browser.evaluate(OPEN)
    assert browser.evaluate("document.activeElement.dataset.row") == other
    assert browser.evaluate("document.activeElement.classList.contains('highlight')")

    browser.evaluate("(s => { s.value = '2'; s.dispatchEvent(new Event('input')); })(document.getElementById('filter-strategy'))")
    expected = sum(row["strategy"] == 2 for row in rows)
    browser.wait_for(f"document.querySelectorAll('#image-table tbody tr').length === {min(expected, 100)}")
    assert set(browser.evaluate("Array.from(document.querySelectorAll('#image-table td[data-col=strategy]')).map(td => td.textContent)")) == {"2"}

"""The report's second-edition sections: the ground-truth panel, the glossary (one name per quantity), training
curves, links to the figures' vector versions, the thumbnails' scale and the similarity figure's colour scale."""
from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from heatmap_templates.present.report import write_report
from heatmap_templates.present.report.glossary import CONSISTENCY, GLOSSARY
from heatmap_templates.templates.templates_file import read_checks, save_check


class Headers(HTMLParser):
    """Every table header's text and title, every link, and the glossary's terms."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[tuple[str, str | None]] = []
        self.links: list[str] = []
        self.terms: list[str] = []
        self.keyed: dict[str, str] = {}
        self._open: list | None = None
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "th":
            self._open = ["", attributes.get("title")]
        elif tag == "dt":
            self._open = [""]
        if tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])
        if "data-key" in attributes:
            self._key = attributes["data-key"]
            self.keyed[self._key] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self._open is not None:
            self.headers.append((self._open[0].strip(), self._open[1]))
            self._open = None
        elif tag == "dt" and self._open is not None:
            self.terms.append(self._open[0])
            self._open = None
        if tag in ("td", "span"):
            self._key = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[0] += data
        if self._key is not None:
            self.keyed[self._key] += data


def _parse(path: Path) -> Headers:
    parser = Headers()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def reports(shortcut_phantom: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shortcut phantom's report with the demo's ground-truth check stored in (a copy of) its templates file,
    and one without it."""
    from heatmap_templates.synth import GROUND_TRUTH_CHECK, ground_truth_check

    root = tmp_path_factory.mktemp("sections")
    plain, checked = root / "plain.h5", root / "checked.h5"
    shutil.copy(shortcut_phantom["templates"], plain)
    shutil.copy(shortcut_phantom["templates"], checked)
    record, maps = ground_truth_check(checked, shortcut_phantom["data"])
    save_check(checked, GROUND_TRUTH_CHECK, record, maps=maps, command="test")
    with_check = write_report(checked, root / "checked", heatmaps=shortcut_phantom["store"], gallery_size=2)
    without = write_report(plain, root / "plain", heatmaps=shortcut_phantom["store"], gallery_size=2)
    return {**shortcut_phantom, "checked": checked, "with": with_check, "without": without, "record": record, "maps": maps}


def test_the_ground_truth_panel_shows_the_stored_aucs_beside_the_lesion_map(reports: dict) -> None:
    stored = read_checks(reports["checked"])["ground_truth"]
    assert stored["classes"] == reports["record"]["classes"]
    np.testing.assert_array_equal(stored["maps"]["lesion_covid"], reports["maps"]["lesion_covid"].astype(np.float32))
    page = _parse(reports["with"].index)
    covid = stored["classes"]["covid"]
    assert covid["auc_frame"] is not None and covid["auc_frame_ci"] is not None
    assert float(page.keyed["ground-truth-covid-auc-frame"]) == pytest.approx(covid["auc_frame"], abs=5e-4)
    low, high = covid["auc_frame_ci"]
    assert page.keyed["ground-truth-covid-auc-frame-ci"] == f"{covid['auc_frame']:.3f} [{low:.3f}, {high:.3f}]"
    text = reports["with"].index.read_text(encoding="utf-8")
    assert 'id="ground-truth"' in text and 'src="figures/ground_truth.png"' in text
    assert (reports["with"].out / "figures" / "ground_truth.png").is_file()
    plain = reports["without"].index.read_text(encoding="utf-8")
    assert 'id="ground-truth"' not in plain and "ground_truth.png" not in plain
    assert not (reports["without"].out / "figures" / "ground_truth.png").exists()


ABBREVIATION = re.compile(r"\b(AUC|AOPC|LOO|CI|ARI|F1)\b|^(t|d|p|peak t|mean d)$")


def test_the_glossary_defines_each_term_once_and_every_abbreviation_has_a_title(reports: dict) -> None:
    page = _parse(reports["with"].index)
    assert sorted(page.terms) == sorted(GLOSSARY) and len(set(page.terms)) == len(page.terms)
    abbreviated = [(text, title) for text, title in page.headers if ABBREVIATION.search(text)]
    assert abbreviated, "the page's tables name abbreviated quantities"
    assert all(title for _, title in abbreviated), [text for text, title in abbreviated if not title]
    text = reports["with"].index.read_text(encoding="utf-8")
    assert "r̄" not in text and "\\bar{r}" not in text
    assert text.count("mean pairwise correlation") == text.count(CONSISTENCY), "one name: consistency (mean pairwise correlation)"
    assert "sim. " not in text and "sim. to" not in text


def test_training_curves_appear_in_the_classifier_section(reports: dict) -> None:
    from heatmap_templates.model.model_file import read_model_info

    info = read_model_info(reports["model"])
    assert info is not None and info.training.get("history"), "the phantom's model records its epochs"
    text = reports["with"].index.read_text(encoding="utf-8")
    overview = text[text.index('id="overview"'):text.index('id="templates"')]
    assert 'src="figures/training_curves.png"' in overview


def test_vector_links_point_to_files_beside_the_report(reports: dict) -> None:
    out = reports["with"].out
    links = [link for link in _parse(reports["with"].index).links if link.endswith((".pdf", ".svg"))]
    assert "figures/template_means.pdf" in links and "figures/ground_truth.pdf" in links
    for link in links:
        assert not link.startswith(("/", "file:", "http")) and ".." not in link
        assert (out / link).is_file(), link


def test_the_colour_bar_shows_what_the_thumbnails_show() -> None:
    from heatmap_templates.present.report.thumbnails import OVERLAY_GRAY, colour_table, gradient_css, overlay_rgb

    table = colour_table("cividis")
    stops = [tuple(int(v) for v in m) for m in re.findall(r"rgb\((\d+), (\d+), (\d+)\)", gradient_css(table))]
    rgb = overlay_rgb(np.full((1, 101), OVERLAY_GRAY, np.float32), np.linspace(0.0, 1.0, 101)[None], table, side=101)
    assert stops[0] == tuple(int(v) for v in rgb[0, 0]) == (128, 128, 128), "low: the image itself"
    assert stops[-1] == tuple(int(v) for v in rgb[0, -1]), "high: the map's top colour over the image"


def test_the_similarity_scale_is_the_range_between_templates() -> None:
    from heatmap_templates.present.figures.templates import similarity_scale

    values = np.array([[1.0, 0.91, 0.87], [0.91, 1.0, 0.95], [0.87, 0.95, 1.0]])
    assert similarity_scale(values) == pytest.approx((0.87, 0.95))
    low, high = similarity_scale(np.array([[1.0, 0.9], [0.9, 1.0]]))
    assert high - low == pytest.approx(0.05) and low < 0.9 < high

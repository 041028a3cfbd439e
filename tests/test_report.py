"""`hmt report`: a self-contained page whose numbers are the library's, checked in a real browser where one exists."""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, find_chromium
from cli_helpers import assert_user_error, run_hmt
from prerequisites import missing

from heatmap_templates.present.report import write_report
from heatmap_templates.present.report.collect import ROW_COLUMNS
from heatmap_templates.present.report.thumbnails import overlay_rgb, scaled
from heatmap_templates.store import open_heatmaps
from heatmap_templates.templates.templates_file import read_templates


class PageParser(HTMLParser):
    """Every referenced URL, every data-key's text, the rows JSON and the gallery images of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.keyed: dict[str, str] = {}
        self.gallery_images: list[dict] = []
        self.rows_json = ""
        self._key: str | None = None
        self._in_rows = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        for name in ("src", "href", "action", "poster"):
            if attributes.get(name):
                self.references.append(attributes[name])
        if "data-key" in attributes:
            self._key = attributes["data-key"]
            self.keyed[self._key] = ""
        if tag == "img" and "data-thumb" in attributes:
            self.gallery_images.append(attributes)
        if tag == "script" and attributes.get("id") == "rows-data":
            self._in_rows = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "span"):
            self._key = None
        if tag == "script":
            self._in_rows = False

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self.keyed[self._key] += data
        if self._in_rows:
            self.rows_json += data


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def page_number(text: str) -> float | None:
    return None if text.strip() == "–" else float(text)


@pytest.fixture(scope="module")
def report(shortcut_phantom: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shortcut phantom's report (a copy of its templates file, so other tests' additions do not leak in)."""
    root = tmp_path_factory.mktemp("report")
    templates = root / "templates.h5"
    shutil.copy(shortcut_phantom["templates"], templates)
    summary = write_report(templates, root / "report", heatmaps=shortcut_phantom["store"], gallery_size=6)
    return {**shortcut_phantom, "templates": templates, "summary": summary, "out": root / "report"}


def test_every_referenced_file_exists_and_nothing_comes_from_the_network(report: dict) -> None:
    out = report["out"]
    page = parse(out / "index.html")
    text = (out / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|url\(|@import", text, re.IGNORECASE), "no external resource"
    local = [ref for ref in page.references if not ref.startswith(("#", "data:"))]
    assert local, "the page references its images and figures"
    for reference in local:
        assert (out / reference).is_file(), reference
    assert page.gallery_images and all(image.get("loading") == "lazy" for image in page.gallery_images)
    assert (out / "images.csv").is_file() and (out / "report.json").is_file()
    written = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert written == {p.relative_to(out) for p in report["summary"].files}
    assert report["summary"].total_bytes == sum((out / p).stat().st_size for p in written if p.name not in ("report.json", "images.csv"))


def test_rows_equal_what_compare_reports_for_the_same_images(report: dict) -> None:
    """Independent of the report's own path: the model re-run by `Comparer` on the image files gives each row's numbers."""
    from heatmap_templates.analysis.compare import Comparer

    page = parse(report["out"] / "index.html")
    data = json.loads(page.rows_json)
    assert data["columns"] == list(ROW_COLUMNS)
    reader = open_heatmaps(report["store"])
    rows = [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]
    assert [os.path.join(report["data"], row["path"]) for row in rows] == reader.paths, "paths relative to the data root"
    run = Comparer(report["templates"], model=report["model"]).compare(reader.paths)
    assert len(run.results) == len(rows)
    for row, result in zip(rows, run.results, strict=True):
        assert row["predicted"] == result.predicted
        assert row["probability"] == pytest.approx(result.probabilities[result.predicted], abs=1e-3)
        assert row["best_template"] == result.best_match
        if result.predicted_similarity is None:
            assert row["similarity"] is None
        else:
            assert row["similarity"] == pytest.approx(result.predicted_similarity, abs=2e-3)
        clear_of_threshold = result.atypical_threshold is None or abs(result.predicted_correlation - result.atypical_threshold) > 2e-3
        if clear_of_threshold:  # float noise between stored and fresh maps may only move an image sitting on the threshold
            assert row["atypical"] == result.atypical, row["path"]
    labels = [reader.class_names[int(k)] for k in reader.labels]
    assert [row["label"] for row in rows] == labels
    assert [row["correct"] for row in rows] == [bool(c) for c in reader.correct]


def test_page_numbers_equal_the_library_values(report: dict) -> None:
    from heatmap_templates.numeric.metrics import classification_report

    page = parse(report["out"] / "index.html")
    reader = open_heatmaps(report["store"])
    expected = classification_report(reader.probabilities, reader.labels, reader.class_names, predicted=reader.predicted)
    assert page_number(page.keyed["store-accuracy"]) == pytest.approx(expected["accuracy"], abs=5e-4)
    for i, row in enumerate(expected["confusion_matrix"]):
        for j, value in enumerate(row):
            assert int(page.keyed[f"store-cm-{i}-{j}"]) == value
    for name, values in expected["per_class"].items():
        assert page_number(page.keyed[f"store-{name}-recall"]) == pytest.approx(values["recall"], abs=5e-4)
    numbers = json.loads((report["out"] / "report.json").read_text())
    covid = next(c for c in numbers["classes"] if c["name"] == "covid")
    template = read_templates(report["templates"]).templates["covid"]
    assert covid["members"] == template.count
    assert covid["loo_median"] == pytest.approx(float(np.median(template.loo_correlations)))
    text = (report["out"] / "index.html").read_text(encoding="utf-8")
    assert f"<td>{template.count}</td>" in text


def test_csv_holds_the_table_rows(report: dict) -> None:
    page = parse(report["out"] / "index.html")
    data = json.loads(page.rows_json)
    with open(report["out"] / "images.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(data["rows"])
    for line, row in zip(table, data["rows"], strict=True):
        values = dict(zip(data["columns"], row, strict=True))
        assert line["path"] == values["path"] and line["predicted"] == values["predicted"]
        assert float(line["probability"]) == pytest.approx(values["probability"])


def test_galleries_sort_members_by_leave_one_out_correlation(report: dict) -> None:
    page = parse(report["out"] / "index.html")
    template = read_templates(report["templates"]).templates["covid"]
    reader = open_heatmaps(report["store"])
    by_path = {m.path: float(v) for m, v in zip(template.members, template.loo_correlations, strict=True)}
    shown = [reader.paths[int(image["data-thumb"].split("-")[0])] for image in page.gallery_images]
    typical, atypical = shown[:6], shown[6:12]
    assert [by_path[p] for p in typical] == sorted(by_path.values(), reverse=True)[:6]
    assert [by_path[p] for p in atypical] == sorted(by_path.values())[:6]


def test_single_file_report_embeds_everything(report: dict, tmp_path: Path) -> None:
    summary = write_report(report["templates"], tmp_path / "single", heatmaps=report["store"], gallery_size=2, single_file=True)
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == ["index.html", "report.json"]
    page = parse(summary.index)
    assert page.references and all(ref.startswith(("#", "data:")) for ref in page.references)
    assert summary.total_bytes == summary.page_bytes == summary.index.stat().st_size


def test_a_new_report_replaces_the_old_only_when_complete(report: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report"
    write_report(report["templates"], out, heatmaps=report["store"], gallery_size=1)
    before = (out / "index.html").read_bytes()
    import heatmap_templates.present.report as report_module

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module.html, "page", fail)
    with pytest.raises(Exception, match="no space left"):
        write_report(report["templates"], out, heatmaps=report["store"], gallery_size=3)
    assert (out / "index.html").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"], "no temporary folder left behind"


def test_report_is_deterministic(report: dict, tmp_path: Path) -> None:
    first = write_report(report["templates"], tmp_path / "a", heatmaps=report["store"], gallery_size=2)
    write_report(report["templates"], tmp_path / "b", heatmaps=report["store"], gallery_size=2)
    for path in first.files:
        relative = path.relative_to(tmp_path / "a")
        if relative.name != "report.json":
            assert path.read_bytes().replace(b"/a/", b"/b/") == (tmp_path / "b" / relative).read_bytes(), relative


def test_cli_report_and_its_user_errors(report: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_hmt(["report", report["templates"], "--heatmaps", report["store"], "--out", tmp_path / "r", "--gallery", "1", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert Path(summary["index"]).is_file() and summary["images"] == len(open_heatmaps(report["store"]))
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    code, out, err = run_hmt(["report", report["templates"], "--heatmaps", report["store"], "--out", foreign], capsys, monkeypatch)
    assert_user_error(code, err, "thesis", "not an hmt report folder")
    assert (foreign / "chapter1.tex").read_text() == "precious"
    (tmp_path / "r" / "notes.md").write_text("mine")  # an earlier report with a file of the user's: refused, kept
    code, out, err = run_hmt(["report", report["templates"], "--heatmaps", report["store"], "--out", tmp_path / "r"], capsys, monkeypatch)
    assert_user_error(code, err, "notes.md", "holds files an hmt report does not write")
    assert (tmp_path / "r" / "notes.md").read_text() == "mine" and (tmp_path / "r" / "index.html").is_file()
    (tmp_path / "r" / "notes.md").unlink()
    monkeypatch.chdir(tmp_path / "r")  # the earlier report as the working folder: rewritten in place
    code, out, err = run_hmt(["report", report["templates"], "--heatmaps", report["store"], "--out", ".", "--gallery", "1"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert (tmp_path / "r" / "index.html").is_file() and not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]
    code, out, err = run_hmt(["report", tmp_path / "missing.h5", "--out", tmp_path / "r2"], capsys, monkeypatch)
    assert_user_error(code, err, "missing.h5")
    code, out, err = run_hmt(["report", "--help"], capsys, monkeypatch)
    assert code == 0 and "Example: hmt report" in out


def test_report_with_data_evaluates_the_model_and_templates(report: dict, tmp_path: Path) -> None:
    from heatmap_templates.analysis.compare import evaluate_templates

    summary = write_report(report["templates"], tmp_path / "r", heatmaps=report["store"], data=report["data"], gallery_size=1)
    page = parse(summary.index)
    expected = evaluate_templates(report["templates"], report["data"])
    assert page_number(page.keyed["template-match"]) == pytest.approx(expected.template_match["accuracy"], abs=5e-4)
    assert page_number(page.keyed["eval-accuracy"]) == pytest.approx(expected.classification["accuracy"], abs=5e-4)
    for key, ci in (("template-match-ci", expected.template_match["accuracy_ci"]),
                    ("eval-accuracy-ci", expected.classification["accuracy_ci"])):  # the interval beside the number, seeded
        assert page.keyed[key] == f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def test_binary_and_multi_label_reports(binary_phantom: dict, multi_label_phantom: dict, tmp_path: Path) -> None:
    for name, phantom in (("binary", binary_phantom), ("multi", multi_label_phantom)):
        templates = tmp_path / f"{name}.h5"
        shutil.copy(phantom["templates"], templates)
        summary = write_report(templates, tmp_path / name, heatmaps=phantom["store"], gallery_size=2)
        page = parse(summary.index)
        rows = json.loads(page.rows_json)["rows"]
        reader = open_heatmaps(phantom["store"])
        assert len(rows) == len(reader)
        if name == "multi":
            label = ROW_COLUMNS.index("label")
            expected = [", ".join(n for n, v in zip(reader.class_names, values, strict=True) if v == 1) for values in reader.labels]
            assert [row[label] for row in rows] == expected
            assert any(key.endswith("-auc") for key in page.keyed)
        else:
            assert page.keyed["store-accuracy"]


def test_thumbnail_overlay_keeps_the_image_where_the_map_is_low() -> None:
    image = np.full((8, 8), 0.5, np.float32)
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[:4] = 1.0
    table = np.zeros((256, 3), np.uint8)
    table[:, 0] = 255  # all red
    rgb = overlay_rgb(image, heatmap, table, side=8)
    assert tuple(rgb[7, 0]) == (128, 128, 128), "a zero map leaves the gray image"
    assert rgb[0, 0, 0] > rgb[0, 0, 1], "a hot map tints the image with the colour map"
    assert scaled(np.full((4, 4), 3.0)).max() == 0.0


def test_the_enlarged_view_is_never_an_upsampled_thumbnail() -> None:
    import cv2

    from heatmap_templates.present.report.thumbnails import THUMBNAIL_SIDE, colour_table, enlarged_views

    table = colour_table("cividis")
    for side in (64, 320):
        image, heatmap = np.random.default_rng(0).random((2, side, side), dtype=np.float32)
        views = enlarged_views("3-1", 3, image, heatmap, table)
        sizes = {name: cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR).shape[:2] for name, content in views.items()}
        assert sizes["3-plain"] == (side, side), "the image without its map at its stored size"
        assert ("3-1-large" in sizes) == (side > THUMBNAIL_SIDE) and sizes.get("3-1-large", (side, side)) == (side, side)


def test_the_report_runs_in_a_real_browser(report: dict, tmp_path: Path) -> None:
    """Headless Chromium opens the report from disk: the script marks the page ready and fills the table."""
    browser = find_chromium()
    if browser is None:
        missing("no Chromium here: `.ci/run` installs Debian's chromium package; install it to run this test")
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    url = (report["out"] / "index.html").resolve().as_uri()
    done = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert re.search(r'<body[^>]*data-ready="true"', dom), "the page's script ran to the end"
    table = dom[dom.index('id="image-table"'):]
    tbody = table[table.index("<tbody>"):table.index("</tbody>")]
    expected_rows = min(100, len(open_heatmaps(report["store"])))
    assert tbody.count("<tr>") == expected_rows
    assert "rows 1–" in dom and 'class="gallery"' in dom
    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, "--window-size=1280,900", f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    import cv2

    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (900, 1280) and pixels.std() > 10, "the screenshot shows a page"


def test_a_store_of_another_model_is_refused(report: dict, binary_phantom: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    code, _, err = run_hmt(["report", report["templates"], "--heatmaps", binary_phantom["store"], "--out", tmp_path / "r"],
                           capsys, monkeypatch)
    assert_user_error(code, err, "was made with another model", "give the store the templates were built from")
    assert not (tmp_path / "r").exists()


def _written(folder: Path) -> dict[str, bytes]:
    """Every file a report wrote, and every data: URI inside one decoded (a single file's CSV and images), by where."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = path.read_bytes()
        found[str(path.relative_to(folder))] = content
        for i, match in enumerate(re.finditer(rb"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]+)", content)):
            found[f"{path.relative_to(folder)}, data URI {i}"] = base64.b64decode(match.group(1))
    return found


def _leaks(folder: Path, needles: set[str]) -> list[str]:
    return [f"{needle!r} in {where}" for where, content in _written(folder).items() for needle in sorted(needles)
            if needle.encode() in content]


def test_a_shared_report_shows_no_path_of_the_machine_that_made_it(report: dict, tmp_path: Path, tmp_path_factory, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every written file (page, CSV, report.json; a single file's embedded CSV too): image paths relative to the data
    root, the model by name only; pseudonymised, no original file name, no model name and never the salt."""
    from heatmap_templates.present.report import privacy

    machine = {str(tmp_path_factory.getbasetemp()), str(report["root"]), str(report["data"]), str(report["model"]),
               str(report["store"]), str(report["out"]), str(tmp_path)}
    machine |= {os.path.realpath(p) for p in machine}
    assert not _leaks(report["out"], machine)
    single = write_report(report["templates"], tmp_path / "single", heatmaps=report["store"], gallery_size=2, single_file=True)
    assert not _leaks(tmp_path / "single", machine) and not single.warnings
    rows = json.loads(parse(report["out"] / "index.html").rows_json)["rows"]
    assert rows[0][ROW_COLUMNS.index("path")] == "covid/covid_0000.png"
    assert "<td>model.keras (sha256" in (report["out"] / "index.html").read_text(encoding="utf-8"), "the model by name"

    names = {Path(path).name for path in open_heatmaps(report["store"]).paths} | {"model.keras"}
    salt = "pepper-5f1c9e"
    code, _, err = run_hmt(["report", report["templates"], "--heatmaps", report["store"], "--out", tmp_path / "p", "--gallery", "2",
                            "--pseudonymise", "--salt", salt], capsys, monkeypatch)
    assert code == 0, err
    assert "hmt: warning:" in err and "burned into the images" in err
    assert not _leaks(tmp_path / "p", machine | names | {salt})
    rows = json.loads(parse(tmp_path / "p" / "index.html").rows_json)["rows"]
    assert rows[0][ROW_COLUMNS.index("path")] == hashlib.sha256((salt + "covid/covid_0000.png").encode()).hexdigest()[:12]
    recorded = json.loads((tmp_path / "p" / "report.json").read_text())["summary"]
    assert recorded["pseudonymised"] and "burned into the images" in recorded["warnings"][0]
    assert "burned into the images" in (tmp_path / "p" / "index.html").read_text(encoding="utf-8")

    monkeypatch.setattr(privacy.secrets, "token_hex", lambda n: "drawnsalt0drawnsalt1")  # the salt drawn for a report
    drawn = write_report(report["templates"], tmp_path / "ps", heatmaps=report["store"], gallery_size=2, single_file=True,
                         pseudonymise=True)
    assert drawn.warnings and not _leaks(tmp_path / "ps", machine | names | {"drawnsalt0drawnsalt1"})
    code, _, err = run_hmt(["report", report["templates"], "--heatmaps", report["store"], "--out", tmp_path / "x", "--salt", salt],
                           capsys, monkeypatch)
    assert_user_error(code, err, "--salt", "--pseudonymise")


def _open(browser: Browser, report: dict, width: int = 1280, height: int = 900) -> None:
    browser.resize(width, height)
    browser.open((report["out"] / "index.html").resolve().as_uri())


OPEN = "document.getElementById('lightbox').classList.contains('open')"
FOCUS_IN_BOX = "document.getElementById('lightbox').contains(document.activeElement)"


def test_a_real_click_on_a_thumbnail_opens_the_enlarged_view(report: dict, browser: Browser) -> None:
    """A click lands on the image inside the thumbnail's button; the view keeps focus while open, steps through its
    gallery, shows the image without its map, and Esc closes it with focus back on the thumbnail that opened it."""
    _open(browser, report)
    browser.click(".gallery button[data-thumb] img")
    assert browser.evaluate(OPEN), "a click on a thumbnail opens the enlarged view"
    first = "document.querySelectorAll('.gallery')[0].querySelectorAll('button[data-thumb]')"
    assert browser.evaluate(f"document.getElementById('lightbox-caption').textContent === {first}[0].dataset.caption")
    assert browser.evaluate("document.querySelector('#lightbox .colourbar').getBoundingClientRect().width > 0"), "a colour bar"
    for shift in (False,) * 6 + (True,) * 6:
        browser.press("Tab", shift=shift)
        assert browser.evaluate(FOCUS_IN_BOX), "focus stays in the open view"
    browser.press("ArrowRight")
    assert browser.evaluate(f"document.getElementById('lightbox-caption').textContent === {first}[1].dataset.caption")
    browser.click("#lightbox-next")
    assert browser.evaluate(f"document.getElementById('lightbox-caption').textContent === {first}[2].dataset.caption")
    browser.press("ArrowLeft")
    assert browser.evaluate(f"document.getElementById('lightbox-caption').textContent === {first}[1].dataset.caption")
    browser.click("#lightbox-plain")
    assert browser.evaluate("document.querySelector('#lightbox img').src.endsWith('-plain.jpg')"), "the image without its map"
    assert browser.evaluate("document.getElementById('lightbox-plain').getAttribute('aria-pressed') === 'true'")
    browser.press("Escape")
    assert not browser.evaluate(OPEN)
    assert browser.evaluate(f"document.activeElement === {first}[0]"), "focus back on the thumbnail that opened the view"
    browser.click("#image-table button[data-thumb]")  # the table's view button opens the same view
    assert browser.evaluate(OPEN)
    browser.press("Escape")
    assert browser.evaluate("document.activeElement === document.querySelector('#image-table button[data-thumb]')")


def _first_row(browser: Browser, column: str) -> str:
    return browser.evaluate(f"document.querySelector('#image-table tbody tr td[data-col=\"{column}\"]').textContent")


def _sorted_by(browser: Browser, column: str) -> tuple[str, str]:
    return browser.evaluate(f"(function () {{ var th = document.querySelector('#image-table th[data-col=\"{column}\"]');"
                            " return [th.getAttribute('aria-sort'), th.querySelector('.arrow').textContent]; })()")


def test_the_table_sorts_by_click_and_by_keyboard(report: dict, browser: Browser) -> None:
    _open(browser, report)
    rows = json.loads(parse(report["out"] / "index.html").rows_json)["rows"]
    values = {name: [row[ROW_COLUMNS.index(name)] for row in rows] for name in ("probability", "similarity")}
    assert browser.evaluate("document.querySelector('#image-table th').dataset.col") == "thumbnail", "the view button first"
    assert browser.evaluate("(a => a.compareDocumentPosition(document.querySelector('.gallery')) & 4)"
                            "(document.querySelector('.skip a[href=\"#images\"]'))"), "a skip link to the table before the galleries"
    assert _first_row(browser, "index") == "0" and _sorted_by(browser, "index") == ["ascending", "▲"]
    browser.click("#image-table th[data-col=probability] button")
    assert _sorted_by(browser, "probability") == ["ascending", "▲"] and _sorted_by(browser, "index") == ["none", "⇅"]
    assert float(_first_row(browser, "probability")) == pytest.approx(min(values["probability"]), abs=5e-4)
    browser.click("#image-table th[data-col=probability] button")
    assert _sorted_by(browser, "probability") == ["descending", "▼"]
    assert float(_first_row(browser, "probability")) == pytest.approx(max(values["probability"]), abs=5e-4)
    browser.click("#filter-text")  # then only the keyboard: Tab to the similarity header, Enter, Space
    for _ in range(40):
        browser.press("Tab")
        if browser.evaluate("document.activeElement.parentNode.dataset.col") == "similarity":
            break
    else:
        pytest.fail("Tab never reached the similarity header")
    browser.press("Enter")
    assert _sorted_by(browser, "similarity") == ["ascending", "▲"]
    assert float(_first_row(browser, "similarity")) == pytest.approx(min(v for v in values["similarity"] if v is not None), abs=5e-4)
    browser.press(" ")
    assert _sorted_by(browser, "similarity") == ["descending", "▼"]
    assert float(_first_row(browser, "similarity")) == pytest.approx(max(v for v in values["similarity"] if v is not None), abs=5e-4)


def test_the_table_filters_and_reads_well(report: dict, browser: Browser) -> None:
    """Typing in the filter narrows the rows; cells show 3 decimals, paths break after separators, rows without a
    thumbnail say why, optional columns hide, and the page never scrolls sideways at 400 px nor the table at 1920 px."""
    _open(browser, report)
    paths = [row[ROW_COLUMNS.index("path")] for row in json.loads(parse(report["out"] / "index.html").rows_json)["rows"]]
    browser.click("#filter-text")
    browser.type_text("normal_003")
    expected = [p for p in paths if "normal_003" in p]
    assert 0 < len(expected) < len(paths)
    browser.wait_for(f"document.querySelectorAll('#image-table tbody tr').length === {len(expected)}")
    assert browser.evaluate("Array.from(document.querySelectorAll('#image-table td.path')).map(td => td.textContent)") == expected
    assert "filtered from" in browser.evaluate("document.getElementById('table-status').textContent")
    assert browser.evaluate("document.querySelectorAll('#image-table td.path wbr').length") >= len(expected)
    assert browser.evaluate("Array.from(document.querySelectorAll('#image-table td[data-col=probability]'))"
                            ".every(td => /^[0-9]+[.][0-9]{3}$/.test(td.textContent))"), "3 decimals"
    assert "not in a gallery" in browser.evaluate("Array.from(document.querySelectorAll('#image-table td.reason'))"
                                                  ".map(td => td.textContent).join()")
    browser.click("#column-picker summary")
    browser.click("#column-picker input[data-col=member_of]")
    assert browser.evaluate("document.querySelector('#image-table th[data-col=member_of]').hidden"
                            " && document.querySelector('#image-table td[data-col=member_of]').hidden")
    _open(browser, report, 400, 800)
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways page scroll at 400 px"
    _open(browser, report, 1920, 1000)
    assert browser.evaluate("(s => s.scrollWidth <= s.clientWidth)(document.querySelector('#images .scroll'))"), "table fits at 1920 px"
    browser.call("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert browser.evaluate("getComputedStyle(document.querySelector('#images .scroll')).overflowX") == "visible"
    finally:
        browser.call("Emulation.setEmulatedMedia", {"media": ""})

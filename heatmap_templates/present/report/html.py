"""The report page: one HTML file with its style and script inline, nothing fetched from elsewhere.

The page is plain HTML that reads without its script (sections, figures, galleries, numbers); the script adds the
sortable, filterable, paginated table of every image (rows embedded as JSON) and the enlarged view of a thumbnail,
then marks ``<body data-ready="true">``. Images load lazily. Colours follow the figures' colour-blind-safe map;
flags are words and symbols, never colour alone.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape

from heatmap_templates.analysis.sanity import flagged_of
from heatmap_templates.analysis.scoring import DEFAULT_ATYPICAL_PERCENTILE
from heatmap_templates.present.report.collect import (
    GALLERIES,
    ROW_COLUMNS,
    ClassSection,
    GalleryItem,
    ImageRow,
    ReportData,
)

PAGE_SIZE = 100  # table rows per page
GALLERY_TITLES = {
    "typical": "Most typical members (highest leave-one-out correlation)",
    "atypical": "Most atypical members (lowest leave-one-out correlation)",
    "misclassified": "Misclassified images (most confident first; each shows the map of the class it was given)",
}
COLUMN_TITLES = {
    "index": "#", "path": "path", "label": "label", "predicted": "predicted", "probability": "probability",
    "correct": "correct", "best_template": "best template", "similarity": "similarity", "atypical": "atypical",
    "percentile_rank": "LOO percentile", "strategy": "strategy", "lung_field_energy": "lung energy",
    "registration_quality": "registration", "member_of": "member of", "loo_correlation": "LOO r", "thumbnail": "view",
}

STYLE = """
:root { --ink: #1b1b1b; --muted: #555; --line: #d0d0d0; --band: #f4f4f2; --accent: #0a4f8a; --flag: #a63d00; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0; background: #fff; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 12px; border-bottom: 1px solid var(--line); }
nav a { margin-right: 14px; color: var(--accent); }
h1 { font-size: 1.5em; margin: 0.3em 0; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; } .muted { color: var(--muted); } .note { color: var(--muted); font-size: 0.92em; } .ci { color: var(--muted); }
table { border-collapse: collapse; margin: 0.4em 0 0.8em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: var(--band); } td.num { text-align: right; }
.settings th { font-weight: 600; width: 13em; }
figure { margin: 0.6em 0; } figure img.figure { max-width: min(100%, 860px); height: auto; border: 1px solid var(--line); }
.scroll { overflow-x: auto; } details > summary { cursor: pointer; font-weight: 600; margin: 0.8em 0; }
figcaption { font-size: 0.88em; color: var(--muted); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.thumb { margin: 0; font-size: 0.8em; overflow-wrap: anywhere; }
.thumb button { padding: 0; border: 1px solid var(--line); background: none; cursor: zoom-in; display: block; }
.thumb img { display: block; width: 148px; height: 148px; object-fit: contain; background: #000; }
.flag { color: var(--flag); font-weight: 600; } .ok { color: var(--accent); }
#controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: end; margin: 0.5em 0; }
#controls label { display: flex; flex-direction: column; font-size: 0.85em; color: var(--muted); }
#image-table { width: 100%; font-size: 0.86em; } #image-table th { cursor: pointer; user-select: none; white-space: nowrap; }
#image-table td.path { overflow-wrap: anywhere; min-width: 14em; max-width: 30em; }
#pager { display: flex; gap: 10px; align-items: center; }
#lightbox { position: fixed; inset: 0; background: rgba(0, 0, 0, 0.82); display: none; align-items: center;
            justify-content: center; flex-direction: column; z-index: 10; color: #fff; }
#lightbox.open { display: flex; } #lightbox img { width: min(80vh, 90vw); height: auto; image-rendering: auto; background: #000; }
#lightbox p { max-width: 90vw; text-align: center; } #lightbox button { font-size: 1em; }
.colourbar { display: inline-block; width: 160px; height: 10px; vertical-align: middle; border: 1px solid var(--line); }
"""

SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("rows-data").textContent);
  var columns = data.columns, rows = data.rows, pageSize = data.page_size, root = data.path_root;
  var col = {}; columns.forEach(function (name, i) { col[name] = i; });
  var state = { sort: col.index, direction: 1, page: 0, view: rows.slice() };
  var body = document.querySelector("#image-table tbody");
  var status = document.getElementById("table-status");
  var filters = { text: document.getElementById("filter-text"), label: document.getElementById("filter-label"),
                  predicted: document.getElementById("filter-predicted"), atypical: document.getElementById("filter-atypical"),
                  correct: document.getElementById("filter-correct") };
  function show(value) {
    if (value === null || value === undefined) return "";
    if (value === true) return "yes"; if (value === false) return "no";
    if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(3);
    return String(value);
  }
  function matches(row) {
    var text = filters.text.value.trim().toLowerCase();
    if (text && row[col.path].toLowerCase().indexOf(text) < 0) return false;
    if (filters.label.value && row[col.label].split(", ").indexOf(filters.label.value) < 0) return false;
    if (filters.predicted.value && row[col.predicted].split(", ").indexOf(filters.predicted.value) < 0) return false;
    if (filters.atypical.value && show(row[col.atypical]) !== filters.atypical.value) return false;
    if (filters.correct.value && show(row[col.correct]) !== filters.correct.value) return false;
    return true;
  }
  function compare(a, b) {
    var x = a[state.sort], y = b[state.sort];
    if (x === y) return a[col.index] - b[col.index];
    if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * state.direction;
  }
  function render() {
    var start = state.page * pageSize, shown = state.view.slice(start, start + pageSize);
    var fragment = document.createDocumentFragment();
    shown.forEach(function (row) {
      var tr = document.createElement("tr");
      columns.forEach(function (name, i) {
        var td = document.createElement("td"), value = row[i];
        if (name === "thumbnail") {
          var image = value && document.querySelector('img[data-thumb="' + value + '"]');
          if (image) { var b = document.createElement("button"); b.textContent = "view"; b.dataset.thumb = value;
                       b.dataset.caption = image.dataset.caption; td.appendChild(b); }
        } else {
          td.textContent = name === "path" && root && value.indexOf(root) === 0 ? value.slice(root.length) : show(value);
          if (typeof value === "number") td.className = "num";
          if (name === "path") { td.className = "path"; td.title = value; }
          if ((name === "atypical" && value === true) || (name === "correct" && value === false)) td.className = "flag";
        }
        tr.appendChild(td);
      });
      fragment.appendChild(tr);
    });
    body.replaceChildren(fragment);
    var pages = Math.max(1, Math.ceil(state.view.length / pageSize));
    status.textContent = state.view.length ? ("rows " + (start + 1) + "\\u2013" + (start + shown.length) + " of " + state.view.length +
      (state.view.length < rows.length ? " (filtered from " + rows.length + ")" : "") + ", page " + (state.page + 1) + " of " + pages)
      : "no row matches the filters";
    document.getElementById("page-previous").disabled = state.page === 0;
    document.getElementById("page-next").disabled = state.page >= pages - 1;
    document.querySelectorAll("#image-table th").forEach(function (th, i) {
      th.setAttribute("aria-sort", i === state.sort ? (state.direction > 0 ? "ascending" : "descending") : "none");
    });
  }
  function refilter() { state.view = rows.filter(matches); state.view.sort(compare); state.page = 0; render(); }
  Object.keys(filters).forEach(function (key) { filters[key].addEventListener("input", refilter); });
  document.querySelectorAll("#image-table th").forEach(function (th, i) {
    th.addEventListener("click", function () {
      state.direction = state.sort === i ? -state.direction : 1; state.sort = i; state.view.sort(compare); state.page = 0; render();
    });
  });
  document.getElementById("page-previous").addEventListener("click", function () { state.page -= 1; render(); });
  document.getElementById("page-next").addEventListener("click", function () { state.page += 1; render(); });
  var box = document.getElementById("lightbox"), boxImage = box.querySelector("img"), boxText = box.querySelector("p");
  function open(thumb, caption) {
    var image = document.querySelector('img[data-thumb="' + thumb + '"]');
    if (!image) return;
    boxImage.src = image.currentSrc || image.src; boxImage.alt = image.alt; boxText.textContent = caption; box.classList.add("open");
    box.querySelector("button").focus();
  }
  document.addEventListener("click", function (event) {
    var target = event.target.closest("[data-thumb]");
    if (target && target.tagName === "BUTTON") { open(target.dataset.thumb, target.dataset.caption || ""); return; }
    if (box.classList.contains("open") && (event.target === box || event.target.closest("#lightbox button"))) box.classList.remove("open");
  });
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") box.classList.remove("open"); });
  refilter();
  document.body.dataset.ready = "true";
})();
"""

Source = Callable[[str], str]  # a file's name in the report folder -> what the page references (a path or a data URI)


def number(value: float | None, digits: int = 3) -> str:
    """A number as the page prints it ('–' when undefined)."""
    return "–" if value is None else f"{float(value):.{digits}f}"


def _cell(value: object, key: str | None = None) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = number(value) if isinstance(value, float) else ("–" if value is None else str(value))
    attributes = (' class="num"' if numeric or value is None else "") + (f' data-key="{escape(key)}"' if key else "")
    return f"<td{attributes}>{escape(text)}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, keys: Iterable[Sequence[str | None]] | None = None,
          caption: str | None = None, css: str = "") -> str:
    """An HTML table; ``keys`` name cells (``data-key``) so that scripts and tests can find a number."""
    rows = list(rows)
    keys = list(keys) if keys is not None else [[None] * len(row) for row in rows]
    head = "".join(f"<th scope=\"col\">{escape(str(h))}</th>" for h in header)
    body = []
    for row, row_keys in zip(rows, keys, strict=True):
        first, *rest = row
        cells = "".join(_cell(value, key) for value, key in zip(rest, row_keys[1:], strict=True))
        body.append(f"<tr><th scope=\"row\">{escape(str(first))}</th>{cells}</tr>")
    caption_html = f"<caption class=\"note\">{escape(caption)}</caption>" if caption else ""
    return f"<table class=\"{css}\">{caption_html}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def settings_table(pairs: Sequence[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th scope=\"row\">{escape(name)}</th><td>{escape('–' if value is None else str(value))}</td></tr>"
                   for name, value in pairs)
    return f"<table class=\"settings\"><tbody>{rows}</tbody></table>"


def figure(source: Source, name: str, caption: str) -> str:
    return (f"<figure><img class=\"figure\" src=\"{escape(source(name))}\" alt=\"{escape(caption)}\" loading=\"lazy\">"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def classification_html(report: Mapping, prefix: str) -> str:
    """Accuracy, per-class metrics, the confusion matrix and binary readings of a classification report."""
    if report.get("multi_label"):
        header = ["finding", "n known", "positives", "ROC AUC", "sensitivity", "specificity", "F1", "ROC AUC [95 % CI]"]
        rows, keys = [], []
        for name, values in report["per_finding"].items():
            rows.append([name, values["n"], values["positives"], values["auc"], values.get("sensitivity"), values.get("specificity"),
                         values.get("f1"), interval(values["auc"], values.get("auc_ci"))])
            keys.append([None] + [f"{prefix}-{name}-{k}" for k in ("n", "positives", "auc", "sensitivity", "specificity", "f1", "auc-ci")])
        macro = report["macro"]
        return (f"<p>{report['n']} images, threshold {report['threshold']:g}; macro ROC AUC "
                f"<span data-key=\"{prefix}-macro-auc\">{number(macro['auc'])}</span>{ci_span(macro.get('auc_ci'), f'{prefix}-macro-auc-ci')}, "
                f"macro F1 <span data-key=\"{prefix}-macro-f1\">{number(macro['f1'])}</span>{ci_span(macro.get('f1_ci'), f'{prefix}-macro-f1-ci')}"
                f".{_intervals_note(report)}</p>" + table(header, rows, keys=keys))
    names, macro = report["class_names"], report["macro"]
    parts = [f"<p>{report['n']} images; accuracy <span data-key=\"{prefix}-accuracy\">{number(report['accuracy'])}</span>"
             f"{ci_span(report.get('accuracy_ci'), f'{prefix}-accuracy-ci')}, "
             f"macro F1 <span data-key=\"{prefix}-macro-f1\">{number(macro['f1'])}</span>{ci_span(macro.get('f1_ci'), f'{prefix}-macro-f1-ci')}, "
             f"macro ROC AUC <span data-key=\"{prefix}-macro-auc\">{number(macro['auc'])}</span>"
             f"{ci_span(macro.get('auc_ci'), f'{prefix}-macro-auc-ci')}.{_intervals_note(report)}</p>"]
    header = ["class", "support", "precision", "recall", "F1", "ROC AUC (one vs rest)", "ROC AUC [95 % CI]"]
    rows = [[name, v["support"], v["precision"], v["recall"], v["f1"], v["auc"], interval(v["auc"], v.get("auc_ci"))]
            for name, v in report["per_class"].items()]
    keys = [[None] + [f"{prefix}-{name}-{k}" for k in ("support", "precision", "recall", "f1", "auc", "auc-ci")] for name in report["per_class"]]
    parts.append(table(header, rows, keys=keys))
    matrix = report["confusion_matrix"]
    parts.append(table(["true \\ predicted", *names], [[name, *row] for name, row in zip(names, matrix, strict=True)],
                       keys=[[None] + [f"{prefix}-cm-{i}-{j}" for j in range(len(names))] for i in range(len(names))],
                       caption="Confusion matrix (rows: true class, columns: predicted class)"))
    readings = report.get("binary_readings") or {}
    if readings:
        header = ["reading", "decision", "positives / negatives", "sensitivity", "specificity", "F1", "ROC AUC",
                  "accuracy [95 % CI]", "ROC AUC [95 % CI]"]
        rows = []
        for name, r in readings.items():
            for decision, title in (("summed_probability", "summed probability > 0.5"), ("argmax", "arg-max in the group")):
                m = r[decision]
                rows.append([name, title, f"{r['n_positive']} / {r['n_negative']}", m["sensitivity"], m["specificity"], m["f1"], m.get("auc"),
                             interval(m.get("accuracy"), m.get("accuracy_ci")),
                             interval(m["auc"], m.get("auc_ci")) if m.get("auc") is not None else "–"])
        parts.append(table(header, rows, caption="Binary readings of the multi-class output (positive: " +
                           ", ".join(r["positive"] for r in readings.values()) + ")"))
    return "".join(parts)


def _intervals_note(report: Mapping) -> str:
    """How a report's bracketed 95 % intervals were computed (a report written before them has none)."""
    how = report.get("bootstrap")
    return "" if not how else (f" <span class=\"note\">[95 % CI]: {escape(how['method'])} over {how['units']} "
                               f"{escape(how['unit'])}s.</span>")


def _caption(row: ImageRow, item: GalleryItem | None = None) -> str:
    parts = [row.path, f"label {row.label or 'unknown'}", f"predicted {row.predicted} (p = {number(row.probability)})",
             f"similarity to the {row.predicted} template {number(row.similarity)}"]
    if item is not None and item.map_class != row.predicted:
        parts.append(f"map of class {item.map_class}")
    if row.atypical:
        parts.append("atypical")
    return "; ".join(parts)


def short(path: str, root: str) -> str:
    """A path without the folder every path of the report starts with."""
    return path[len(root):] if root and path.startswith(root) else path


def gallery(items: Sequence[GalleryItem], rows: Sequence[ImageRow], source: Source, kind: str, root: str) -> str:
    cards = []
    for item in items:
        row = rows[item.row]
        name = short(row.path, root)
        caption = _caption(row, item)
        value = f"LOO r {number(item.value, 2)} · " if kind != "misclassified" else ""
        verdict = "<span class=\"flag\">&#9650; atypical</span><br>" if row.atypical else ""
        cards.append(
            f"<figure class=\"thumb\"><button type=\"button\" data-thumb=\"{escape(item.thumbnail)}\" data-caption=\"{escape(caption)}\""
            f" aria-label=\"enlarge {escape(row.path)}\"><img data-thumb=\"{escape(item.thumbnail)}\" data-caption=\"{escape(caption)}\""
            f" src=\"{escape(source(f'images/{item.thumbnail}.jpg'))}\" alt=\"heatmap of {escape(row.path)}\" loading=\"lazy\""
            f" width=\"148\" height=\"148\"></button><figcaption title=\"{escape(row.path)}\">{escape(name)}<br>{escape(row.label or 'unknown')} &rarr; "
            f"{escape(row.predicted)} (p {number(row.probability, 2)})<br>{verdict}{value}sim. {number(row.similarity, 2)}</figcaption></figure>")
    return f"<div class=\"gallery\">{''.join(cards)}</div>"


def class_section(section: ClassSection, rows: Sequence[ImageRow], source: Source, figures: Mapping[str, str], root: str) -> str:
    anchor = f"class-{_slug(section.name)}"
    parts = [f"<section id=\"{anchor}\"><h2>Class {escape(section.name)}</h2>"]
    if section.members:
        low, high = section.loo_range or (None, None)
        parts.append(settings_table([
            ("members", section.members), ("mean pairwise correlation", number(section.mean_pairwise_correlation)),
            ("leave-one-out r, median (range)", f"{number(section.loo_median)} ({number(low)} to {number(high)})"),
            ("lung-field energy of the template [95 % CI over its bootstrap replicates]",
             interval(section.template_lung_energy, section.template_lung_energy_ci)),
            ("mean lung-field energy of images predicted " + section.name + " [95 % CI]",
             interval(section.predicted_lung_energy, section.predicted_lung_energy_ci)),
        ]))
        if section.strategies:
            s = section.strategies
            ari = (s.get("stability") or {}).get("mean_ari")
            spread = (s.get("stability") or {}).get("ari_ci")
            parts.append(f"<h3>Strategies</h3><p>{s['k']} strateg{'y' if s['k'] == 1 else 'ies'} (K chosen by {escape(s['chosen_by'])};"
                         f" stability: mean adjusted Rand index over bootstrap resamples {number(ari)}"
                         f"{ci_span(spread, f'strategy-{_slug(section.name)}-ari-ci', 2)}"
                         f"{', in brackets the 2.5th to 97.5th percentiles of the resamples' if spread else ''}).</p>")
            parts.append(table(["strategy", "members", "consistency"],
                               [[i + 1, c["size"], c["consistency"]] for i, c in enumerate(s["clusters"])],
                               keys=[[None, f"strategy-{_slug(section.name)}-{i + 1}-size", None] for i in range(len(s["clusters"]))]))
            name = f"strategies_{section.name}"
            if name in figures:
                parts.append(figure(source, figures[name], f"Strategies of {section.name}: prototypes and typical members"))
    else:
        parts.append("<p class=\"note\">This class has no template (no correctly classified image was kept for it).</p>")
    for kind in GALLERIES:
        items = section.galleries.get(kind)
        if items is None:
            continue
        total = section.gallery_totals.get(kind, len(items))
        parts.append(f"<h3>{escape(GALLERY_TITLES[kind])}</h3><p class=\"note\">{len(items)} shown of {total}.</p>")
        parts.append(gallery(items, rows, source, kind, root) if items else "")
    parts.append("</section>")
    return "".join(parts)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def checks_html(checks: Mapping[str, dict], source: Source, figures: Mapping[str, str],
                contrasts: Mapping[str, dict] | None = None, zones: Mapping | None = None) -> str:
    """Sanity (model randomisation), faithfulness (deletion), localisation, zones and contrasts, as far as the file
    holds them."""
    if contrasts or zones:
        return (checks_html(checks, source, figures) + (zones_html(zones, source, figures) if zones else "")
                + (contrasts_html(contrasts, source, figures) if contrasts else ""))
    if not checks:
        return ("<p class=\"note\">No checks are stored in the templates file yet: run <code>hmt sanity</code> and "
                "<code>hmt evaluate-templates --faithfulness --annotations</code> to add them.</p>")
    parts = []
    sanity = checks.get("sanity")
    if sanity:
        steps = sanity["steps"]
        parts.append(f"<h3>Model randomisation ({escape(sanity['variant'])})</h3>")
        parts.append("<p>Spearman correlation of each class's sample template with the trained model's after each step; "
                     "a template that stays similar once the weights are random does not depend on what the model learned."
                     f" Flagged (|Spearman| &ge; {sanity['flag_spearman']:g} to the end): "
                     f"<strong>{escape(', '.join(flagged_of(sanity)) or 'none')}</strong>.</p>")
        rows = [[name, *[entry.get("spearman") for entry in entries]] for name, entries in sanity["similarity"].items()]
        parts.append(table(["class", *steps], rows, keys=[[None] + [f"sanity-{_slug(name)}-{i}" for i in range(len(steps))]
                                                          for name in sanity["similarity"]]))
        if "sanity" in figures:
            parts.append(figure(source, figures["sanity"], "Template similarity as the model is randomised"))
    deletion = checks.get("faithfulness")
    if deletion:
        parts.append(deletion_html(deletion, source, figures))
    localisation = checks.get("localisation")
    if localisation:
        parts.append(f"<h3>Localisation against {escape(str(localisation.get('annotations')))}</h3>")
        images = localisation.get("images") or {}
        measures = [k for k in images if k != "n"]
        if measures:
            parts.append(table(["measure", "mean over images", "images"], [[m, images[m]["mean"], images[m]["n"]] for m in measures],
                               keys=[[None, f"localisation-images-{m}", None] for m in measures]))
        templates = localisation.get("templates") or {}
        columns = sorted({k for v in templates.values() for k in v if k != "annotated_members"})
        if templates:
            parts.append(table(["template", "annotated members", *columns],
                               [[name, v.get("annotated_members"), *[v.get(c) for c in columns]] for name, v in templates.items()]))
    return "".join(parts)


def rows_json(rows: Sequence[ImageRow], path_root: str) -> str:
    payload = {"columns": list(ROW_COLUMNS), "page_size": PAGE_SIZE, "path_root": path_root, "rows": [row.values() for row in rows]}
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


DELETION_NAMES = {"random": "random pixels", "smooth": "random smooth regions", "moved_heatmap": "heatmap region moved",
                  "moved_template": "template region moved", "outside_lungs": "everything outside the lungs",
                  "lungs": "the lungs", "lungs_area_elsewhere": "smooth regions of the lungs' area outside them"}


def interval(value: float | None, ci: Sequence | None, digits: int = 3) -> str:
    """A number with its 95 % interval as the page prints it: ``0.412 [0.380, 0.447]``."""
    if value is None or not ci or ci[0] is None:
        return number(value, digits)
    return f"{number(value, digits)} [{number(ci[0], digits)}, {number(ci[1], digits)}]"


def ci_span(ci: Sequence | None, key: str | None = None, digits: int = 3) -> str:
    """A 95 % interval to place after a number's own element: `` <span class="ci">[0.380, 0.447]</span>`` ('' without
    one), so that the number's ``data-key`` text stays the number."""
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    attribute = f' data-key="{escape(key)}"' if key else ""
    return f' <span class="ci"{attribute}>[{number(ci[0], digits)}, {number(ci[1], digits)}]</span>'


def deletion_html(deletion: Mapping, source: Source, figures: Mapping[str, str]) -> str:
    """The deletion check: AOPC per ranking (most and least relevant first) and baseline, the ratios against each
    baseline of the same area and the fixed regions, with their 95 % intervals (a check of layout 1: its means)."""
    body = deletion.get("body")
    parts = [f"<h3>Deletion ({escape(deletion['removal'])}, {deletion['n_images']} images)</h3>",
             "<p>Remove the top q % of a ranking of each image's pixels and watch the probability of the predicted class "
             "fall; AOPC is the mean fall over the removed shares (higher: the ranking marks what the model uses). "
             "Baselines remove the same area: random pixels (which imputation fills back almost perfectly: a weak "
             "change), random smooth regions inside the body, and the ranked region moved elsewhere in the body; only the "
             "last two compare a region with a region. Intervals: 95 % bootstrap over images."
             + (f" Body masks: {body.get('given', 0)} given, {body.get('otsu', 0)} from Otsu's threshold." if body else "")
             + "</p>"]
    rows, keys = [], []
    for name, curve in deletion["curves"].items():
        for label, shown in ((name, curve), (f"{name}, least relevant first", curve.get("lerf"))):
            if shown is not None:
                rows.append([DELETION_NAMES.get(label, label), shown.get("area"), shown.get("aopc"),
                             interval(shown.get("aopc"), shown.get("aopc_ci")) if shown.get("aopc_ci") else "–", shown.get("n")])
                keys.append([None, f"deletion-{label}-area", f"deletion-{label}-aopc", None, None] if label == name else [None] * 5)
    parts.append(table(["removed", "deletion area (lower: more faithful)", "AOPC (higher: more faithful)", "AOPC [95 % CI]",
                        "images"], rows, keys=keys))
    ratios = deletion.get("ratios")
    if ratios:
        rows = [[f"{key.split('_vs_')[0]} / {DELETION_NAMES.get(key.split('_vs_')[1], key.split('_vs_')[1])}", ratio["value"],
                 interval(ratio["value"], ratio["ci"], 2), ratio["n"]] for key, ratio in ratios.items()]
        parts.append(table(["AOPC ratio", "ratio", "ratio [95 % CI]", "images"], rows,
                           keys=[[None, f"deletion-ratio-{key}", None, None] for key in ratios]))
        differences = [(name, curve["morf_minus_lerf"]) for name, curve in deletion["curves"].items() if "morf_minus_lerf" in curve]
        if differences:
            parts.append("<p>AOPC most relevant first minus least relevant first (above 0: the ranking orders the pixels "
                         "as the model uses them): " + "; ".join(f"{escape(name)} {escape(interval(d['value'], d['ci']))}"
                                                                 for name, d in differences) + ".</p>")
    else:
        parts.append(f"<p>Template / random AOPC: <span data-key=\"deletion-ratio\">{number(deletion.get('template_vs_random'))}</span>.</p>")
    if deletion.get("regions"):
        rows = [[DELETION_NAMES.get(name, name), r.get("probability"), interval(r.get("drop"), r.get("drop_ci")),
                 interval(r.get("accuracy"), r.get("accuracy_ci")), r.get("n")] for name, r in deletion["regions"].items()]
        parts.append(table(["region removed", "mean probability", "mean drop [95 % CI]", "accuracy [95 % CI]", "images"], rows))
        comparison = deletion.get("comparisons", {}).get("lungs_vs_elsewhere")
        if comparison:
            parts.append("<p>The lungs against an equal area elsewhere in the body (like for like): drop difference "
                         f"<span data-key=\"deletion-lungs-vs-elsewhere\">{escape(interval(comparison['value'], comparison['ci']))}"
                         f"</span> (n = {comparison['n']}).</p>")
    if "deletion" in figures:
        parts.append(figure(source, figures["deletion"], "Deletion curves"))
    return "".join(parts)


def zones_html(zones: Mapping, source: Source, figures: Mapping[str, str]) -> str:
    """The zone table: per class (and strategy) each zone's enrichment with its 95 % interval, and the figure."""
    columns = dict(zones["classes"])
    for name, strategies in zones.get("strategies", {}).items():
        columns |= {f"{name} strategy {number}": entry for number, entry in strategies.items()}
    names = list(zones["names"])
    rows, keys = [], []
    for zone in names:
        rows.append([zone.replace("_", " "), zones["atlas"]["areas"][zone],
                     *[interval(entry["zones"][zone]["enrichment"], entry["zones"][zone]["enrichment_ci"], 2) for entry in columns.values()]])
        keys.append([None, f"zones-area-{zone}", *[f"zones-{_slug(name)}-{zone}" for name in columns]])
    parts = ["<h3>Zones</h3>",
             f"<p>Each zone's enrichment: its share of the map's positive energy over its share of the frame (1: what a "
             f"uniform map puts there), with a 95 % interval ({escape(zones['atlas']['source'])} atlas; the patient's right "
             "lung is on the image's left).</p>",
             table(["zone", "area (share of frame)", *columns], rows, keys=keys)]
    if "zones" in figures:
        parts.append(figure(source, figures["zones"], "Zone atlas and each zone's enrichment"))
    return "".join(parts)


def contrasts_html(contrasts: Mapping[str, dict], source: Source, figures: Mapping[str, str]) -> str:
    """Each stored contrast: the groups, the test, its significant clusters and the null check, with its figure."""
    from heatmap_templates.templates.templates_file import contrast_key

    parts = ["<h3>Contrasts (pixel-wise permutation tests)</h3>",
             "<p>Each pixel's difference between two groups of registered, normalised maps, tested by permutation with the "
             "whole map corrected for (family-wise: max-T or TFCE; or FDR). Clusters are connected significant pixels; "
             "peaks are given as shares of the frame's height and width.</p>"]
    for name, record in contrasts.items():
        settings = record["settings"]
        key = contrast_key(name)
        groups = escape(record["group_a"]) + ("" if record.get("paired") else f" vs {escape(str(record['group_b']))}")
        parts.append(f"<h4>{escape(name)}</h4><p>{groups}: {record['n_a']} and {record['n_b']} maps "
                     f"({record['patients_a']} and {record['patients_b']} patients), {escape(settings['tail'])}, "
                     f"{escape(settings['correction'])}, {record['permutations']} permutations"
                     f"{' (every relabelling)' if record.get('exact') else ''}, alpha {settings['alpha']:g}: "
                     f"<span data-key=\"contrast-{escape(key)}-clusters\">{len(record['clusters'])}</span> significant cluster(s).</p>")
        if record["clusters"]:
            rows = [[str(number), c["direction"], c["extent_percent"], f"({c['peak_frame'][0]:.2f}, {c['peak_frame'][1]:.2f})",
                     c["peak_t"], c["mean_effect"], c["p"], c.get("zone") or "–"] for number, c in enumerate(record["clusters"], 1)]
            parts.append(table(["cluster", "direction", "extent (% of frame)", "peak (row, column)", "peak t", "mean d", "p",
                                "zone"], rows))
        check = record.get("null_check")
        if check:
            parts.append(f"<p>Null check: {check['with_significant_pixels']} of {check['runs']} random halvings of the first "
                         f"group had a significant pixel ({escape(interval(check['share'], check['share_ci']))}; expected "
                         f"about {check['alpha']:g}).</p>")
        figure_name = f"contrast_{key}"
        if figure_name in figures:
            parts.append(figure(source, figures[figure_name], f"Contrast {name}: t-map and Cohen's d"))
    return "".join(parts)


def table_section(data: ReportData, csv_source: str) -> str:
    names = data.store.class_names

    def options(values: Iterable[str]) -> str:
        return "<option value=\"\">any</option>" + "".join(f"<option>{escape(v)}</option>" for v in values)

    yes_no = "<option value=\"\">any</option><option>yes</option><option>no</option>"
    head = "".join(f"<th scope=\"col\" aria-sort=\"none\">{escape(COLUMN_TITLES[c])}</th>" for c in ROW_COLUMNS)
    return (
        f"<section id=\"images\"><h2>Every image ({len(data.rows)})</h2>"
        + (f"<p>Paths are relative to <code>{escape(data.path_root)}</code>.</p>" if data.path_root else "") +
        f"<p class=\"note\">Click a column to sort; filter below. Similarity is to the predicted class's template ({escape(data.similarity)});"
        f" atypical: below the {DEFAULT_ATYPICAL_PERCENTILE:g}th percentile of that class's leave-one-out correlations. "
        f"<a href=\"{escape(csv_source)}\" download=\"images.csv\">Download as CSV</a>.</p>"
        "<div id=\"controls\"><label>path contains<input id=\"filter-text\" type=\"search\"></label>"
        f"<label>label<select id=\"filter-label\">{options(names)}</select></label>"
        f"<label>predicted<select id=\"filter-predicted\">{options(names)}</select></label>"
        f"<label>atypical<select id=\"filter-atypical\">{yes_no}</select></label>"
        f"<label>correct<select id=\"filter-correct\">{yes_no}</select></label>"
        "<div id=\"pager\"><button type=\"button\" id=\"page-previous\">previous</button><span id=\"table-status\" aria-live=\"polite\">"
        "</span><button type=\"button\" id=\"page-next\">next</button></div></div>"
        f"<div class=\"scroll\"><table id=\"image-table\"><thead><tr>{head}</tr></thead><tbody></tbody></table></div>"
        "<noscript><p>The table needs JavaScript; the same rows are in the CSV file.</p></noscript></section>"
    )


def page(*, title: str, overview: str, templates: str, classes: Sequence[str], class_html: str, checks: str, data: ReportData,
         csv_source: str, footer: str) -> str:
    """The whole page."""
    nav = "".join([
        "<a href=\"#overview\">overview</a>", "<a href=\"#templates\">templates</a>",
        *[f"<a href=\"#class-{_slug(name)}\">{escape(name)}</a>" for name in classes],
        "<a href=\"#checks\">checks</a>", "<a href=\"#images\">every image</a>",
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body data-ready=\"false\">"
        f"<header><h1>{escape(title)}</h1><nav>{nav}</nav></header><main>"
        f"<section id=\"overview\"><h2>Overview</h2>{overview}</section>"
        f"<section id=\"templates\"><h2>Templates</h2>{templates}</section>"
        f"{class_html}<section id=\"checks\"><h2>Checks</h2>{checks}</section>{table_section(data, csv_source)}</main>"
        f"<footer class=\"note\">{footer}</footer>"
        "<div id=\"lightbox\" role=\"dialog\" aria-modal=\"true\" aria-label=\"enlarged heatmap\"><img alt=\"\"><p></p>"
        "<button type=\"button\">close (Esc)</button></div>"
        f"<script type=\"application/json\" id=\"rows-data\">{rows_json(data.rows, data.path_root)}</script><script>{SCRIPT}</script>"
        "</body></html>\n"
    )

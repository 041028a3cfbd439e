"""The report page: one HTML file with its style and script inline (:mod:`.assets`), nothing fetched from elsewhere.

The page is plain HTML that reads without its script (sections, figures, galleries, numbers); the script adds the
sortable, filterable, paginated table of every image (rows embedded as JSON) and the enlarged view of a thumbnail,
then marks ``<body data-ready="true">``. Images load lazily. Colours follow the figures' colour-blind-safe map;
flags are words and symbols, never colour alone. Paths arrive as the report shows them (:mod:`.privacy`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from pathlib import Path

from heatmap_templates.analysis.contrast import treat_null
from heatmap_templates.analysis.sanity import flagged_of
from heatmap_templates.analysis.scoring import DEFAULT_ATYPICAL_PERCENTILE
from heatmap_templates.present.report.assets import SCRIPT, STYLE
from heatmap_templates.present.report.collect import (
    GALLERIES,
    ROW_COLUMNS,
    ClassSection,
    GalleryItem,
    ImageRow,
    ReportData,
)
from heatmap_templates.present.report.embedding import embedding_block
from heatmap_templates.present.report.glossary import CONSISTENCY, glossary_html, header_title
from heatmap_templates.present.report.thumbnails import enlarged_name, plain_name

PAGE_SIZE = 100  # table rows per page
GALLERY_TITLES = {
    "typical": "Most typical members (highest LOO r)",
    "atypical": "Most atypical members (lowest LOO r)",
    "misclassified": "Misclassified images (most confident first; each shows the map of the class it was given)",
    "atypical-strategy": "Most atypical members (lowest strategy similarity)",
    "strategy": "Strategy {number}: its most typical members (highest strategy similarity)",
}
COLUMN_TITLES = {
    "index": "#", "path": "path", "label": "label", "predicted": "predicted", "probability": "probability",
    "correct": "correct", "best_template": "best template", "similarity": "similarity", "atypical": "atypical",
    "percentile_rank": "LOO percentile", "strategy": "strategy", "strategy_similarity": "strategy similarity",
    "lung_field_energy": "lung energy",
    "registration_quality": "registration", "member_of": "member of", "loo_correlation": "LOO r", "thumbnail": "view",
}
OPTIONAL_COLUMNS = ("best_template", "percentile_rank", "strategy", "strategy_similarity", "lung_field_energy", "registration_quality", "member_of",
                    "loo_correlation")  # the table's columns a reader may hide
COLUMN_DIGITS = {"probability": 3, "similarity": 3, "strategy_similarity": 3, "lung_field_energy": 3, "registration_quality": 3, "loo_correlation": 3,
                 "percentile_rank": 1}  # decimals the table shows (a percentile: 1)

Source = Callable[[str], str]  # a file's name in the report folder -> what the page references (a path or a data URI)
VECTOR_FORMATS = ("pdf", "svg")  # a figure's vector versions the page links to where the report folder holds them


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
    head = "".join(f"<th scope=\"col\"{_title(str(h))}>{escape(str(h))}</th>" for h in header)
    body = []
    for row, row_keys in zip(rows, keys, strict=True):
        first, *rest = row
        cells = "".join(_cell(value, key) for value, key in zip(rest, row_keys[1:], strict=True))
        body.append(f"<tr><th scope=\"row\">{escape(str(first))}</th>{cells}</tr>")
    caption_html = f"<caption class=\"note\">{escape(caption)}</caption>" if caption else ""
    return (f"<div class=\"scroll\"><table class=\"{css}\">{caption_html}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table></div>")


def _title(header: str) -> str:
    """A header's ``title`` attribute: its glossary definition ('' for a header that names no glossary term)."""
    title = header_title(header)
    return "" if title is None else f" title=\"{escape(title)}\""


def settings_table(pairs: Sequence[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th scope=\"row\"{_title(name)}>{escape(name)}</th><td>{escape('–' if value is None else str(value))}</td></tr>"
                   for name, value in pairs)
    return f"<div class=\"scroll\"><table class=\"settings\"><tbody>{rows}</tbody></table></div>"


def figure(source: Source, name: str, caption: str) -> str:
    """A figure of the report folder with its caption and links to its vector versions (relative links to the files
    beside it; a ``source`` with a ``vectors`` attribute, the set of such files, tells which exist)."""
    vectors: frozenset[str] = getattr(source, "vectors", frozenset())
    stem = name.rsplit(".", 1)[0]
    links = [f"<a href=\"{escape(f'{stem}.{kind}')}\">{kind.upper()}</a>" for kind in VECTOR_FORMATS if f"{stem}.{kind}" in vectors]
    more = f" <span class=\"figure-links\">(vector: {', '.join(links)})</span>" if links else ""
    return (f"<figure><img class=\"figure\" src=\"{escape(source(name))}\" alt=\"{escape(caption)}\" loading=\"lazy\">"
            f"<figcaption>{escape(caption)}{more}</figcaption></figure>")


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
    if row.strategy is not None:
        parts.append(f"strategy {row.strategy} of {row.strategy_of} (strategy similarity {number(row.strategy_similarity)})")
    if row.atypical:
        parts.append("atypical")
    return "; ".join(parts)


def breakable(text: str) -> str:
    """Escaped ``text`` that a line may break after ``/``, ``_`` or ``-`` (``<wbr>``), never inside a word."""
    return re.sub(r"([/_-])", r"\1<wbr>", escape(text))


def gallery(items: Sequence[GalleryItem], rows: Sequence[ImageRow], source: Source, kind: str, enlarged: Mapping[str, bytes],
            value_label: str | None = "LOO r") -> str:
    """A gallery's thumbnails: each a button (its image inside) that opens the enlarged view, with the larger overlay
    and the image without its map when the report has them (``enlarged``: the enlarged views' images by name);
    ``value_label`` names the value the gallery is sorted by (a misclassified gallery's, the probability, is not shown)."""
    cards = []
    for item in items:
        row = rows[item.row]
        caption = _caption(row, item)
        value = f"{value_label} {number(item.value, 2)}<br>" if kind != "misclassified" and value_label else ""
        strategy = f"<br>strategy {row.strategy}" if row.strategy is not None else ""
        verdict = "<span class=\"flag\">&#9650; atypical</span><br>" if row.atypical else ""
        views = "".join(f" data-{attribute}=\"{escape(source(f'images/{name}.jpg'))}\""
                        for attribute, name in (("large", enlarged_name(item.thumbnail)), ("plain", plain_name(item.row)))
                        if name in enlarged)
        cards.append(
            f"<figure class=\"thumb\"><button type=\"button\" data-thumb=\"{escape(item.thumbnail)}\" data-caption=\"{escape(caption)}\""
            f"{views} aria-label=\"enlarge {escape(row.path)}\"><img data-thumb=\"{escape(item.thumbnail)}\""
            f" src=\"{escape(source(f'images/{item.thumbnail}.jpg'))}\" alt=\"heatmap of {escape(row.path)}\" loading=\"lazy\""
            f" width=\"148\" height=\"148\"></button><figcaption title=\"{escape(row.path)}\">{breakable(row.path)}<br>"
            f"{escape(row.label or 'unknown')} &rarr; {escape(row.predicted)} (p {number(row.probability, 2)})<br>{verdict}{value}"
            f"similarity {number(row.similarity, 2)}{strategy}</figcaption></figure>")
    return f"<div class=\"gallery\">{''.join(cards)}</div>"


def class_section(section: ClassSection, rows: Sequence[ImageRow], source: Source, figures: Mapping[str, str],
                  enlarged: Mapping[str, bytes], scale: str = "") -> str:
    """A class's numbers, strategies and galleries; ``scale``: the galleries' scaling note with its colour bar."""
    anchor = f"class-{slug(section.name)}"
    parts = [f"<section id=\"{anchor}\"><h2>Class {escape(section.name)}</h2>"]
    if section.members:
        low, high = section.loo_range or (None, None)
        parts.append(settings_table([
            ("members", section.members), (CONSISTENCY, number(section.mean_pairwise_correlation)),
            ("LOO r, median (range)", f"{number(section.loo_median)} ({number(low)} to {number(high)})"),
            ("lung-field energy of the template [95 % CI over its bootstrap replicates]",
             interval(section.template_lung_energy, section.template_lung_energy_ci)),
            ("mean lung-field energy of images predicted " + section.name + " [95 % CI]",
             interval(section.predicted_lung_energy, section.predicted_lung_energy_ci)),
        ]))
        if section.strategies:
            parts.append(strategies_html(section, source, figures))
    else:
        parts.append("<p class=\"note\">This class has no template (no correctly classified image was kept for it).</p>")
    strategy_kinds = [kind for kind in section.galleries if kind.startswith("strategy-")]
    if section.galleries:
        parts.append(scale)
    for kind in [*GALLERIES[:2], *strategy_kinds, *GALLERIES[2:]]:
        items = section.galleries.get(kind)
        if items is None:
            continue
        by_strategy = kind in strategy_kinds or (kind == "atypical" and section.atypical_by_strategy)
        total = section.gallery_totals.get(kind, len(items))
        why = (f" {escape(section.name)} has {(section.strategies or {}).get('k')} strategies, so each member is ranked against "
               "its own strategy's prototype: the one template's LOO r would mostly rank the smaller "
               "strategy's members lowest." if kind == "atypical" and section.atypical_by_strategy else "")
        parts.append(f"<h3>{escape(gallery_title(kind, section))}</h3><p class=\"note\">{len(items)} shown of {total}.{why}</p>")
        parts.append(gallery(items, rows, source, kind, enlarged, "strategy similarity" if by_strategy else "LOO r") if items else "")
    parts.append("</section>")
    return "".join(parts)


def gallery_title(kind: str, section: ClassSection) -> str:
    """A gallery's heading; a class with strategies ranks its atypical members against their own strategy."""
    if kind.startswith("strategy-"):
        return GALLERY_TITLES["strategy"].format(number=kind.split("-", 1)[1])
    if kind == "atypical" and section.atypical_by_strategy:
        return GALLERY_TITLES["atypical-strategy"]
    return GALLERY_TITLES[kind]


def strategies_html(section: ClassSection, source: Source, figures: Mapping[str, str]) -> str:
    """A class's strategies: a sentence naming each strategy's size and consistency and how K was chosen, the
    stability, and for K >= 2 the table, the interactive spectral embedding with its eigenvalues, and the figure."""
    s, key = section.strategies or {}, slug(section.name)
    how = "given" if s["chosen_by"] == "given" else "chosen by the eigengap of the members' graph Laplacian"
    if s["k"] < 2:
        return f"<h3>Strategies</h3><p>The members of {escape(section.name)} form one strategy (K = 1, {how}).</p>"
    ari, spread = (s.get("stability") or {}).get("mean_ari"), (s.get("stability") or {}).get("ari_ci")
    clusters = ", ".join(f"{i + 1} ({c['size']} members, consistency {number(c['consistency'], 2)})" for i, c in enumerate(s["clusters"]))
    parts = [f"<h3>Strategies</h3><p><span data-key=\"strategy-{key}-sentence\">{escape(section.name)} has {s['k']} strategies: "
             f"{escape(clusters)}; K {how}.</span> Stability: mean adjusted Rand index over bootstrap resamples {number(ari)}"
             f"{ci_span(spread, f'strategy-{key}-ari-ci', 2)}"
             f"{' (in brackets the 2.5th to 97.5th percentiles of the resamples)' if spread else ''}.</p>",
             table(["strategy", "members", "consistency"], [[i + 1, c["size"], c["consistency"]] for i, c in enumerate(s["clusters"])],
                   keys=[[None, f"strategy-{key}-{i + 1}-size", None] for i in range(len(s["clusters"]))])]
    if section.embedding:
        parts.append(embedding_block(section.name, s["class_index"], section.embedding, s["k"], s.get("eigenvalues") or [],
                                     s["chosen_by"]))
    name = f"strategies_{section.name}"
    if name in figures:
        parts.append(figure(source, figures[name], f"Strategies of {section.name}: prototypes and typical members"))
    return "".join(parts)


def slug(name: str) -> str:
    """``name`` as an HTML id fragment: letters and digits kept, the rest '-'."""
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
        parts.append(table(["class", *steps], rows, keys=[[None] + [f"sanity-{slug(name)}-{i}" for i in range(len(steps))]
                                                          for name in sanity["similarity"]]))
        if "sanity" in figures:
            parts.append(figure(source, figures["sanity"], "Template similarity as the model is randomised"))
    deletion = checks.get("faithfulness")
    if deletion:
        parts.append(deletion_html(deletion, source, figures))
    localisation = checks.get("localisation")
    if localisation:
        parts.append(f"<h3>Localisation against {escape(Path(str(localisation.get('annotations'))).name)}</h3>")
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


def rows_json(rows: Sequence[ImageRow]) -> str:
    payload = {"columns": list(ROW_COLUMNS), "page_size": PAGE_SIZE, "digits": COLUMN_DIGITS, "rows": [row.values() for row in rows]}
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
        keys.append([None, f"zones-area-{zone}", *[f"zones-{slug(name)}-{zone}" for name in columns]])
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
                     f"{' (every relabelling)' if record.get('exact') else ''}"
                     + (f", significant only beyond a difference of {settings['min_difference']:g} (TREAT, H0: "
                        f"{escape(treat_null(settings['tail'], settings['min_difference']))})"
                        if settings.get("min_difference") else "") + f", alpha {settings['alpha']:g}: "
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


def _table_head() -> str:
    """The table's header in display order (the view button first); every column but the view a sort button."""
    cells = ["<th scope=\"col\" data-col=\"thumbnail\"><span>view</span></th>"]
    cells += [f"<th scope=\"col\" aria-sort=\"none\" data-col=\"{c}\"{_title(COLUMN_TITLES[c])}><button type=\"button\">{escape(COLUMN_TITLES[c])}"
              "<span class=\"arrow\" aria-hidden=\"true\">&#8645;</span></button></th>" for c in ROW_COLUMNS if c != "thumbnail"]
    return "".join(cells)


def table_section(data: ReportData, csv_source: str) -> str:
    names = data.store.class_names

    def options(values: Iterable[str]) -> str:
        return "<option value=\"\">any</option>" + "".join(f"<option>{escape(v)}</option>" for v in values)

    yes_no = "<option value=\"\">any</option><option>yes</option><option>no</option>"
    strategies = [str(n) for n in sorted({row.strategy for row in data.rows if row.strategy is not None})] + ["none"]
    picker = "".join(f"<label><input type=\"checkbox\" data-col=\"{c}\" checked>{escape(COLUMN_TITLES[c])}</label>"
                     for c in OPTIONAL_COLUMNS)
    return (
        f"<section id=\"images\"><h2>Every image ({len(data.rows)})</h2>"
        + (f"<p>Paths are relative to the data folder <code>{escape(data.path_root)}</code>.</p>" if data.path_root else "") +
        f"<p class=\"note\">Sort by a column's header (click, or Tab to it and press Enter); filter below. Similarity is to the "
        f"predicted class's template ({escape(data.similarity)}); atypical: below the {DEFAULT_ATYPICAL_PERCENTILE:g}th percentile "
        "of that class's LOO r values (see the glossary). "
        f"<a href=\"{escape(csv_source)}\" download=\"images.csv\">Download as CSV</a>.</p>"
        "<div id=\"controls\"><label>path contains<input id=\"filter-text\" type=\"search\"></label>"
        f"<label>label<select id=\"filter-label\">{options(names)}</select></label>"
        f"<label>predicted<select id=\"filter-predicted\">{options(names)}</select></label>"
        f"<label>atypical<select id=\"filter-atypical\">{yes_no}</select></label>"
        f"<label>correct<select id=\"filter-correct\">{yes_no}</select></label>"
        f"<label>strategy<select id=\"filter-strategy\">{options(strategies)}</select></label>"
        f"<details id=\"column-picker\"><summary>columns</summary><div>{picker}</div></details>"
        "<div id=\"pager\"><button type=\"button\" id=\"page-previous\">previous</button><span id=\"table-status\" aria-live=\"polite\">"
        "</span><button type=\"button\" id=\"page-next\">next</button></div></div>"
        f"<div class=\"scroll\"><table id=\"image-table\"><thead><tr>{_table_head()}</tr></thead><tbody></tbody></table></div>"
        "<noscript><p>The table needs JavaScript; the same rows are in the CSV file.</p></noscript></section>"
    )


def colour_bar(colour_scale: str) -> str:
    """The thumbnails' colour bar (``colour_scale``: its CSS gradient, :func:`~.thumbnails.gradient_css`), low to high."""
    return ("<span>low (1st percentile)</span><span class=\"colourbar\" role=\"img\" aria-label=\"colour scale of the "
            f"map over the image, from its 1st to its 99th percentile\" style=\"background: {escape(colour_scale)}\"></span>"
            "<span>high (99th)</span>")


def gallery_scale(colour_scale: str, note: str) -> str:
    """The galleries' scaling note beside its colour bar."""
    return f"<div class=\"gallery-scale note\"><p>{escape(note)}</p><div class=\"scale\">{colour_bar(colour_scale)}</div></div>"


def lightbox(colour_scale: str) -> str:
    """The enlarged view (a modal dialog the script opens): image, colour bar, caption and its buttons."""
    return ("<div id=\"lightbox\" role=\"dialog\" aria-modal=\"true\" aria-labelledby=\"lightbox-caption\"><img alt=\"\">"
            f"<div class=\"scale\">{colour_bar(colour_scale)}</div>"
            "<p id=\"lightbox-caption\"></p><p id=\"lightbox-position\" class=\"note\"></p><div class=\"buttons\">"
            "<button type=\"button\" id=\"lightbox-previous\">&larr; previous</button>"
            "<button type=\"button\" id=\"lightbox-next\">next &rarr;</button>"
            "<button type=\"button\" id=\"lightbox-plain\" aria-pressed=\"false\">plain image</button>"
            "<button type=\"button\" id=\"lightbox-close\">close (Esc)</button></div></div>")


def page(*, title: str, overview: str, templates: str, classes: Sequence[str], class_html: str, checks: str, data: ReportData,
         csv_source: str, footer: str, colour_scale: str) -> str:
    """The whole page (``colour_scale``: the CSS gradient of the thumbnails' colour map)."""
    nav = "".join([
        "<a href=\"#overview\">overview</a>", "<a href=\"#templates\">templates</a>",
        *[f"<a href=\"#class-{slug(name)}\">{escape(name)}</a>" for name in classes],
        "<a href=\"#checks\">checks</a>", "<a href=\"#images\">every image</a>", "<a href=\"#glossary\">glossary</a>",
    ])
    skip = "<p class=\"skip note\"><a href=\"#images\">Skip the galleries: go to the table of every image</a></p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body data-ready=\"false\">"
        f"<header><h1>{escape(title)}</h1><nav>{nav}</nav></header><main>"
        f"<section id=\"overview\"><h2>Overview</h2>{overview}</section>"
        f"<section id=\"templates\"><h2>Templates</h2>{templates}</section>{skip}"
        f"{class_html}<section id=\"checks\"><h2>Checks</h2>{checks}</section>{table_section(data, csv_source)}{glossary_html()}</main>"
        f"<footer class=\"note\">{footer}</footer>{lightbox(colour_scale)}"
        f"<script type=\"application/json\" id=\"rows-data\">{rows_json(data.rows)}</script><script>{SCRIPT}</script>"
        "</body></html>\n"
    )

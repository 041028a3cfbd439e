"""``hmt report``: a self-contained study report that opens from disk in any browser, nothing to install or serve.

:func:`write_report` collects (:mod:`.collect`) every image of the heatmap store scored against the templates,
draws the paper figures (:func:`heatmap_templates.present.figures.template_figures`, PNG) and the gallery thumbnails
(:mod:`.thumbnails`), and writes (:mod:`.html`) ``index.html`` with ``images/``, ``figures/``, ``images.csv`` (every
row of the table) and ``report.json`` (the numbers, for scripts), into a new folder that replaces ``out`` only
when complete. ``single_file`` embeds every image and the CSV in ``index.html`` instead.

The overview's classifier metrics come from the evaluation saved beside the model (as ``hmt figures`` reads it);
with ``data`` the model and the templates are evaluated on that labelled set instead
(:func:`heatmap_templates.analysis.compare.evaluate_templates`), which needs the model.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from heatmap_templates._version import __version__
from heatmap_templates.analysis.scoring import read_templates_file
from heatmap_templates.analysis.similarity import DEFAULT_SIMILARITY
from heatmap_templates.errors import HmtError, display_path
from heatmap_templates.files import atomic_folder, write_text
from heatmap_templates.present.figures import DEFAULT_CMAP, template_figures
from heatmap_templates.present.figures.templates import model_record
from heatmap_templates.present.report import html
from heatmap_templates.present.report.collect import (
    DEFAULT_GALLERY_SIZE,
    ROW_COLUMNS,
    ReportData,
    collect,
    common_folder,
    open_store_for,
)
from heatmap_templates.present.report.ground_truth import ground_truth_html
from heatmap_templates.present.report.privacy import BURNED_IN_WARNING, Shown, shown_for
from heatmap_templates.present.report.thumbnails import (
    OVERLAY_OPACITY,
    SCALE_NOTE,
    colour_table,
    data_uri,
    gradient_css,
)
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store.hdf5 import jsonable

REPORT_MARKER = "report.json"  # a folder holding it is an hmt report, which a new report may replace
FIGURE_DPI = 110
FIGURE_CAPTIONS = {
    "template_means": "Templates over the reference chest (one colour scale for every class)",
    "template_std": "Standard deviation of the members' maps",
    "eigen_heatmaps": "Eigen-heatmaps: the main directions in which members differ from the template",
    "similarity": "Similarity of the templates to each other",
    "loo_correlations": "LOO r: each member's correlation with the template built without it",
}
TRAINING_CAPTION = "Training curves: loss and accuracy per epoch, as the model file records them"
FIGURE_FORMATS = ("png", "pdf")  # the report's own figures: PNG on the page, PDF linked beside it (PNG only in a single file)

__all__ = ["DEFAULT_GALLERY_SIZE", "ReportSummary", "write_report"]


@dataclass
class ReportSummary:
    """What ``hmt report`` wrote: the page, its files, its weight, and notes on what was left out."""

    out: Path
    index: Path
    files: list[Path]
    page_bytes: int  # index.html
    total_bytes: int  # everything the page loads (index.html, images, figures)
    images: int  # rows of the table
    thumbnails: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what a reader of a shared report must know (pseudonymised: burned-in text)
    pseudonymised: bool = False

    def to_dict(self) -> dict:
        return {"out": str(self.out), "index": str(self.index), "files": [str(p) for p in self.files], "page_bytes": self.page_bytes,
                "total_bytes": self.total_bytes, "images": self.images, "thumbnails": self.thumbnails, "notes": list(self.notes),
                "warnings": list(self.warnings), "pseudonymised": self.pseudonymised}

    def shareable(self) -> dict:
        """What ``report.json`` records of the summary: the files relative to the report, no folder of this machine."""
        numbers = self.to_dict()
        del numbers["out"], numbers["index"]
        numbers["files"] = [p.relative_to(self.out).as_posix() for p in self.files]
        return numbers


REPORT_FILES = ("index.html", REPORT_MARKER, "images.csv")  # a report's own files at its top
REPORT_FOLDERS = ("figures", "images")  # ... and its folders of files


def _check_out(out: Path) -> list[str]:
    """The files of an earlier report in ``out`` (none for a new or empty folder), which the new report replaces;
    HmtError for anything else, before any work: a folder that is not a report, or a report holding other files."""
    if not out.exists():
        return []
    if not out.is_dir() or (any(out.iterdir()) and not (out / REPORT_MARKER).is_file()):
        raise HmtError(f"{display_path(out)}: exists and is not an hmt report folder; give a new or empty folder")
    earlier: list[str] = []
    foreign: list[str] = []
    for path in sorted(out.rglob("*")):
        if path.is_dir():
            continue
        parts = path.relative_to(out).parts
        own = (len(parts) == 1 and parts[0] in REPORT_FILES) or (len(parts) == 2 and parts[0] in REPORT_FOLDERS)
        (earlier if own else foreign).append("/".join(parts))
    if foreign:
        raise HmtError(f"{display_path(out)}: holds files an hmt report does not write ({', '.join(foreign[:3])}); "
                       "give a new or empty folder")
    return earlier


def _rows_csv(data: ReportData) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ROW_COLUMNS[:-1])
    for row in data.rows:
        writer.writerow(["" if v is None else v for v in row.values()[:-1]])
    return buffer.getvalue()


def _overview(data: ReportData, evaluation: dict | None, evaluation_source: str, template_evaluation: dict | None,
              shown: Shown, training: str = "") -> str:
    """The overview: settings, the classifier (its metrics and ``training``, the training curves' figure) and the
    templates' evaluation."""
    settings = data.templates.settings
    store = data.store
    model = ("left out (pseudonymised report)" if shown.pseudonymised else
             shown.file(settings.model_path) if settings.model_path else "not recorded")
    pairs = [
        ("templates file", shown.file(data.templates.path)), ("heatmap store", f"{shown.file(store.path)} ({len(store)} images)"),
        ("model", f"{model} (sha256 {settings.model_sha256[:12]})"),
        ("classes", ", ".join(store.class_names)), ("head", store.settings.head),
        ("input size", " × ".join(str(v) for v in store.settings.input_size)),
        ("CAM", f"{settings.cam_method} at layer {settings.layer}, score {settings.score}"),
        ("decision threshold", store.settings.threshold),
        ("registration", settings.registration), ("normalisation", settings.normalisation),
        ("similarity", data.similarity),
    ]
    parts = [html.settings_table(pairs)]
    if any("covid" in name.lower() for name in store.class_names):
        parts.append("<p class=\"note\"><strong>Caveat.</strong> In public chest X-ray collections covid images often come from "
                     "adults and the other classes from children (as in cxr4): a model can tell the classes apart by age and "
                     "anatomy rather than disease. Read covid templates with that in mind.</p>")
    if evaluation is not None:
        parts.append(f"<h3>Classifier: {escape(evaluation_source)}</h3>" + html.classification_html(evaluation, "eval"))
    else:
        parts.append(f"<p class=\"note\">{escape(evaluation_source)}</p>")
    parts.append(training)
    if template_evaluation is not None:
        match = template_evaluation["template_match"]
        separation = template_evaluation["correct_vs_misclassified"]
        parts.append(f"<h3>Templates on {escape(template_evaluation['data'])}</h3><p>Best-matching template = true class for "
                     f"<span data-key=\"template-match\">{html.number(match['accuracy'])}</span>"
                     f"{html.ci_span(match.get('accuracy_ci'), 'template-match-ci')} of {match['n']} images; "
                     f"the predicted class's similarity separates correct from misclassified images with ROC AUC "
                     f"<span data-key=\"separation-auc\">{html.number(separation['auc'])}</span>"
                     f"{html.ci_span(separation.get('auc_ci'), 'separation-auc-ci')} "
                     f"({separation['n_correct']} correct, {separation['n_misclassified']} misclassified; brackets: "
                     "95 % bootstrap intervals over the images).</p>")
    if data.store_metrics is not None:
        parts.append("<details><summary>Classifier on the heatmap store's images</summary><p class=\"note\">Every labelled image "
                     "the heatmaps were computed for, whatever its split (training images included): not a held-out estimate.</p>"
                     + html.classification_html(data.store_metrics, "store") + "</details>")
    return "".join(parts)


def _evaluation(file, data: str | os.PathLike | None, shown: Shown, notes: list[str], **options) -> tuple[dict | None, str, dict | None]:
    """The classifier's metrics for the overview, where they come from, and the templates' evaluation on ``data``
    (None without it), every path in them shown as the report shows paths."""
    if data is None:
        _, evaluation = model_record(file, notes)
        return evaluation, ("the test split of the evaluation saved beside the model" if evaluation is not None else
                            "No evaluation is saved beside the model; give the report a labelled data set "
                            "(write_report's data, or hmt report --data DIR) to evaluate on it."), None
    from heatmap_templates.analysis.compare import evaluate_templates

    result = evaluate_templates(file.path, data, **options)
    template_evaluation = result.to_dict()
    template_evaluation.update(templates=shown.file(file.path), data=shown.file(data),
                               skipped=[{"path": shown.image(p.path), "reason": p.reason} for p in result.skipped])
    notes += [f"{shown.image(p.path)}: {p.reason}" for p in result.skipped]
    return result.classification, f"evaluated on {shown.file(data)} ({result.n_images} images)", template_evaluation


def _shareable(data: ReportData, shown: Shown) -> ReportData:
    """The report's rows with their paths as the page shows them (relative to the data root, or pseudonyms)."""
    rows = [dataclasses.replace(row, path=shown.image(row.path)) for row in data.rows]
    return dataclasses.replace(data, rows=rows, path_root=shown.root_name)


@dataclass(frozen=True)
class _Files:
    """How the page references a file of the report folder (its name, or a data URI in a single file) and which vector
    versions of the figures the folder holds (:func:`html.figure` links to them)."""

    folder: Path
    single_file: bool
    vectors: frozenset[str]

    def __call__(self, name: str) -> str:
        if not self.single_file:
            return name
        return data_uri((self.folder / name).read_bytes(), "image/png" if name.endswith(".png") else "image/jpeg")


def _template_figures(report: ReportData, folder: Path, *, single_file: bool, cmap: str,
                      notes: list[str]) -> tuple[dict[str, str], _Files, dict]:
    """Draw the figures into ``folder``/figures: the page's PNG by name, how the page references files, the colour limits."""
    formats = ("png",) if single_file else FIGURE_FORMATS
    summary = template_figures(report.templates, folder / "figures", formats=formats, dpi=FIGURE_DPI, cmap=cmap, width="double")
    notes += summary.notes
    figures = {name: f"figures/{paths[formats.index('png')].name}" for name, paths in summary.figures.items()}
    vectors = frozenset(f"figures/{path.name}" for paths in summary.figures.values() for path in paths if path.suffix != ".png")
    return figures, _Files(folder, single_file, vectors), summary.colour_scales


def _template_html(source: _Files, figures: dict[str, str], scales: dict) -> str:
    """The templates section's figures; the similarity's caption states its colour scale (the data's range)."""
    captions = dict(FIGURE_CAPTIONS)
    low, high = scales.get("similarity", {}).get("matrix", (None, None))
    if low is not None:
        captions["similarity"] += f" (Pearson r; colour scale {low:.2f} to {high:.2f}, the range between different templates)"
    return "".join(html.figure(source, figures[name], caption) for name, caption in captions.items() if name in figures)


def _page(folder: Path, report: ReportData, shown: Shown, overview: Callable[[str], str], *, single_file: bool, cmap: str,
          notes: list[str]) -> tuple[str, str, int]:
    """Write the figures and the gallery images into ``folder`` and return the page, the CSV and the bytes of the
    files beside the page (0 for a single file, whose images the page embeds and ``folder`` no longer holds);
    ``overview`` makes the overview given the training curves' figure."""
    file = report.templates
    figures, source, scales = _template_figures(report, folder, single_file=single_file, cmap=cmap, notes=notes)
    (folder / "images").mkdir()
    for key, content in {**report.thumbnails, **report.enlarged}.items():
        (folder / "images" / f"{key}.jpg").write_bytes(content)
    rows_csv = shown.text(_rows_csv(report))
    csv_source = data_uri(rows_csv.encode("utf-8"), "text/csv") if single_file else "images.csv"
    colour_scale = gradient_css(colour_table(cmap))
    scale = html.gallery_scale(colour_scale, SCALE_NOTE.format(opacity=OVERLAY_OPACITY))
    class_html = "".join(html.class_section(section, report.rows, source, figures, report.enlarged, scale) for section in report.classes)
    training = html.figure(source, figures["training_curves"], TRAINING_CAPTION) if "training_curves" in figures else ""
    checks = ground_truth_html(report.checks, source, figures) + html.checks_html(report.checks, source, figures, report.contrasts,
                                                                                  report.zones)
    asset_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    footer = (f"Written by hmt {escape(__version__)} from {escape(shown.file(file.path))}. Thumbnails: the heatmap of the "
              f"image's class over the registered image ({escape(cmap)} colour map, each map scaled between its own 1st and "
              "99th percentiles). Page weight: {weight}.")
    page = html.page(title=f"hmt report: {shown.file(file.path)}", overview=overview(training),
                     templates=_template_html(source, figures, scales), classes=[s.name for s in report.classes],
                     class_html=class_html, checks=checks, data=report, csv_source=csv_source, footer=footer, colour_scale=colour_scale)
    page = shown.text(page)
    page_bytes = len(page.replace("{weight}", "").encode("utf-8"))
    page = page.replace("{weight}", f"index.html {page_bytes / 1024:.0f} KiB" +
                        ("" if single_file else f", {(page_bytes + asset_bytes) / 1024:.0f} KiB with its images and figures"))
    if single_file:
        for leftover in ("images", "figures"):
            for path in sorted((folder / leftover).rglob("*"), reverse=True):
                path.unlink()
            (folder / leftover).rmdir()
        return page, rows_csv, 0
    return page, rows_csv, asset_bytes


def write_report(templates: str | os.PathLike, out: str | os.PathLike, *, heatmaps: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None, single_file: bool = False, gallery_size: int = DEFAULT_GALLERY_SIZE,
                 similarity: str = DEFAULT_SIMILARITY, cmap: str = DEFAULT_CMAP, batch_size: int = 64,
                 progress: Progress | None = None, labels: Sequence[str] | None = None,
                 uncertain: str | None = None, pseudonymise: bool = False, salt: str | None = None) -> ReportSummary:
    """Write the report of a templates file (see the module docstring) and return what was written; ``data`` (a
    multi-label model's CSV: read with ``labels`` and ``uncertain`` given, else as the store recorded).

    The report is made to be shared: paths relative to the data root, other files by name, never this machine's
    absolute paths. ``pseudonymise`` replaces the image names by salted hashes (``salt``, else one drawn for this
    report; written nowhere) and leaves the model's name out; text burned into the images stays visible, which the
    summary's ``warnings`` and the page say (:mod:`.privacy`)."""
    if salt is not None and not pseudonymise:
        raise HmtError("$salt salts the names of a pseudonymised report: give $pseudonymise too", parameters=("salt", "pseudonymise"))
    out = Path(out)
    earlier = _check_out(out)
    progress = progress or NullProgress()
    file = read_templates_file(templates)
    reader = open_store_for(file, heatmaps)
    shown = shown_for(common_folder(reader.paths), [file.path, reader.path, file.settings.model_path, data, out],
                      pseudonymise=pseudonymise, salt=salt)
    notes: list[str] = []
    evaluation, evaluation_source, template_evaluation = _evaluation(
        file, data, shown, notes, similarity=similarity, batch_size=batch_size, progress=progress, labels=labels, uncertain=uncertain)
    report = _shareable(collect(file, reader, similarity=similarity, gallery_size=gallery_size, cmap=cmap, batch_size=batch_size,
                                progress=progress), shown)
    warnings = [BURNED_IN_WARNING] if pseudonymise else []
    warning = "".join(f"<p class=\"note\"><strong>Warning.</strong> {escape(w)}.</p>" for w in warnings)

    def overview(training: str) -> str:  # its confusion matrix is a table; the training curves' figure is drawn later
        return warning + _overview(report, evaluation, evaluation_source, template_evaluation, shown, training)

    with atomic_folder(out, earlier=earlier) as folder:
        page, rows_csv, asset_bytes = _page(folder, report, shown, overview, single_file=single_file, cmap=cmap, notes=notes)
        if not single_file:
            (folder / "images.csv").write_text(rows_csv, encoding="utf-8")
        write_text(folder / "index.html", page)
        files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        summary = ReportSummary(out=out, index=out / "index.html", files=[out / p for p in files] + [out / REPORT_MARKER],
                                page_bytes=len(page.encode("utf-8")), total_bytes=len(page.encode("utf-8")) + asset_bytes,
                                images=len(report.rows), thumbnails=len(report.thumbnails),
                                notes=[shown.text(note) for note in notes], warnings=warnings, pseudonymised=pseudonymise)
        numbers = {"hmt_report": __version__, "summary": summary.shareable(), "evaluation": evaluation,
                   "template_evaluation": template_evaluation, "store_metrics": report.store_metrics,
                   "classes": [{k: v for k, v in vars(s).items() if k not in ("galleries", "embedding")} for s in report.classes]}
        (folder / REPORT_MARKER).write_text(shown.text(json.dumps(jsonable(numbers), indent=1)), encoding="utf-8")
    return summary

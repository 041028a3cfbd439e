"""The report's ground-truth panel: each template beside the lesion map planted in its class, with its pixel AUC.

Only a phantom's templates have a ground truth. The demo scores them (:func:`heatmap_templates.synth.ground_truth_check`)
and stores the record and the lesion maps in the templates file as the ``ground_truth`` check; the report reads the
file, never the phantom, so this wing stays below the one that makes phantoms. Absent check, absent panel.
"""
from __future__ import annotations

from collections.abc import Mapping

from heatmap_templates.present.report.html import Source, figure, interval, slug, table
from heatmap_templates.templates.templates_file import GROUND_TRUTH_CHECK

CAPTION = "Each template (left, over the reference chest) beside its class's planted lesion probability (right), in the same frame"


def ground_truth_html(checks: Mapping[str, dict], source: Source, figures: Mapping[str, str]) -> str:
    """The ground-truth check of ``checks`` (stored checks by name) as a table of pixel AUCs with their intervals and
    the template-beside-lesion figure; '' when the file holds no such check."""
    check = checks.get(GROUND_TRUTH_CHECK)
    if not check or not check.get("classes"):
        return ""
    classes = check["classes"]
    rows, keys = [], []
    for name, entry in classes.items():
        rows.append([name, entry.get("members"), entry.get("auc_frame"), interval(entry.get("auc_frame"), entry.get("auc_frame_ci")),
                     entry.get("auc_lungs"), interval(entry.get("auc_lungs"), entry.get("auc_lungs_ci"))])
        keys.append([None, None, f"ground-truth-{slug(name)}-auc-frame", f"ground-truth-{slug(name)}-auc-frame-ci",
                     f"ground-truth-{slug(name)}-auc-lungs", f"ground-truth-{slug(name)}-auc-lungs-ci"])
    replicates = max((int(entry.get("replicates") or 0) for entry in classes.values()), default=0)
    parts = ["<h3 id=\"ground-truth\">Ground truth: templates against the planted lesions</h3>",
             "<p>The phantom's lesions are known. Each template is scored as a pixel classifier of its class's planted "
             "lesion probability (positives: pixels at or above "
             f"{float(check.get('threshold_fraction', 0.25)):g} of the map's peak), over the whole frame and inside the "
             "lungs; 0.5 is chance. A class without lesions (normal) has no AUC."
             + (f" Brackets: 2.5th to 97.5th percentiles over the template's {replicates} bootstrap replicates." if replicates else "")
             + "</p>",
             table(["class", "template members", "pixel AUC, frame", "frame [95 % CI]", "pixel AUC, lungs", "lungs [95 % CI]"],
                   rows, keys=keys)]
    if "ground_truth" in figures:
        parts.append(figure(source, figures["ground_truth"], CAPTION))
    return "".join(parts)

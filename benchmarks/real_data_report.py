"""Real-data report: what class templates say about a classifier trained on cxr4 (issue 6).

One command, on ../shared/data/cxr4 (skips with a message when it is absent):

1. the model: ``--model`` (an hmt ``.keras`` file trained on this data set, whose recorded
   patient-grouped split is reused), or a ``small`` CNN trained here with the default recipe
   (``--epochs``, ``--input-size``; ``--binary covid`` for a one-output covid-vs-rest model);
2. CSV manifests of the model's stored ``train`` and ``test`` parts (no patient in both);
3. heatmaps and templates (every class, correctly classified members, ``--registration``) built
   on the TRAINING part only;
4. ``evaluate_templates`` on the TEST part: template-match accuracy, ROC AUC of the predicted
   class's similarity for correct vs misclassified images, lung-field energy per class and per
   template, classification accuracy;
5. a per-class template panel (the template over the reference image, the reference lung mask
   outlined), and the figures module's template figures when it provides them.

6. the strategies of every class and the study report (``hmt report`` with the test part as ``--data``).

Writes ``OUT/report.json``, ``OUT/report.md`` (the numbers as markdown), ``OUT/templates_panel.png``, ``OUT/figures/``
and ``OUT/report/index.html``.

Usage: ``.venv/bin/python benchmarks/real_data_report.py [--model M.keras] [--data ../shared/data/cxr4] [--out /tmp/hmt_real_report]``
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cxr4"


def write_manifest(paths: list[str], data: Path, out: Path) -> int:
    """A ``path,label`` CSV of the split's files (label = the class folder); returns the row count."""
    rows = []
    for relative in paths:
        file = data / relative
        if not file.is_file():
            sys.exit(f"the model's split lists {relative}, which is not under {data}: was it trained on this data set?")
        rows.append((str(file.resolve()), Path(relative).parts[0]))
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return len(rows)


def train_model(data: Path, out: Path, epochs: int | None, input_size: int, binary: str | None) -> Path:
    """Train `small` on ``data`` with the default recipe (``binary``: one sigmoid output, POS against the rest)."""
    from dataclasses import replace

    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.model import model_file, training

    config = training.TrainConfig(backbone="small", input_size=input_size, batch_size=16, binary=binary)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    result = training.train(load_dataset(data), config)
    return model_file.save_model(result.model, result.info, out / "model.keras")


def template_panel(templates_path: Path, energies: dict[str, float], out: Path) -> Path:
    """One panel per class: the template (cividis) over the reference image, the lung mask outlined."""
    from matplotlib.figure import Figure

    from heatmap_templates.templates.templates_file import read_templates

    file = read_templates(templates_path)
    names = list(file.templates)
    figure = Figure(figsize=(3.2 * len(names), 3.6))
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for axis, name in zip(axes, names, strict=True):
        template = file.templates[name]
        axis.imshow(file.reference_image, cmap="gray")
        shown = axis.imshow(template.mean, cmap="cividis", alpha=0.6, vmin=0.0, vmax=max(float(template.mean.max()), 1e-6))
        axis.contour(file.lung_mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
        axis.set_title(f"{name} (n={template.count})\nlung-field energy {energies[name]:.2f}", fontsize=9)
        axis.set_axis_off()
    figure.colorbar(shown, ax=list(axes), fraction=0.02, pad=0.01, label="mean normalised Grad-CAM")
    figure.suptitle(f"class templates on the training part (reference lung area {file.lung_mask.mean():.2f} of the frame)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=130, bbox_inches="tight")
    return out


def markdown(report: dict, meta: dict) -> str:
    """The numbers as a markdown block for RESULTS.md."""
    ev = report
    lines = [
        f"Model: {meta['model']} ({meta['backbone']}, {meta['input_size']} px, CAM {meta['cam']}); "
        f"split from the model record: train {meta['n_train']}, test {meta['n_test']} images (patient-grouped). "
        f"Templates: registration {meta['registration']}, members = correctly classified training images "
        f"({', '.join(f'{k} {v}' for k, v in meta['members'].items())}). Wall time: {meta['seconds']:.0f} s.",
        "",
        f"Classification accuracy on the test part: **{ev['classification']['accuracy']:.3f}** (n={ev['n_images']}).",
        "",
        "| class | test n | recall | AUC | template-match acc. | lung-field energy (images, mean) | lung-field energy (template) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ev["class_names"]:
        match = ev["template_match"]["per_class"].get(name, {})
        energy = ev["lung_field_energy"]["by_true_class"][name]
        template_energy = ev["lung_field_energy"]["templates"].get(name)
        recall = ev["classification"]["per_class"][name]["recall"]
        accuracy = match.get("accuracy")
        class_auc = ev["classification"]["per_class"][name].get("auc")
        lines.append(f"| {name} | {ev['classification']['per_class'][name]['support']} | {recall:.3f} | "
                     f"{'-' if class_auc is None else f'{class_auc:.3f}'} | "
                     f"{'-' if accuracy is None else f'{accuracy:.3f}'} | {energy['mean']:.3f} | "
                     f"{'-' if template_energy is None else f'{template_energy:.3f}'} |")
    match = ev["template_match"]
    separation = ev["correct_vs_misclassified"]
    auc = "undefined" if separation["auc"] is None else f"{separation['auc']:.3f}"
    lines += [
        "",
        f"Template-match accuracy overall: **{match['accuracy']:.3f}** ({match['correct']}/{match['n']}). "
        f"Reference lung area: {ev['lung_field_energy']['lung_area_fraction']:.3f} of the frame (the energy of a uniform map).",
        f"Similarity of the predicted class's map with its template, correct vs misclassified: ROC AUC **{auc}** "
        f"({separation['n_correct']} correct, {separation['n_misclassified']} misclassified); flagged atypical "
        f"(below the 5th LOO percentile): {separation['atypical_share_correct']:.3f} of correct, "
        f"{separation['atypical_share_misclassified'] or 0.0:.3f} of misclassified.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cxr4 folder (class folders)")
    parser.add_argument("--model", type=Path, default=None, help="an hmt model trained on --data (default: train `small` here)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/hmt_real_report"))
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the default recipe's)")
    parser.add_argument("--binary", default=None, metavar="POS[:NEG]",
                        help="train a one-output sigmoid model, POS against every other class (as hmt train --binary)")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--registration", default="affine")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: {args.data} is not present (the cxr4 data set is optional)")
        return

    from heatmap_templates.analysis.compare import evaluate_templates
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.model.model_file import read_model_info
    from heatmap_templates.templates.build import BuildConfig, build_templates

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or train_model(args.data, args.out, args.epochs, args.input_size, args.binary)
    info = read_model_info(model)
    if info is None or not info.split.get("train") or not info.split.get("test"):
        sys.exit(f"{model} has no recorded train/test split; train it with hmt train")
    n_train = write_manifest(info.split["train"], args.data, args.out / "train.csv")
    n_test = write_manifest(info.split["test"], args.data, args.out / "test.csv")
    print(f"model {model}: train {n_train}, test {n_test} images", flush=True)

    store = args.out / "heatmaps_train.h5"
    extraction = extract_heatmaps(model, args.out / "train.csv", store, batch_size=args.batch_size)
    print(f"heatmaps: {extraction.computed} computed, {extraction.resumed} reused, {extraction.correct} correct", flush=True)
    templates = args.out / "templates.h5"
    templates.unlink(missing_ok=True)
    summary = build_templates(store, None, templates, config=BuildConfig(registration=args.registration, batch_size=args.batch_size))
    print(f"templates: {summary.members} registration {summary.registration}", flush=True)
    evaluation = evaluate_templates(templates, args.out / "test.csv", batch_size=args.batch_size)
    report = evaluation.to_dict()
    lung_only = evaluate_templates(templates, args.out / "test.csv", similarity="pearson-lungs", batch_size=args.batch_size)
    report["pearson_lungs"] = {"template_match": lung_only.template_match,
                               "correct_vs_misclassified": lung_only.correct_vs_misclassified}
    panel = template_panel(templates, report["lung_field_energy"]["templates"], args.out / "templates_panel.png")
    import tensorflow as tf

    meta = {
        "model": str(model), "backbone": info.backbone, "input_size": info.input_size[0],
        "cam": "gradcam (logit)", "n_train": n_train, "n_test": n_test, "registration": args.registration,
        "members": summary.members, "seconds": time.perf_counter() - started,
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, TF {tf.__version__}",
    }
    report["meta"] = meta
    report["build_registration"] = summary.registration
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    text = markdown(report, meta)
    lungs = report["pearson_lungs"]
    lung_auc = lungs["correct_vs_misclassified"]["auc"]
    text += (f"\nWith `--similarity pearson-lungs`: template-match accuracy {lungs['template_match']['accuracy']:.3f}, "
             f"AUC correct vs misclassified {'undefined' if lung_auc is None else f'{lung_auc:.3f}'}.")
    (args.out / "report.md").write_text(text + "\n")
    print(text)
    print(f"\npanel: {panel}\nreport: {args.out / 'report.json'}")
    from heatmap_templates.analysis.strategy_search import add_strategies
    from heatmap_templates.present.figures import template_figures
    from heatmap_templates.present.report import write_report

    template_figures(templates, args.out / "figures")
    print(f"template figures: {args.out / 'figures'}")
    strategies = add_strategies(templates, store)
    print("strategies: " + ", ".join(f"{name} K={result.k}" for name, result in strategies.items()), flush=True)
    page = write_report(templates, args.out / "report", heatmaps=store, data=args.out / "test.csv", batch_size=args.batch_size)
    weight = {"page_kib": round(page.page_bytes / 1024), "total_kib": round(page.total_bytes / 1024), "images": page.images,
              "thumbnails": page.thumbnails}
    report["report_page"] = weight
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"study report: {page.index} ({weight})")

if __name__ == "__main__":
    main()

"""Do the templates tell the truth? Randomisation, deletion and localisation on phantoms and cxr4 (issue 14).

One command, one run:

1. **Phantoms** (four classes, planted lesions with ground truth): the `small` CNN trained with the default recipe,
   heatmaps of every image, templates in the canonical frame. Then
   - `hmt sanity` (cascading): each class's sample template against the trained model's after each step, beside an
     image-only baseline: the Sobel edge magnitude of the same images, prepared and averaged like a template. The
     baseline does not depend on the model, so its curve is 1 at every step by construction (it would be flagged);
     what it shows is how edge-like the templates of the randomised model become (Spearman with the baseline).
   - deletion (`evaluate-templates --faithfulness`, ROAD, the phantom's exact body masks): the template and the image's
     own heatmap, most and least relevant first, against random pixels, random smooth regions and the moved region
     (AOPC ratios with 95 % intervals), and the lungs against everything outside them and an equal area elsewhere;
   - localisation (`--annotations` with the phantom's lesion boxes): pointing game, energy pointing game, pixel AUC.
2. **cxr4** (``--cxr4 DIR``: the output folder of ``benchmarks/real_data_report.py``, with its model, training-part
   store, templates and test manifest): the same three (localisation only where annotations exist: none for cxr4),
   and the outside-lung deletion on the covid test images alone: how much covid accuracy remains when everything
   but the lungs is removed, against when the lungs are removed.

    .venv/bin/python benchmarks/bench_trust.py [--size 96 --n-per-class 100] [--cxr4 /tmp/hmt_runs/cxr4_4class] [--out trust.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from scipy.stats import spearmanr
from skimage.filters import sobel

from heatmap_templates.analysis.compare import Comparer, evaluate_templates
from heatmap_templates.analysis.faithfulness import run_deletion
from heatmap_templates.analysis.sanity import DEFAULT_SAMPLE, _sample_members, run_sanity
from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.model.model_file import save_model
from heatmap_templates.model.training import TrainConfig, train
from heatmap_templates.store import open_heatmaps
from heatmap_templates.synth import synthesize_dataset
from heatmap_templates.templates.build import BuildConfig, build_templates
from heatmap_templates.templates.prepare import member_alignment, prepare_maps, registrar_for
from heatmap_templates.templates.templates_file import read_templates


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def sobel_templates(templates: Path, store: Path, sample: int) -> dict[str, np.ndarray]:
    """Per class, the Sobel edge magnitude of the members run_sanity samples, prepared and averaged like a template."""
    data = read_templates(templates)
    reader = open_heatmaps(store)
    registrar = registrar_for(data.settings.registration, data.reference_image, data.lung_mask)
    shape = tuple(int(v) for v in reader.settings.input_size)
    where = {path: i for i, path in enumerate(reader.paths)}
    out = {}
    for name, template in data.templates.items():
        members = _sample_members(template, sample)
        (batch,) = reader.iter_batches(len(members), [where[m.path] for m in members])
        edges = np.stack([sobel(image.astype(np.float32) / 255.0) for image in batch.images]).astype(np.float32)
        alignments = [member_alignment(m, shape) for m in members]
        prepared = prepare_maps(None if all(alignments) else batch.images, edges, registrar, data.settings.normalisation,
                                alignments=alignments if all(alignments) else None)
        out[name] = prepared.maps.mean(axis=0)
    return out


def sanity_with_baseline(templates: Path, store: Path, model: Path, sample: int) -> dict:
    result = run_sanity(templates, store, model=model, sample=sample, keep_templates=True)
    baseline = sobel_templates(templates, store, sample)
    classes = {}
    for name, entries in result.similarity.items():
        kept = result.templates[name]
        classes[name] = {
            "spearman_to_trained": [e["spearman"] for e in entries],
            "ssim_to_trained": [e["ssim"] for e in entries],
            "all_zero": [e["all_zero"] for e in entries],
            "sobel_vs_trained_template": spearman(baseline[name], kept[0]),
            "spearman_to_sobel": [spearman(baseline[name], t) for t in kept[1:]],
            "sobel_baseline_to_itself": 1.0,  # the image-only baseline does not depend on the model at all
        }
    return {"steps": result.steps, "sample": result.sample, "flagged": result.flagged, "classes": classes}


def _without_per_image(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith("per_image")}


def deletion_summary(faith: dict) -> dict:
    """The deletion check's numbers without the per-image lists: AOPC with intervals per curve (LeRF and MoRF - LeRF
    for the rankings), the ratios against each baseline, the regions and the lungs against an equal area elsewhere."""
    curves = {}
    for name, c in faith["curves"].items():
        curves[name] = {"aopc": c["aopc"], "aopc_ci": c.get("aopc_ci"), "area": c["area"], "n": c["n"]}
        if "lerf" in c:
            curves[name] |= {"lerf_aopc": c["lerf"]["aopc"], "lerf_aopc_ci": c["lerf"]["aopc_ci"],
                             "morf_minus_lerf": c["morf_minus_lerf"]}
    return {"n_images": faith["n_images"], "removal": faith["removal"], "body": faith.get("body"),
            "template_vs_random_aopc": faith["template_vs_random"], "ratios": faith.get("ratios"), "curves": curves,
            "regions": {name: _without_per_image(r) for name, r in faith["regions"].items()},
            "comparisons": faith.get("comparisons")}


def phantom(args: argparse.Namespace, root: Path) -> dict:
    started = time.perf_counter()
    data = root / "data"
    synthesize_dataset(data, n_per_class=args.n_per_class, size=args.size, seed=0)
    dataset = load_dataset(data)
    result = train(dataset, TrainConfig(backbone="small", input_size=args.size, batch_size=16, seed=0))
    model = save_model(result.model, result.info, root / "model.keras")
    store = root / "heatmaps.h5"
    extract_heatmaps(model, dataset, store, batch_size=32)
    templates = root / "templates.h5"
    build_templates(store, None, templates, config=BuildConfig(reference=str(data / "ground_truth" / "canonical_chest.png")))
    test = data / "test.csv"  # beside the images: its paths are relative to the set, as the body masks' are
    with open(test, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for relative in result.info.split["test"]:
            writer.writerow([relative, Path(relative).parts[0]])
    print("phantom model trained; sanity ...", flush=True)
    sanity = sanity_with_baseline(templates, store, model, args.sample)
    print("deletion and localisation ...", flush=True)
    report = evaluate_templates(templates, test, faithfulness=True, deletion_sample=args.deletion_sample,
                                body_masks=data / "ground_truth" / "body", annotations=data / "ground_truth" / "boxes.csv").to_dict()
    return {"n_per_class": args.n_per_class, "size": args.size, "test_accuracy": result.test_report["accuracy"],
            "n_test": report["n_images"], "sanity": sanity, "deletion": deletion_summary(report["faithfulness"]),
            "localisation": report["localisation"], "seconds": round(time.perf_counter() - started)}


def patient_of(path: str) -> str:
    """cxr4's patient id of an image (the data set's own naming rules), so that intervals resample patients."""
    from heatmap_templates.data.datasets import patient_id_from_name

    return patient_id_from_name(Path(path).name) or f"image:{path}"  # unknown: the image is its own patient


def cxr4(folder: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    templates, store, test = folder / "templates.h5", folder / "heatmaps_train.h5", folder / "test.csv"
    model = Path(read_templates(templates).settings.model_path)
    print("cxr4 sanity ...", flush=True)
    sanity = sanity_with_baseline(templates, store, model, args.sample)
    print("cxr4 deletion ...", flush=True)
    report = evaluate_templates(templates, test, faithfulness=True, deletion_sample=args.deletion_sample).to_dict()
    with open(test, newline="") as handle:
        rows = list(csv.DictReader(handle))
    covid = [row["path"] for row in rows if row["label"] == "covid"]
    comparer = Comparer(templates, model=model)
    covid_index = comparer.class_names.index("covid")
    covid_only = run_deletion(comparer, covid, np.full(len(covid), covid_index), sample=len(covid),
                              groups=[patient_of(path) for path in covid]).to_dict()
    return {"folder": str(folder), "n_test": report["n_images"], "sanity": sanity,
            "deletion": deletion_summary(report["faithfulness"]),
            "covid_regions": deletion_summary(covid_only)["regions"], "covid_lungs_vs_elsewhere": covid_only["comparisons"], "n_covid_test": len(covid), "seconds": round(time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="members per class in the sanity check")
    parser.add_argument("--deletion-sample", type=int, default=64, help="test images in the deletion curves")
    parser.add_argument("--cxr4", type=Path, default=None, help="output folder of benchmarks/real_data_report.py")
    parser.add_argument("--out", type=Path, default=Path("trust.json"))
    args = parser.parse_args()
    import tensorflow as tf

    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                          f"{platform.python_version()}, TF {tf.__version__}"}
    with tempfile.TemporaryDirectory() as folder:
        results["phantom"] = phantom(args, Path(folder))
    if args.cxr4 is not None:
        results["cxr4"] = cxr4(args.cxr4, args)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

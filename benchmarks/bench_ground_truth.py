"""Ground-truth validation of class templates on phantoms (issue 5): do templates find the lesions?

One command, one run: phantoms (seeded) -> `small` classifier trained on them -> heatmap store ->
templates of every class built twice, with registration ``affine`` and ``none``, both into the
CANONICAL frame -> each disease template scored as a pixel classifier of the canonical
ground-truth lesion map (ROC AUC).

The canonical frame: the reference given to build is the mean of all phantom images warped back
to the canonical frame by their true poses (``ground_truth/poses.csv``), so an ``affine``-registered
template lives in the frame of ``ground_truth/lesion_probability_<class>.npy``; with ``none`` the
maps stay where each posed chest put them (the comparison registration must win).

Positives: pixels whose canonical lesion probability is >= ``--threshold`` (default 0.25) times the
class's largest probability (covid and virus reach 1.0, so 0.25 absolute; bacteria's lobar lesions,
one lobe of several per image, peak at ~0.22, so no pixel reaches 0.25 absolute). AUC over the
whole frame and, second, over the canonical lungs only (``canonical_lungs.png``).

    .venv/bin/python benchmarks/bench_ground_truth.py            # ~10 min on a loaded 2-core CPU
    .venv/bin/python benchmarks/bench_ground_truth.py --work /tmp/gt --reuse   # rescore without retraining
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heatmap_templates.build import BuildConfig, build_templates  # noqa: E402
from heatmap_templates.data import decode_image, load_dataset  # noqa: E402
from heatmap_templates.metrics import roc_auc  # noqa: E402
from heatmap_templates.store import read_templates  # noqa: E402
from heatmap_templates.synth import GROUND_TRUTH_DIR, read_poses, synthesize_dataset  # noqa: E402

DISEASES = ("bacteria", "covid", "virus")


def show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def canonical_reference(data: Path, out: Path) -> Path:
    """Mean of every phantom warped back to the canonical frame by its true pose, saved as an 8-bit PNG."""
    total = None
    poses = read_poses(data)
    for relative, pose in poses.items():
        image = decode_image(data / relative).pixels
        size = (image.shape[1], image.shape[0])
        canonical = cv2.warpAffine(image, pose.matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0.04)
        total = canonical.astype(np.float64) if total is None else total + canonical
    mean = total / len(poses)
    cv2.imwrite(str(out), np.clip(np.rint(mean * 255), 0, 255).astype(np.uint8))
    return out


def score_templates(templates: Path, data: Path, threshold: float) -> dict[str, dict[str, float | None]]:
    """Per disease class: pixel ROC AUC of the template mean vs lesion probability >= threshold x its maximum."""
    truth_dir = data / GROUND_TRUTH_DIR
    lungs = cv2.imread(str(truth_dir / "canonical_lungs.png"), cv2.IMREAD_GRAYSCALE) > 127
    built = read_templates(templates)
    scores = {}
    for name in DISEASES:
        if name not in built.templates:
            scores[name] = {"members": 0, "auc_frame": None, "auc_lungs": None}
            continue
        mean = built.templates[name].mean
        truth = np.load(truth_dir / f"lesion_probability_{name}.npy")
        if truth.shape != mean.shape:
            truth = cv2.resize(truth, (mean.shape[1], mean.shape[0]), interpolation=cv2.INTER_AREA)
            lungs_here = cv2.resize(lungs.astype(np.uint8), (mean.shape[1], mean.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        else:
            lungs_here = lungs
        positive = truth >= threshold * truth.max()
        scores[name] = {
            "members": built.templates[name].count,
            "auc_frame": roc_auc(mean, positive),
            "auc_lungs": roc_auc(mean[lungs_here], positive[lungs_here]),
        }
    return scores


def pose_ceiling(data: Path, threshold: float) -> dict[str, dict[str, float | None]]:
    """The same score for the ground-truth lesion masks themselves, averaged unregistered (image frames)
    and warped back by their true poses: how much perfect registration can gain on these phantoms."""
    truth_dir = data / GROUND_TRUTH_DIR
    sums: dict[str, dict[str, np.ndarray]] = {}
    for relative, pose in read_poses(data).items():
        name = relative.split("/")[0]
        if name not in DISEASES:
            continue
        mask = cv2.imread(str(truth_dir / "masks" / relative), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        size = (mask.shape[1], mask.shape[0])
        canonical = cv2.warpAffine(mask, pose.matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        entry = sums.setdefault(name, {"none": np.zeros_like(mask), "true_pose": np.zeros_like(mask)})
        entry["none"] += mask
        entry["true_pose"] += canonical
    ceiling = {}
    for name, entry in sums.items():
        truth = np.load(truth_dir / f"lesion_probability_{name}.npy")
        positive = truth >= threshold * truth.max()
        ceiling[name] = {key: roc_auc(value, positive) for key, value in entry.items()}
    return ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=150)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threshold", type=float, default=0.25, help="Positives: probability >= this x the class maximum")
    parser.add_argument("--score", default="logit", choices=("logit", "probability"))
    parser.add_argument("--include", default="correct", choices=("correct", "all", "predicted"))
    parser.add_argument("--layer", default=None, help="CAM layer (default: the model's record, block4_relu for small)")
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="Reuse phantoms and model already in --work")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from heatmap_templates.classifier import TrainConfig, save_model, train
    from heatmap_templates.heatmaps import extract_heatmaps

    work = args.work or Path(tempfile.mkdtemp(prefix="hmt_ground_truth_"))
    work.mkdir(parents=True, exist_ok=True)
    data, model = work / "phantoms", work / "model.keras"
    timings: dict[str, float] = {}
    report: dict = {"n_per_class": args.n_per_class, "size": args.size, "seed": args.seed, "threshold": args.threshold,
                    "score": args.score, "include": args.include}
    if not (args.reuse and model.is_file()):
        started = time.perf_counter()
        synthesize_dataset(data, n_per_class=args.n_per_class, size=args.size, seed=args.seed)
        timings["synth_s"] = time.perf_counter() - started
        started = time.perf_counter()
        config = TrainConfig(backbone="small", epochs=args.epochs, input_size=args.size, batch_size=32, seed=args.seed)
        result = train(load_dataset(data), config)
        save_model(result.model, result.info, model)
        timings["train_s"] = time.perf_counter() - started
        (work / "train_report.json").write_text(json.dumps(result.test_report or {}, default=str))
    test_report = json.loads((work / "train_report.json").read_text())
    report["test_accuracy"] = test_report.get("accuracy")
    report["test_n"] = test_report.get("n")

    started = time.perf_counter()
    store = work / f"heatmaps_{args.score}_{args.layer or 'default'}.h5".replace("/", "_")
    extraction = extract_heatmaps(model, data, store, score=args.score, layer=args.layer)
    timings["heatmaps_s"] = time.perf_counter() - started
    report["heatmaps"] = {"correct": extraction.correct, "incorrect": extraction.incorrect, "resumed": extraction.resumed}

    reference = canonical_reference(data, work / "canonical_reference.png")
    report["results"] = {}
    for registration in ("affine", "none"):
        started = time.perf_counter()
        out = work / f"templates_{registration}_{args.score}_{args.include}.h5"
        out.unlink(missing_ok=True)
        summary = build_templates(store, None, out, config=BuildConfig(registration=registration, include=args.include,
                                                                       reference=str(reference), bootstrap_replicates=20))
        timings[f"build_{registration}_s"] = time.perf_counter() - started
        report["results"][registration] = {"scores": score_templates(out, data, args.threshold),
                                           "registration": summary.registration}
    report["lesion_mask_ceiling"] = pose_ceiling(data, args.threshold)
    report["timings"] = {key: round(value, 1) for key, value in timings.items()}

    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    print(f"phantoms {args.n_per_class}/class at {args.size} px, seed {args.seed}; small classifier test accuracy "
          f"{report['test_accuracy']:.3f} (n={report['test_n']}); CAM gradcam/{args.score}, include {args.include}")
    print(f"positives: canonical lesion probability >= {args.threshold} x the class maximum")
    print(f"{'class':<10}{'members':>8}{'AUC affine':>12}{'AUC none':>10}{'lungs: affine':>15}{'none':>7}")
    for name in DISEASES:
        affine, none = report["results"]["affine"]["scores"][name], report["results"]["none"]["scores"][name]
        print(f"{name:<10}{affine['members']:>8}{show(affine['auc_frame']):>12}{show(none['auc_frame']):>10}"
              f"{show(affine['auc_lungs']):>15}{show(none['auc_lungs']):>7}")
    ceiling = report["lesion_mask_ceiling"]
    print("ground-truth lesion masks averaged (ceiling of what registration can gain): "
          + ", ".join(f"{name} none {show(c['none'])} / true poses {show(c['true_pose'])}" for name, c in ceiling.items()))
    print(f"registration (affine): {report['results']['affine']['registration']}")
    print(f"timings: {report['timings']}  work: {work}")


if __name__ == "__main__":
    main()

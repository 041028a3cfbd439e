"""Ground-truth validation of class templates on phantoms (issue 5): do templates find the lesions, and does registration matter?

One command, one run per pose spread: phantoms (seeded, ``--pose-spread`` x the default pose
range) -> `small` classifier trained on them -> heatmap store -> templates of every class built
twice, with registration ``affine`` and ``none``, both into the CANONICAL frame -> each disease
template scored as a pixel classifier of the canonical ground-truth lesion map
(`heatmap_templates.synth.ground_truth_localisation`, ROC AUC).

The canonical frame: the reference given to build is ``ground_truth/canonical_chest.png``, the mean
of the phantoms before their pose warp, so an ``affine``-registered template lives in the frame of
``ground_truth/lesion_probability_<class>.npy``; with ``none`` the maps stay where each posed chest
put them (the comparison registration must win). Larger pose spreads give registration more to do.

Positives: pixels whose canonical lesion probability is >= ``--threshold`` (default 0.25) times the
class's largest probability (bacteria's lobar lesions, one lobe of several per image, peak at
~0.22). AUC over the whole frame and over the canonical lungs only (``canonical_lungs.png``).

Also reported per spread: the classifier's test accuracy, the registration pose error (each image's
estimated image -> reference transform composed with its true canonical -> image pose should be the
identity; mean displacement over the canonical lung pixels, ``none`` = the pose itself), and the
ground-truth lesion masks averaged unregistered vs warped back by their true poses (the ceiling of
what registration can gain with perfect alignment), and a third template set from the same heatmaps
warped back by the TRUE poses (``true pose``: perfect registration of these CAMs).

    .venv/bin/python benchmarks/bench_ground_truth.py --pose-spread 1 2.5      # ~15 min per spread on a loaded 2-core CPU
    .venv/bin/python benchmarks/bench_ground_truth.py --pose-spread 1 2.5 --work /tmp/gt --reuse   # rescore without retraining
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

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.data.decode import decode_image
from heatmap_templates.data.preprocess import resize_gray
from heatmap_templates.numeric.metrics import roc_auc
from heatmap_templates.synth import (
    CANONICAL_CHEST_FILE,
    GROUND_TRUTH_DIR,
    canonical_lung_mask,
    ground_truth_localisation,
    read_poses,
    synthesize_dataset,
)
from heatmap_templates.templates.build import BuildConfig, build_templates
from heatmap_templates.templates.members import member_indices
from heatmap_templates.templates.registration import Registrar, reference_from_image

DISEASES = ("bacteria", "covid", "virus")


def show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def pose_error(data: Path, reference_path: Path, size: int) -> dict[str, float]:
    """Mean displacement (px) over the canonical lungs of each image's canonical -> reference map,
    with affine registration (estimate composed with the true pose) and without (the pose alone)."""
    reference = reference_from_image(resize_gray(decode_image(reference_path).pixels, (size, size)))
    registrar = Registrar("affine", reference)
    ys, xs = np.nonzero(canonical_lung_mask(size))
    points = np.column_stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    errors: dict[str, list[float]] = {"affine": [], "none": []}
    for relative, pose in read_poses(data).items():
        alignment = registrar.estimate(decode_image(data / relative).pixels)
        for name, matrix in (("affine", homogeneous(alignment.matrix) @ homogeneous(pose.matrix)), ("none", homogeneous(pose.matrix))):
            errors[name].append(float(np.linalg.norm(points @ (matrix - np.eye(3))[:2].T, axis=1).mean()))
    summary = {f"{name}_mean": float(np.mean(values)) for name, values in errors.items()}
    summary |= {f"{name}_p90": float(np.percentile(values, 90)) for name, values in errors.items()}
    summary["fallbacks"] = registrar.summary()["fallbacks"]
    return summary


def true_pose_templates(store: Path, data: Path, out: Path, include: str) -> Path:
    """Templates built from the same heatmaps warped back by each image's TRUE pose: perfect
    registration, so the gap to ``affine`` is registration error and the rest is the CAM itself."""
    from heatmap_templates.store import open_heatmaps
    from heatmap_templates.templates.accumulator import ClassAccumulator, Member
    from heatmap_templates.templates.templates_file import save_templates

    reader = open_heatmaps(store)
    poses = {(data / relative).resolve(): pose for relative, pose in read_poses(data).items()}
    size = tuple(int(v) for v in reader.settings.input_size)
    templates = []
    for class_index, name in enumerate(reader.class_names):
        accumulator = ClassAccumulator(name, size, n_components=8, bootstrap_replicates=20)
        for batch in reader.iter_batches(32, member_indices(reader, class_index, include)):
            maps = batch.maps_for(class_index)
            warped = np.stack([cv2.warpAffine(m, poses[Path(p).resolve()].matrix, (size[1], size[0]),
                                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0.0)
                               for m, p in zip(maps, batch.paths, strict=True)])
            accumulator.add(warped, [Member(p, sha, float(prob[class_index]), 1.0, "true-pose")
                                     for p, sha, prob in zip(batch.paths, batch.sha256, batch.probabilities, strict=True)])
        if accumulator.count:
            templates.append(accumulator.finalize())
    out.unlink(missing_ok=True)
    settings = reader.settings.to_dict() | {"registration": "true-pose", "normalisation": "minmax"}
    return save_templates(out, settings, templates)


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


def run_spread(args: argparse.Namespace, spread: float, work: Path) -> dict:
    """Synthesise, train, extract, build (affine and none) and score at one pose spread."""
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.model.model_file import save_model
    from heatmap_templates.model.training import TrainConfig, train

    work.mkdir(parents=True, exist_ok=True)
    data, model = work / "phantoms", work / "model.keras"
    timings: dict[str, float] = {}
    report: dict = {"pose_spread": spread}
    if not (args.reuse and model.is_file()):
        started = time.perf_counter()
        synthesize_dataset(data, n_per_class=args.n_per_class, size=args.size, seed=args.seed, pose_spread=spread)
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

    reference = data / GROUND_TRUTH_DIR / CANONICAL_CHEST_FILE
    report["results"] = {}
    started = time.perf_counter()
    oracle = true_pose_templates(store, data, work / f"templates_true_pose_{args.score}_{args.include}.h5", args.include)
    report["results"]["true_pose"] = {"scores": ground_truth_localisation(oracle, data, threshold_fraction=args.threshold)}
    timings["build_true_pose_s"] = time.perf_counter() - started
    for registration in ("affine", "none"):
        started = time.perf_counter()
        out = work / f"templates_{registration}_{args.score}_{args.include}.h5"
        out.unlink(missing_ok=True)
        summary = build_templates(store, None, out, config=BuildConfig(registration=registration, include=args.include,
                                                                       reference=str(reference), bootstrap_replicates=20))
        timings[f"build_{registration}_s"] = time.perf_counter() - started
        report["results"][registration] = {"scores": ground_truth_localisation(out, data, threshold_fraction=args.threshold),
                                           "registration": summary.registration}
    started = time.perf_counter()
    report["pose_error_px"] = pose_error(data, reference, args.size)
    timings["pose_error_s"] = time.perf_counter() - started
    report["lesion_mask_ceiling"] = pose_ceiling(data, args.threshold)
    report["timings"] = {key: round(value, 1) for key, value in timings.items()}
    return report


def print_report(args: argparse.Namespace, reports: list[dict], work: Path) -> None:
    print(f"phantoms {args.n_per_class}/class at {args.size} px, seed {args.seed}; small classifier, {args.epochs} epochs; "
          f"CAM gradcam/{args.score}, include {args.include}")
    print(f"positives: canonical lesion probability >= {args.threshold} x the class maximum")
    for report in reports:
        error = report["pose_error_px"]
        print(f"\npose spread {report['pose_spread']:g}: test accuracy {report['test_accuracy']:.3f} (n={report['test_n']}); "
              f"pose error mean (p90) affine {error['affine_mean']:.2f} ({error['affine_p90']:.2f}) px, "
              f"none {error['none_mean']:.2f} ({error['none_p90']:.2f}) px, fallbacks {error['fallbacks']}")
        print(f"{'class':<10}{'members':>8}{'AUC true pose':>15}{'affine':>8}{'none':>7}{'lungs: true pose':>18}{'affine':>8}{'none':>7}")
        for name in DISEASES:
            oracle, affine, none = (report["results"][key]["scores"][name] for key in ("true_pose", "affine", "none"))
            print(f"{name:<10}{affine['members']:>8}{show(oracle['auc_frame']):>15}{show(affine['auc_frame']):>8}"
                  f"{show(none['auc_frame']):>7}{show(oracle['auc_lungs']):>18}{show(affine['auc_lungs']):>8}{show(none['auc_lungs']):>7}")
        ceiling = report["lesion_mask_ceiling"]
        print("ground-truth lesion masks averaged (ceiling of what registration can gain): "
              + ", ".join(f"{name} none {show(c['none'])} / true poses {show(c['true_pose'])}" for name, c in ceiling.items()))
        print(f"timings: {report['timings']}")
    print(f"work: {work}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=150)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--pose-spread", type=float, nargs="+", default=[1.0, 2.5],
                        help="Pose spreads to compare (x the default pose range), one full run each")
    parser.add_argument("--threshold", type=float, default=0.25, help="Positives: probability >= this x the class maximum")
    parser.add_argument("--score", default="logit", choices=("logit", "probability"))
    parser.add_argument("--include", default="correct", choices=("correct", "all", "predicted"))
    parser.add_argument("--layer", default=None, help="CAM layer (default: the model's record, block4_relu for small)")
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="Reuse phantoms and models already in --work")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="hmt_ground_truth_"))
    reports = [run_spread(args, spread, work / f"spread_{spread:g}") for spread in args.pose_spread]
    if args.json:
        print(json.dumps({"n_per_class": args.n_per_class, "size": args.size, "seed": args.seed, "epochs": args.epochs,
                          "threshold": args.threshold, "score": args.score, "include": args.include, "spreads": reports},
                         indent=2, default=str))
        return
    print_report(args, reports, work)


if __name__ == "__main__":
    main()

"""Detect, correct, verify: does training with `--attention-prior` move a model off a planted shortcut, and what does it
cost? (issue 31, the phantom part)

One command, one run (results in benchmarks/RESULTS.md). The phantoms of ``benchmarks/bench_contamination.py``: the
side marker on ``--percent`` (50) % of covid images, tagged images keeping their lesions. The `small` CNN is trained
twice with the same seed, split and number of epochs (``--epochs`` 30: the penalised objective converges more slowly,
RESULTS): without a prior, and with ``--attention-prior`` (default ``lungs``: the weight chosen on the validation split
from 0.3, 1 and 3; masks: each image's lung fields, segmentation united with the reference's lungs moved back). For
each model, with hmt's own instruments:

1. **marker energy**: the share of each tagged covid member's registered, normalised Grad-CAM map inside the marker
   region (bench_contamination's detector 2); the goal: it falls at least 10x with the prior;
2. **strategies** of the covid template: K by the eigengap and the adjusted Rand index with the tags; the goal: they
   no longer split on the tag;
3. **deletion** (the trust issue's equal-area test, not resting on Grad-CAM): on ``--deletion-n`` fresh tagged covid
   phantoms, the covid-probability drop when the marker is removed (ROAD) minus the drop of equal-area random smooth
   regions inside the body;
4. **Score-CAM templates** (not the penalty's own instrument): the marker energy and the lung-field energy of the
   covid template from Score-CAM maps;
5. **accuracy** on a fresh test set of ``--test-per-class`` x 4 phantoms (400; the marker on the same share of
   covid), with the paired difference's interval; the goal: within 2 points. And covid recall on fresh covid phantoms
   with the marker and the very same images without it (bench_contamination's detector 5).

    .venv/bin/python benchmarks/bench_mitigation.py [--size 96 --n-per-class 120 --epochs 30 --percent 50]
        [--attention-prior lungs] [--outside-lungs-augment 0.5] [--work DIR] [--out mitigation.json]

Smoke test: ``--size 48 --n-per-class 16 --epochs 2 --test-per-class 10 --fresh 10 --deletion-n 4 --attention-prior lungs:1``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from bench_contamination import (  # benchmarks/, on the path when a benchmark runs as a script
    CLASSES,
    TAGGED,
    Row,
    Trained,
    accuracy_readout,
    deletion_readout,
    energy_readout,
    fresh_phantoms,
    interval,
    member_maps,
    read_shortcuts,
    strategies_readout,
    train_level,
)
from phantom_model import machine

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.model.evaluation import evaluate
from heatmap_templates.numeric.metrics import lung_field_energy
from heatmap_templates.store import open_heatmaps
from heatmap_templates.synth import CANONICAL_CHEST_FILE, DEFAULT_SHORTCUT_STYLE, GROUND_TRUTH_DIR, synthesize_dataset
from heatmap_templates.templates.build import BuildConfig, build_templates
from heatmap_templates.templates.templates_file import read_templates


def tagged_members(trained: Trained, members: list) -> np.ndarray:
    """Which covid members carry the marker."""
    tags = read_shortcuts(trained.data)
    root = trained.data.resolve()
    return np.array([tags.get(Path(m.path).resolve().relative_to(root).as_posix(), False) for m in members], bool)


def template_readouts(trained: Trained, args: argparse.Namespace, cell: int) -> dict:
    """Marker energy, strategies and the covid template's lung-field energy of one store's templates."""
    covid = member_maps(trained, TAGGED)
    if covid is None:
        return {"note": "no covid template"}
    tagged = tagged_members(trained, covid[0])
    file = read_templates(trained.templates)
    template = file.templates[TAGGED].mean
    uniform = float(file.lung_mask.mean())
    energy = float(lung_field_energy(np.clip(template, 0, None), file.lung_mask))
    return {"members": len(tagged), "tagged_members": int(tagged.sum()),
            "energy": energy_readout(trained, covid, tagged, args, cell),
            "strategies": strategies_readout(trained, covid[0], covid[1], tagged),
            "covid_template_lung_energy": energy, "uniform_lung_energy": uniform,
            "covid_template_lung_enrichment": energy / uniform if uniform else None}


def scorecam_copy(trained: Trained, folder: Path) -> Trained:
    """The same model's Score-CAM maps and templates (another instrument than the penalty's Grad-CAM)."""
    store, templates = folder / "heatmaps_scorecam.h5", folder / "templates_scorecam.h5"
    extract_heatmaps(folder / "model.keras", load_dataset(trained.data), store, method="scorecam")
    build_templates(store, None, templates,
                    config=BuildConfig(reference=str(trained.data / GROUND_TRUTH_DIR / CANONICAL_CHEST_FILE)))
    return replace(trained, store=store, templates=templates)


def test_accuracy(trained: Trained, test_set) -> tuple[dict, np.ndarray]:
    """Accuracy on the fresh test set (every image), with its interval, and each image's correctness."""
    result = evaluate(trained.model, trained.info, test_set, split="all")
    correct = (np.asarray(result.predicted) == np.asarray(result.labels)).astype(float)
    return {"accuracy": interval(correct), "report_accuracy": result.report.get("accuracy")}, correct


def run_model(name: str, prior: str | None, work: Path, args: argparse.Namespace, fresh, test_set) -> tuple[dict, np.ndarray]:
    """Train one model of the pair and read every instrument."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=False)
    started = time.perf_counter()
    trained = train_level(Row(args.percent, 1.0), folder, args, attention_prior=prior,
                          outside_lungs_augment=args.outside_lungs_augment if prior else 0.0)
    raw_side = next(open_heatmaps(trained.store).iter_raw(1)).shape[-1]
    cell = max(1, int(trained.info.input_size[0]) // raw_side)
    record: dict = {"attention_prior": prior, "training": {k: trained.info.training.get(k) for k in ("attention_prior", "seconds")},
                    "val_accuracy": (trained.info.training.get("val_report") or {}).get("accuracy"),
                    "split_test_accuracy": trained.test_accuracy, "train_and_template_seconds": round(trained.seconds, 1)}
    record["gradcam"] = template_readouts(trained, args, cell)
    record["scorecam"] = template_readouts(scorecam_copy(trained, folder), args, cell)
    images, markers, bodies = fresh.with_marker[:args.deletion_n], fresh.markers[:args.deletion_n], fresh.bodies[:args.deletion_n]
    record["deletion"] = deletion_readout(trained, images, markers, bodies, cell, args)
    record["marker_reliance"] = accuracy_readout(trained, fresh)
    record["fresh_test"], correct = test_accuracy(trained, test_set)
    record["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(record, indent=1), flush=True)
    return record, correct


def verdict(without: dict, with_prior: dict, correct: dict[str, np.ndarray]) -> dict:
    """The issue's three goals, side by side."""
    def tagged_energy(record: dict, cam: str) -> float | None:
        return record[cam].get("energy", {}).get("covid_tagged_mean")

    out: dict = {}
    for cam in ("gradcam", "scorecam"):
        before, after = tagged_energy(without, cam), tagged_energy(with_prior, cam)
        out[f"{cam}_marker_energy_fall"] = before / after if before and after else None
        out[f"{cam}_marker_energy_goal_10x"] = bool(before and after and before / after >= 10)
    strategies = with_prior["gradcam"].get("strategies", {})
    out["strategies_split_on_tag_after"] = strategies.get("finds")
    difference = interval(correct["with"] - correct["without"])
    out["fresh_accuracy_difference"] = difference
    out["accuracy_goal_within_2_points"] = abs(difference["value"]) <= 0.02
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--n-per-class", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--percent", type=int, default=50, help="share of covid images tagged (%)")
    parser.add_argument("--attention-prior", default="lungs", help="lungs (weight chosen on validation) or lungs:WEIGHT")
    parser.add_argument("--outside-lungs-augment", type=float, default=0.0,
                        help="with the prior, also remove the pixels outside the lungs of a training image with this probability")
    parser.add_argument("--style", default=DEFAULT_SHORTCUT_STYLE)
    parser.add_argument("--marker-dilation", type=int, default=1)
    parser.add_argument("--test-per-class", type=int, default=100, help="fresh test phantoms per class")
    parser.add_argument("--test-seed", type=int, default=2000)
    parser.add_argument("--fresh", type=int, default=200, help="fresh covid phantoms with and without the marker")
    parser.add_argument("--fresh-seed", type=int, default=1000)
    parser.add_argument("--deletion-n", type=int, default=40)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--removal", default="road")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("mitigation.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="hmt_mitigation_"))
    report: dict = {"machine": machine(), "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    test_folder = work / "fresh_test"
    synthesize_dataset(test_folder, n_per_class=args.test_per_class, size=args.size, seed=args.test_seed, classes=CLASSES,
                       shortcuts={TAGGED: args.percent / 100.0}, shortcut_style=args.style)
    test_set = load_dataset(test_folder)
    fresh = fresh_phantoms(args.fresh_seed, args.fresh, args.size, args.style, 1.0)
    correct = {}
    report["without"], correct["without"] = run_model("without", None, work, args, fresh, test_set)
    report["with"], correct["with"] = run_model("with", args.attention_prior, work, args, fresh, test_set)
    report["verdict"] = verdict(report["without"], report["with"], correct)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["verdict"], indent=2))


if __name__ == "__main__":
    main()

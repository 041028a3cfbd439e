"""Do the zones read the templates as the planted lesions are placed? And how well does lung segmentation do? (issue 29)

One command, one run (results in benchmarks/RESULTS.md):

1. **Phantoms** (4 classes, ``--size`` 96 px or more: a 48-px model's 6 x 6 CAM cannot resolve lung zones; the
   `small` CNN with the default recipe, heatmaps, templates in the canonical frame, strategies of every class), zones
   from the phantom's exact canonical anatomy. Over the 12 lung zones, each template's enrichment against the planted
   lesion prior's (``ground_truth/lesion_probability_<class>.npy`` at the frame's size): Spearman, for covid and virus,
   and for each bacteria strategy against the prior's half on the strategy's side (its lung with more energy). A map
   uniform in the lungs has the same enrichment in every lung zone (no ranking: its correlation with anything is
   taken as 0). The most enriched lung zone of covid (expected peripheral) and virus (expected central).
2. **Lung segmentation** (the classical one of `templates.lungs.segment_lungs`, which real-data atlases rest on): Dice
   with each phantom image's true lung fields (``ground_truth/lungs/``), and the reference's (the canonical chest
   against ``canonical_lungs.png``); images where it declines are counted.
3. **cxr4** (``--cxr4 DIR``, the output folder of benchmarks/real_data_report.py): the zone table of each class and
   strategy (atlas from the reference's segmentation and Otsu body), with intervals over patients.

    .venv/bin/python benchmarks/bench_zones.py [--size 96 --n-per-class 120] [--cxr4 /tmp/hmt_runs/cxr4_4class]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2
import numpy as np
from phantom_model import machine, phantom_files  # benchmarks/, on the path when a benchmark runs as a script
from scipy import stats

from heatmap_templates.analysis.strategies import StrategySettings
from heatmap_templates.analysis.strategy_search import add_strategies
from heatmap_templates.analysis.zone_report import run_zones
from heatmap_templates.analysis.zones import LUNG_ZONES, ZONE_NAMES, zone_profile
from heatmap_templates.synth.ground_truth import canonical_anatomy, read_lesion_truth
from heatmap_templates.templates.geometry import RegistrationError
from heatmap_templates.templates.lungs import segment_lungs
from heatmap_templates.templates.templates_file import read_templates


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho; 0 when either ranking is constant (a uniform map ranks nothing)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def phantom_run(root: Path, args: argparse.Namespace) -> dict:
    files = phantom_files(root, size=args.size, n_per_class=args.n_per_class, seed=args.seed)
    data, store, templates = files["data"], files["store"], files["templates"]
    add_strategies(templates, store, None, StrategySettings())
    frame = read_templates(templates).reference_image
    assert frame is not None
    lungs, body = canonical_anatomy(data, frame.shape)
    record, atlas = run_zones(templates, store, lungs=lungs, body=body, seed=args.seed)
    truth = read_lesion_truth(data).resized(frame.shape)
    out = {"test_accuracy": files["test_accuracy"], "classes": {}, "strategies": {}}
    for name in ("covid", "virus", "bacteria"):
        prior = zone_profile(truth.probabilities[name], atlas)
        template = record["classes"][name]["zones"]
        out["classes"][name] = _agreement(template, prior)
    for number, strategy in record["strategies"].get("bacteria", {}).items():
        zones = strategy["zones"]
        side = "right" if sum(zones[z]["share"] for z in LUNG_ZONES if z.startswith("right")) > \
            sum(zones[z]["share"] for z in LUNG_ZONES if z.startswith("left")) else "left"
        half = np.where(np.isin(atlas.labels, [i for i, z in enumerate(ZONE_NAMES) if z.startswith(side)]),
                        truth.probabilities["bacteria"], 0.0)
        out["strategies"][f"bacteria {number}"] = _agreement(zones, zone_profile(half, atlas)) | {"side": side,
                                                                                                   "members": strategy["members"]}
    out["zone_table"] = record
    out["segmentation"] = segmentation_dice(data, args)
    return out


def _agreement(zones: dict, prior: dict) -> dict:
    """Spearman of the 12 lung zones' enrichments (template vs prior), the uniform map's (0), the most enriched zones."""
    template = [zones[z]["enrichment"] for z in LUNG_ZONES]
    planted = [prior[z]["enrichment"] for z in LUNG_ZONES]
    return {"spearman": spearman(template, planted), "uniform_spearman": 0.0,
            "most_enriched_template": LUNG_ZONES[int(np.argmax(template))], "most_enriched_prior": LUNG_ZONES[int(np.argmax(planted))],
            "lung_energy": float(sum(zones[z]["share"] for z in LUNG_ZONES)),
            "enrichment": {z: zones[z]["enrichment"] for z in LUNG_ZONES}, "enrichment_ci": {z: zones[z]["enrichment_ci"] for z in LUNG_ZONES}}


def segmentation_dice(data: Path, args: argparse.Namespace) -> dict:
    """Dice of the classical lung segmentation with the true lungs, per image (declines counted) and for the reference."""
    scores, declined = [], 0
    for mask_path in sorted((data / "ground_truth" / "lungs").rglob("*.png")):
        relative = mask_path.relative_to(data / "ground_truth" / "lungs")
        image = cv2.imread(str(data / relative), cv2.IMREAD_GRAYSCALE)
        truth = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0
        try:
            scores.append(dice(segment_lungs(image.astype(np.float32) / 255.0), truth))
        except RegistrationError:
            declined += 1
    chest = cv2.imread(str(data / "ground_truth" / "canonical_chest.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    canonical = cv2.imread(str(data / "ground_truth" / "canonical_lungs.png"), cv2.IMREAD_GRAYSCALE) > 0
    values = np.array(scores)
    return {"images": len(scores) + declined, "declined": declined, "dice_mean": float(values.mean()),
            "dice_median": float(np.median(values)), "dice_p10": float(np.percentile(values, 10)),
            "reference_dice": dice(segment_lungs(chest), canonical)}


def cxr4(folder: Path, args: argparse.Namespace) -> dict:
    record, _ = run_zones(folder / "templates.h5", folder / "heatmaps_train.h5", seed=args.seed)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--n-per-class", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cxr4", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("zones.json"))
    args = parser.parse_args()
    if args.size < 96:
        raise SystemExit("--size must be 96 or more: a smaller model's CAM grid cannot resolve lung zones")
    results: dict = {"machine": machine()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        results["phantom"] = phantom_run(Path(folder), args)
    results["phantom_seconds"] = round(time.perf_counter() - started)
    if args.cxr4 is not None:
        results["cxr4"] = cxr4(args.cxr4, args)
    args.out.write_text(json.dumps(results, indent=2))
    summary = {k: v for k, v in results["phantom"].items() if k != "zone_table"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

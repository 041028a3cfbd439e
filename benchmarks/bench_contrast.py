"""Does `hmt contrast` hold its error rate, find what is planted where it is planted, and run fast? (issue 28)

One command, one run (results in benchmarks/RESULTS.md):

1. **Calibration**: phantoms (4 classes, the `small` CNN, heatmaps, templates in the canonical frame); ``--nulls``
   null contrasts, each a random halving of one class's maps (normal; by patient: each phantom is its own) tested
   half against half. The family-wise false-positive rate (share of null contrasts with any significant pixel) at
   alpha 0.05, for maxT and TFCE, with its binomial 95 % interval, which must contain 0.05.
2. **Power and place**: virus > normal (one-sided, maxT and TFCE): the share of significant pixels inside the
   planted virus lesion prior (the canonical lesion probability >= 0.25 of its maximum, as the ground-truth check
   defines it) dilated by two CAM cells (a grid cell counts as inside when at least half of it is), and the t-map's
   pixel ROC AUC against the prior (a cell is positive when at least half of it is prior).
3. **Speed**: maxT with ``--speed-permutations`` (5000) relabellings of two groups of ``--speed-maps`` (1000) maps at
   32 x 32, against a plain per-permutation loop (numpy Welch t for each relabelling, timed on a tenth of the
   permutations and scaled), and TFCE's time beside it (on a tenth, scaled).
4. **cxr4** (``--cxr4 DIR``, the output folder of benchmarks/real_data_report.py): covid vs normal, and covid
   strategy 1 vs 2 (when the file has covid strategies), with their cluster tables.

The planted-marker case (tagged vs untagged covid, a cluster peaking on the marker) is the contrast row of
benchmarks/bench_contamination.py.

    .venv/bin/python benchmarks/bench_contrast.py [--size 96 --n-per-class 100 --nulls 500] [--cxr4 /tmp/hmt_runs/cxr4_4class]
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

import numpy as np
from phantom_model import machine, phantom_files  # benchmarks/, on the path when a benchmark runs as a script
from scipy import ndimage, stats

from heatmap_templates.analysis.contrast import ContrastSettings, group_maps, run_contrast
from heatmap_templates.numeric.metrics import pixel_auc
from heatmap_templates.numeric.permutation import permutation_test
from heatmap_templates.numeric.resample import downsample
from heatmap_templates.progress import NullProgress
from heatmap_templates.store import open_heatmaps
from heatmap_templates.synth import read_lesion_truth
from heatmap_templates.templates.prepare import registrar_for
from heatmap_templates.templates.templates_file import read_strategies, read_templates

PRIOR_FRACTION = 0.25


def class_maps(files: dict, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Every image of true class ``name``: its map of that class, prepared and at the CAM grid."""
    file = read_templates(files["templates"])
    reader = open_heatmaps(files["store"])
    registrar = registrar_for(file.settings.registration, file.reference_image, file.lung_mask)
    index = reader.class_names.index(name)
    rows = np.flatnonzero(reader.labels == index)
    grid = tuple(int(v) for v in next(reader.iter_raw(1)).shape[-2:])
    alignments = {m.path: m for t in file.templates.values() for m in t.members}
    maps = group_maps(reader, rows, index, registrar, file.settings.normalisation, grid, alignments, NullProgress())
    return maps, grid


def calibration(files: dict, args: argparse.Namespace) -> dict:
    """Null contrasts: random halves of the normal images' maps, maxT and TFCE; the family-wise error rate."""
    maps, grid = class_maps(files, "normal")
    rng = np.random.default_rng(args.seed)
    out = {"maps": len(maps), "grid": list(grid), "nulls": args.nulls, "permutations": args.null_permutations}
    for correction in ("maxt", "tfce"):
        started = time.perf_counter()
        hits = 0
        for run in range(args.nulls):
            order = rng.permutation(len(maps))
            half = len(maps) // 2
            test = permutation_test(maps[order[:half]], maps[order[half:2 * half]], grid, correction=correction,
                                    permutations=args.null_permutations, seed=args.seed + 1 + run)
            hits += bool((test.p < 0.05).any())
        interval = stats.binomtest(hits, args.nulls).proportion_ci(confidence_level=0.95)
        out[correction] = {"false_positive_runs": hits, "rate": hits / args.nulls,
                           "rate_ci": [float(interval.low), float(interval.high)],
                           "contains_alpha": bool(interval.low <= 0.05 <= interval.high),
                           "seconds": round(time.perf_counter() - started, 1)}
        print(f"calibration {correction}: {hits}/{args.nulls}", flush=True)
    return out


def power(files: dict, args: argparse.Namespace) -> dict:
    """virus > normal: where the significant pixels lie against the planted virus prior, and the t-map's pixel AUC;
    with each group's own class map (the default: virus images' virus map against normal images' normal map), and with
    the virus map of both groups (``column:label=...@virus``: where the model's virus evidence differs); each for
    "not equal" and for "more than ``--min-difference``" (the interval null), and a sweep of the margin (maxT)."""
    file = read_templates(files["templates"])
    assert file.reference_image is not None  # every build keeps its reference
    truth = read_lesion_truth(files["data"]).resized(file.reference_image.shape)
    prior = truth.probabilities["virus"]
    positive = prior >= PRIOR_FRACTION * prior.max()
    manifest = files["data"] / "manifest.csv"
    out = {}
    runs = [(maps, groups, correction, margin)
            for maps, groups in (("own class maps", ("images:virus", "images:normal")),
                                 ("virus map of both", ("column:label=virus@virus", "column:label=normal@virus")))
            for margin in (0.0, args.min_difference) for correction in ("maxt", "tfce")]
    runs += [("virus map of both", ("column:label=virus@virus", "column:label=normal@virus"), "maxt", margin)
             for margin in args.margin_sweep if margin not in (0.0, args.min_difference)]
    for maps, groups, correction, margin in runs:
        result = run_contrast(files["templates"], *groups, heatmaps=files["store"], columns=manifest,
                              settings=ContrastSettings(tail="greater", correction=correction, permutations=args.permutations,
                                                        seed=args.seed, min_difference=margin))
        grid = result.test.t.shape
        cell = file.reference_image.shape[0] / grid[0]
        dilated = ndimage.binary_dilation(positive, iterations=int(round(2 * cell)))
        inside = downsample(dilated.astype(np.float64), grid) >= 0.5
        significant = result.test.p < 0.05
        key = f"{maps}, {correction}, min difference {margin:g}"
        out[key] = {
            "groups": list(groups), "n": list(result.n), "correction": correction, "min_difference": margin,
            "significant_cells": int(significant.sum()), "cells": int(significant.size),
            "share_inside_prior_dilated": float(inside[significant].mean()) if significant.any() else None,
            "t_pixel_auc_vs_prior": pixel_auc(result.test.t, downsample(positive.astype(np.float64), grid)),
            "clusters": result.clusters[:5],
        }
        print(f"power {key}: {out[key]['share_inside_prior_dilated']}, AUC {out[key]['t_pixel_auc_vs_prior']}", flush=True)
    return out


def _loop_welch(data: np.ndarray, n_a: int, permutations: int, rng: np.random.Generator) -> float:
    """The plain way: for each relabelling, index the two groups and compute Welch's t with numpy; the max."""
    maxima = []
    for _ in range(permutations):
        order = rng.permutation(len(data))
        a, b = data[order[:n_a]], data[order[n_a:]]
        t = (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
        maxima.append(np.abs(t).max())
    return float(np.mean(maxima))


def speed(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    shape = (32, 32)
    a = rng.random((args.speed_maps, 1024)).astype(np.float32)
    b = rng.random((args.speed_maps, 1024)).astype(np.float32)
    started = time.perf_counter()
    permutation_test(a, b, shape, permutations=args.speed_permutations, seed=args.seed)
    ours = time.perf_counter() - started
    tenth = max(1, args.speed_permutations // 10)
    data = np.concatenate([a, b]).astype(np.float64)
    started = time.perf_counter()
    _loop_welch(data, len(a), tenth, rng)
    loop = (time.perf_counter() - started) * args.speed_permutations / tenth
    started = time.perf_counter()
    permutation_test(a, b, shape, correction="tfce", permutations=tenth, seed=args.seed)
    tfce = (time.perf_counter() - started) * args.speed_permutations / tenth
    print(f"speed: maxT {ours:.1f} s, loop {loop:.1f} s (scaled), TFCE {tfce:.1f} s (scaled)", flush=True)
    return {"maps_per_group": args.speed_maps, "grid": [32, 32], "permutations": args.speed_permutations,
            "maxt_seconds": round(ours, 2), "plain_loop_seconds_scaled": round(loop, 1), "loop_over_ours": round(loop / ours, 1),
            "tfce_seconds_scaled": round(tfce, 1), "scaled_from": tenth}


def cxr4(folder: Path, args: argparse.Namespace) -> dict:
    templates, store = folder / "templates.h5", folder / "heatmaps_train.h5"
    out = {}
    pairs = [("covid vs normal", "class:covid", "class:normal")]
    covid = read_strategies(templates).get("covid")
    if covid is not None and covid.k >= 2:
        pairs.append(("covid strategy 1 vs 2", "strategy:covid/1", "strategy:covid/2"))
    for title, first, second in pairs:
        result = run_contrast(templates, first, second, heatmaps=store,
                              settings=ContrastSettings(permutations=args.permutations, seed=args.seed, null_check=args.cxr4_null_check))
        out[title] = result.to_dict()
        print(f"cxr4 {title}: {len(result.clusters)} clusters", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nulls", type=int, default=500)
    parser.add_argument("--null-permutations", type=int, default=500)
    parser.add_argument("--permutations", type=int, default=5000)
    parser.add_argument("--speed-maps", type=int, default=1000)
    parser.add_argument("--speed-permutations", type=int, default=5000)
    parser.add_argument("--min-difference", type=float, default=0.25,
                        help="the interval null's margin of the second power rows (a quarter of the map range, as the prior's 0.25)")
    parser.add_argument("--margin-sweep", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--cxr4", type=Path, default=None)
    parser.add_argument("--cxr4-null-check", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("contrast.json"))
    args = parser.parse_args()
    results: dict = {"machine": machine()}
    results["speed"] = speed(args)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        files = phantom_files(Path(folder), size=args.size, n_per_class=args.n_per_class, seed=args.seed)
        results["phantom"] = {"test_accuracy": files["test_accuracy"], "train_seconds": round(time.perf_counter() - started)}
        results["calibration"] = calibration(files, args)
        results["power"] = power(files, args)
    if args.cxr4 is not None:
        results["cxr4"] = cxr4(args.cxr4, args)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

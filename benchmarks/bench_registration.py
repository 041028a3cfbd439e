"""Registration accuracy and speed on chest phantoms, whose true poses are known.

For each registration method (none, affine, lungs) and each kind of reference:
- ``canonical``: the phantom's canonical frame; the reference image is the mean of the phantoms
  moved back by their *true* poses, its lung mask is ``synth.canonical_lung_mask``;
- ``data``: ``build_reference(images, method=<method>)`` with its default rounds (what ``hmt build-templates`` does),
it reports:
- pose error (px): each image's estimated image -> reference map composed with its true
  canonical -> image pose gives a canonical -> reference map C_i. With the canonical reference
  C_i should be the identity; with a data-built one it should be one fixed map (the reference's
  own pose), estimated as the mean of the C_i. The error is the mean displacement of the
  canonical lung-mask pixels between C_i and that target, averaged over images (and its 90th
  percentile). The phantom's anatomy itself varies (lung width and height +-6 %, heart +-10 %), so
  a method that aligns the lungs (``lungs``) is *meant* to deviate from the true pose by a pixel or two;
- correlation: mean NCC of the registered image with the reference over the reference's lung
  region (``Alignment.quality``); ``none`` is the unregistered baseline;
- fallbacks, by reason; milliseconds per image (estimate + warp of the image and one heatmap;
  process CPU time, which is steadier than wall time on a shared machine, and wall time), and the
  time to build the data reference.

With ``--real DIR`` (e.g. ../shared/data/cxr4) it also registers ``--real-count`` real chest X-rays
(a seeded random choice, resized to ``--size``) to a reference built from the first half of them:
no true poses there, so only correlation with the reference and fallbacks are reported.

Usage: ``.venv/bin/python benchmarks/bench_registration.py [--n-per-class 50 --size 128 --seed 0] [--real DIR]``
(phantoms are rendered in memory with the same seeds ``hmt synth`` uses; nothing is written).
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from heatmap_templates import synth
from heatmap_templates.data.decode import decode_image
from heatmap_templates.data.preprocess import resize_gray
from heatmap_templates.templates.registration import (
    DEFAULT_REFERENCE_ITERATIONS,
    REGISTRATIONS,
    Reference,
    Registrar,
    build_reference,
)


def render(n_per_class: int, size: int, seed: int) -> list[synth.Phantom]:
    return [
        synth.render_phantom(synth.phantom_seed(seed, label, index), label, size)
        for label in synth.CLASSES
        for index in range(n_per_class)
    ]


def canonical_reference(phantoms: list[synth.Phantom], size: int) -> Reference:
    total = np.zeros((size, size), np.float64)
    for phantom in phantoms:
        total += cv2.warpAffine(phantom.image, cv2.invertAffineTransform(phantom.pose.matrix), (size, size))
    return Reference((total / len(phantoms)).astype(np.float32), synth.canonical_lung_mask(size))


def homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def evaluate(method: str, reference: Reference, phantoms: list[synth.Phantom], *, canonical: bool) -> dict:
    registrar = Registrar(method, reference)
    heatmap = np.zeros(reference.shape, np.float32)
    composed, qualities = [], []
    start, start_cpu = time.perf_counter(), time.process_time()
    for phantom in phantoms:
        alignment = registrar.estimate(phantom.image)
        registrar.warp(phantom.image, alignment)
        registrar.warp(heatmap, alignment)
        composed.append(homogeneous(alignment.matrix) @ homogeneous(phantom.pose.matrix))
        qualities.append(alignment.quality)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    ys, xs = np.nonzero(synth.canonical_lung_mask(reference.shape[0]))
    points = np.column_stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    target = np.eye(3) if canonical else np.mean(composed, axis=0)
    errors = [np.linalg.norm(points @ (matrix - target)[:2].T, axis=1).mean() for matrix in composed]
    summary = registrar.summary()
    return {
        "error_mean": float(np.mean(errors)),
        "error_p90": float(np.percentile(errors, 90)),
        "quality": float(np.mean(qualities)),
        "fallbacks": summary["fallbacks"],
        "ms": 1000 * elapsed / len(phantoms),
        "cpu_ms": 1000 * elapsed_cpu / len(phantoms),
    }


def real_images(root: Path, count: int, size: int, seed: int) -> list[np.ndarray]:
    paths = sorted(path for path in root.rglob("*.png"))
    chosen = np.random.default_rng(seed).choice(len(paths), size=min(count, len(paths)), replace=False)
    return [resize_gray(decode_image(paths[index]).pixels, (size, size)) for index in chosen]


def evaluate_real(images: list[np.ndarray]) -> None:
    half = images[: len(images) // 2]
    print()
    print(f"Real chest X-rays: {len(images)} images; reference built ({DEFAULT_REFERENCE_ITERATIONS} iterations, same method) from the first {len(half)}.")
    print()
    print("| method | correlation with reference | methods used | fallbacks | CPU ms / image |")
    print("|---|---|---|---|---|")
    for method in REGISTRATIONS:
        registrar = Registrar(method, build_reference(half, method=method))
        start = time.process_time()
        alignments = [registrar.estimate(image) for image in images]
        cpu_ms = 1000 * (time.process_time() - start) / len(images)
        summary = registrar.summary()
        used = ", ".join(f"{name} {count}" for name, count in summary["methods"].items())
        fallbacks = "; ".join(f"{count} x {reason}" for reason, count in summary["fallbacks"].items()) or "0"
        print(f"| {method} | {np.mean([a.quality for a in alignments]):.3f} | {used} | {fallbacks} | {cpu_ms:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", type=Path, default=None, help="folder of real chest X-ray PNGs (optional)")
    parser.add_argument("--real-count", type=int, default=200)
    args = parser.parse_args()

    phantoms = render(args.n_per_class, args.size, args.seed)
    images = [phantom.image for phantom in phantoms]
    references = {"canonical": canonical_reference(phantoms, args.size)}
    build_seconds = {}
    for method in REGISTRATIONS:
        start = time.perf_counter()
        references[f"data:{method}"] = build_reference(images, method=method)
        build_seconds[method] = time.perf_counter() - start

    print(
        f"{len(phantoms)} phantoms ({args.n_per_class} per class x {len(synth.CLASSES)}) at {args.size} px, seed {args.seed}; "
        f"{platform.processor() or platform.machine()}, {platform.python_version()}, numpy {np.__version__}, OpenCV {cv2.__version__}"
    )
    print()
    print("| reference | method | pose error mean (px) | pose error p90 (px) | correlation with reference | fallbacks | CPU ms / image | x none | wall ms / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("canonical", "data"):
        rows = {}
        for method in REGISTRATIONS:
            reference = references["canonical"] if kind == "canonical" else references[f"data:{method}"]
            rows[method] = evaluate(method, reference, phantoms, canonical=kind == "canonical")
        for method, row in rows.items():
            fallbacks = ", ".join(f"{count}: {reason}" for reason, count in row["fallbacks"].items()) or "0"
            print(
                f"| {kind} | {method} | {row['error_mean']:.2f} | {row['error_p90']:.2f} | {row['quality']:.3f} | "
                f"{fallbacks} | {row['cpu_ms']:.1f} | {row['cpu_ms'] / rows['none']['cpu_ms']:.1f} | {row['ms']:.1f} |"
            )
    print()
    print(
        f"build_reference ({DEFAULT_REFERENCE_ITERATIONS} iterations, "
        + ", ".join(f"{method}: {seconds:.1f} s" for method, seconds in build_seconds.items())
        + f") for {len(images)} images"
    )
    if args.real is not None:
        evaluate_real(real_images(args.real, args.real_count, args.size, args.seed))


if __name__ == "__main__":
    main()

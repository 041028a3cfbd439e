"""Template accumulation and heatmap-store I/O, side by side in one run.

1. Memory: peak traced memory (tracemalloc, which sees numpy buffers) of a streaming
   `ClassAccumulator` fed N and then 10 N maps in batches, next to the naive approach that
   stacks every map and calls numpy (mean, std, median, PCA). The streaming peak should not
   grow with N; the naive one grows linearly. Also maps per second of the accumulator.
2. Heatmap store: shard append rate, then `finalize()` with lzf versus gzip (rate and size),
   on blob-shaped float16 CAM maps for K classes.

Usage: ``.venv/bin/python benchmarks/bench_templates.py [--n 100 --size 224 --classes 4]``
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from heatmap_templates.numeric.resample import downsample
from heatmap_templates.store import HeatmapBatch, HeatmapWriter
from heatmap_templates.templates.accumulator import ClassAccumulator, Member
from heatmap_templates.templates.normalisation import normalise

BATCH = 32


def blob_maps(start: int, n: int, size: int) -> np.ndarray:
    """n CAM-like maps (a Gaussian blob per map, position jittered) numbered from `start`."""
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.normal(size / 2, size / 8, (n, 2))
    width = 2 * (size / 8) ** 2
    return np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / width).astype(np.float32)


def batches(n: int, size: int) -> Iterator[tuple[np.ndarray, list[Member]]]:
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        members = [Member(f"img_{i}.png", f"{i:064x}", 0.9, 0.9, "affine") for i in range(start, start + count)]
        yield blob_maps(start, count, size), members


def streaming(n: int, size: int) -> None:
    accumulator = ClassAccumulator("covid", (size, size))
    for maps, members in batches(n, size):
        accumulator.add(maps, members)
    accumulator.finalize()


def naive(n: int, size: int) -> None:
    stack = np.concatenate([normalise(maps) for maps, _ in batches(n, size)])
    stack.mean(axis=0), stack.std(axis=0, ddof=1), np.median(stack, axis=0)
    reduced = downsample(stack, (32, 32)).reshape(n, -1)
    np.linalg.eigh(np.cov(reduced, rowvar=False))


def peak_mb(function: Callable[[int, int], None], n: int, size: int) -> tuple[float, float]:
    """(peak traced MB, seconds) of one call."""
    tracemalloc.start()
    started = time.perf_counter()
    function(n, size)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return peak, seconds


def store_rates(n: int, size: int, classes: int, folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    settings = {"model_sha256": "0" * 64, "class_names": [f"c{k}" for k in range(classes)], "layer": "conv", "cam_method": "gradcam", "score": "logit", "input_size": [size, size]}
    maps = np.stack([blob_maps(k * BATCH, BATCH, size) for k in range(classes)], axis=1)  # made once, outside the timing
    images = rng.integers(0, 256, (BATCH, size, size), dtype=np.uint8)
    rows = []
    results = {}
    for compression in ("lzf", "gzip"):
        path = folder / f"heatmaps_{compression}.h5"
        writer = HeatmapWriter(path, settings, compression=compression)
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            count = min(BATCH, n - start)
            writer.append(HeatmapBatch(
                paths=[f"img_{i}.png" for i in range(start, start + count)], sha256=[f"{i:064x}" for i in range(start, start + count)],
                labels=np.zeros(count, np.int32), predicted=np.zeros(count, np.int32), probabilities=rng.random((count, classes)).astype(np.float32),
                correct=np.ones(count, bool), images=images[:count],
                raw=maps[:count, :, ::16, ::16].copy(),
            ))
        append_rate = n / (time.perf_counter() - started)
        started = time.perf_counter()
        writer.finalize()
        results[compression] = (n / (time.perf_counter() - started), path.stat().st_size / 1e6)
        rows.append(f"| heatmap store, {compression} | shard append {append_rate:.0f} images/s | finalize {results[compression][0]:.0f} images/s | {results[compression][1]:.1f} MB |")
    rows.append(f"| lzf / gzip | | finalize speed ratio {results['lzf'][0] / results['gzip'][0]:.2f} | size ratio {results['lzf'][1] / results['gzip'][1]:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="N: the small member count (the large one is 10 N)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=4)
    arguments = parser.parse_args()
    n, size = arguments.n, arguments.size
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}")
    rows = ["| what | N | 10 N | 10 N / N |", "|---|---|---|---|"]
    stream_small, stream_small_s = peak_mb(streaming, n, size)
    stream_large, stream_large_s = peak_mb(streaming, 10 * n, size)
    naive_small, _ = peak_mb(naive, n, size)
    naive_large, _ = peak_mb(naive, 10 * n, size)
    rows.append(f"| streaming ClassAccumulator peak MB ({size}x{size}) | {stream_small:.0f} | {stream_large:.0f} | {stream_large / stream_small:.2f} |")
    rows.append(f"| naive stack + numpy peak MB | {naive_small:.0f} | {naive_large:.0f} | {naive_large / naive_small:.2f} |")
    rows.append(f"| streaming maps/s (add + finalize) | {n / stream_small_s:.0f} | {10 * n / stream_large_s:.0f} | |")
    with tempfile.TemporaryDirectory() as folder:
        rows += ["", "| store | append | finalize | file size |", "|---|---|---|---|"]
        rows += store_rates(10 * n, size, arguments.classes, Path(folder))
    print(f"N = {n}, maps {size}x{size}, {arguments.classes} classes in the store")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

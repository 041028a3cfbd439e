"""Phantom generation speed: `synthesize_dataset` with 1 worker process versus N, side by side.

Writes the issue's reference set (4 classes x 200 images at 256 px, lesion-probability maps from
200 samples per class) into temporary folders and reports wall time, CPU time (this process plus
its workers), images per second and the speed-up of N workers over 1. The load average is printed
because on a shared machine other processes compete for the same cores. It also checks that both
runs wrote byte-identical files.

Usage: ``.venv/bin/python benchmarks/bench_synth.py [--n-per-class 200 --size 256 --workers 2]``
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from heatmap_templates.synth import CLASSES, synthesize_dataset


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def digest(root: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hasher.update(str(path.relative_to(root)).encode())
            hasher.update(path.read_bytes())
    return hasher.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    arguments = parser.parse_args()
    total = arguments.n_per_class * len(CLASSES)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}")
    print(f"set: {len(CLASSES)} x {arguments.n_per_class} images at {arguments.size} px + lesion-probability maps (200 samples/class)")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for workers in (1, arguments.workers):
            out = Path(scratch) / f"workers{workers}"
            cpu_before, started = cpu_seconds(), time.perf_counter()
            synthesize_dataset(out, n_per_class=arguments.n_per_class, size=arguments.size, seed=0, workers=workers)
            wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
            results[workers] = (wall, cpu, digest(out))
            print(f"workers {workers}: wall {wall:6.1f} s  cpu {cpu:6.1f} s  {total / wall:6.1f} images/s  "
                  f"(load average now {os.getloadavg()[0]:.1f})")
    one, many = results[1], results[arguments.workers]
    print(f"speed-up of {arguments.workers} workers over 1: {one[0] / many[0]:.2f}x wall; identical files: {one[2] == many[2]}")


if __name__ == "__main__":
    main()

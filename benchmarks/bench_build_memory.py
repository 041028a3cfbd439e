"""Peak memory of template building at N and 10 N images: it must not grow with N (issue 5).

One command, one run: for each N a heatmap store of N synthetic entries at 128 px (4 classes,
all N entries members of the built class) is written directly with ``store.HeatmapWriter``;
then a *child process* runs ``build_templates`` on it exactly as ``hmt build-templates --heatmaps``
does (registration ``affine`` with a reference built from the data, minmax, median, 8
eigen-heatmaps, 100 bootstrap replicates, leave-one-out second pass) and reports its peak
resident memory (``ru_maxrss``), next to the same child's peak after its imports only.

Store images are phantoms (a few distinct ones, cycled) so that lung segmentation and ECC have
real work; maps are smooth random blobs, different for every entry.

    .venv/bin/python benchmarks/bench_build_memory.py [--n 2000 --factor 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heatmap_templates.store import HeatmapBatch, HeatmapWriter
from heatmap_templates.synth import CLASSES, phantom_seed, render_phantom

SIDE = 128
LAYER_SIDE = 16
DISTINCT_IMAGES = 24
SETTINGS = {
    "model_sha256": "0" * 64, "model_path": "synthetic.keras", "class_names": list(CLASSES), "layer": "block4_relu",
    "cam_method": "gradcam", "score": "logit", "input_size": [SIDE, SIDE], "channels": 1, "preprocessing": "unit",
    "backbone": "small", "threshold": 0.5, "head": "softmax", "intensity": "bits",
}
CHILD = """
import json, resource, sys, time
from heatmap_templates.templates.build import BuildConfig, build_templates  # noqa: E402
after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
summary = build_templates(sys.argv[1], ["covid"], sys.argv[2], config=BuildConfig(registration="affine"))
print(json.dumps({"after_imports_kib": after_imports, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.perf_counter() - started, "members": summary.members["covid"],
                  "registration": summary.registration}))
"""


def write_store(path: Path, n: int, seed: int = 0) -> None:
    """N entries labelled covid (correct), phantom images cycled, smooth random maps for every class."""
    rng = np.random.default_rng(seed)
    images = [np.rint(render_phantom(phantom_seed(seed, "covid", i), "covid", SIDE).image * 255).astype(np.uint8)
              for i in range(DISTINCT_IMAGES)]
    with HeatmapWriter(path, SETTINGS) as writer:
        for start in range(0, n, 32):
            count = min(32, n - start)
            raw = np.maximum(rng.normal(size=(count, len(CLASSES), LAYER_SIDE, LAYER_SIDE)), 0).astype(np.float32)
            probabilities = rng.dirichlet(np.ones(len(CLASSES)), count).astype(np.float32)
            writer.append(HeatmapBatch(
                paths=[f"synthetic/covid_{start + i:05d}.png" for i in range(count)],
                sha256=[f"{start + i:064x}" for i in range(count)],
                labels=np.full(count, CLASSES.index("covid"), np.int32),
                predicted=np.full(count, CLASSES.index("covid"), np.int32),
                probabilities=probabilities,
                correct=np.ones(count, bool),
                images=np.stack([images[(start + i) % DISTINCT_IMAGES] for i in range(count)]),
                raw=raw,
            ))


def measure(n: int, work: Path) -> dict:
    store, out = work / f"heatmaps_{n}.h5", work / f"templates_{n}.h5"
    started = time.perf_counter()
    write_store(store, n)
    written = time.perf_counter() - started
    result = subprocess.run([sys.executable, "-c", CHILD, str(store), str(out)], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report.update({"n": n, "store_mib": store.stat().st_size / 2**20, "write_s": written})
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)  # several chunks even at N
    parser.add_argument("--factor", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hmt_bench_build_memory_") as folder:
        small, large = (measure(n, Path(folder)) for n in (args.n, args.n * args.factor))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; numpy {np.__version__}")
    print(f"{'N':>6}{'store MiB':>11}{'members':>9}{'imports MiB':>13}{'peak MiB':>10}{'build-only MiB':>16}{'build s':>9}")
    for r in (small, large):
        print(f"{r['n']:>6}{r['store_mib']:>11.1f}{r['members']:>9}{r['after_imports_kib'] / 1024:>13.1f}{r['peak_kib'] / 1024:>10.1f}"
              f"{(r['peak_kib'] - r['after_imports_kib']) / 1024:>16.1f}{r['seconds']:>9.1f}")
    delta_small = small["peak_kib"] - small["after_imports_kib"]
    delta_large = large["peak_kib"] - large["after_imports_kib"]
    print(f"peak ratio {args.factor}N / N: {large['peak_kib'] / small['peak_kib']:.3f}; "
          f"build-only (peak minus imports) ratio: {delta_large / max(delta_small, 1):.3f}")
    print(f"registration at {large['n']}: {large['registration']}")


if __name__ == "__main__":
    main()

"""Peak memory of training at N and 10 N images, in memory and streamed from the disk cache (issue 15).

One command, one run: a phantom set of N images (``hmt synth``) and a 10 N set made of links to
those files (same pixels, distinct paths), then four child processes train the `small` CNN for one
epoch on each set, once with the default memory budget (the images are held in memory) and once
with a budget too small for them (``--memory-budget``: images stream from a disk cache). Each child
reports its peak resident memory (``ru_maxrss``) beside its resident memory after the imports, and
its test accuracy.

    .venv/bin/python benchmarks/bench_training_memory.py [--n 800 --size 128] [--out training_memory.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys
from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.model.training import TrainConfig, train
after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data, size, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
config = TrainConfig(backbone="small", input_size=size, epochs=1, batch_size=32, augment=False, memory_budget_gb=budget)
result = train(load_dataset(data), config)
print(json.dumps({"after_imports_kib": after_imports, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "streamed": result.info.training["streamed_from_disk"], "seconds": result.seconds,
                  "test_accuracy": result.test_report["accuracy"]}))
"""


def linked_copies(source: Path, target: Path, factor: int) -> Path:
    """A class-folder set with ``factor`` links to every image of ``source``."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and p.name != "ground_truth"):
        (target / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.png")):
            for copy in range(factor):
                (target / folder.name / f"{image.stem}_{copy:02d}.png").symlink_to(image.resolve())
    return target


def run(data: Path, size: int, budget: float) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(data), str(size), str(budget)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800, help="images in the small set (4 classes)")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("training_memory.json"))
    args = parser.parse_args()
    from heatmap_templates.synth import synthesize_dataset

    results = {}
    with tempfile.TemporaryDirectory(prefix="hmt_train_memory_") as folder:
        small = Path(folder) / "n"
        synthesize_dataset(small, n_per_class=args.n // 4, size=args.size, seed=0)
        large = linked_copies(small, Path(folder) / "10n", args.factor)
        for name, data, count in (("N", small, args.n), (f"{args.factor}N", large, args.n * args.factor)):
            image_bytes = count * args.size * args.size
            for mode, budget in (("in memory", 4.0), ("streamed", image_bytes / 2**30 / 4)):
                result = run(data, args.size, budget)
                result.update(images=count, image_megabytes=image_bytes / 2**20)
                results[f"{name}, {mode}"] = result
                print(f"{name} ({count} images, {image_bytes / 2**20:.0f} MB decoded), {mode}: peak {result['peak_kib'] / 1024:.0f} MiB "
                      f"(after imports {result['after_imports_kib'] / 1024:.0f} MiB), {result['seconds']:.0f} s, "
                      f"test accuracy {result['test_accuracy']:.3f}", flush=True)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "size": args.size, "results": results}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""End-to-end `extract_heatmaps` throughput vs the bare forward pass (issue 4: target >= 0.8).

One run, same images, same batch size, contenders interleaved round by round (order rotating):

- forward pass: ``model(x, training=False)`` in a ``tf.function`` on the images already decoded,
  preprocessed and held in memory as tensors (the physical limit of the work);
- end-to-end: ``extract_heatmaps(model.keras, folder, fresh store)``: PNG decode + resize +
  preprocessing in the tf.data pipeline, classifier + Grad-CAM of *every* class, float16
  conversion and one crash-safe shard file per batch, then ``finalize`` (merge into the store).

Model: hmt's VGG19 (``backbones.build_model("vgg19", 3, 224)``, random weights, nested base,
GAP + dense head) saved with ``model_file.save_model``; CAM layer ``vgg19/block5_conv4``.
Images: phantoms at 256 px written as PNG files to a temporary folder (resized to 224 by the pipeline).

Throughput is measured after the first batch for both (tracing and pipeline start-up excluded):
the end-to-end batch times come from the progress callback, which fires after each batch is
stored. The per-run fixed costs (model load, hashing, tracing, finalize) are reported separately.

    .venv/bin/python benchmarks/bench_heatmaps.py [--batches 3 --batch-size 8 --rounds 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.explain.heatmaps import extract_heatmaps, load_for_model
from heatmap_templates.model.backbones import build_model
from heatmap_templates.model.layers import default_cam_layer
from heatmap_templates.model.model_file import ModelInfo, load_model, save_model
from heatmap_templates.synth import synthesize_dataset

CLASSES = ("bacteria", "covid", "normal")


class BatchClock:
    """Progress sink that timestamps every finished batch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.sizes: list[int] = []

    def start(self, total: int | None, description: str) -> None:
        self.times, self.sizes = [time.perf_counter()], []

    def advance(self, n: int = 1) -> None:
        self.times.append(time.perf_counter())
        self.sizes.append(n)

    def finish(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n_images = args.batches * args.batch_size

    work = Path(tempfile.mkdtemp(prefix="hmt_bench_heatmaps_"))
    try:
        data = work / "images"
        per_class = -(-n_images // len(CLASSES))
        synthesize_dataset(data, n_per_class=per_class, size=256, seed=0, classes=CLASSES, probability_samples=1)
        shutil.rmtree(data / "ground_truth")
        samples = load_dataset(data).samples
        for extra in samples[n_images:]:
            os.remove(extra.path)
        model_path = work / "vgg19.keras"
        model = build_model("vgg19", len(CLASSES), args.size, "none")
        info = ModelInfo(class_names=list(CLASSES), backbone="vgg19", input_size=(args.size, args.size), channels=3,
                         preprocessing="caffe", cam_layer=default_cam_layer(model))
        save_model(model, info, model_path)
        model, info = load_model(model_path)

        paths = [s.path for s in load_dataset(data).samples]
        assert len(paths) == n_images
        inputs = np.stack([load_for_model(p, info.input_size, info.channels, info.preprocessing)[0] for p in paths])
        batches = [tf.constant(inputs[i : i + args.batch_size]) for i in range(0, n_images, args.batch_size)]
        forward = tf.function(lambda x: model(x, training=False),
                              input_signature=[tf.TensorSpec((None, args.size, args.size, 3), tf.float32)])
        forward(batches[0]).numpy()  # trace

        def run_forward() -> dict:
            times = []
            for batch in batches:
                started = time.perf_counter()
                forward(batch).numpy()
                times.append(time.perf_counter() - started)
            return {"steady_s_per_image": sum(times[1:]) / (n_images - args.batch_size)}

        def run_end_to_end(round_number: int) -> dict:
            clock = BatchClock()
            out = work / f"store_{round_number}.h5"
            started = time.perf_counter()
            summary = extract_heatmaps(model_path, data, out, batch_size=args.batch_size, progress=clock)
            total = time.perf_counter() - started
            assert summary.computed == n_images, summary.to_dict()
            steady = (clock.times[-1] - clock.times[1]) / sum(clock.sizes[1:])
            first_batch = clock.times[1] - clock.times[0]
            return {"steady_s_per_image": steady, "total_s": total, "first_batch_s": first_batch,
                    "fixed_s": total - (clock.times[-1] - clock.times[0])}

        results: dict[str, list[dict]] = {"forward": [], "end_to_end": []}
        for round_number in range(args.rounds):
            order = ["forward", "end_to_end"] if round_number % 2 == 0 else ["end_to_end", "forward"]
            for name in order:
                results[name].append(run_forward() if name == "forward" else run_end_to_end(round_number))

        forward_ips = 1.0 / statistics.median(r["steady_s_per_image"] for r in results["forward"])
        e2e_ips = 1.0 / statistics.median(r["steady_s_per_image"] for r in results["end_to_end"])
        total_ips = n_images / statistics.median(r["total_s"] for r in results["end_to_end"])
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; TF {tf.__version__}, numpy {np.__version__}")
        print(f"VGG19 {args.size} px, {len(CLASSES)} classes, {args.batches} batches x {args.batch_size}, {args.rounds} rounds "
              f"(steady state = after the first batch; medians over rounds)")
        print(f"{'contender':<48}{'images/s':>10}{'vs forward':>12}")
        print(f"{'forward pass, in-memory tensors':<48}{forward_ips:>10.3f}{1.0:>12.3f}")
        print(f"{'extract_heatmaps end-to-end (steady state)':<48}{e2e_ips:>10.3f}{e2e_ips / forward_ips:>12.3f}")
        print(f"{'extract_heatmaps whole call incl. fixed costs':<48}{total_ips:>10.3f}{total_ips / forward_ips:>12.3f}")
        fixed = statistics.median(r["fixed_s"] for r in results["end_to_end"])
        first = statistics.median(r["first_batch_s"] for r in results["end_to_end"])
        print(f"fixed costs per call (model load, hashing, store open, finalize): {fixed:.1f} s; first batch (tracing): {first:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

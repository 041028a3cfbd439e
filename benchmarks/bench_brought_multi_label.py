"""A brought CheXNet-style multi-label model end to end: plumbing and speed, not accuracy.

The model is ``keras.applications.DenseNet121(weights=None, classes=14, classifier_activation="sigmoid")`` at 224 px
(random weights: its predictions mean nothing; its output biases are set so that each finding's median logit over the
data is 0, so that about half the images are predicted positive and every finding can have template members), saved as
a plain ``.keras`` file without hmt metadata. The data set is a
CheXpert-style CSV of multi-label phantoms (``synthesize_multi_label``, 256 px PNGs): ``Path,Sex,Age,Frontal/Lateral``
and 14 finding columns, the phantom's three lesion types (``bacteria``, ``covid``, ``virus``: 1 or 0 as planted) and
eleven CheXpert findings filled at random with 1 / 0 / -1 / blank. Each stage runs as a researcher types it:

1. ``hmt heatmaps MODEL CSV --labels ... --uncertain zero --preprocessing torch`` (run through the library call the
   command makes, timed batch by batch: images/s of extraction, steady state after the first batch and whole call);
2. ``hmt build-templates --heatmaps STORE --all-classes`` (per-finding templates: positive and predicted positive);
3. ``hmt evaluate MODEL CSV --labels ... --uncertain zero --preprocessing torch`` (per-finding AUC, unknowns left out);
4. ``hmt compare CSV --templates T`` and ``hmt evaluate-templates T CSV`` (the store's recorded labels, nothing repeated).

Stages 2-4 run through the ``hmt`` entry point in this process (``--json``), timed whole. A forward pass over the
decoded, preprocessed images held in memory is the reference for the extraction's speed.

    .venv/bin/python benchmarks/bench_brought_multi_label.py [--images 48 --batch-size 16]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_heatmaps import BatchClock  # the same progress sink that times each batch

from heatmap_templates.explain.heatmaps import extract_heatmaps, load_for_model
from heatmap_templates.synth import synthesize_multi_label

PHANTOM = ["bacteria", "covid", "virus"]
OTHERS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
          "Atelectasis", "Pneumothorax", "Pleural Effusion", "Fracture", "Support Devices"]
FINDINGS = PHANTOM + OTHERS  # the model's output order
SIZE = 224


def write_chexpert_csv(data: Path, seed: int = 0) -> Path:
    """CheXpert-style CSV of the phantoms: the planted lesion types as 1 / 0, the other eleven at random."""
    with open(data / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(seed)
    path = data / "chexpert.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Sex", "Age", "Frontal/Lateral", *FINDINGS])
        for row in rows:
            others = rng.choice(["1", "0", "-1", ""], size=len(OTHERS), p=[0.15, 0.55, 0.1, 0.2])
            writer.writerow([row["path"], rng.choice(["Female", "Male"]), int(rng.integers(20, 90)), "Frontal",
                             *(row[name] for name in PHANTOM), *others])
    return path


def hmt(*arguments: object) -> tuple[dict, float]:
    """One `hmt` command in this process with --json: (its JSON output, seconds)."""
    from hmt_cli.main import run

    sys.argv = ["hmt", *map(str, arguments), "--json"]
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        try:
            run()
        except SystemExit as done:
            if done.code:
                raise RuntimeError(f"`{' '.join(sys.argv)}` exited with {done.code}") from None
    return json.loads(out.getvalue()), time.perf_counter() - started


def centred_model(csv_path: Path, batch_size: int) -> tuple[keras.Model, float]:
    """The DenseNet121 with its output biases set so that each finding's median logit over the data set is 0 (about half
    the images predicted positive, so that every finding can have template members despite random weights), and the
    steady-state images/s of its bare forward pass (to the pooled features, nearly all the work) over decoded,
    preprocessed images held in memory: the reference for extraction."""
    keras.utils.set_random_seed(0)
    model = keras.applications.DenseNet121(weights=None, input_shape=(SIZE, SIZE, 3), classes=len(FINDINGS),
                                           classifier_activation="sigmoid")
    pooled = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    with open(csv_path, newline="") as handle:
        paths = [csv_path.parent / row["Path"] for row in csv.DictReader(handle)]
    inputs = np.stack([load_for_model(path, (SIZE, SIZE), 3, "torch")[0] for path in paths])
    batches = [tf.constant(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    forward = tf.function(lambda x: pooled(x, training=False), input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)])
    forward(batches[0]).numpy()  # trace
    started = time.perf_counter()
    features = np.concatenate([forward(batch).numpy() for batch in batches])
    images_per_second = len(inputs) / (time.perf_counter() - started)
    head = model.get_layer("predictions")
    kernel, _ = head.get_weights()
    head.set_weights([kernel, -np.median(features @ kernel, axis=0).astype(np.float32)])
    return model, images_per_second


def run_stages(work: Path, model_path: Path, csv_path: Path, batch_size: int, forward: float) -> None:
    """The four stages, timed; prints one table."""
    labels = ",".join(FINDINGS)
    store, templates = work / "study" / "heatmaps.h5", work / "study" / "templates.h5"
    clock = BatchClock()
    started = time.perf_counter()
    summary = extract_heatmaps(model_path, csv_path, store, labels=FINDINGS, uncertain="zero", preprocessing="torch",
                               batch_size=batch_size, progress=clock, command="bench")
    whole = time.perf_counter() - started
    steady = sum(clock.sizes[1:]) / (clock.times[-1] - clock.times[1])
    build, build_s = hmt("build-templates", "--heatmaps", store, "--all-classes", "--out", templates, "--bootstrap", "10")
    evaluation, evaluate_s = hmt("evaluate", model_path, csv_path, "--labels", labels, "--uncertain", "zero",
                                 "--preprocessing", "torch", "--batch-size", batch_size)
    compared, compare_s = hmt("compare", csv_path, "--templates", templates, "--batch-size", batch_size)
    templates_report, evaluate_templates_s = hmt("evaluate-templates", templates, csv_path, "--batch-size", batch_size)
    n = summary.computed
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"TF {tf.__version__}, Keras {keras.__version__}, numpy {np.__version__}")
    print(f"DenseNet121(weights=None), 14 sigmoid outputs, {SIZE} px, {n} images, batch {batch_size}; "
          f"unlabelled (a blank finding) {summary.unlabelled}")
    print(f"{'stage':<64}{'seconds':>9}{'images/s':>10}")
    print(f"{'forward pass, in-memory tensors (reference)':<64}{n / forward:>9.1f}{forward:>10.2f}")
    print(f"{'heatmaps: extraction steady state (after the first batch)':<64}{sum(clock.sizes[1:]) / steady:>9.1f}{steady:>10.2f}")
    print(f"{'heatmaps: whole call (model load, hashing, tracing, finalize)':<64}{whole:>9.1f}{n / whole:>10.2f}")
    print(f"{'build-templates --all-classes (from the store)':<64}{build_s:>9.1f}{n / build_s:>10.2f}")
    print(f"{'evaluate (per-finding AUC)':<64}{evaluate_s:>9.1f}{n / evaluate_s:>10.2f}")
    print(f"{'compare CSV (labels as recorded)':<64}{compare_s:>9.1f}{n / compare_s:>10.2f}")
    print(f"{'evaluate-templates':<64}{evaluate_templates_s:>9.1f}{n / evaluate_templates_s:>10.2f}")
    members = {name: count for name, count in build["members"].items() if count}
    known = {name: row["n"] for name, row in evaluation["per_finding"].items()}
    print(f"templates (members): {members}; no member: {build['empty_classes']}")
    print(f"evaluate: split {evaluation['split']}, known images per finding {known}, macro AUC {evaluation['macro']['auc']}")
    print(f"compare: {len(compared['results'])} images with labels; evaluate-templates: {templates_report['n_images']} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hmt_bench_brought_"))
    try:
        synthesize_multi_label(work / "data", n_images=args.images, size=256, seed=0, findings=PHANTOM, probability_samples=1)
        csv_path = write_chexpert_csv(work / "data")
        model, forward = centred_model(csv_path, args.batch_size)
        model_path = work / "chexnet.keras"
        model.save(model_path)  # a plain Keras file: no hmt metadata
        del model
        run_stages(work, model_path, csv_path, args.batch_size, forward)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

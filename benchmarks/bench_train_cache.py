"""Frozen-base training: cached pooled features + head epochs vs `model.fit` through the frozen base.

Same model (random weights: speed does not depend on them), same in-memory images, same epochs,
batch size and optimiser, no early stopping, in one run. The cached path pays one base forward
pass, then each epoch is a head pass; the uncached path pays a base forward pass every epoch, so the
ratio approaches the number of epochs as the head's cost vanishes. CPU time (process, all threads)
is reported beside wall time because the machine is shared.

Usage: ``.venv/bin/python benchmarks/bench_train_cache.py [--backbone vgg19 --size 96 --images 128 --epochs 10]``
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras
import numpy as np
import tensorflow as tf

from heatmap_templates.model import backbones, training
from heatmap_templates.model import layers as model_layers
from heatmap_templates.model.model_file import ModelInfo


def _timed(function) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg19", choices=[name for name, spec in backbones.BACKBONES.items() if spec.application])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=4)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = rng.random((args.images, args.size, args.size)).astype(np.float16)
    labels = np.arange(args.images) % args.classes
    onehot = np.eye(args.classes, dtype=np.float32)[labels]
    spec = backbones.BACKBONES[args.backbone]

    def fresh_model():
        keras.utils.set_random_seed(0)
        model = backbones.build_model(args.backbone, args.classes, args.size, "none")
        info = ModelInfo(class_names=[f"c{k}" for k in range(args.classes)], backbone=args.backbone,
                         input_size=(args.size, args.size), channels=spec.channels, preprocessing=spec.preprocessing,
                         cam_layer=model_layers.default_cam_layer(model))
        return model, info

    # Warm-up on a separate model so that both paths start with TensorFlow's one-off costs paid.
    model, info = fresh_model()
    training.pooled_features(model, images[: args.batch_size], info, batch_size=args.batch_size)

    cached_model, info = fresh_model()
    features: dict[str, np.ndarray] = {}
    extract_wall, extract_cpu = _timed(lambda: features.setdefault(
        "train", training.pooled_features(cached_model, images, info, batch_size=args.batch_size)))
    head_wall, head_cpu = _timed(lambda: training.fit_head_on_features(
        cached_model, features["train"], onehot, None, None, epochs=args.epochs, learning_rate=1e-3,
        batch_size=args.batch_size, seed=0))

    full_model, info = fresh_model()
    pipeline = training.image_pipeline(images, onehot, info, args.batch_size, shuffle_seed=0)
    full_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    full_wall, full_cpu = _timed(lambda: full_model.fit(pipeline, epochs=args.epochs, shuffle=False, verbose=0))

    cached_wall, cached_cpu = extract_wall + head_wall, extract_cpu + head_cpu
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; load average {os.getloadavg()[0]:.1f}; "
          f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"{args.backbone} at {args.size} px (random weights), {args.images} images, {args.epochs} epochs, "
          f"batch {args.batch_size}, Adam, frozen base")
    print("| path | wall s | CPU s | wall s / epoch |")
    print("|---|---|---|---|")
    print(f"| cached: features once ({extract_wall:.1f} s) + head epochs ({head_wall:.1f} s) | {cached_wall:.1f} | "
          f"{cached_cpu:.1f} | {cached_wall / args.epochs:.2f} |")
    print(f"| model.fit through the frozen base | {full_wall:.1f} | {full_cpu:.1f} | {full_wall / args.epochs:.2f} |")
    print(f"speed-up (uncached / cached): {full_wall / cached_wall:.1f}x wall, {full_cpu / cached_cpu:.1f}x CPU; "
          f"a head epoch costs {head_wall / args.epochs:.3f} s vs {full_wall / args.epochs:.2f} s through the base")


if __name__ == "__main__":
    main()

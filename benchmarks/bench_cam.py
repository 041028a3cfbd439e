"""CAM engine throughput on VGG19 (random weights, dense head) vs the bare forward pass and peers.

One run, same batches for everyone, contenders interleaved round by round (the order rotates)
so that load from other processes hits all of them alike; warm-up (tracing) is excluded.

Contenders:
- forward:        ``model(x, training=False)`` inside a ``tf.function`` (the physical limit);
- hmt <method>:   ``CamEngine(model, method=...)(x, targets)`` (maps at layer and input resolution, numpy), for
                  each of ``--methods`` (default gradcam and eigencam; scorecam runs C masked forward passes per
                  image, 512 on VGG19, so it is left out unless named);
- tf-keras-vis:   ``Gradcam(model, ReplaceToLinear)(CategoricalScore, x, expand_cam=True, normalize_cam=False)``;
- per-image loop: the Keras Grad-CAM example (sub-model + eager GradientTape, one image at a time).
The last two are Grad-CAM peers; ``--no-peers`` leaves them out (a quick run: the forward pass and hmt's methods).

Usage: ``.venv/bin/python benchmarks/bench_cam.py [--batches 2 --batch-size 4 --size 224 --rounds 2
--methods gradcam eigencam --no-peers]``
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from heatmap_templates.explain.cam import CamEngine
from heatmap_templates.explain.cam_methods import METHODS

LAYER = "block5_conv4"


def build_model(size: int, num_classes: int = 3) -> keras.Model:
    """Flat Functional VGG19 + GAP + softmax Dense (flat so that tf-keras-vis can run it)."""
    keras.utils.set_random_seed(0)
    base = keras.applications.VGG19(weights=None, include_top=False, input_shape=(size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    return keras.Model(base.input, keras.layers.Dense(num_classes, activation="softmax")(pooled))


def make_contenders(
    model: keras.Model, size: int, methods: list[str], peers: bool = True
) -> dict[str, Callable[[np.ndarray, np.ndarray], object]]:
    forward = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)]
    )
    contenders: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
        "forward pass (tf.function)": lambda x, t: forward(x).numpy(),
    }
    for method in methods:
        engine = CamEngine(model, layer=LAYER, method=method, score="logit")
        contenders[f"hmt CamEngine {method}"] = lambda x, t, engine=engine: engine(x, t)
    if peers:
        contenders.update(make_peers(model, size))
    return contenders


def make_peers(model: keras.Model, size: int) -> dict[str, Callable[[np.ndarray, np.ndarray], object]]:
    """The Grad-CAM peers: tf-keras-vis and the Keras example's per-image loop."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    tkv = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    grad_model = keras.Model(model.input, [model.get_layer(LAYER).output, model.output])

    def keras_example_loop(x: np.ndarray, targets: np.ndarray) -> list[np.ndarray]:
        heatmaps = []
        for image, target in zip(x, targets, strict=True):
            with tf.GradientTape() as tape:
                conv_output, predictions = grad_model(image[None])
                class_channel = predictions[:, int(target)]
            grads = tape.gradient(class_channel, conv_output)
            pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
            heatmap = tf.squeeze(conv_output[0] @ pooled_grads[..., tf.newaxis])
            heatmaps.append(tf.image.resize(tf.nn.relu(heatmap)[..., None], (size, size)).numpy())
        return heatmaps

    return {
        "tf-keras-vis Gradcam": lambda x, t: tkv(
            CategoricalScore(list(t)), x, penultimate_layer=LAYER, normalize_cam=False, expand_cam=True
        ),
        "per-image GradientTape loop": keras_example_loop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", nargs="+", choices=METHODS.names(), default=["gradcam", "eigencam"],
                        help="hmt CAM methods to run; the speed-up column is over the first")
    parser.add_argument("--no-peers", action="store_true", help="leave out tf-keras-vis and the per-image loop")
    args = parser.parse_args()

    model = build_model(args.size)
    rng = np.random.default_rng(0)
    batches = [
        (rng.uniform(-120, 120, (args.batch_size, args.size, args.size, 3)).astype(np.float32),
         rng.integers(0, 3, args.batch_size))
        for _ in range(args.batches)
    ]
    contenders = make_contenders(model, args.size, args.methods, peers=not args.no_peers)
    names = list(contenders)
    for name in names:  # warm-up: tracing and first-call allocation, excluded
        contenders[name](*batches[0])

    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            start = time.perf_counter()
            for x, targets in batches:
                contenders[name](x, targets)
            seconds[name].append(time.perf_counter() - start)

    images_per_round = args.batches * args.batch_size
    forward_name, hmt_name = names[0], names[1]
    forward_rate = images_per_round * args.rounds / sum(seconds[forward_name])
    hmt_rate = images_per_round * args.rounds / sum(seconds[hmt_name])
    print(
        f"VGG19 {args.size}x{args.size}, random weights, GAP + Dense(3) head, layer {LAYER}; "
        f"{args.batches} batches x {args.batch_size} images, {args.rounds} interleaved rounds; "
        f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
    )
    print("| contender | images/s | vs forward pass | hmt speed-up over it | per-round ratio to forward (median) |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        rate = images_per_round * args.rounds / sum(seconds[name])
        per_round = statistics.median(f / s for f, s in zip(seconds[forward_name], seconds[name], strict=True))
        print(f"| {name} | {rate:.2f} | {rate / forward_rate:.3f} | {hmt_rate / rate:.2f}x | {per_round:.3f} |")


if __name__ == "__main__":
    main()

"""Training's tf.data input pipelines: rows from memory or a disk array, shuffled, batched, augmented, preprocessed.

:func:`image_pipeline` feeds (model input, target) batches of uint8 images; :func:`prior_pipeline` feeds the
attention prior's rows, an image stacked with its lung mask (and, for outside-lungs augmentation, the image with
everything outside the lungs imputed away) as channels of one uint8 row, so that the shuffle, the augmentation's
geometry and the batching move them together (:mod:`heatmap_templates.model.attention_prior`).
"""
from __future__ import annotations

import math

import numpy as np

from heatmap_templates.data.disk_arrays import DiskArray
from heatmap_templates.data.preprocess import input_from_unit, unit_pixels
from heatmap_templates.model.model_file import ModelInfo

AUGMENT_MAX_ROTATION_DEG = 7.0
AUGMENT_MAX_SHIFT = 0.05  # fraction of the image side
AUGMENT_MAX_ZOOM = 0.08  # scale in [1 - z, 1 + z]
AUGMENT_MAX_BRIGHTNESS = 0.08  # added to [0, 1] pixels

# Channels of a prior row (uint8, 255 = lung in the mask channel).
IMAGE, MASK, IMPUTED = 0, 1, 2


def rows_dataset(rows: np.ndarray | DiskArray, targets: np.ndarray, batch_size: int, *, shuffle_seed: int | None = None):
    """tf.data of (rows, targets) batches, in a seeded shuffled order when ``shuffle_seed`` is given: from memory, or
    read batch by batch from a :class:`DiskArray` (the same order for the same seed, so the same training)."""
    import tensorflow as tf

    targets = np.asarray(targets, dtype=np.float32)
    if isinstance(rows, np.ndarray):
        dataset = tf.data.Dataset.from_tensor_slices((rows, targets))
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(rows), seed=shuffle_seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size)
    dataset = tf.data.Dataset.range(len(rows))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(rows), seed=shuffle_seed, reshuffle_each_iteration=True)

    def read(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rows[indices], targets[indices]

    @tf.autograph.experimental.do_not_convert
    def read_graph(indices):
        values, batch_targets = tf.numpy_function(read, [indices], (tf.as_dtype(rows.dtype), tf.float32), stateful=False)
        values.set_shape((None, *rows.row_shape))
        batch_targets.set_shape((None, *targets.shape[1:]))
        return values, batch_targets

    return dataset.batch(batch_size).map(read_graph, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def image_pipeline(images: np.ndarray | DiskArray, targets: np.ndarray, info: ModelInfo, batch_size: int, *,
                   shuffle_seed: int | None = None, augment_seed: int | None = None):
    """tf.data over in-memory uint8 images: shuffle, batch, to [0, 1], augment (optional, training only), preprocess."""
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert  # plain tensor code: nothing for AutoGraph to convert
    def to_unit(x, y):
        return unit_pixels(x), y

    dataset = rows_dataset(images, targets, batch_size, shuffle_seed=shuffle_seed).map(to_unit, num_parallel_calls=tf.data.AUTOTUNE)
    if augment_seed is not None:
        @tf.autograph.experimental.do_not_convert
        def augment_batch(batch, random):
            return augment_images(batch[0], tf.stack([random, augment_seed])), batch[1]

        randoms = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((dataset, randoms)).map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)

    @tf.autograph.experimental.do_not_convert
    def to_input(x, y):
        return input_from_unit(x, info.channels, info.preprocessing), y

    return dataset.map(to_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def prior_pipeline(rows: np.ndarray | DiskArray, targets: np.ndarray, info: ModelInfo, batch_size: int, *, seed: int,
                   augment: bool, outside_probability: float, with_masks: bool):
    """tf.data over prior rows (N, H, W, C) uint8 (channels :data:`IMAGE`, :data:`MASK`, and :data:`IMPUTED` when
    ``outside_probability`` > 0): shuffled with ``seed``, batched, augmented (one warp for every channel, the brightness
    only for the pictures), then, with probability ``outside_probability`` per image, the picture replaced by its
    imputed copy (the pixels outside the lungs removed); batches of ((model input, outside-lungs share (N, H, W)),
    target) when ``with_masks`` (the penalty's training step), else of (model input, target)."""
    import tensorflow as tf

    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip((rows_dataset(rows, targets, batch_size, shuffle_seed=seed), randoms))
    pictures = [IMAGE] + ([IMPUTED] if outside_probability > 0 else [])

    @tf.autograph.experimental.do_not_convert
    def prepare(batch, random):
        stack, y = unit_pixels(batch[0]), batch[1]
        if augment:
            stack = _warp_channels(stack, tf.stack([random, seed]), pictures)
        image = stack[..., IMAGE]
        if outside_probability > 0:
            draw = tf.random.stateless_uniform(tf.shape(image)[:1], seed=tf.stack([random, seed + 1]))
            image = tf.where((draw < outside_probability)[:, None, None], stack[..., IMPUTED], image)
        x = input_from_unit(image, info.channels, info.preprocessing)
        return ((x, 1.0 - stack[..., MASK]), y) if with_masks else (x, y)

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _affine_transforms(seed, size, height, width):
    """One random small affine map (ImageProjectiveTransformV3's 8 numbers) and brightness offset per image."""
    import tensorflow as tf

    params = tf.random.stateless_uniform((size, 5), seed=seed, minval=-1.0, maxval=1.0)
    angle = params[:, 0] * (AUGMENT_MAX_ROTATION_DEG * math.pi / 180.0)
    shift_x = params[:, 1] * AUGMENT_MAX_SHIFT * width
    shift_y = params[:, 2] * AUGMENT_MAX_SHIFT * height
    inverse_zoom = 1.0 / (1.0 + params[:, 3] * AUGMENT_MAX_ZOOM)
    brightness = params[:, 4] * AUGMENT_MAX_BRIGHTNESS
    center_x, center_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle) * inverse_zoom, tf.sin(angle) * inverse_zoom
    # Output pixel (x, y) samples input center + R(-angle) / zoom * ((x, y) - center - shift).
    source_x, source_y = center_x + shift_x, center_y + shift_y
    transforms = tf.stack(
        [cos, sin, center_x - cos * source_x - sin * source_y,
         -sin, cos, center_y + sin * source_x - cos * source_y,
         tf.zeros_like(cos), tf.zeros_like(cos)],
        axis=1,
    )
    return transforms, brightness


def _warp(stack, seed):
    """(B, h, w, C) warped by one random affine map per image (every channel alike, edges replicated), and the
    images' brightness offsets (B,)."""
    import tensorflow as tf

    shape = tf.shape(stack)
    transforms, brightness = _affine_transforms(seed, shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32))
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=stack, transforms=transforms, output_shape=shape[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST",
    )
    return warped, brightness


def augment_images(batch, seed):
    """Random small rotation, shift, zoom and brightness for a (B, h, w) batch in [0, 1].

    Stateless random ops keyed by ``seed`` (one per batch, drawn from a seeded stream), so the
    augmentation is reproducible; one affine map per image, edges replicated.
    """
    import tensorflow as tf

    warped, brightness = _warp(batch[..., None], seed)
    return tf.clip_by_value(warped[..., 0] + brightness[:, None, None], 0.0, 1.0)


def _warp_channels(stack, seed, pictures: list[int]):
    """:func:`augment_images` of a (B, h, w, C) stack: the same warp for every channel (a mask follows its image), the
    brightness only for the ``pictures`` channels (the same numbers as :func:`augment_images` gives the image)."""
    import tensorflow as tf

    warped, brightness = _warp(stack, seed)
    lit = tf.one_hot(pictures, tf.shape(stack)[-1], dtype=warped.dtype)
    lit = tf.reduce_sum(lit, axis=0) if pictures else tf.zeros(tf.shape(stack)[-1:], warped.dtype)
    brightened = tf.clip_by_value(warped + brightness[:, None, None, None], 0.0, 1.0)
    return tf.where(lit > 0, brightened, warped)

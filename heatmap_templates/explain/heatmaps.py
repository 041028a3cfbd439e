"""Extraction stage: every image of a data set through classifier + CAM, into a heatmap store.

Images are decoded and preprocessed in parallel by a ``tf.data`` pipeline (``numpy_function`` over
hmt's own decoder, ``AUTOTUNE`` parallelism, prefetch) so that the model never waits for input.
Each batch runs once through :class:`~heatmap_templates.explain.cam.CamEngine`, which returns the
probabilities and the maps of *every* class from one forward pass; the batch is then appended to
the crash-safe, resumable heatmap store (:class:`~heatmap_templates.store.HeatmapWriter`).
A rerun on the same output skips images already stored.

Example::

    summary = extract_heatmaps("templates_out/model.keras", "data/", "templates_out/heatmaps.h5")
    print(summary.computed, summary.correct, summary.skipped)
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heatmap_templates.data.datasets import Dataset
from heatmap_templates.data.decode import DEFAULT_INTENSITY, DEFAULT_MAX_PIXELS, decode_image
from heatmap_templates.data.preprocess import load_model_image, to_model_input
from heatmap_templates.errors import (
    BadFileError,
    BadImageError,
    HmtError,
    Problem,
    SkipLog,
    display_path,
    problems_json,
)
from heatmap_templates.executors import Executor, LocalExecutor, executor_for
from heatmap_templates.explain.engine_choice import engine_for
from heatmap_templates.files import file_sha256
from heatmap_templates.model.evaluation import DEFAULT_BATCH_SIZE, load_dataset_for
from heatmap_templates.model.heads import HEADS, predicted_classes
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store.settings import HeatmapSettings

DEFAULT_STORE = Path("templates_out/heatmaps.h5")


@dataclass
class ExtractionSummary:
    """What one ``hmt heatmaps`` run did: counts cover the images computed in this run (a resumed
    run leaves the earlier ones out; ``hmt inspect`` shows the whole store)."""

    out: Path
    total: int  # usable samples in the data set
    computed: int  # images processed in this run
    resumed: int  # images already in the store from an earlier run
    correct: int
    incorrect: int
    unlabelled: int
    per_class: dict[str, int]
    images_per_second: float
    skipped: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "total": self.total,
            "computed": self.computed,
            "resumed": self.resumed,
            "correct": self.correct,
            "incorrect": self.incorrect,
            "unlabelled": self.unlabelled,
            "per_class": dict(self.per_class),
            "images_per_second": round(self.images_per_second, 2),
            "skipped": problems_json(self.skipped),
        }


@dataclass
class ModelBatch:
    """One batch of decoded images ready for the model: positions in the caller's list, model
    input (N, H, W, C) float32 and the grayscale image at input size (N, H, W) uint8."""

    positions: np.ndarray
    inputs: np.ndarray
    images: np.ndarray


def load_for_model(path: str | os.PathLike | bytes, input_size: tuple[int, int], channels: int, mode: str,
                   max_pixels: int = DEFAULT_MAX_PIXELS, intensity: str = DEFAULT_INTENSITY) -> tuple[np.ndarray, np.ndarray]:
    """Load one file: (model input (H, W, C) float32, grayscale (H, W) uint8), as every command does.

    The uint8 image is what the model saw (before its preprocessing mode); it is stored so that
    registration can later run from the heatmap store alone.
    """
    image_u8 = load_model_image(path, input_size, max_pixels=max_pixels, intensity=intensity)
    return to_model_input(image_u8[None], channels, mode)[0], image_u8


def iter_model_batches(paths: Sequence[str | os.PathLike], input_size: tuple[int, int], channels: int, mode: str, *,
                       batch_size: int = DEFAULT_BATCH_SIZE, skip_log: SkipLog, max_pixels: int = DEFAULT_MAX_PIXELS,
                       intensity: str = DEFAULT_INTENSITY) -> Iterator[ModelBatch]:
    """Decode (with the model's ``intensity`` mode) and preprocess ``paths`` in parallel through tf.data,
    yielding batches in order.

    Bad files are logged in ``skip_log`` (the run goes on) and left out of their batch; a batch in
    which every file was bad is still yielded (empty) so callers can count progress.
    """
    import tensorflow as tf

    height, width = input_size
    reasons: dict[int, str] = {}
    lock = threading.Lock()
    path_list = [os.fsencode(os.fspath(p)) for p in paths]

    def load(position: np.int64) -> tuple[np.ndarray, np.ndarray, np.bool_]:
        index = int(position)
        try:
            model_input, image_u8 = load_for_model(path_list[index], input_size, channels, mode, max_pixels, intensity)
            return model_input, image_u8, np.bool_(True)
        except BadImageError as error:
            with lock:
                reasons[index] = error.reason
        except Exception as error:  # a decoder bug must not kill a long run: report it as this file's problem
            with lock:
                reasons[index] = f"could not be decoded ({type(error).__name__}: {error})"
        return np.zeros((height, width, channels), np.float32), np.zeros((height, width), np.uint8), np.bool_(False)

    def load_graph(position: tf.Tensor) -> tuple[tf.Tensor, ...]:
        model_input, image_u8, ok = tf.numpy_function(load, [position], (tf.float32, tf.uint8, tf.bool), stateful=False)
        model_input.set_shape((height, width, channels))
        image_u8.set_shape((height, width))
        ok.set_shape(())
        return position, model_input, image_u8, ok

    pipeline = (
        tf.data.Dataset.range(len(path_list))
        .map(load_graph, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    for positions, inputs, images, ok in pipeline.as_numpy_iterator():
        for position in positions[~ok]:
            with lock:
                reason = reasons.pop(int(position), "could not be decoded")
            skip_log.add(path_list[int(position)], reason)
        yield ModelBatch(positions[ok], inputs[ok], images[ok])


def model_sha256(path: str | os.PathLike) -> str:
    """Content hash of a model file: the identity recorded in heatmap stores and template files."""
    return file_sha256(path)


def default_store_path(model_path: str | os.PathLike, method: str, score: str, folder: str | os.PathLike = DEFAULT_STORE.parent) -> Path:
    """The heatmap store that ``build-templates`` reuses for a model and CAM settings.

    Named by the model's content hash, so a retrained model never collides with an old store.
    """
    return Path(folder) / f"heatmaps_{model_sha256(model_path)[:12]}_{method}_{score}.h5"


def heatmap_settings(model_path: str | os.PathLike, info, engine, *, labels: Sequence[str] | None = None,
                     uncertain: str | None = None) -> HeatmapSettings:
    """The settings a heatmap store records: a store made with other identity settings is refused.

    ``mixed_precision`` is not part of the identity that templates check (``HeatmapSettings.identity()``:
    float16 maps agree with float32 ones to a correlation of 0.99 or more), but a resume may not switch it
    (``identity(resume=True)``), so the store's record is true of every image in it. ``labels`` and ``uncertain``
    (how a multi-label model's data set was read, :func:`~heatmap_templates.model.evaluation.load_dataset_for`) are
    recorded as given, so later commands read data sets the same way.
    """
    return HeatmapSettings(
        model_sha256=model_sha256(model_path),
        model_path=str(Path(model_path).resolve()),
        class_names=tuple(info.class_names),
        layer=engine.layer,
        cam_method=engine.method,
        score=engine.score,
        input_size=(int(info.input_size[0]), int(info.input_size[1])),
        channels=int(info.channels),
        preprocessing=info.preprocessing,
        intensity=info.intensity,
        backbone=info.backbone,
        head=engine.head,
        threshold=engine.threshold,
        mixed_precision=bool(engine.mixed_precision),
        labels=None if labels is None else tuple(name.strip() for name in labels),
        uncertain=uncertain,
    )


def _unreadable_reason(path: str | os.PathLike, error: OSError) -> str:
    """The decoder's reason for a file that cannot be read (symlink loop, directory, permission...),
    so a file that fails while hashing is reported exactly as one that fails while decoding."""
    try:
        decode_image(path)
    except BadImageError as bad:
        return bad.reason
    return f"cannot be read ({error.strerror or type(error).__name__})"


def _hash_samples(dataset: Dataset, skip_log: SkipLog) -> list[tuple[int, str]]:
    """(sample index, sha256) for every readable sample, hashed on a thread pool; unreadable ones are logged."""

    def digest(index: int) -> tuple[int, str | None, str | None]:
        try:
            return index, file_sha256(dataset.samples[index].path), None
        except OSError as error:
            return index, None, _unreadable_reason(dataset.samples[index].path, error)

    hashed = []
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        for index, sha, reason in pool.map(digest, range(len(dataset.samples))):
            if sha is None:
                skip_log.add(dataset.samples[index].path, reason or "cannot be read")
            else:
                hashed.append((index, sha))
    return hashed


def extract(engine, info, dataset: Dataset, writer, *, batch_size: int = DEFAULT_BATCH_SIZE,
            max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = False, progress: Progress | None = None,
            executor: Executor | None = None, job: ExtractJob | None = None) -> ExtractionSummary:
    """Classify every image of ``dataset`` with ``engine`` and append probabilities and all-class maps to ``writer``.

    ``engine`` is a :class:`~heatmap_templates.explain.cam.CamEngine` over the model ``info`` describes and
    ``writer`` a :class:`~heatmap_templates.store.HeatmapWriter` (finalised here). Labels that are
    not among the model's classes are stored as -1 (unlabelled); images the writer already holds
    (same path or content hash) are not recomputed. With a cluster ``executor`` (and the ``job`` that
    lets its workers build the same engine) chunks of images are computed on the workers and written
    here, in order, as they come back.
    """
    import time

    from heatmap_templates.store import HeatmapBatch

    if batch_size < 1:
        raise HmtError(f"batch size must be at least 1, got {batch_size}")
    progress = progress or NullProgress()
    skip_log = SkipLog(strict, dataset.problems)
    labels_of = _labeller(info, dataset)
    hashed = _hash_samples(dataset, skip_log)
    todo = [(i, sha) for i, sha in hashed if sha not in writer.done and display_path(dataset.samples[i].path) not in writer.done]
    resumed = len(hashed) - len(todo)
    per_class: Counter[str] = Counter()
    correct = incorrect = unlabelled = 0
    started = time.perf_counter()
    progress.start(len(todo), "heatmaps" if executor is None else f"heatmaps ({executor.description})")
    try:
        if executor is None or isinstance(executor, LocalExecutor):
            computed_batches = _local_batches(engine, info, dataset, todo, batch_size, skip_log, max_pixels)
        else:
            if job is None:
                raise HmtError("a cluster run needs the job that lets its workers build the engine")
            computed_batches = _cluster_batches(executor, job, dataset, todo, skip_log)
        for positions, maps, count in computed_batches:
            if len(positions):
                samples = [dataset.samples[todo[p][0]] for p in positions]
                labels = labels_of(samples)
                predicted = np.asarray(predicted_classes(maps.probabilities, engine.head, engine.threshold)).astype(np.int32)
                is_correct = (labels >= 0) & (labels == predicted)
                writer.append(HeatmapBatch(
                    paths=[display_path(s.path) for s in samples],
                    sha256=[todo[p][1] for p in positions],
                    labels=labels,
                    predicted=predicted,
                    probabilities=maps.probabilities.astype(np.float32),
                    correct=is_correct,
                    images=maps.images,
                    raw=maps.raw.astype(np.float32),
                ))
                per_class.update(name for s in samples for name in
                                 ([n for n, v in zip(dataset.class_names, s.findings, strict=True) if v == 1] if dataset.multi_label else [s.label]))
                known = labels >= 0 if labels.ndim == 1 else (labels >= 0).all(axis=1)  # every finding known
                right = is_correct if is_correct.ndim == 1 else is_correct.all(axis=1)
                correct += int((known & right).sum())
                unlabelled += int((~known).sum())
                incorrect += int((known & ~right).sum())
            progress.advance(count)
    finally:
        progress.finish()
    elapsed = time.perf_counter() - started
    computed = correct + incorrect + unlabelled
    writer.finalize()
    return ExtractionSummary(
        out=writer.path,
        total=len(dataset.samples),
        computed=computed,
        resumed=resumed,
        correct=correct,
        incorrect=incorrect,
        unlabelled=unlabelled,
        per_class={name: per_class.get(name, 0) for name in dataset.class_names},
        images_per_second=computed / elapsed if elapsed > 0 and computed else 0.0,
        skipped=skip_log.problems,
    )


@dataclass
class ComputedMaps:
    """What the model gave for some images: (N, K) probabilities, (N, H, W) uint8 images, (N, K, h, w) maps."""

    probabilities: np.ndarray
    images: np.ndarray
    raw: np.ndarray


def _local_batches(engine, info, dataset: Dataset, todo: list[tuple[int, str]], batch_size: int,
                   skip_log: SkipLog, max_pixels: int) -> Iterator[tuple[np.ndarray, ComputedMaps, int]]:
    """(positions in ``todo``, maps, images attempted) per batch, computed in this process through tf.data."""
    batches = iter_model_batches(
        [dataset.samples[i].path for i, _ in todo], info.input_size, info.channels, info.preprocessing,
        batch_size=batch_size, skip_log=skip_log, max_pixels=max_pixels, intensity=info.intensity,
    )
    for batch_number, batch in enumerate(batches):
        count = min(batch_size, len(todo) - batch_number * batch_size)
        if not len(batch.positions):
            yield batch.positions, ComputedMaps(np.zeros((0, 0)), batch.images, np.zeros((0, 0, 0, 0))), count
            continue
        result = engine.all_classes(batch.inputs)
        yield batch.positions, ComputedMaps(result.probabilities, batch.images, result.raw), count


def _cluster_batches(executor: Executor, job: ExtractJob, dataset: Dataset, todo: list[tuple[int, str]],
                     skip_log: SkipLog) -> Iterator[tuple[np.ndarray, ComputedMaps, int]]:
    """The same, computed on a cluster's workers in chunks of :data:`EXTRACT_CHUNK_IMAGES`, in order."""
    starts = list(range(0, len(todo), EXTRACT_CHUNK_IMAGES))
    chunks = [tuple(os.fspath(dataset.samples[i].path) for i, _ in todo[start:start + EXTRACT_CHUNK_IMAGES]) for start in starts]
    for start, paths, handle in zip(starts, chunks, executor.map(extract_chunk, chunks, job), strict=True):
        positions, maps, problems = executor.value(handle)
        for path, reason in problems:
            skip_log.add(path, reason)
        yield start + positions, maps, len(paths)


EXTRACT_CHUNK_IMAGES = 256  # images per cluster task


@dataclass(frozen=True)
class ExtractJob:
    """What a cluster worker needs to build the same CAM engine as this process (the model file must be
    readable at ``model_path`` on the worker: a shared file system)."""

    model_path: str
    model_sha256: str
    classes: tuple[str, ...] | None
    preprocessing: str | None
    intensity: str | None
    unsafe_load: bool
    layer: str
    method: str
    score: str
    threshold: float
    mixed_precision: bool
    batch_size: int
    max_pixels: int
    head: str | None = None  # the head kind the run read the model with (named or read from its output layer)


_WORKER_ENGINES: dict[ExtractJob, tuple] = {}  # per worker process: each job's model is loaded once
_WORKER_LOCK = threading.Lock()


def _worker_engine(job: ExtractJob) -> tuple:
    """(engine, info) of ``job`` in this process, loaded on first use (the model file checked against its hash)."""
    with _WORKER_LOCK:
        if job not in _WORKER_ENGINES:
            from heatmap_templates.model.model_file import load_model

            if model_sha256(job.model_path) != job.model_sha256:
                raise BadFileError(job.model_path, "the model file on this worker differs from the one the run started with")
            model, info = load_model(job.model_path, unsafe=job.unsafe_load, classes=job.classes,
                                     preprocessing=job.preprocessing, intensity=job.intensity, head=job.head)
            # the choice the run made, given whole: the same engine as the one that started it
            engine = engine_for(None, model, info, layer=job.layer, method=job.method, score=job.score,
                                threshold=job.threshold, mixed_precision=job.mixed_precision)
            _WORKER_ENGINES[job] = (engine, info)
        return _WORKER_ENGINES[job]


def extract_chunk(paths: Sequence[str], job: ExtractJob) -> tuple[np.ndarray, ComputedMaps, list[tuple[str, str]]]:
    """A cluster task: decode ``paths`` and run them through the job's engine; (positions decoded, maps,
    (path, reason) of every file that could not be decoded)."""
    engine, info = _worker_engine(job)
    positions, inputs, images, problems = [], [], [], []
    for position, path in enumerate(paths):
        try:
            model_input, image_u8 = load_for_model(path, info.input_size, info.channels, info.preprocessing,
                                                   job.max_pixels, info.intensity)
        except BadImageError as error:
            problems.append((path, error.reason))
            continue
        except Exception as error:  # a decoder bug must not kill a long run: report it as this file's problem
            problems.append((path, f"could not be decoded ({type(error).__name__}: {error})"))
            continue
        positions.append(position)
        inputs.append(model_input)
        images.append(image_u8)
    height, width = info.input_size
    if not positions:
        empty = ComputedMaps(np.zeros((0, len(info.class_names)), np.float32), np.zeros((0, height, width), np.uint8),
                             np.zeros((0, len(info.class_names), 0, 0), np.float32))
        return np.zeros(0, np.int64), empty, problems
    stacked = np.stack(inputs)
    results = [engine.all_classes(stacked[start:start + job.batch_size]) for start in range(0, len(stacked), job.batch_size)]
    maps = ComputedMaps(np.concatenate([r.probabilities for r in results]), np.stack(images),
                        np.concatenate([r.raw for r in results]).astype(np.float32))
    return np.asarray(positions, dtype=np.int64), maps, problems


def _labeller(info, dataset: Dataset):
    """How images of ``dataset`` are labelled in the store for this model: class indices (N,) (-1: a class the
    model does not know), or for a multi-label model the findings (N, L) of a data set with the same findings
    (all -1, unknown, for any other data set)."""
    if HEADS[info.head].multi_label:
        same = dataset.multi_label and list(dataset.class_names) == list(info.class_names)
        width = len(info.class_names)
        return lambda samples: (np.array([s.findings for s in samples], dtype=np.int32).reshape(len(samples), width) if same
                                else np.full((len(samples), width), -1, np.int32))
    return lambda samples: np.array([info.label_index(s.label) for s in samples], dtype=np.int32)


def extract_heatmaps(
    model_path: str | os.PathLike,
    data: str | os.PathLike | Dataset,
    out: str | os.PathLike = DEFAULT_STORE,
    *,
    method: str | None = None,
    score: str | None = None,
    layer: str | None = None,
    threshold: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    classes: Sequence[str] | None = None,
    preprocessing: str | None = None,
    intensity: str | None = None,
    head: str | None = None,
    labels: Sequence[str] | None = None,
    uncertain: str | None = None,
    unsafe_load: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    strict: bool = False,
    mixed_precision: bool = False,
    command: str = "",
    progress: Progress | None = None,
    scheduler: str | object | None = None,
) -> ExtractionSummary:
    """Path-based :func:`extract`: load the model, build the engine and the store writer, run.

    ``data`` is a class-folder root, a CSV manifest or a loaded :class:`Dataset`; ``classes`` (default: ``labels``),
    ``preprocessing`` and ``intensity`` describe a model without hmt metadata, ``head`` names its head kind (a linear
    output read as independent sigmoids: :func:`heatmap_templates.model.heads.head_kind`). ``labels`` (a multi-label
    model's finding columns of a CSV, in its output order) and ``uncertain`` (the policy for -1 cells) say how a
    multi-label data set is read (:func:`~heatmap_templates.model.evaluation.load_dataset_for`); both are recorded.
    ``method``, ``score``, ``layer`` and
    ``threshold`` not given are the defaults (:func:`heatmap_templates.explain.engine_choice.engine_for`: the model's
    CAM layer, ``gradcam``, ``logit``, 0.5). ``mixed_precision``
    runs the network in float16 (faster on GPUs with tensor cores, slower on CPUs) and is recorded.
    ``scheduler`` runs the images on a Dask cluster (``local:N``, an address or a ``Client``;
    :func:`heatmap_templates.executors.executor_for`); the store is written here.
    """
    from heatmap_templates.model.model_file import load_model
    from heatmap_templates.store import HeatmapWriter

    if batch_size < 1:
        raise HmtError(f"batch size must be at least 1, got {batch_size}")
    model, info = load_model(model_path, unsafe=unsafe_load, classes=classes, preprocessing=preprocessing, intensity=intensity,
                             head=head, labels=labels)
    if layer is None and info.cam_layer is None:
        raise BadFileError(model_path, "the model has no convolutional layer (no 4-D output) to compute a CAM on")
    # Nothing is recorded yet (a resume with other settings is refused by the writer): given, else the default.
    engine = engine_for(None, model, info, layer=layer, method=method, score=score, threshold=threshold,
                        mixed_precision=mixed_precision)
    dataset = data if isinstance(data, Dataset) else load_dataset_for(info, data, labels=labels, uncertain=uncertain, strict=strict)
    settings = heatmap_settings(model_path, info, engine, labels=labels, uncertain=uncertain)
    writer = HeatmapWriter(out, settings, command=command)
    if scheduler is None:
        return extract(engine, info, dataset, writer, batch_size=batch_size, max_pixels=max_pixels, strict=strict,
                       progress=progress)
    job = ExtractJob(str(Path(model_path).resolve()), settings.model_sha256, tuple(info.class_names),
                     preprocessing, intensity, unsafe_load, engine.layer, engine.method, engine.score, engine.threshold,
                     bool(engine.mixed_precision), batch_size, max_pixels, engine.head)
    executor = executor_for(scheduler)
    try:
        return extract(engine, info, dataset, writer, batch_size=batch_size, max_pixels=max_pixels, strict=strict,
                       progress=progress, executor=executor, job=job)
    finally:
        executor.close()

"""The heatmap store: per image its hash, labels, probabilities, model-input image and every class's maps.

Maps are kept once, at the CAM layer's resolution (``raw``); every consumer upsamples them to the
image size on read with the one upsampler, :func:`heatmap_templates.numeric.resample.upsample` (bilinear,
half-pixel centres: ``tf.image.resize``'s convention). Stores of schema 1 and 2 also hold an
upsampled float16 copy, which is not read.

It is written crash-safely: each appended batch is a small shard file ``<path>.parts/<n>.h5``
(temp file, fsync, rename), and ``finalize()`` merges the final file and the shards into a new
temp file that is renamed into place, so a SIGKILL at any moment leaves complete shards and an
intact final file, and a rerun resumes from ``HeatmapWriter.done``. Schema: docs/hdf5_schema.md.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from heatmap_templates.errors import BadFileError
from heatmap_templates.files import ensure_folder
from heatmap_templates.numeric.resample import upsample_maps
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store.hdf5 import (
    HEATMAPS,
    atomic_h5,
    check_writes,
    open_h5,
    read_root,
    strings,
    write_root,
)
from heatmap_templates.store.settings import HeatmapSettings

HEATMAP_IDENTITY_KEYS = HeatmapSettings.IDENTITY_KEYS
RESUME_KEYS = HeatmapSettings.RESUME_KEYS

_SHARD_NAME = re.compile(r"^(\d+)\.h5$")
_COPY_ROWS = 64


@dataclass
class HeatmapBatch:
    """Per-image results of the heatmap pipeline for N images and K classes."""

    paths: list[str]
    sha256: list[str]
    labels: np.ndarray  # (N,) true class index, -1 unknown; multi-label: (N, K) 1/0, -1 unknown
    predicted: np.ndarray  # (N,) class index; multi-label: (N, K) 1/0
    probabilities: np.ndarray  # (N, K)
    correct: np.ndarray  # (N,) bool; multi-label: (N, K), the label known and equal to the decision
    images: np.ndarray  # (N, H, W) uint8, the model-input-size grayscale image
    raw: np.ndarray  # (N, K, h, w) float32, layer resolution

    def __len__(self) -> int:
        return len(self.paths)

    def maps_for(self, class_index: int) -> np.ndarray:
        """(N, H, W) float32 maps of one class upsampled to the image size."""
        return upsample_maps(self.raw[:, class_index], self.images.shape[1:])

    @property
    def upsampled(self) -> np.ndarray:
        """(N, K, H, W) float32: every class's maps upsampled to the image size."""
        return upsample_maps(self.raw, self.images.shape[1:])

    def check(self, class_count: int, input_size: Sequence[int]) -> None:
        """ValueError when arrays disagree with each other or with the store's settings."""
        n = len(self.paths)
        per_image = (n, class_count) if np.ndim(self.labels) == 2 else (n,)  # multi-label: one decision per finding
        expected = {
            "sha256": (len(self.sha256),),
            "labels": np.shape(self.labels),
            "predicted": np.shape(self.predicted),
            "probabilities": np.shape(self.probabilities),
            "correct": np.shape(self.correct),
            "images": np.shape(self.images),
            "raw": np.shape(self.raw)[:2],
        }
        wanted = {
            "sha256": (n,), "labels": per_image, "predicted": per_image, "probabilities": (n, class_count), "correct": per_image,
            "images": (n, *input_size), "raw": (n, class_count),
        }
        for name, shape in expected.items():
            if tuple(shape) != tuple(wanted[name]):
                raise ValueError(f"heatmap batch field {name} has shape {tuple(shape)}, expected {tuple(wanted[name])}")
        if np.ndim(self.raw) != 4:
            raise ValueError(f"heatmap batch field raw must be (N, K, h, w), got {np.shape(self.raw)}")


_BATCH_FIELDS = {  # dataset name -> (HeatmapBatch attribute, stored dtype)
    "path": ("paths", None),
    "image_sha256": ("sha256", None),
    "label": ("labels", np.int32),
    "predicted": ("predicted", np.int32),
    "probabilities": ("probabilities", np.float32),
    "correct": ("correct", np.bool_),
    "image": ("images", np.uint8),
    "raw": ("raw", np.float32),
}


def _parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def _shard_paths(path: Path) -> list[Path]:
    """Complete shard files in numeric order (temporary files are ignored)."""
    parts = _parts_dir(path)
    if not parts.is_dir():
        return []
    shards = [(int(m.group(1)), entry) for entry in parts.iterdir() if (m := _SHARD_NAME.match(entry.name))]
    return [entry for _, entry in sorted(shards)]


def _heatmap_sources(path: Path) -> list[Path]:
    return ([path] if path.exists() else []) + _shard_paths(path)


def _write_batch_datasets(handle: h5py.File, batch: HeatmapBatch) -> None:
    string = h5py.string_dtype("utf-8")
    for name, (attribute, dtype) in _BATCH_FIELDS.items():
        value = getattr(batch, attribute)
        if attribute in ("paths", "sha256"):
            handle.create_dataset(name, data=np.array(list(value), dtype=object), dtype=string)
        else:
            handle.create_dataset(name, data=np.asarray(value).astype(dtype))


class HeatmapWriter:
    """Crash-safe, resumable writer of a heatmap store (see the module docstring).

    Use as a context manager: a clean exit finalises; an exception (Ctrl-C included) leaves the
    shards, which the next writer on the same path picks up. `done` holds the paths and content
    hashes already stored, so the caller can skip them. The final file is compressed with lzf by
    default (about twice as fast as gzip on CAM maps for a similar size; gzip is portable to
    non-h5py readers).
    """

    def __init__(self, path: str | os.PathLike[str], settings: HeatmapSettings | Mapping[str, Any], *, command: str = "",
                 compression: str = "lzf", chunk_images: int = 16) -> None:
        settings = HeatmapSettings.of(settings)  # ValueError naming the settings a dict lacks
        if compression not in ("gzip", "lzf"):
            raise ValueError(f"compression must be gzip or lzf, not {compression!r}")
        self.path = Path(path)
        self.settings = settings
        self.command = command
        self.compression = compression
        self.chunk_images = max(1, chunk_images)
        ensure_folder(self.path.parent, self.path)  # fail before the caller computes a batch it cannot store
        self.done: set[str] = set()
        self.stored = 0  # images in the store so far (final file and shards)
        self._parts_made = False
        self._next_shard = 0
        for source in _heatmap_sources(self.path):
            with open_h5(source) as handle:
                _, recorded = read_root(handle, source, HEATMAPS)
                HeatmapSettings.read(recorded, source).check_same(source, self.settings, resume=True)
                if "path" in handle:
                    paths = strings(handle["path"])
                    self.stored += len(set(paths) - self.done)
                    self.done.update(paths)
                    self.done.update(strings(handle["image_sha256"]))
            if match := _SHARD_NAME.match(source.name):
                self._next_shard = max(self._next_shard, int(match.group(1)) + 1)

    def __enter__(self) -> HeatmapWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()

    def append(self, batch: HeatmapBatch) -> None:
        """Store one batch durably as its own shard file."""
        if not len(batch):
            return
        batch.check(len(self.settings.class_names), self.settings.input_size)
        parts = _parts_dir(self.path)
        if not self._parts_made:  # made once: a shard folder removed mid-run stops the run instead of restarting it
            ensure_folder(parts, self.path)
            self._parts_made = True
        while (parts / f"{self._next_shard:06d}.h5").exists():  # never replace a shard another writer made
            self._next_shard += 1
        try:
            with atomic_h5(parts / f"{self._next_shard:06d}.h5", create_folder=False) as handle:
                write_root(handle, HEATMAPS, self.settings.to_dict(), self.command, {"count": len(batch), "shard": True})
                _write_batch_datasets(handle, batch)
        except BadFileError as error:
            raise BadFileError(self.path, f"{error.reason}; the {self.stored} images stored before are kept and a rerun "
                                          "resumes after them") from None
        self._next_shard += 1
        self.stored += len(batch)
        self.done.update(batch.paths)
        self.done.update(batch.sha256)

    def finalize(self, progress: Progress | None = None) -> Path:
        """Merge the final file and all shards into a new final file (atomic rename), then drop the shards."""
        progress = progress or NullProgress()
        shards = _shard_paths(self.path)
        if self.path.exists() and not shards:
            return self.path
        sources = _heatmap_sources(self.path)
        selections: list[np.ndarray] = []
        total, seen = 0, set()
        for source in sources:  # the first row for each image path wins
            with open_h5(source) as handle:
                keep: list[int] = []
                for index, image_path in enumerate(strings(handle["path"]) if "path" in handle else []):
                    if image_path not in seen:
                        seen.add(image_path)
                        keep.append(index)
            selections.append(np.asarray(keep, dtype=np.int64))
            total += len(keep)
        progress.start(total, "merging heatmap store")
        try:
            with atomic_h5(self.path) as out:
                write_root(out, HEATMAPS, self.settings.to_dict(), self.command, {"count": total})
                written = 0
                for source, kept in zip(sources, selections, strict=True):
                    if not len(kept):
                        continue
                    with open_h5(source) as handle:
                        if written == 0:
                            self._create_datasets(out, handle, total)
                        for start in range(0, len(kept), _COPY_ROWS):
                            rows = kept[start : start + _COPY_ROWS]
                            for name in _BATCH_FIELDS:
                                out[name][written : written + len(rows)] = _read_rows(handle[name], rows)
                            written += len(rows)
                            progress.advance(len(rows))
                            check_writes(out)  # a full disk stops the copy here (atomic_h5 raises it as the cause)
        except BadFileError as error:
            if Path(error.path) != self.path:
                raise
            raise BadFileError(self.path, f"{error.reason}; all {total} images are kept in its shards and a rerun "
                                          "finishes the store") from None
        finally:
            progress.finish()
        for shard in shards:
            shard.unlink(missing_ok=True)
        parts = _parts_dir(self.path)
        for leftover in parts.glob(".*.tmp-*") if parts.is_dir() else []:
            leftover.unlink(missing_ok=True)
        if parts.is_dir() and not any(parts.iterdir()):
            parts.rmdir()
        return self.path

    def _create_datasets(self, out: h5py.File, template: h5py.File, total: int) -> None:
        options = {"compression": self.compression, "shuffle": True}
        if self.compression == "gzip":
            options["compression_opts"] = 4
        for name in _BATCH_FIELDS:
            source = template[name]
            shape = (total, *source.shape[1:])
            chunks = (min(self.chunk_images, total), *source.shape[1:]) if source.ndim > 1 else (min(1024, total),)
            out.create_dataset(name, shape=shape, dtype=source.dtype, chunks=chunks, **options)


_SPAN_SLACK = 64  # rows a read may skip over: one slice beats h5py's point selection by far


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows of a dataset by sorted, unique local indices: one slice over their span when it is not much longer
    than the rows themselves, else one slice per stored chunk they touch (each chunk decompressed once). Both are
    several times faster than h5py's point selection (3x for a build's evenly spread reference sample)."""
    span = int(rows[-1] - rows[0] + 1) if len(rows) else 0
    if not len(rows):
        values = dataset[0:0]
    elif span == len(rows):
        values = dataset[int(rows[0]) : int(rows[-1]) + 1]
    elif span <= 2 * len(rows) + _SPAN_SLACK:
        values = dataset[int(rows[0]) : int(rows[-1]) + 1][rows - rows[0]]
    else:
        block = dataset.chunks[0] if dataset.chunks else 1
        firsts = np.flatnonzero(np.diff(rows // block, prepend=-1))  # where each touched chunk's rows begin
        groups = np.split(rows, firsts[1:])
        values = np.concatenate([dataset[int(group[0]) : int(group[-1]) + 1][group - group[0]] for group in groups])
    if dataset.dtype.kind == "O":
        return np.array([v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


class HeatmapReader:
    """Read access to a heatmap store: the final file plus any shards not yet finalised.

    Small per-image fields are loaded at open (`paths`, `sha256`, `labels`, `predicted`,
    `probabilities`, `correct`); images and maps are read batch by batch, each read opening
    the file it needs, so no HDF5 handle stays open between calls.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.sources = _heatmap_sources(self.path)
        if not self.sources:
            raise BadFileError(self.path, "no such heatmap store (neither the file nor its .parts folder exists)")
        self.pending_shards = len(_shard_paths(self.path))
        self.settings: HeatmapSettings  # the first file's; every other file must have the same identity settings
        self.attrs: dict = {}
        locations: list[tuple[int, int]] = []
        paths: list[str] = []
        sha256: list[str] = []
        columns: dict[str, list[np.ndarray]] = {"label": [], "predicted": [], "probabilities": [], "correct": []}
        seen: set[str] = set()
        for number, source in enumerate(self.sources):
            with open_h5(source) as handle:
                attrs, recorded = read_root(handle, source, HEATMAPS)
                settings = HeatmapSettings.read(recorded, source)
                if number == 0:
                    self.settings, self.attrs = settings, attrs
                else:
                    settings.check_same(source, self.settings)
                if "path" not in handle:
                    continue
                source_paths = strings(handle["path"])
                source_hashes = strings(handle["image_sha256"])
                keep = []
                for index, image_path in enumerate(source_paths):  # the first row for each image path wins, as in finalize()
                    if image_path not in seen:
                        seen.add(image_path)
                        keep.append(index)
                for name in columns:
                    columns[name].append(handle[name][...][keep])
                paths.extend(source_paths[i] for i in keep)
                sha256.extend(source_hashes[i] for i in keep)
                locations.extend((number, i) for i in keep)
        class_count = len(self.settings.class_names)
        self.paths: list[str] = paths
        self.sha256: list[str] = sha256
        self.labels = np.concatenate(columns["label"]) if paths else np.zeros(0, np.int32)
        self.predicted = np.concatenate(columns["predicted"]) if paths else np.zeros(0, np.int32)
        self.probabilities = np.concatenate(columns["probabilities"]) if paths else np.zeros((0, class_count), np.float32)
        self.correct = np.concatenate(columns["correct"]) if paths else np.zeros(0, bool)
        self._locations = np.asarray(locations, dtype=np.int64).reshape(-1, 2)

    @property
    def class_names(self) -> list[str]:
        return list(self.settings.class_names)


    def __len__(self) -> int:
        return len(self.paths)

    def iter_batches(self, batch_size: int = 32, indices: Sequence[int] | np.ndarray | None = None) -> Iterator[HeatmapBatch]:
        """HeatmapBatch objects over `indices` (default: all images), in the order given."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(order) and (order.min() < 0 or order.max() >= len(self)):
            raise IndexError(f"heatmap store {self.path} has {len(self)} images; index out of range")
        for start in range(0, len(order), max(1, batch_size)):
            yield self._read(order[start : start + batch_size])

    def iter_raw(self, batch_size: int = 32, indices: Sequence[int] | np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Only the layer-resolution maps (B, K, h, w) of ``indices`` (default: all), in the order given: a pass that
        needs neither images nor labels reads a small fraction of the bytes."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(order), max(1, batch_size)):
            yield self.read_field("raw", order[start : start + batch_size])

    def read_field(self, name: str, indices: np.ndarray) -> np.ndarray:
        """One image dataset (``image`` or ``raw``) for ``indices``, from whichever files hold them."""
        return read_at(self.sources, self._locations[indices], name)

    def locations(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n, 2) int64 (file number in :attr:`sources`, row in that file) of the images ``indices``: what
        :func:`read_at` needs to read them without opening the store (a worker of a cluster run)."""
        return self._locations[np.asarray(indices, dtype=np.int64)]

    def _read(self, indices: np.ndarray) -> HeatmapBatch:
        """The images ``indices``: per-image fields from memory, images and maps read from their files."""
        empty = not len(indices)
        return HeatmapBatch(
            paths=[self.paths[i] for i in indices],
            sha256=[self.sha256[i] for i in indices],
            labels=self.labels[indices].astype(np.int32),
            predicted=self.predicted[indices].astype(np.int32),
            probabilities=self.probabilities[indices].astype(np.float32),
            correct=self.correct[indices].astype(bool),
            images=np.zeros((0, 0, 0), np.uint8) if empty else self.read_field("image", indices),
            raw=np.zeros((0, 0, 0, 0), np.float32) if empty else self.read_field("raw", indices),
        )


def read_at(sources: Sequence[str | Path], locations: np.ndarray, name: str) -> np.ndarray:
    """Dataset ``name`` (``image`` or ``raw``) of the images at ``locations`` ((n, 2): file number in ``sources``,
    row), in that order, each file opened once; rows of one file are read as slices where they lie close."""
    values: list = [None] * len(locations)
    for source_number in np.unique(locations[:, 0]):
        positions = np.flatnonzero(locations[:, 0] == source_number)
        unique_rows, inverse = np.unique(locations[positions, 1], return_inverse=True)
        with open_h5(Path(sources[source_number])) as handle:
            read = _read_rows(handle[name], unique_rows)
        for position, row in zip(positions, inverse, strict=True):
            values[position] = read[row]
    return np.stack(values)


def open_heatmaps(path: str | os.PathLike[str]) -> HeatmapReader:
    """Open a heatmap store for reading (BadFileError for a missing, foreign or damaged file)."""
    return HeatmapReader(path)


"""The HDF5 files of hmt; the only module that imports h5py. Schemas: docs/hdf5_schema.md.

Two kinds of file, both self-describing through root attributes (`kind`, `schema_version`,
`hmt_version`, `created`, `command`, the settings that produced them):

- the *heatmap store* (`kind="hmt-heatmaps"`): per image its hash, labels, probabilities,
  the model-input grayscale image and the raw and upsampled CAM maps of every class. It is
  written crash-safely: each appended batch is a small shard file `<path>.parts/<n>.h5`
  (temp file, fsync, rename), and `finalize()` merges the final file and the shards into a
  new temp file that is renamed into place, so a SIGKILL at any moment leaves complete
  shards and an intact final file, and a rerun resumes from `HeatmapWriter.done`.
- the *templates file* (`kind="hmt-templates"`, schema v1): per-class templates, their
  consistency statistics and the exact accumulator state that `merge-templates` needs.

Strings read back are data only: bytes are decoded and JSON is parsed, nothing is evaluated.
"""
from __future__ import annotations

import glob
import json
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from heatmap_templates import __version__
from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.templates import (
    LOO_MERGED,
    LOO_NOT_COMPUTED,
    AccumulatorState,
    ClassAccumulator,
    ClassTemplate,
    Member,
    similarity_matrix,
)

SCHEMA_VERSION = 1
HEATMAPS_KIND = "hmt-heatmaps"
TEMPLATES_KIND = "hmt-templates"
HEATMAP_IDENTITY_KEYS = ("model_sha256", "class_names", "layer", "cam_method", "score", "input_size")
# A resume must also keep these when the store records them (hmt heatmaps always does), so that the
# settings a finished store records are true of every image in it.
RESUME_KEYS = HEATMAP_IDENTITY_KEYS + ("mixed_precision",)
TEMPLATE_IDENTITY_KEYS = HEATMAP_IDENTITY_KEYS + ("registration", "normalisation")
INCLUDE_CHOICES = ("correct", "all", "predicted")
_SHARD_NAME = re.compile(r"^(\d+)\.h5$")
_COPY_ROWS = 64


# --------------------------------------------------------------------------- shared helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _decode(value: Any) -> Any:
    """HDF5 attribute or element as plain Python data (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_decode(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _jsonable(value: Any) -> Any:
    """Settings value in its canonical JSON form (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _ensure_folder(folder: Path, target: Path) -> None:
    """Create the folder an output goes into; a place that cannot hold it is a BadFileError naming the output."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadFileError(target, f"cannot create the folder {folder} ({error.strerror or type(error).__name__})") from None


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def _atomic_h5(path: Path) -> Iterator[h5py.File]:
    """Write an HDF5 file under a temporary name, fsync it, then rename it over `path`."""
    temporary = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}")
    try:
        with h5py.File(temporary, "w") as handle:
            yield handle
        _fsync_path(temporary)
        os.replace(temporary, path)
        _fsync_path(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _remove_dead_writers_temporaries(path)


def _temporary_prefix(path: Path) -> str:
    """`.<name>.tmp-<host>-`: with the writer's PID appended, the temporary name of an atomic write."""
    return f".{path.name}.tmp-{socket.gethostname()}-"


def _remove_dead_writers_temporaries(path: Path) -> None:
    """Delete temporaries of `path` left by killed writers: this host's, whose process is gone (a
    writer on another host sharing the folder is never touched)."""
    prefix = _temporary_prefix(path)
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = leftover.name[len(prefix):]
        if pid.isdigit() and not _process_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    """Open for reading; unreadable files and missing datasets become BadFileError."""
    if not path.exists():
        raise BadFileError(path, "no such file")
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise BadFileError(path, "not a readable HDF5 file") from None
    try:
        with handle:
            yield handle
    except KeyError as error:
        text = str(error.args[0]) if error.args else "data"
        named = re.search(r"object '([^']+)' doesn't exist", text)  # h5py's wording for a missing group or dataset
        raise BadFileError(path, f"incomplete or damaged file: missing {named.group(1) if named else text}") from None
    except OSError:
        raise BadFileError(path, "not a readable HDF5 file (damaged data)") from None


def _write_root(handle: h5py.File, kind: str, settings: Mapping[str, Any], command: str, extra: Mapping[str, Any] | None = None) -> None:
    """Root attributes: kind, versions, time, command, settings as JSON and one attribute per simple setting."""
    attrs = handle.attrs
    attrs["kind"] = kind
    attrs["schema_version"] = SCHEMA_VERSION
    attrs["hmt_version"] = __version__
    attrs["created"] = _now()
    attrs["command"] = command
    attrs["settings"] = json.dumps(_jsonable(dict(settings)), sort_keys=True)
    reserved = {"kind", "schema_version", "hmt_version", "created", "command", "settings", *(extra or {})}
    for key, value in _jsonable(dict(settings)).items():
        if key not in reserved and _simple_attribute(value):
            attrs[key] = value
    for key, value in (extra or {}).items():
        attrs[key] = value


def _simple_attribute(value: Any) -> bool:
    """Whether a setting can be its own HDF5 attribute: a scalar or a non-empty list of strings or of numbers."""
    if isinstance(value, (str, int, float, bool)):
        return True
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(v, str) for v in value) or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _read_root(handle: h5py.File, path: Path, kind: str) -> tuple[dict, dict]:
    """(root attributes, settings) after checking kind and schema version."""
    attrs = {key: _decode(handle.attrs[key]) for key in handle.attrs}
    found = attrs.get("kind")
    if found is None:
        raise BadFileError(path, f"not an hmt file (no 'kind' attribute; expected {kind!r})")
    if found != kind:
        raise BadFileError(path, f"is a {found!r} file, not {kind!r}")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BadFileError(path, f"unknown schema version {version!r} (this hmt {__version__} reads version {SCHEMA_VERSION})")
    try:
        settings = json.loads(attrs.get("settings", "{}"))
    except json.JSONDecodeError:
        raise BadFileError(path, "damaged 'settings' attribute (not JSON)") from None
    if not isinstance(settings, dict):
        raise BadFileError(path, "damaged 'settings' attribute (not a JSON object)")
    return attrs, settings


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_identity(path: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any], keys: Sequence[str]) -> None:
    """BadFileError naming the first identity setting that differs."""
    for key in keys:
        if _jsonable(stored.get(key)) != _jsonable(wanted.get(key)):
            raise BadFileError(path, f"made with {key}={_show(stored.get(key))}, not {_show(wanted.get(key))}; use another output file or the same settings")


def _require_keys(settings: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    missing = [key for key in keys if key not in settings]
    if missing:
        raise ValueError(f"{what} settings lack {', '.join(missing)}")


def _strings(dataset: h5py.Dataset) -> list[str]:
    return [str(value) for value in dataset.asstr()[...]] if len(dataset) else []


def file_kind(path: str | Path) -> str:
    """The `kind` of an hmt file (an unfinalised heatmap store counts as `hmt-heatmaps`)."""
    path = Path(path)
    if not path.exists() and _parts_dir(path).is_dir():
        return HEATMAPS_KIND
    with _open_h5(path) as handle:
        kind = _decode(handle.attrs.get("kind"))
    if kind not in (HEATMAPS_KIND, TEMPLATES_KIND):
        raise BadFileError(path, "not an hmt heatmap store or templates file (no known 'kind' attribute)")
    return kind


# --------------------------------------------------------------------------- heatmap store


@dataclass
class HeatmapBatch:
    """Per-image results of the heatmap pipeline for N images and K classes."""

    paths: list[str]
    sha256: list[str]
    labels: np.ndarray  # (N,) true class index, -1 unknown
    predicted: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, K)
    correct: np.ndarray  # (N,) bool
    images: np.ndarray  # (N, H, W) uint8, the model-input-size grayscale image
    raw: np.ndarray  # (N, K, h, w) float32, layer resolution
    upsampled: np.ndarray  # (N, K, H, W) float16 or float32

    def __len__(self) -> int:
        return len(self.paths)

    def maps_for(self, class_index: int) -> np.ndarray:
        """(N, H, W) float32 upsampled maps of one class: what registration and templates take."""
        return np.asarray(self.upsampled[:, class_index], dtype=np.float32)

    def check(self, class_count: int, input_size: Sequence[int]) -> None:
        """ValueError when arrays disagree with each other or with the store's settings."""
        n = len(self.paths)
        expected = {
            "sha256": (len(self.sha256),),
            "labels": np.shape(self.labels)[:1],
            "predicted": np.shape(self.predicted)[:1],
            "probabilities": np.shape(self.probabilities),
            "correct": np.shape(self.correct)[:1],
            "images": np.shape(self.images),
            "raw": np.shape(self.raw)[:2],
            "upsampled": np.shape(self.upsampled),
        }
        wanted = {
            "sha256": (n,), "labels": (n,), "predicted": (n,), "probabilities": (n, class_count), "correct": (n,),
            "images": (n, *input_size), "raw": (n, class_count), "upsampled": (n, class_count, *input_size),
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
    "upsampled": ("upsampled", None),
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
            array = np.asarray(value)
            stored = dtype or (np.float16 if array.dtype == np.float16 else np.float32)  # upsampled maps keep float16
            handle.create_dataset(name, data=array.astype(stored))


class HeatmapWriter:
    """Crash-safe, resumable writer of a heatmap store (see the module docstring).

    Use as a context manager: a clean exit finalises; an exception (Ctrl-C included) leaves the
    shards, which the next writer on the same path picks up. `done` holds the paths and content
    hashes already stored, so the caller can skip them. The final file is compressed with lzf by
    default (about twice as fast as gzip on CAM maps for a similar size; gzip is portable to
    non-h5py readers).
    """

    def __init__(self, path: str | Path, settings: Mapping[str, Any], *, command: str = "", compression: str = "lzf", chunk_images: int = 4) -> None:
        _require_keys(settings, HEATMAP_IDENTITY_KEYS, "heatmap store")
        if compression not in ("gzip", "lzf"):
            raise ValueError(f"compression must be gzip or lzf, not {compression!r}")
        self.path = Path(path)
        self.settings = _jsonable(dict(settings))
        self.command = command
        self.compression = compression
        self.chunk_images = max(1, chunk_images)
        _ensure_folder(self.path.parent, self.path)  # fail before the caller computes a batch it cannot store
        self.done: set[str] = set()
        self._next_shard = 0
        for source in _heatmap_sources(self.path):
            with _open_h5(source) as handle:
                _, stored = _read_root(handle, source, HEATMAPS_KIND)
                _check_identity(source, stored, self.settings, RESUME_KEYS)
                if "path" in handle:
                    self.done.update(_strings(handle["path"]))
                    self.done.update(_strings(handle["image_sha256"]))
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
        batch.check(len(self.settings["class_names"]), self.settings["input_size"])
        parts = _parts_dir(self.path)
        _ensure_folder(parts, self.path)
        while (parts / f"{self._next_shard:06d}.h5").exists():  # never replace a shard another writer made
            self._next_shard += 1
        with _atomic_h5(parts / f"{self._next_shard:06d}.h5") as handle:
            _write_root(handle, HEATMAPS_KIND, self.settings, self.command, {"count": len(batch), "shard": True})
            _write_batch_datasets(handle, batch)
        self._next_shard += 1
        self.done.update(batch.paths)
        self.done.update(batch.sha256)

    def finalize(self, progress: Progress | None = None) -> Path:
        """Merge the final file and all shards into a new final file (atomic rename), then drop the shards."""
        progress = progress or NullProgress()
        shards = _shard_paths(self.path)
        if self.path.exists() and not shards:
            return self.path
        sources = _heatmap_sources(self.path)
        selections, total, seen = [], 0, set()
        for source in sources:  # the first row for each image path wins
            with _open_h5(source) as handle:
                keep = []
                for index, image_path in enumerate(_strings(handle["path"]) if "path" in handle else []):
                    if image_path not in seen:
                        seen.add(image_path)
                        keep.append(index)
            selections.append(np.asarray(keep, dtype=np.int64))
            total += len(keep)
        progress.start(total, "merging heatmap store")
        with _atomic_h5(self.path) as out:
            _write_root(out, HEATMAPS_KIND, self.settings, self.command, {"count": total})
            written = 0
            for source, keep in zip(sources, selections):
                if not len(keep):
                    continue
                with _open_h5(source) as handle:
                    if written == 0:
                        self._create_datasets(out, handle, total)
                    for start in range(0, len(keep), _COPY_ROWS):
                        rows = keep[start : start + _COPY_ROWS]
                        for name in _BATCH_FIELDS:
                            out[name][written : written + len(rows)] = _read_rows(handle[name], rows)
                        written += len(rows)
                        progress.advance(len(rows))
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


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows of a dataset by sorted local indices (a slice when contiguous, which is much faster)."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        values = dataset[int(rows[0]) : int(rows[-1]) + 1]
    else:
        values = dataset[rows.tolist()] if len(rows) else dataset[0:0]
    if dataset.dtype.kind == "O":
        return np.array([v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


class HeatmapReader:
    """Read access to a heatmap store: the final file plus any shards not yet finalised.

    Small per-image fields are loaded at open (`paths`, `sha256`, `labels`, `predicted`,
    `probabilities`, `correct`); images and maps are read batch by batch, each read opening
    the file it needs, so no HDF5 handle stays open between calls.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sources = _heatmap_sources(self.path)
        if not self.sources:
            raise BadFileError(self.path, "no such heatmap store (neither the file nor its .parts folder exists)")
        self.pending_shards = len(_shard_paths(self.path))
        self.settings: dict = {}
        self.attrs: dict = {}
        locations, paths, sha256, columns, seen = [], [], [], {"label": [], "predicted": [], "probabilities": [], "correct": []}, set()
        for number, source in enumerate(self.sources):
            with _open_h5(source) as handle:
                attrs, settings = _read_root(handle, source, HEATMAPS_KIND)
                if number == 0:
                    self.settings, self.attrs = settings, attrs
                else:
                    _check_identity(source, settings, self.settings, HEATMAP_IDENTITY_KEYS)
                if "path" not in handle:
                    continue
                source_paths = _strings(handle["path"])
                source_hashes = _strings(handle["image_sha256"])
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
        class_count = len(self.settings.get("class_names", []))
        self.paths: list[str] = paths
        self.sha256: list[str] = sha256
        self.labels = np.concatenate(columns["label"]) if paths else np.zeros(0, np.int32)
        self.predicted = np.concatenate(columns["predicted"]) if paths else np.zeros(0, np.int32)
        self.probabilities = np.concatenate(columns["probabilities"]) if paths else np.zeros((0, class_count), np.float32)
        self.correct = np.concatenate(columns["correct"]) if paths else np.zeros(0, bool)
        self._locations = np.asarray(locations, dtype=np.int64).reshape(-1, 2)

    @property
    def class_names(self) -> list[str]:
        return list(self.settings.get("class_names", []))

    def __len__(self) -> int:
        return len(self.paths)

    def indices_for(self, class_index: int, include: str = "correct") -> np.ndarray:
        """Images whose map for `class_index` joins its template: true label and correct (default),
        true label regardless of prediction (`all`), or predicted as that class (`predicted`)."""
        if include not in INCLUDE_CHOICES:
            raise HmtError(f"--include must be one of {', '.join(INCLUDE_CHOICES)}, not {include!r}")
        if include == "predicted":
            chosen = self.predicted == class_index
        elif include == "all":
            chosen = self.labels == class_index
        else:
            chosen = (self.labels == class_index) & self.correct
        return np.flatnonzero(chosen)

    def iter_batches(self, batch_size: int = 32, indices: Sequence[int] | np.ndarray | None = None) -> Iterator[HeatmapBatch]:
        """HeatmapBatch objects over `indices` (default: all images), in the order given."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(order) and (order.min() < 0 or order.max() >= len(self)):
            raise IndexError(f"heatmap store {self.path} has {len(self)} images; index out of range")
        for start in range(0, len(order), max(1, batch_size)):
            yield self._read(order[start : start + batch_size])

    def _read(self, indices: np.ndarray) -> HeatmapBatch:
        fields: dict[str, list] = {name: [None] * len(indices) for name in _BATCH_FIELDS}
        locations = self._locations[indices]
        for source_number in np.unique(locations[:, 0]):
            positions = np.flatnonzero(locations[:, 0] == source_number)
            local = locations[positions, 1]
            unique_rows, inverse = np.unique(local, return_inverse=True)
            with _open_h5(self.sources[source_number]) as handle:
                for name in _BATCH_FIELDS:
                    values = _read_rows(handle[name], unique_rows)
                    for position, row in zip(positions, inverse):
                        fields[name][position] = values[row]
        return HeatmapBatch(
            paths=[str(p) for p in fields["path"]],
            sha256=[str(s) for s in fields["image_sha256"]],
            labels=np.array(fields["label"], dtype=np.int32),
            predicted=np.array(fields["predicted"], dtype=np.int32),
            probabilities=np.stack(fields["probabilities"]) if len(indices) else np.zeros((0, len(self.class_names)), np.float32),
            correct=np.array(fields["correct"], dtype=bool),
            images=np.stack(fields["image"]) if len(indices) else np.zeros((0, 0, 0), np.uint8),
            raw=np.stack(fields["raw"]) if len(indices) else np.zeros((0, 0, 0, 0), np.float32),
            upsampled=np.stack(fields["upsampled"]) if len(indices) else np.zeros((0, 0, 0, 0), np.float32),
        )


def open_heatmaps(path: str | Path) -> HeatmapReader:
    """Open a heatmap store for reading (BadFileError for a missing, foreign or damaged file)."""
    return HeatmapReader(path)


# --------------------------------------------------------------------------- templates file


@dataclass
class TemplateFile:
    """Contents of a templates file (accumulator states only when asked for)."""

    path: Path
    attrs: dict
    settings: dict
    reference_image: np.ndarray | None
    lung_mask: np.ndarray | None
    templates: dict[str, ClassTemplate]
    similarity: np.ndarray
    similarity_classes: list[str]


def _check_class_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise HmtError(f"class name {name!r} cannot be stored in HDF5 (no '/' and not empty)")


def _compressed(group: h5py.Group, name: str, data: np.ndarray) -> None:
    array = np.asarray(data)
    if array.size >= 4096:
        group.create_dataset(name, data=array, compression="gzip", compression_opts=4, shuffle=True)
    else:
        group.create_dataset(name, data=array)


def _write_template(root: h5py.File, template: ClassTemplate) -> None:
    """/templates/<class>/... and /consistency/<class>/... for one class."""
    if template.state is None:
        raise ValueError(f"template of class {template.class_name!r} has no accumulator state; build it with ClassAccumulator.finalize()")
    group = root.require_group("templates").create_group(template.class_name)
    group.attrs["normalisation"] = template.normalisation
    group.create_dataset("count", data=np.int64(template.count))
    for name in ("mean", "std"):
        _compressed(group, name, np.asarray(getattr(template, name), dtype=np.float32))
    if template.median is not None:
        _compressed(group, "median", np.asarray(template.median, dtype=np.float32))
    eigen = group.create_group("eigen")
    _compressed(eigen, "components", np.asarray(template.components, dtype=np.float32))
    _compressed(eigen, "components_reduced", np.asarray(template.components_reduced, dtype=np.float64))
    eigen.create_dataset("explained_variance", data=np.asarray(template.explained_variance_ratio, dtype=np.float64))
    eigen.create_dataset("eigenvalues", data=np.asarray(template.eigenvalues, dtype=np.float64))
    band = group.create_group("band")
    band.attrs["percentiles"] = [2.5, 97.5]
    band.attrs["replicates"] = int(template.state.config["bootstrap_replicates"])
    _compressed(band, "lo", np.asarray(template.band_low, dtype=np.float32))
    _compressed(band, "hi", np.asarray(template.band_high, dtype=np.float32))
    members = group.create_group("members")
    string = h5py.string_dtype("utf-8")
    for column in ("path", "image_sha256", "registration_method"):
        members.create_dataset(column, data=np.array([getattr(m, column) for m in template.members], dtype=object), dtype=string)
    for column in ("probability", "registration_quality"):
        members.create_dataset(column, data=np.array([getattr(m, column) for m in template.members], dtype=np.float64))
    state = group.create_group("state")
    state.attrs["config"] = json.dumps(_jsonable(template.state.config), sort_keys=True)
    for name, array in template.state.arrays.items():
        _compressed(state, name, array)
    consistency = root.require_group("consistency").create_group(template.class_name)
    if template.mean_pairwise_correlation is not None:
        consistency.create_dataset("mean_pairwise_correlation", data=np.float64(template.mean_pairwise_correlation))
    consistency.create_dataset("loo_correlations", data=np.asarray(template.loo_correlations, dtype=np.float64))
    consistency.attrs["loo_method"] = template.loo_method


def _read_members(group: h5py.Group) -> list[Member]:
    columns = {name: _strings(group[name]) for name in ("path", "image_sha256", "registration_method")}
    numbers = {name: group[name][...].tolist() for name in ("probability", "registration_quality")}
    return [
        Member(columns["path"][i], columns["image_sha256"][i], float(numbers["probability"][i]), float(numbers["registration_quality"][i]), columns["registration_method"][i])
        for i in range(len(columns["path"]))
    ]


def _read_state(group: h5py.Group, members: list[Member]) -> AccumulatorState:
    config = json.loads(_decode(group["state"].attrs["config"]))
    arrays = {name: group["state"][name][...] for name in group["state"]}
    return AccumulatorState(config=config, arrays=arrays, members=members)


def _read_template(root: h5py.File, name: str, load_state: bool) -> ClassTemplate:
    group = root["templates"][name]
    consistency = root["consistency"][name]
    members = _read_members(group["members"])
    pairwise = consistency.get("mean_pairwise_correlation")
    return ClassTemplate(
        class_name=name,
        normalisation=str(_decode(group.attrs["normalisation"])),
        count=int(group["count"][()]),
        mean=group["mean"][...].astype(np.float64),
        std=group["std"][...].astype(np.float64),
        median=group["median"][...].astype(np.float64) if "median" in group else None,
        components=group["eigen/components"][...],
        components_reduced=group["eigen/components_reduced"][...],
        eigenvalues=group["eigen/eigenvalues"][...],
        explained_variance_ratio=group["eigen/explained_variance"][...],
        band_low=group["band/lo"][...],
        band_high=group["band/hi"][...],
        mean_pairwise_correlation=float(pairwise[()]) if pairwise is not None else None,
        members=members,
        loo_correlations=consistency["loo_correlations"][...],
        loo_method=str(_decode(consistency.attrs.get("loo_method", LOO_NOT_COMPUTED))),
        state=_read_state(group, members) if load_state else None,
    )


def read_templates(path: str | Path, *, expected_model_sha256: str | None = None, load_state: bool = False) -> TemplateFile:
    """Read a templates file; BadFileError for a foreign, damaged, newer or other-model file."""
    path = Path(path)
    with _open_h5(path) as handle:
        attrs, settings = _read_root(handle, path, TEMPLATES_KIND)
        if expected_model_sha256 is not None and settings.get("model_sha256") != expected_model_sha256:
            raise BadFileError(path, f"templates were built with model {str(settings.get('model_sha256'))[:12]}, not {expected_model_sha256[:12]}; rebuild them for this model")
        names = list(handle["templates"]) if "templates" in handle else []
        templates = {name: _read_template(handle, name, load_state) for name in _ordered(names, settings)}
        similarity = handle["consistency/similarity"][...] if "consistency/similarity" in handle else np.zeros((0, 0))
        similarity_classes = _strings(handle["consistency/similarity_classes"]) if "consistency/similarity_classes" in handle else []
        reference = handle["reference/image"][...] if "reference/image" in handle else None
        lung_mask = handle["reference/lung_mask"][...] if "reference/lung_mask" in handle else None
    for template in templates.values():
        _check_finite(path, template)
    return TemplateFile(path, attrs, settings, reference, lung_mask, templates, similarity, similarity_classes)


def _check_finite(path: Path, template: ClassTemplate) -> None:
    """hmt never writes NaN or infinity into a template: a file that holds them is damaged (or tampered with)."""
    for field in ("mean", "std", "median", "components", "band_low", "band_high", "loo_correlations"):
        values = getattr(template, field)
        if values is not None and not np.isfinite(values).all():
            raise BadFileError(path, f"damaged file: non-finite values in the {field} of class {template.class_name!r}")


def _ordered(names: Iterable[str], settings: Mapping[str, Any]) -> list[str]:
    """Class names in the model's class order, unknown ones after them alphabetically."""
    order = {name: i for i, name in enumerate(settings.get("class_names", []))}
    return sorted(names, key=lambda name: (order.get(name, len(order)), name))


def _same_reference(path: Path, stored: tuple[np.ndarray | None, np.ndarray | None], wanted: tuple[np.ndarray | None, np.ndarray | None]) -> None:
    for what, old, new in zip(("reference image", "lung mask"), stored, wanted):
        if (old is None) != (new is None) or (old is not None and (old.shape != new.shape or not np.allclose(old, new, atol=1e-6))):
            raise BadFileError(path, f"its templates use another {what}; templates in one file must share the registration frame (reuse the stored reference)")


def save_templates(
    path: str | Path,
    settings: Mapping[str, Any],
    templates: Iterable[ClassTemplate],
    *,
    reference_image: np.ndarray | None = None,
    lung_mask: np.ndarray | None = None,
    command: str = "",
) -> Path:
    """Write templates (atomically), adding to or replacing classes of an existing compatible file.

    `settings` must hold TEMPLATE_IDENTITY_KEYS; anything else JSON-serialisable (e.g. what
    compare needs to rerun the pipeline: preprocessing, channels) is stored too. An existing
    file must have the same identity settings and reference, else BadFileError.
    """
    _require_keys(settings, TEMPLATE_IDENTITY_KEYS, "templates file")
    path = Path(path)
    settings = _jsonable(dict(settings))
    new = {template.class_name: template for template in templates}
    for name in new:
        _check_class_name(name)
    _ensure_folder(path.parent, path)
    reference = (None if reference_image is None else np.asarray(reference_image), None if lung_mask is None else np.asarray(lung_mask))
    existing_file = path if path.exists() else None
    if existing_file is not None:
        with _open_h5(path) as handle:
            _, stored = _read_root(handle, path, TEMPLATES_KIND)
            _check_identity(path, stored, settings, TEMPLATE_IDENTITY_KEYS)
            stored_reference = tuple(handle[f"reference/{n}"][...] if f"reference/{n}" in handle else None for n in ("image", "lung_mask"))
        _same_reference(path, stored_reference, reference)
    _write_templates_file(path, settings, new, reference, command, existing_file)
    return path


def _write_templates_file(path: Path, settings: dict, new: Mapping[str, ClassTemplate], reference: tuple, command: str, existing_file: Path | None) -> None:
    """New file: kept classes copied from `existing_file`, `new` classes written, similarity recomputed."""
    means: dict[str, np.ndarray] = {name: np.asarray(t.mean) for name, t in new.items()}
    source = h5py.File(existing_file, "r") if existing_file is not None else None
    try:
        with _atomic_h5(path) as out:
            _write_root(out, TEMPLATES_KIND, settings, command)
            reference_group = out.create_group("reference")
            for name, array in zip(("image", "lung_mask"), reference):
                if array is not None:
                    _compressed(reference_group, name, array)
            out.create_group("templates")
            out.create_group("consistency")
            if source is not None:
                for name in source["templates"]:
                    if name not in new:
                        source.copy(source[f"templates/{name}"], out["templates"], name=name)
                        source.copy(source[f"consistency/{name}"], out["consistency"], name=name)
                        means[name] = source[f"templates/{name}/mean"][...]
            for template in new.values():
                _write_template(out, template)
            order = _ordered(means, settings)
            out["consistency"].create_dataset("similarity", data=similarity_matrix([means[name] for name in order]))
            out["consistency"].create_dataset("similarity_classes", data=np.array(order, dtype=object), dtype=h5py.string_dtype("utf-8"))
    finally:
        if source is not None:
            source.close()


def _read_class_state(path: Path, class_name: str) -> AccumulatorState:
    with _open_h5(path) as handle:
        _read_root(handle, path, TEMPLATES_KIND)
        classes = list(handle["templates"]) if "templates" in handle else []
        if class_name not in classes:
            raise BadFileError(path, f"has no template for class {class_name!r} (it has {', '.join(classes) or 'none'})")
        group = handle["templates"][class_name]
        return _read_state(group, _read_members(group["members"]))


def load_accumulator(path: str | Path, class_name: str) -> ClassAccumulator:
    """The exact accumulator stored for one class (to add images to it or merge it)."""
    path = Path(path)
    state = _read_class_state(path, class_name)
    try:
        return ClassAccumulator.from_state(state)
    except (KeyError, ValueError) as error:
        raise BadFileError(path, f"damaged accumulator state of class {class_name!r}: {error}") from None


def merge_template_files(inputs: Sequence[str | Path], output: str | Path, *, command: str = "", progress: Progress | None = None) -> TemplateFile:
    """Merge templates files built over disjoint images with the same model and settings.

    Per class the accumulators are merged exactly (count, mean, std, median histogram,
    eigen-heatmaps, bootstrap band, mean pairwise correlation equal a build over the union).
    Leave-one-out correlations need the member maps, so a class present in several inputs
    keeps the union of the per-file values, marked by `loo_method`.
    """
    if len(inputs) < 2:
        raise HmtError("merge-templates needs at least two input files")
    progress = progress or NullProgress()
    files = [read_templates(path) for path in inputs]
    first = files[0]
    for other in files[1:]:
        _check_identity(other.path, other.settings, first.settings, TEMPLATE_IDENTITY_KEYS)
        _same_reference(other.path, (other.reference_image, other.lung_mask), (first.reference_image, first.lung_mask))
    merged: dict[str, ClassTemplate] = {}
    names = _ordered({n for f in files for n in f.templates}, first.settings)
    progress.start(sum(name in f.templates for f in files for name in names), "merging class templates")
    for name in names:  # one class at a time, so only its accumulator states are in memory
        holders = [f for f in files if name in f.templates]
        accumulator = load_accumulator(holders[0].path, name)
        progress.advance()
        owner = {member.key: holders[0].path for member in holders[0].templates[name].members}
        for holder in holders[1:]:
            for member in holder.templates[name].members:
                if member.key in owner:
                    raise BadFileError(holder.path, f"shares image {member.path} of class {name!r} with {owner[member.key]}; merging would count it twice")
                owner[member.key] = holder.path
            other = load_accumulator(holder.path, name)
            try:
                accumulator.merge(other)
            except HmtError as error:
                raise BadFileError(holder.path, str(error)) from None
            progress.advance()
        template = accumulator.finalize()
        parts = [holder.templates[name] for holder in holders]
        if all(part.loo_method != LOO_NOT_COMPUTED for part in parts):
            template.loo_correlations = np.concatenate([part.loo_correlations for part in parts])
            template.loo_method = parts[0].loo_method if len(parts) == 1 else LOO_MERGED
        merged[name] = template
    progress.finish()
    output = Path(output)
    _ensure_folder(output.parent, output)
    _write_templates_file(output, first.settings, merged, (first.reference_image, first.lung_mask), command, None)
    return read_templates(output)


# --------------------------------------------------------------------------- inspection


def describe(path: str | Path) -> dict[str, Any]:
    """A JSON-serialisable summary of an hmt file (what `hmt inspect` prints)."""
    path = Path(path)
    kind = file_kind(path)
    if kind == HEATMAPS_KIND:
        reader = open_heatmaps(path)
        names = reader.class_names
        per_class = {
            name: {"images": int((reader.labels == i).sum()), "correct": int(((reader.labels == i) & reader.correct).sum()), "predicted": int((reader.predicted == i).sum())}
            for i, name in enumerate(names)
        }
        shapes = {}
        if len(reader):
            sample = next(reader.iter_batches(1))
            shapes = {"image": list(sample.images.shape[1:]), "raw": list(sample.raw.shape[1:]), "upsampled": list(sample.upsampled.shape[1:])}
        return {
            "path": str(path), "kind": kind, "attrs": _public_attrs(reader.attrs), "settings": reader.settings, "images": len(reader),
            "correct": int(reader.correct.sum()), "unknown_label": int((reader.labels < 0).sum()), "classes": per_class,
            "shapes": shapes, "pending_shards": reader.pending_shards,
        }
    data = read_templates(path)
    classes = {}
    for name, template in data.templates.items():
        loo = template.loo_correlations
        classes[name] = {
            "count": template.count,
            "shape": list(np.shape(template.mean)),
            "median": template.median is not None,
            "eigen_components": int(len(template.components)),
            "explained_variance": [round(float(v), 4) for v in template.explained_variance_ratio],
            "band_mean_width": float(np.mean(template.band_high - template.band_low)),
            "mean_pairwise_correlation": template.mean_pairwise_correlation,
            "loo_method": template.loo_method,
            "loo_percentiles": {str(q): float(np.percentile(loo, q)) for q in (5, 25, 50, 75, 95)} if len(loo) else None,
        }
    return {
        "path": str(path), "kind": kind, "attrs": _public_attrs(data.attrs), "settings": data.settings, "classes": classes,
        "reference": list(data.reference_image.shape) if data.reference_image is not None else None,
        "similarity": {"classes": data.similarity_classes, "matrix": np.round(data.similarity, 4).tolist()},
    }


def _public_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Root attributes except the settings JSON (shown parsed instead)."""
    return {key: _jsonable(value) for key, value in attrs.items() if key != "settings"}

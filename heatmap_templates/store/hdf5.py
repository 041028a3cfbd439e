"""HDF5 plumbing shared by hmt's file kinds: atomic writes, safe reads, root attributes, identity checks.

Each file kind (:data:`HEATMAPS`, :data:`TEMPLATES`) has its own schema version; a writer writes
the current one and a reader reads every version in ``readable`` (docs/hdf5_schema.md has the
changelog). Root attributes make every file self-describing: ``kind``, ``schema_version``,
``hmt_version``, ``created``, ``command`` and the settings that produced it (as JSON, and one
attribute per simple setting). Strings read back are data only: bytes are decoded and JSON is
parsed, nothing is evaluated.
"""
from __future__ import annotations

import errno
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from heatmap_templates._version import __version__
from heatmap_templates.errors import BadFileError
from heatmap_templates.files import atomic_path


@dataclass(frozen=True)
class FileKind:
    """One kind of hmt file: its ``kind`` attribute, the schema version written and the versions read. The settings
    that files of earlier versions did not record are completed by the typed settings
    (:class:`heatmap_templates.store.settings.HeatmapSettings`: their defaults are the values such files were made with)."""

    name: str
    version: int
    readable: tuple[int, ...]


HEATMAPS = FileKind("hmt-heatmaps", 3, (1, 2, 3))  # v2: intensity, threshold recorded; v3: no upsampled copy of the maps
TEMPLATES = FileKind("hmt-templates", 7, (1, 2, 3, 4, 5, 6, 7))  # v2: as the store; v3: registration matrices;
# v4: strategies; v5: checks; v6: contrasts; v7: zones
KINDS = {kind.name: kind for kind in (HEATMAPS, TEMPLATES)}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def decode(value: Any) -> Any:
    """HDF5 attribute or element as plain Python data (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [decode(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


def jsonable(value: Any) -> Any:
    """Settings value in its canonical JSON form (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


class _GuardedFile:
    """The file object HDF5 writes through (h5py's ``fileobj`` driver): HDF5 never sees a failed write.

    HDF5 1.14 (h5py 3.14) does not survive one. A chunk flushed when a dataset object is freed fails inside
    the finaliser, which prints "Exception ignored ... OSError: [Errno 28]", and closing the file after that
    crashes the process (a segmentation fault in ``H5Fclose``, or at exit in the library's own clean-up,
    which flushes a file left open through a Python object that no longer exists). So the first OSError
    of a write is recorded instead of raised and every later write is dropped (the file is discarded):
    HDF5 goes on along its ordinary paths and closes cleanly, and :func:`atomic_h5` raises the recorded
    error once the file is closed. Reads past what reached the disk read zeros, as HDF5's own driver does.
    """

    def __init__(self, raw: io.FileIO) -> None:
        self.raw = raw
        self.error: OSError | None = None
        self.dropping = False  # the file will be discarded: write nothing more

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view and self.error is None and not self.dropping:
            try:
                written = self.raw.write(view)  # a nearly full disk takes part of a write, then refuses the rest
            except OSError as error:
                self.error = error
                break
            if not written:  # nothing taken and no error: record one rather than loop
                self.error = OSError(errno.EIO, "the file took no bytes")
                break
            view = view[written:]
        return size

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and (count := self.raw.readinto(view[done:])):
            done += count
        view[done:] = bytes(len(view) - done)
        return len(view)

    def read(self, size: int = -1) -> bytes:
        """What h5py takes a file object by (it reads through :meth:`readinto`)."""
        return self.raw.read(size) or b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None and not self.dropping:
            try:
                return self.raw.truncate(size)
            except OSError as error:
                self.error = error
        return self.raw.tell() if size is None else size

    def flush(self) -> None:
        """Nothing to flush: the file is unbuffered (:func:`atomic_path` fsyncs it once it is closed)."""


_GUARDS: dict[int, _GuardedFile] = {}  # id of an open atomic_h5 file -> its file object


@contextmanager
def atomic_h5(path: Path, *, create_folder: bool = True) -> Iterator[h5py.File]:
    """Write an HDF5 file under a temporary name, flush it to disk, then rename it over ``path``
    (see :func:`heatmap_templates.files.atomic_path`; a failed write is a one-line BadFileError).

    HDF5 writes through a :class:`_GuardedFile`, so a full disk is one ordinary OSError raised here, after
    HDF5 has closed the file cleanly (writing by path or through a plain file object, h5py 3.14 / HDF5 1.14
    printed finaliser tracebacks and crashed the process). On any exception the file is closed without
    writing more and no h5py object of it stays open. :func:`check_writes` raises a failed write early.
    """
    with atomic_path(path, create_folder=create_folder) as temporary, open(temporary, "w+b", buffering=0) as raw:
        guard = _GuardedFile(raw)
        handle = h5py.File(guard, "w")
        _GUARDS[id(handle)] = guard
        try:
            yield handle
        except BaseException as error:
            guard.dropping = True
            with suppress(Exception):  # closes every object of the file; with nothing written it has nothing to fail on
                handle.close()
            if guard.error is not None and isinstance(error, Exception):
                raise guard.error from None  # the cause (a full disk), not what HDF5 made of the dropped writes
            raise
        finally:
            _GUARDS.pop(id(handle), None)
        try:
            handle.close()
        finally:
            guard.dropping = True  # nothing HDF5 might still flush (at exit, say) reaches a file that is done
        if guard.error is not None:
            raise guard.error


def check_writes(handle: h5py.File) -> None:
    """Raise the OSError of a failed write into ``handle`` (a file of :func:`atomic_h5`) now, not when it closes:
    a long copy stops at a full disk instead of going on writing into nothing."""
    guard = _GUARDS.get(id(handle))
    if guard is not None and guard.error is not None:
        raise guard.error


@contextmanager
def open_h5(path: Path) -> Iterator[h5py.File]:
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


def write_root(handle: h5py.File, kind: FileKind, settings: Mapping[str, Any], command: str, extra: Mapping[str, Any] | None = None) -> None:
    """Root attributes: kind, versions, time, command, settings as JSON and one attribute per simple setting."""
    attrs = handle.attrs
    attrs["kind"] = kind.name
    attrs["schema_version"] = kind.version
    attrs["hmt_version"] = __version__
    attrs["created"] = now()
    attrs["command"] = command
    attrs["settings"] = json.dumps(jsonable(dict(settings)), sort_keys=True)
    reserved = {"kind", "schema_version", "hmt_version", "created", "command", "settings", *(extra or {})}
    for key, value in jsonable(dict(settings)).items():
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


def read_root(handle: h5py.File, path: Path, kind: FileKind) -> tuple[dict, dict]:
    """(root attributes, settings as recorded) after checking kind and schema version (any of ``kind.readable``);
    the typed settings (``HeatmapSettings.read``) complete those an earlier version did not record."""
    attrs = {key: decode(handle.attrs[key]) for key in handle.attrs}
    found = attrs.get("kind")
    if found is None:
        raise BadFileError(path, f"not an hmt file (no 'kind' attribute; expected {kind.name!r})")
    if found != kind.name:
        raise BadFileError(path, f"is a {found!r} file, not {kind.name!r}")
    version = attrs.get("schema_version")
    if version not in kind.readable:
        readable = ", ".join(str(v) for v in kind.readable)
        raise BadFileError(path, f"unknown schema version {version!r} (this hmt {__version__} reads {kind.name} versions {readable})")
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


def check_identity(path: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any], keys: Sequence[str] | None = None) -> None:
    """BadFileError naming the first identity setting (of ``keys``, default: those of ``wanted``) that differs."""
    for key in wanted if keys is None else keys:
        if jsonable(stored.get(key)) != jsonable(wanted.get(key)):
            raise BadFileError(path, f"made with {key}={_show(stored.get(key))}, not {_show(wanted.get(key))}; use another output file or the same settings")


def strings(dataset: h5py.Dataset) -> list[str]:
    """A string dataset as a list of str."""
    return [str(value) for value in dataset.asstr()[...]] if len(dataset) else []


def compressed(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """A dataset, gzip-compressed when it gains from it: large integer and float32 arrays. float64 accumulator
    state (bootstrap sums, co-moments) is stored as it is: gzip kept 70-80 % of its bytes and took most of the
    time of saving a template. Level 1: a class template's arrays came out 0.1 % larger than at level 4, 3.6x faster."""
    array = np.asarray(data)
    if array.size >= 4096 and not (array.dtype.kind == "f" and array.dtype.itemsize >= 8):
        group.create_dataset(name, data=array, compression="gzip", compression_opts=1, shuffle=True)
    else:
        group.create_dataset(name, data=array)


def string_dataset(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    """A UTF-8 string dataset."""
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=h5py.string_dtype("utf-8"))


def file_kind(path: str | Path) -> FileKind:
    """The kind of an hmt file (an unfinalised heatmap store, a folder of shards, counts as a heatmap store)."""
    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".parts").is_dir():
        return HEATMAPS
    with open_h5(path) as handle:
        name = decode(handle.attrs.get("kind"))
    if name not in KINDS:
        raise BadFileError(path, "not an hmt heatmap store or templates file (no known 'kind' attribute)")
    return KINDS[name]



"""Files on disk: content hashes, output folders, and atomic writes shared by every output hmt makes.

Every file hmt writes (heatmap store and its shards, templates file, model file, figures,
reports, JSON and CSV outputs) goes through :func:`atomic_path`: it is written under a
temporary name beside its target, flushed to disk and renamed into place, so a crash or a
failed write never leaves a half-written file under the real name, and the previous file
(if any) stays as it was. Temporary names carry the host and the process id
(``.<name>.tmp-<host>-<pid><suffix>``), so a later writer removes only the leftovers of dead
writers on its own host, never a live writer's file on another host sharing the folder.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from heatmap_templates.errors import BadFileError, display_path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (data-set fingerprints, model identity, cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error (a failing disk or network file system)",
}
_ERRNO_IN_MESSAGE = re.compile(r"errno\s*=\s*(\d+)")  # HDF5 reports the OS error inside its own message


def fault_reason(error: BaseException) -> str:
    """A short reason for an error met while writing: 'no space left on the device', 'read-only file system', ..."""
    number = getattr(error, "errno", None)
    if number is None and (found := _ERRNO_IN_MESSAGE.search(str(error))):
        number = int(found.group(1))
    if number in _FAULTS:
        return _FAULTS[number]
    if number == errno.ENOENT:
        return "the output folder no longer exists"
    strerror = getattr(error, "strerror", None)
    return (strerror or " ".join(str(error).split()) or type(error).__name__).lower()


def write_fault(path: str | os.PathLike, error: BaseException) -> BadFileError:
    """The one-line error for a failed write of ``path``: ``<path>: cannot write (<reason>)``."""
    return BadFileError(display_path(path), f"cannot write ({fault_reason(error)})")


def ensure_folder(folder: Path, target: Path) -> None:
    """Create the folder an output goes into; a place that cannot hold it is a BadFileError naming the output."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadFileError(target, f"cannot create the folder {folder} ({fault_reason(error)})") from None


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def temporary_prefix(path: Path) -> str:
    """`.<name>.tmp-<host>-`: with the writer's PID (and a suffix) appended, the temporary name of an atomic write."""
    return f".{path.name}.tmp-{socket.gethostname()}-"


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "", create_folder: bool = True,
                durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is flushed and renamed over ``path``.

    ``suffix`` ends the temporary name (Keras insists on ``.keras``). On any exception the
    temporary file is removed and ``path`` is left as it was; an OS error (no space, read-only
    file system, quota, permission, the folder removed) becomes a one-line :class:`BadFileError`
    naming ``path``. ``create_folder=False`` is for a writer whose folder already exists and must
    not be silently recreated (a run whose output folder was removed under it stops instead).
    ``durable=False`` skips the fsyncs (still atomic against a crash of hmt, not against a power
    cut): for the many small files of a data set that can be written again.
    """
    path = Path(path)
    if create_folder:
        ensure_folder(path.parent, path)
    temporary = path.with_name(f"{temporary_prefix(path)}{os.getpid()}{suffix}")
    try:
        yield temporary
        if durable:
            fsync_path(temporary)
        os.replace(temporary, path)
        if durable:
            fsync_path(path.parent)
    except BaseException as error:
        with suppress(OSError):  # a read-only or vanished folder cannot hold a temporary either
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) or _is_write_fault(error):
            raise write_fault(path, error) from None
        raise
    remove_dead_writers_temporaries(path)


def _is_write_fault(error: BaseException) -> bool:
    """Libraries that wrap an OS error in their own type (HDF5's RuntimeError, ...) still carry its errno in the text."""
    found = _ERRNO_IN_MESSAGE.search(str(error))
    return found is not None and int(found.group(1)) in (*_FAULTS, errno.ENOENT)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    """Write a text file (UTF-8) atomically."""
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write a file atomically (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path, durable=durable) as temporary:
        temporary.write_bytes(data)
    return path


def remove_dead_writers_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by killed writers: this host's, whose process is gone."""
    prefix = temporary_prefix(path)
    with suppress(OSError):  # cleaning up after others must never fail a write that succeeded
        for leftover in path.parent.glob(f"{glob.escape(prefix)}*"):
            pid = leftover.name[len(prefix):].split(".", 1)[0]
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
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on a clean exit it replaces ``path`` (a report and its images).

    The previous folder is moved aside before the new one is renamed into place and removed after, so at
    every moment one complete folder exists (under ``path`` or, between the two renames, under its old name).
    On any exception the temporary folder is removed and ``path`` is left as it was.
    """
    import shutil

    path = Path(path)
    ensure_folder(path.parent, path)
    temporary = path.with_name(f"{temporary_prefix(path)}{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{socket.gethostname()}-{os.getpid()}")
    try:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        yield temporary
        if path.exists():
            os.replace(path, old)
        os.replace(temporary, path)
        fsync_path(path.parent)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        if isinstance(error, BadFileError) and error.path.startswith(str(temporary)):  # a file inside: name the folder
            raise BadFileError(path, error.reason) from None
        if isinstance(error, OSError) or _is_write_fault(error):
            raise write_fault(path, error) from None
        raise
    shutil.rmtree(old, ignore_errors=True)

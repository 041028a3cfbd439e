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

import glob
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heatmap_templates.errors import BadFileError


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (data-set fingerprints, model identity, cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_folder(folder: Path, target: Path) -> None:
    """Create the folder an output goes into; a place that cannot hold it is a BadFileError naming the output."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadFileError(target, f"cannot create the folder {folder} ({error.strerror or type(error).__name__})") from None


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
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is flushed and renamed over ``path``.

    ``suffix`` ends the temporary name (Keras insists on ``.keras``). On any exception the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    ensure_folder(path.parent, path)
    temporary = path.with_name(f"{temporary_prefix(path)}{os.getpid()}{suffix}")
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, path)
        fsync_path(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    remove_dead_writers_temporaries(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (UTF-8) atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def remove_dead_writers_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by killed writers: this host's, whose process is gone."""
    prefix = temporary_prefix(path)
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

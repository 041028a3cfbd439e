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
import shutil
import socket
from collections.abc import Iterable, Iterator
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
def atomic_folder(path: str | os.PathLike, *, earlier: Iterable[str] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder to build an output folder in (a report, figures, a phantom set); on a clean exit
    its files become the folder ``path``. On any exception the temporary folder is removed and ``path`` is left as it was.

    ``path`` is resolved first (``.`` is the working directory by its real name). Usually the temporary folder is beside
    it and replaces it whole: the previous folder is moved aside, the new one renamed into place, the previous one
    removed, so at every moment one complete folder exists. A folder that cannot be replaced (a mount point such as a
    tmpfs or a container's bind volume, a symbolic link to a folder, the working directory or a folder holding it, one
    whose parent cannot hold the temporary folder or whose rename fails) is written in place: the new files are moved
    into it one by one, each by an atomic rename (from a temporary folder inside it when it is a mount point), then the
    files of the previous output that no new file replaced are removed. ``earlier`` lists those (paths relative to
    ``path``, as the caller's check recognised them; None: every file in the folder); nothing else there is touched.
    """
    given = Path(path)
    target = given.resolve()
    shown = given if given.name not in ("", "..") else target  # the folder as errors name it
    in_place = target.is_dir() and not _replaceable(given, target)
    temporary = _temporary_folder(target, shown, beside=not (in_place and is_mount_point(target)))
    in_place = in_place or temporary.parent == target
    try:
        yield temporary
        if in_place or not _swapped(temporary, target):
            _move_into(temporary, target, earlier)
        shutil.rmtree(temporary, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, BadFileError) and error.path.startswith(str(temporary)):  # a file inside: name the folder
            raise BadFileError(shown, error.reason) from None
        if isinstance(error, OSError) or _is_write_fault(error):
            raise write_fault(shown, error) from None
        raise


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` is a mount point, a bind mount of a folder of the same file system included (which
    :func:`os.path.ismount` misses: Linux lists it in /proc/self/mountinfo)."""
    if os.path.ismount(path):
        return True
    try:
        table = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return False
    mount_points = (_OCTAL_ESCAPE.sub(lambda found: chr(int(found.group(1), 8)), fields[4])
                    for fields in map(str.split, table.splitlines()) if len(fields) > 4)
    return str(path) in mount_points


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # /proc/self/mountinfo writes a space in a path as \040


def _replaceable(given: Path, target: Path) -> bool:
    """Whether the existing folder ``target`` (``given`` resolved) may be replaced whole by renames: not when ``given``
    is a symbolic link (it would become a folder), ``target`` a mount point, or the working directory inside it."""
    with suppress(OSError):  # a working directory that was removed holds nothing
        working = Path.cwd().resolve()
        if working == target or target in working.parents:
            return False
    return not given.is_symlink() and not is_mount_point(target)


def _temporary_folder(target: Path, shown: Path, *, beside: bool) -> Path:
    """Make an empty temporary folder: beside ``target`` (``beside``) where its parent can hold it, else inside it."""
    name = f"{temporary_prefix(target)}{os.getpid()}"
    places = [target.parent, target] if beside else [target]
    if beside:
        ensure_folder(target.parent, shown)
    for place in places:
        temporary = place / name
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            temporary.mkdir()
            return temporary
        except OSError as error:
            if place == places[-1] or not target.is_dir():  # no folder to write in place
                raise write_fault(shown, error) from None
    raise AssertionError("unreachable")  # the last place returns or raises


def _swapped(temporary: Path, target: Path) -> bool:
    """Rename ``temporary`` to ``target``, the previous ``target`` moved aside first and removed after; False, with
    nothing changed, when the previous folder cannot be renamed (busy, on another mount, not permitted)."""
    old = target.with_name(f".{target.name}.old-{socket.gethostname()}-{os.getpid()}")
    if target.exists():
        try:
            os.replace(target, old)
        except OSError as error:
            if error.errno in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EINVAL):
                return False
            raise
    try:
        os.replace(temporary, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_path(target.parent)
    return True


def _move_into(temporary: Path, target: Path, earlier: Iterable[str] | None) -> None:
    """Move every file of ``temporary`` into ``target`` (an atomic rename each), then remove the files of ``earlier``
    (None: every file in ``target`` outside ``temporary``) that no new file replaced and the folders that leaves empty."""
    new = sorted(p.relative_to(temporary).as_posix() for p in temporary.rglob("*") if not p.is_dir())
    for relative in new:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary / relative, destination)
    if earlier is None:
        earlier = [p.relative_to(target).as_posix() for p in target.rglob("*")
                   if not p.is_dir() and temporary not in p.parents]
    for relative in set(earlier) - set(new):
        stale = target / relative
        stale.unlink(missing_ok=True)
        for folder in stale.parents:
            if folder == target or any(folder.iterdir()):
                break
            folder.rmdir()
    fsync_path(target)

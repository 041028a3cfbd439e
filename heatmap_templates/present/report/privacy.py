"""What a report, made to be shared, shows of the files it was made from.

Image paths are shown relative to the data root (the deepest folder holding every image), other files (templates,
heatmap store, model, data set) by name only: never the making machine's absolute paths. With ``pseudonymise`` each
image's name is a salted hash instead (the first 12 hex digits of SHA-256 of the salt and the relative path; the
salt is given or drawn per report and never written) and the model's name is left out. Pixels are not touched: text
burned into the images (markers, labels) stays visible, which the report says.

As a last guard every text the report writes passes :meth:`Shown.text`, which replaces the folders the report was made
from (the data root, the folders of the templates file, the store, the model, the data set and the output) by
relative forms.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

PSEUDONYM_HEX = 12  # hex digits of a pseudonymised image name
BURNED_IN_WARNING = ("pseudonymised report: image names are salted hashes and the model path is left out, but text "
                     "burned into the images themselves (side markers, labels, dates) stays visible in the thumbnails")


def relative_image_path(path: str, root: str) -> str:
    """``path`` without the data root ``root`` (which ends with a separator); an absolute path outside it keeps only
    its folder and name."""
    if root and path.startswith(root):
        return path[len(root):]
    if os.path.isabs(path):
        return "/".join(PurePath(path).parts[-2:])
    return path


def pseudonym(salt: str, relative: str) -> str:
    """The salted hash that replaces an image's name."""
    return hashlib.sha256((salt + relative).encode("utf-8", "surrogateescape")).hexdigest()[:PSEUDONYM_HEX]


@dataclass(frozen=True)
class Shown:
    """How the report shows paths: ``root`` the data root (with its trailing separator, '' when the images share
    none), ``salt`` the pseudonyms' salt (None: real names), ``folders`` the absolute folders to keep out of any text."""

    root: str
    salt: str | None = None
    folders: tuple[str, ...] = ()

    @property
    def pseudonymised(self) -> bool:
        return self.salt is not None

    def image(self, path: str) -> str:
        relative = relative_image_path(path, self.root)
        return relative if self.salt is None else pseudonym(self.salt, relative)

    @staticmethod
    def file(path: str | os.PathLike) -> str:
        """Any other file by its name only."""
        return PurePath(os.fsdecode(os.fspath(path))).name

    @property
    def root_name(self) -> str:
        """The data root's own name (no folder above it), '' when none or pseudonymised."""
        return "" if self.salt is not None or not self.root else PurePath(self.root).name

    def text(self, text: str) -> str:
        """``text`` with every folder the report was made from replaced: ``folder/x`` by ``x``, ``folder`` by its name."""
        for folder in self.folders:
            text = text.replace(folder + os.sep, "").replace(folder, PurePath(folder).name)
        return text


def shown_for(root: str, sources: Iterable[str | os.PathLike | None], *, pseudonymise: bool, salt: str | None) -> Shown:
    """The :class:`Shown` of a report: ``sources`` the files and folders it was made from (their folders, absolute
    and resolved, are kept out of its texts); a salt drawn with :mod:`secrets` when pseudonymising without one."""
    folders: set[str] = set()
    for source in [root, *sources]:
        if not source:
            continue
        path = os.fsdecode(os.fspath(source))
        for absolute in {os.path.abspath(path), os.path.realpath(path)}:
            folder = absolute.rstrip(os.sep) if source == root else os.path.dirname(absolute)
            if len(PurePath(folder).parts) > 1:
                folders.add(folder)
            if source != root and os.path.isdir(absolute) and len(PurePath(absolute).parts) > 1:
                folders.add(absolute.rstrip(os.sep))
    drawn = (salt if salt is not None else secrets.token_hex(16)) if pseudonymise else None
    return Shown(root, drawn, tuple(sorted(folders, key=len, reverse=True)))

"""The working folder's memory of the last `hmt train`: which model and data set later commands default to.

`hmt train` records its model and data paths in ``templates_out/project.json`` (relative to the
working folder), so ``hmt build-templates --class covid`` can run without repeating them. The file
is a small JSON object; other commands may add their own keys, which recording keeps.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from heatmap_templates._version import __version__
from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.files import write_text

DEFAULT_PROJECT_FOLDER = Path("templates_out")
PROJECT_FILE = "project.json"


def project_path(folder: str | os.PathLike = DEFAULT_PROJECT_FOLDER) -> Path:
    """Where the project record of ``folder`` lives."""
    return Path(folder) / PROJECT_FILE


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadFileError(path, f"cannot read the project record ({' '.join(str(error).split())}); delete it and rerun `hmt train`") from None
    if not isinstance(data, dict):
        raise BadFileError(path, "the project record is not a JSON object; delete it and rerun `hmt train`")
    return data


def record_project(*, model: str | os.PathLike, data: str | os.PathLike,
                   folder: str | os.PathLike = DEFAULT_PROJECT_FOLDER, **extra: object) -> Path:
    """Record the model and data paths (absolute) in ``folder/project.json``, keeping other keys; atomic write."""
    path = project_path(folder)
    record = _read(path) if path.is_file() else {}
    record.update(extra)
    record.update({
        "model": str(Path(model).resolve()),
        "data": str(Path(data).resolve()),
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hmt_version": __version__,
    })
    return write_text(path, json.dumps(record, indent=2) + "\n")


def load_project(folder: str | os.PathLike = DEFAULT_PROJECT_FOLDER) -> dict:
    """The recorded project (``model``, ``data`` and any other keys); a clear error when there is none."""
    path = project_path(folder)
    if not path.is_file():
        raise HmtError(f"no MODEL given and no previous `hmt train` recorded in {path}; pass MODEL and DATA, or run `hmt train DATA` first")
    record = _read(path)
    missing = [key for key in ("model", "data") if not isinstance(record.get(key), str)]
    if missing:
        raise BadFileError(path, f"the project record lacks {', '.join(missing)}; rerun `hmt train`")
    return record

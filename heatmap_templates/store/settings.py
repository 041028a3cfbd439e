"""The settings a heatmap store records, typed: what made its maps (model, CAM layer, method, score, ...).

A store writes them as its root ``settings`` JSON and one attribute per simple setting
(:func:`heatmap_templates.store.hdf5.write_root`); :meth:`HeatmapSettings.read` turns a file's JSON back into
them, completing a file of an earlier schema version with the value every such file was made with. The
templates file's settings (:class:`heatmap_templates.templates.template_settings.TemplateSettings`) are these
plus how the templates were built.

``None`` in an optional field means "not recorded": such a setting is left out of the file, as it was.
Settings this hmt does not know are kept in ``extra`` and written back as they were.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from heatmap_templates.errors import BadFileError
from heatmap_templates.store.hdf5 import check_identity, jsonable

Settings = TypeVar("Settings", bound="HeatmapSettings")


@dataclass(frozen=True, kw_only=True)
class HeatmapSettings:
    """What made a heatmap store's maps. :meth:`identity` holds the settings a store made with other values is
    refused for (by a reader over its shards and by templates); a resume must also keep :attr:`RESUME_KEYS`."""

    # head, labels and uncertain can differ for one model (a named head; the finding columns and uncertain-label policy a
    # data set is read with). Files that predate them read as their default: labels and uncertain None (the model's
    # own findings and policy); a file without a head (schema 1) made its maps with the head read from the model's
    # output layer, which is what a run without a named head records, so the head is compared where both record one.
    IDENTITY_KEYS: ClassVar[tuple[str, ...]] = ("model_sha256", "class_names", "layer", "cam_method", "score", "input_size", "threshold",
                                                "head", "labels", "uncertain")
    # A resume must also keep these (hmt heatmaps always records them), so the settings of a finished store are true
    # of every image in it.
    RESUME_KEYS: ClassVar[tuple[str, ...]] = IDENTITY_KEYS + ("mixed_precision", "intensity")
    WHAT: ClassVar[str] = "heatmap store"

    model_sha256: str
    class_names: tuple[str, ...]
    layer: str
    cam_method: str
    score: str
    input_size: tuple[int, ...]
    # Recorded since schema 2: every file of version 1 was decided with a 0.5 threshold and decoded with `full` scaling.
    threshold: float = 0.5
    intensity: str = "full"
    model_path: str | None = None
    channels: int | None = None
    preprocessing: str | None = None
    backbone: str | None = None
    head: str | None = None  # the head kind (model.heads.HEADS); None in files of version 1
    mixed_precision: bool | None = None
    # A multi-label model's data set: the CSV columns read as its findings (in its output order) and the policy for
    # uncertain (-1) cells (data.datasets.UNCERTAIN); None: its own finding names and training policy (else ignore).
    labels: tuple[str, ...] | None = None
    uncertain: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)  # settings this hmt does not know, kept as they are

    @classmethod
    def from_dict(cls: type[Settings], data: Mapping[str, Any]) -> Settings:
        """Settings from their JSON form (what a file records); ValueError naming the settings it lacks or garbles."""
        known = [f for f in fields(cls) if f.name != "extra"]
        missing = [f.name for f in known if f.default is MISSING and data.get(f.name) is None]
        if missing:
            raise ValueError(f"{cls.WHAT} settings lack {', '.join(missing)}")
        values = {f.name: data[f.name] for f in known if f.name in data and data[f.name] is not None}
        for name in ("class_names", "input_size", "labels"):
            if name in values:
                values[name] = _sequence(name, values[name])
        for name in ("class_names", "labels"):
            if not all(isinstance(v, str) for v in values.get(name, ())):
                raise ValueError(f"{cls.WHAT} setting {name} is not a list of names")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values["input_size"]):
            raise ValueError(f"{cls.WHAT} setting input_size is not a list of integers")
        names = {f.name for f in known}
        return cls(**values, extra={key: value for key, value in data.items() if key not in names})

    @classmethod
    def of(cls: type[Settings], settings: HeatmapSettings | Mapping[str, Any]) -> Settings:
        """``settings`` (these settings or their dict) in canonical JSON values; ValueError for what is missing."""
        return cls.from_dict(jsonable(settings.to_dict() if isinstance(settings, HeatmapSettings) else dict(settings)))

    @classmethod
    def read(cls: type[Settings], data: Mapping[str, Any], path: str | Path) -> Settings:
        """The settings a file at ``path`` records (its ``settings`` JSON); BadFileError when they are damaged."""
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise BadFileError(path, f"damaged 'settings' attribute ({error})") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a file records (keys sorted, as in the file): settings not recorded are left out."""
        data = dict(self.extra)
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "extra" and value is not None:
                data[item.name] = list(value) if isinstance(value, tuple) else value
        return dict(sorted(data.items()))

    def identity(self, *, resume: bool = False) -> dict[str, Any]:
        """The identity settings (``resume``: and those a resume must keep) by name, in the order they are checked."""
        data = self.to_dict()
        return {key: data.get(key) for key in (self.RESUME_KEYS if resume else self.IDENTITY_KEYS)}

    def check_same(self, path: str | Path, wanted: HeatmapSettings, *, resume: bool = False) -> None:
        """BadFileError when ``wanted`` differs from these settings (those of the file at ``path``) in an identity
        setting (``resume``: or one a resume must keep), naming the first such setting."""
        stored, given = self.identity(resume=resume), wanted.identity(resume=resume)
        keys = [key for key in given if key != "head" or (stored[key] is not None and given[key] is not None)]
        check_identity(Path(path), stored, given, keys)


def _sequence(name: str, value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"setting {name} is not a list")
    return tuple(value)

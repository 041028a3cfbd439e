"""The settings a templates file records, typed: its heatmap store's settings plus how the templates were built.

The templates file (:mod:`heatmap_templates.templates.templates_file`) writes them as its root ``settings`` JSON
and reads them back with :meth:`TemplateSettings.read` (a file of an earlier schema version completed with the
values such files were made with, as for the heatmap store).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from heatmap_templates.store.settings import HeatmapSettings


@dataclass(frozen=True, kw_only=True)
class TemplateSettings(HeatmapSettings):
    """A heatmap store's settings (:class:`~heatmap_templates.store.settings.HeatmapSettings`) and the build's.
    :meth:`identity` (the store's identity settings, registration and normalisation) must match to add classes to a
    file or to merge files."""

    IDENTITY_KEYS: ClassVar[tuple[str, ...]] = HeatmapSettings.IDENTITY_KEYS + ("registration", "normalisation")
    RESUME_KEYS: ClassVar[tuple[str, ...]] = IDENTITY_KEYS
    WHAT: ClassVar[str] = "templates file"

    registration: str
    normalisation: str
    include: str | None = None  # which images joined each class's template (templates.members.INCLUDES)

    @classmethod
    def built_from(cls, heatmaps: HeatmapSettings, *, registration: str, normalisation: str, include: str) -> TemplateSettings:
        """The settings of templates built from a store with ``heatmaps`` settings (the store's kept as they are)."""
        store = {item.name: getattr(heatmaps, item.name) for item in fields(HeatmapSettings)}
        return cls(**store, registration=registration, normalisation=normalisation, include=include)

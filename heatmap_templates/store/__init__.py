"""The HDF5 files of hmt; this package is the only code that imports h5py. Schemas: docs/hdf5_schema.md.

Two kinds of file, each with its own schema version and self-describing through root attributes
(``kind``, ``schema_version``, ``hmt_version``, ``created``, ``command``, the settings that produced it):

- the *heatmap store* (:mod:`.heatmap_store`): per image its hash, labels, probabilities, the
  model-input grayscale image and every class's CAM maps, written crash-safely in shards;
- the *templates file* (:mod:`.templates_file`): per-class templates, their consistency statistics,
  the exact accumulator state that merging needs, and (optionally) each class's strategies.

Shared plumbing (atomic writes, safe reads, versions, identity checks) is :mod:`.hdf5`.
"""
from heatmap_templates.store.hdf5 import HEATMAPS, TEMPLATES, FileKind, file_kind
from heatmap_templates.store.heatmap_store import (
    HEATMAP_IDENTITY_KEYS,
    RESUME_KEYS,
    HeatmapBatch,
    HeatmapReader,
    HeatmapWriter,
    open_heatmaps,
)
from heatmap_templates.store.templates_file import (
    TEMPLATE_IDENTITY_KEYS,
    TemplateFile,
    load_accumulator,
    read_checks,
    read_strategies,
    read_templates,
    save_check,
    save_strategies,
    save_templates,
)

__all__ = [
    "HEATMAPS", "TEMPLATES", "FileKind", "file_kind", "HEATMAP_IDENTITY_KEYS", "RESUME_KEYS", "HeatmapBatch",
    "HeatmapReader", "HeatmapWriter", "open_heatmaps", "TEMPLATE_IDENTITY_KEYS", "TemplateFile", "load_accumulator",
    "read_templates", "save_templates", "read_strategies", "save_strategies", "read_checks", "save_check",
]

"""The low part of hmt's HDF5 files: plumbing, the heatmap store and plain records. Schemas: docs/hdf5_schema.md.

This package and :mod:`heatmap_templates.templates.templates_file` are the only code that imports h5py.

Two kinds of file, each with its own schema version and self-describing through root attributes
(``kind``, ``schema_version``, ``hmt_version``, ``created``, ``command``, the settings that produced it):

- the *heatmap store* (:mod:`.heatmap_store`): per image its hash, labels, probabilities, the
  model-input grayscale image and every class's CAM maps, written crash-safely in shards;
- the *templates file* (:mod:`heatmap_templates.templates.templates_file`, the store's high part: it knows
  the accumulators, so it lives in the templates wing above this package): per-class templates, their
  consistency statistics, the exact accumulator state that merging needs, and each class's strategies.

Plain records that files hold and several stages read (a class's strategies) are :mod:`.records`; the typed
settings a heatmap store records (:class:`~.settings.HeatmapSettings`, identity settings marked) are :mod:`.settings`.

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
from heatmap_templates.store.records import ClassStrategies, Strategy
from heatmap_templates.store.settings import HeatmapSettings

__all__ = [
    "HEATMAPS", "TEMPLATES", "FileKind", "file_kind", "HEATMAP_IDENTITY_KEYS", "RESUME_KEYS", "HeatmapBatch",
    "HeatmapReader", "HeatmapWriter", "HeatmapSettings", "open_heatmaps", "ClassStrategies", "Strategy",
]

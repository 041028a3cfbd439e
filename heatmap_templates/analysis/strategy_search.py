"""Finding and storing the strategies of a templates file's classes (the pipeline step behind `hmt strategies`).

For each class: its members' maps are prepared again from the heatmap store the templates were built
from (reusing the registration the build kept), downsampled and clustered
(:func:`heatmap_templates.analysis.strategies.cluster_members`), then a second pass fills each strategy's
prototype at full size; the result is added to the templates file atomically.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from heatmap_templates.analysis.strategies import (
    MIN_STRATEGY_MEMBERS,
    ClassStrategies,
    StrategySettings,
    add_prototypes,
    cluster_members,
)
from heatmap_templates.errors import HmtError, display_path
from heatmap_templates.numeric.resample import downsample
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store import HeatmapReader, open_heatmaps
from heatmap_templates.templates.accumulator import ClassTemplate
from heatmap_templates.templates.prepare import member_alignment, prepare_maps, prepared_member_maps, registrar_for
from heatmap_templates.templates.templates_file import TemplateFile, read_templates, save_strategies


def default_store(file: TemplateFile) -> Path:
    """The heatmap store a templates file was built from, as its settings record it."""
    recorded = file.attrs.get("heatmap_store")
    if recorded and (Path(recorded).exists() or Path(recorded + ".parts").is_dir()):
        return Path(recorded)
    where = f" ({recorded} is gone)" if recorded else ""
    raise HmtError(f"{file.path}: the heatmap store it was built from is not known{where}; give it with $heatmaps",
                   parameters=("heatmaps",))


def members_store(file: TemplateFile, heatmaps: str | os.PathLike | None = None) -> HeatmapReader:
    """The heatmap store that holds a templates file's members (``heatmaps``, else the one the file records), refused
    when it holds another model's maps."""
    reader = open_heatmaps(heatmaps if heatmaps is not None else default_store(file))
    if reader.settings.model_sha256 != file.settings.model_sha256:
        raise HmtError(f"{display_path(reader.path)}: was made with another model than {display_path(file.path)}; "
                       "give the store the templates were built from")
    return reader


def find_class_strategies(templates_path: str | os.PathLike, heatmaps: str | os.PathLike | None = None,
                          classes: Sequence[str] | None = None, settings: StrategySettings | None = None, *,
                          batch_size: int = 64, progress: Progress | None = None) -> dict[str, ClassStrategies]:
    """The strategies of ``classes`` of a templates file (default: every class whose template has enough members to
    cluster; :func:`skipped_classes` names the others)."""
    settings = settings or StrategySettings()
    settings.validate()
    progress = progress or NullProgress()
    data = read_templates(templates_path)
    if data.reference_image is None or data.lung_mask is None:
        raise HmtError(f"{templates_path}: has no registration reference; rebuild it with hmt build-templates")
    reader = members_store(data, heatmaps)
    if classes is None:  # every class that can be clustered; `skipped_classes` names the others
        wanted = [name for name, template in data.templates.items() if template.count >= MIN_STRATEGY_MEMBERS]
        if not wanted:
            raise HmtError(f"{templates_path}: no class has the {MIN_STRATEGY_MEMBERS} members strategies need")
    else:
        wanted = list(classes)
    unknown = [name for name in wanted if name not in data.templates]
    if unknown:
        raise HmtError(f"{templates_path}: has no template of class {unknown[0]!r} (it has {', '.join(data.templates)})")
    registrar = registrar_for(data.settings.registration, data.reference_image, data.lung_mask)
    normalisation = data.settings.normalisation
    side = settings.resolution
    small_lungs = downsample(np.asarray(data.lung_mask, np.float32), (side, side)) >= 0.5
    results = {}
    for name in wanted:
        template = data.templates[name]
        k = reader.class_names.index(name)
        progress.start(2 * template.count, f"strategies of {name}")
        try:
            small = np.zeros((template.count, side, side), np.float32)
            for positions, maps in prepared_member_maps(reader, template, registrar, normalisation, k, batch_size=batch_size):
                small[positions] = downsample(maps, (side, side))
                progress.advance(len(positions))
            result = cluster_members(name, small, [member.path for member in template.members], settings, small_lungs)

            def full_maps(template: ClassTemplate, k: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
                for positions, maps in prepared_member_maps(reader, template, registrar, normalisation, k, batch_size=batch_size):
                    progress.advance(len(positions))
                    yield positions, maps

            results[name] = add_prototypes(result, full_maps(template, k), registrar.reference.shape)
        finally:
            progress.finish()
    return results


def skipped_classes(templates_path: str | os.PathLike) -> dict[str, int]:
    """Classes with a template too small to cluster, with their member counts (left out when no class is named)."""
    return {name: t.count for name, t in read_templates(templates_path).templates.items() if t.count < MIN_STRATEGY_MEMBERS}


def add_strategies(templates_path: str | os.PathLike, heatmaps: str | os.PathLike | None = None,
                   classes: Sequence[str] | None = None, settings: StrategySettings | None = None, *,
                   command: str = "", progress: Progress | None = None) -> dict[str, ClassStrategies]:
    """Find the strategies of ``classes`` and add them to the templates file (atomically); returns them."""
    results = find_class_strategies(templates_path, heatmaps, classes, settings, progress=progress)
    save_strategies(templates_path, results, command=command)
    return results


def typical_members(templates_path: str | os.PathLike, result: ClassStrategies, count: int,
                    heatmaps: str | os.PathLike | None = None) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Per strategy, its ``count`` most typical members as (registered image, prepared map), for figures and reports."""
    data = read_templates(templates_path)
    reader = members_store(data, heatmaps)
    template = data.templates[result.class_name]
    registrar = registrar_for(data.settings.registration, data.reference_image, data.lung_mask)
    where = {path: index for index, path in enumerate(reader.paths)}
    image_shape = (int(reader.settings.input_size[0]), int(reader.settings.input_size[1]))
    k = reader.class_names.index(result.class_name)
    shown: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for number in range(result.k):
        members = np.flatnonzero(result.labels == number)
        chosen = members[np.argsort(-np.asarray(result.typicality)[members], kind="stable")[:count]]
        if not len(chosen):
            continue
        (batch,) = reader.iter_batches(len(chosen), [where[template.members[i].path] for i in chosen])
        found = [member_alignment(template.members[i], image_shape) for i in chosen]
        alignments = [alignment for alignment in found if alignment is not None]
        prepared = prepare_maps(batch.images, batch.raw[:, k], registrar, data.settings.normalisation,
                                alignments=alignments if len(alignments) == len(found) else None)
        assert prepared.images is not None  # prepared with their images
        shown[number] = list(zip(prepared.images, prepared.maps, strict=True))
    return shown

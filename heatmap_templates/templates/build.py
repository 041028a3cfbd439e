"""Template building: heatmap store -> registration -> normalisation -> class templates, and merging them.

The templates stage of the pipeline, wired together: for each requested class the member
images are chosen from the heatmap store (:mod:`heatmap_templates.templates.members`; ``correct`` by
default), each image is registered to the reference frame and its map prepared exactly as
:func:`heatmap_templates.templates.prepare.prepare_maps` prepares every map, and the prepared maps stream
into a :class:`~heatmap_templates.templates.accumulator.ClassAccumulator`. The store is read sequentially, once
for all classes, and each image is registered once (in threads); a second pass re-warps the members
with the kept alignments to get each member's leave-one-out correlation, the distribution that
``compare`` uses to flag an atypical heatmap. Each member's registration matrix is kept in the
templates file. Memory does not grow with the number of images.

The reference frame is, in order: an image given by the user, the one already stored in the
output file (so classes added later share it), or an iterative mean of member images from the
store.

Example::

    summary = build_templates("templates_out/heatmaps.h5", ["covid"], "templates_out/templates.h5")
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from heatmap_templates.data.decode import decode_image
from heatmap_templates.data.preprocess import resize_gray, unit_pixels
from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.executors import Executor, LocalExecutor, executor_for
from heatmap_templates.files import ensure_folder
from heatmap_templates.model.evaluation import DEFAULT_BATCH_SIZE
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.store import HeatmapReader, HeatmapSettings, open_heatmaps
from heatmap_templates.templates.accumulator import (
    DEFAULT_BOOTSTRAP_REPLICATES,
    DEFAULT_COMPONENTS,
    LOO_MERGED,
    LOO_NOT_COMPUTED,
    ClassTemplate,
)
from heatmap_templates.templates.chunks import (
    DEFAULT_CHUNK_IMAGES,
    BuildChunk,
    BuildSettings,
    accumulate_chunk,
    leave_one_out_chunk,
    merge_partials,
    plan_chunks,
)
from heatmap_templates.templates.members import DEFAULT_INCLUDE, INCLUDES, member_indices
from heatmap_templates.templates.normalisation import DEFAULT_NORMALISATION, NORMALISATIONS, median_range
from heatmap_templates.templates.registration import (
    DEFAULT_REFERENCE_ITERATIONS,
    DEFAULT_REGISTRATION,
    DEFAULT_THREADS,
    REGISTRATIONS,
    Reference,
    build_reference,
    reference_from_image,
    registration_summary,
)
from heatmap_templates.templates.template_settings import TemplateSettings
from heatmap_templates.templates.templates_file import (
    TemplateFile,
    check_same_reference,
    load_accumulator,
    ordered_classes,
    read_templates,
    save_templates,
    write_templates_file,
)

DEFAULT_OUT = Path("templates_out/templates.h5")
# Images averaged into a data-built reference: a bounded cost. Not fewer: from 100, the templates of a trained cxr4
# model lost member consistency (mean pairwise r 0.48-0.58 vs 0.52-0.68 from 200, 3 of 4 classes).
REFERENCE_SAMPLE = 200


@dataclass
class BuildConfig:
    """How templates are built; every field is recorded in the templates file."""

    registration: str = DEFAULT_REGISTRATION
    normalisation: str = DEFAULT_NORMALISATION
    include: str = DEFAULT_INCLUDE
    reference: str | None = None  # an image file to use as the reference frame
    reference_iterations: int = DEFAULT_REFERENCE_ITERATIONS
    n_components: int = DEFAULT_COMPONENTS
    bootstrap_replicates: int = DEFAULT_BOOTSTRAP_REPLICATES
    median: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: int = DEFAULT_THREADS  # threads of a local build (the result does not depend on them)
    chunk_images: int = DEFAULT_CHUNK_IMAGES  # the unit of work; a cluster build with the same chunks is bit-identical

    def validate(self) -> None:
        if self.threads < 1 or self.batch_size < 1 or self.chunk_images < 1:
            raise HmtError("threads, batch size and chunk size must be at least 1")
        REGISTRATIONS.check(self.registration)
        NORMALISATIONS.check(self.normalisation)
        INCLUDES.check(self.include)


@dataclass
class BuildSummary:
    """What one build did: members per class, classes left out, registration counts."""

    out: Path
    members: dict[str, int]
    empty_classes: list[str]
    registration: dict
    mean_pairwise_correlation: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "members": dict(self.members),
            "empty_classes": list(self.empty_classes),
            "registration": self.registration,
            "mean_pairwise_correlation": dict(self.mean_pairwise_correlation),
        }


@dataclass
class BuiltTemplates:
    """The result of :func:`build`: the class templates, their frame, and what registration did."""

    templates: list[ClassTemplate]
    reference: Reference
    settings: TemplateSettings
    empty_classes: list[str]
    registration: dict


def templates_settings(heatmap_settings: HeatmapSettings, config: BuildConfig) -> TemplateSettings:
    """Settings recorded in a templates file: the heatmap store's plus how the templates were built."""
    return TemplateSettings.built_from(heatmap_settings, registration=config.registration,
                                       normalisation=config.normalisation, include=config.include)


def _choose_reference(reader: HeatmapReader, existing: TemplateFile | None, config: BuildConfig, member_indices: np.ndarray,
                      progress: Progress) -> Reference:
    """The user's image, else the reference stored in an existing output file, else a data-built mean."""
    if config.reference is not None:
        input_size = (int(reader.settings.input_size[0]), int(reader.settings.input_size[1]))
        decoded = decode_image(config.reference, intensity=reader.settings.intensity)
        return reference_from_image(resize_gray(decoded.pixels, input_size))
    if existing is not None and existing.reference_image is not None and existing.lung_mask is not None:
        return Reference(existing.reference_image, existing.lung_mask)
    if not len(member_indices):
        raise HmtError("no member images to build a registration reference from")
    # An evenly spaced, deterministic sample of the members keeps the reference cost bounded.
    chosen = np.sort(member_indices)[np.linspace(0, len(member_indices) - 1, min(REFERENCE_SAMPLE, len(member_indices))).astype(int)]
    images = [unit_pixels(image) for image in reader.read_field("image", np.unique(chosen))]
    method = "affine" if config.registration == "lungs" else config.registration
    return build_reference(images, iterations=config.reference_iterations, method=method, progress=progress, threads=config.threads)


def build(reader: HeatmapReader, classes: Sequence[str] | None, *, config: BuildConfig | None = None,
          existing: TemplateFile | None = None, progress: Progress | None = None,
          executor: Executor | None = None) -> BuiltTemplates:
    """Templates for ``classes`` (None: every class with members) from an open heatmap store.

    ``existing`` is the templates file the result will join (its reference frame is reused). A
    requested class without member images is an error; with ``classes=None`` such classes are left
    out and listed in the result. ``executor`` runs the chunks (default: this process, ``config.threads``
    threads); the result is the same on any executor.
    """
    config = config or BuildConfig()
    config.validate()
    progress = progress or NullProgress()
    class_names = list(reader.class_names)
    wanted = class_names if classes is None else list(classes)
    unknown = [name for name in wanted if name not in class_names]
    if unknown:
        raise HmtError(f"class {unknown[0]!r} is not one of the model's classes ({', '.join(class_names)})")
    members = {name: member_indices(reader, class_names.index(name), config.include) for name in wanted}
    empty = [name for name, indices in members.items() if not len(indices)]
    if classes is not None and empty:
        raise HmtError(f"{reader.path}: class {empty[0]!r} has no {config.include} images to build a template from")
    wanted = [name for name in wanted if name not in empty]
    all_members = np.unique(np.concatenate([members[name] for name in wanted])) if wanted else np.zeros(0, np.int64)
    executor = executor or LocalExecutor(config.threads)
    # The build's own threads share the cores; BLAS's threads would only compete with them (OpenBLAS's spinning
    # threads took 14.3 CPU seconds where one BLAS thread needed 8.0, and the build was 1.3x slower).
    # Dask's workers start with one BLAS thread already.
    with threadpool_limits(limits=1, user_api="blas"):
        reference = _choose_reference(reader, existing, config, all_members, progress)
        templates, alignments = _build_classes(reader, {name: members[name] for name in wanted}, reference, config, executor,
                                               progress) if wanted else ([], [])
    return BuiltTemplates(templates, reference, templates_settings(reader.settings, config), empty,
                          registration_summary(config.registration, alignments))


def build_templates(
    heatmaps: str | os.PathLike,
    classes: Sequence[str] | None,
    out: str | os.PathLike = DEFAULT_OUT,
    *,
    config: BuildConfig | None = None,
    command: str = "",
    progress: Progress | None = None,
    scheduler: str | Any | None = None,
) -> BuildSummary:
    """Path-based :func:`build`: build (or add) templates for ``classes`` from a heatmap store into ``out``.

    ``scheduler``: None (this process), ``local:N``, a Dask scheduler address or a ``dask.distributed.Client``
    (:func:`heatmap_templates.executors.executor_for`).
    """
    out = Path(out)
    config = config or BuildConfig()
    executor = executor_for(scheduler, threads=config.threads)
    try:
        built = build(open_heatmaps(heatmaps), classes, config=config, existing=read_templates(out) if out.exists() else None,
                      progress=progress, executor=executor)
    finally:
        executor.close()
    save_templates(out, built.settings, built.templates, reference_image=built.reference.image,
                   lung_mask=built.reference.lung_mask, command=command, heatmap_store=str(Path(heatmaps).resolve()))
    return BuildSummary(
        out=out,
        members={t.class_name: t.count for t in built.templates},
        empty_classes=built.empty_classes,
        registration=built.registration,
        mean_pairwise_correlation={t.class_name: t.mean_pairwise_correlation for t in built.templates},
    )


def _build_classes(reader: HeatmapReader, members: dict[str, np.ndarray], reference: Reference, config: BuildConfig,
                   executor: Executor, progress: Progress) -> tuple[list[ClassTemplate], list]:
    """Every requested class's template, and the alignments of the members' union, from two passes over fixed
    chunks of that union (:mod:`heatmap_templates.templates.chunks`) folded together in chunk order."""
    class_names = list(reader.class_names)
    median = config.median and median_range(config.normalisation) is not None
    settings = BuildSettings(config.registration, reference, {name: class_names.index(name) for name in members},
                             config.normalisation, config.n_components, config.bootstrap_replicates, median, config.batch_size)
    chunks = plan_chunks(reader, members, config.chunk_images)
    total = sum(len(chunk) for chunk in chunks)
    progress.start(2 * total, f"templates of {', '.join(members)} ({executor.description})")
    try:
        def advance(chunk: BuildChunk) -> None:
            progress.advance(len(chunk))

        partial = executor.fold(merge_partials, executor.map(accumulate_chunk, chunks, settings, done=advance, threaded=True))
        with ThreadPoolExecutor(max_workers=max(1, min(config.threads, len(members)))) as pool:  # the classes at once
            templates = dict(zip(members, pool.map(lambda name: partial.accumulators[name].finalize(), members), strict=True))
        sums = {name: (np.asarray(template.mean, dtype=np.float64) * template.count, template.count)
                for name, template in templates.items()}
        offsets = np.cumsum([0] + [len(chunk) for chunk in chunks])
        items = [(chunk, partial.alignments[offsets[i]:offsets[i + 1]]) for i, chunk in enumerate(chunks)]
        scored = [executor.value(handle) for handle in
                  executor.map(leave_one_out_chunk, items, settings, sums, done=lambda item: advance(item[0]))]
        for name, template in templates.items():
            parts = [values[name] for values in scored if name in values]
            template.record_leave_one_out(np.concatenate(parts) if parts else np.zeros(0))
    finally:
        progress.finish()
    return [templates[name] for name in members], partial.alignments


def merge_template_files(inputs: Sequence[str | Path], output: str | Path, *, command: str = "",
                         progress: Progress | None = None) -> TemplateFile:
    """Merge templates files built over disjoint images with the same model and settings.

    Per class the accumulators are merged exactly (count, mean, std, median histogram,
    eigen-heatmaps, bootstrap band, mean pairwise correlation equal a build over the union).
    An image in two inputs is refused (it would count twice). Leave-one-out correlations need the
    member maps, so a class present in several inputs keeps the union of the per-file values,
    marked by ``loo_method``.
    """
    if len(inputs) < 2:
        raise HmtError("merge-templates needs at least two input files")
    progress = progress or NullProgress()
    files = [read_templates(path) for path in inputs]
    first = files[0]
    for other in files[1:]:
        other.settings.check_same(other.path, first.settings)
        check_same_reference(other.path, (other.reference_image, other.lung_mask), (first.reference_image, first.lung_mask))
    merged: dict[str, ClassTemplate] = {}
    names = ordered_classes({n for f in files for n in f.templates}, first.settings)
    progress.start(sum(name in f.templates for f in files for name in names), "merging class templates")
    for name in names:  # one class at a time, so only its accumulator states are in memory
        holders = [f for f in files if name in f.templates]
        accumulator = load_accumulator(holders[0].path, name)
        progress.advance()
        owner = {member.key: holders[0].path for member in holders[0].templates[name].members}
        for holder in holders[1:]:
            for member in holder.templates[name].members:
                if member.key in owner:
                    raise BadFileError(holder.path, f"shares image {member.path} of class {name!r} with {owner[member.key]}; merging would count it twice")
                owner[member.key] = holder.path
            try:
                accumulator.merge(load_accumulator(holder.path, name))
            except HmtError as error:
                raise BadFileError(holder.path, str(error)) from None
            progress.advance()
        template = accumulator.finalize()
        parts = [holder.templates[name] for holder in holders]
        if all(part.loo_method != LOO_NOT_COMPUTED for part in parts):
            template.loo_correlations = np.concatenate([part.loo_correlations for part in parts])
            template.loo_method = parts[0].loo_method if len(parts) == 1 else LOO_MERGED
        merged[name] = template
    progress.finish()
    output = Path(output)
    ensure_folder(output.parent, output)
    write_templates_file(output, first.settings, merged, (first.reference_image, first.lung_mask), command, None)
    return read_templates(output)

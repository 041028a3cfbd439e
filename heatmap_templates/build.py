"""Template building: heatmap store -> registration -> normalisation -> class templates file.

The templates stage of the pipeline, wired together: for each requested class the member
images are chosen from the heatmap store (``include``: correct by default), each image is
registered to the reference frame, the *same* transform moves its heatmap for that class, and
the registered maps stream into a :class:`~heatmap_templates.templates.ClassAccumulator`
(which normalises them). A second pass re-warps the members with the stored alignments to get
each member's leave-one-out correlation, the distribution that ``compare`` uses to flag an
atypical heatmap. Memory does not grow with the number of images.

The reference frame is, in order: an image given by the user, the one already stored in the
output file (so classes added later share it), or an iterative mean of member images from the
store. ``compare`` must prepare a new image's maps exactly like this: see :func:`registrar_for`.

Example::

    summary = build_templates("templates_out/heatmaps.h5", ["covid"], "templates_out/templates.h5")
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heatmap_templates.data import decode_image
from heatmap_templates.errors import HmtError
from heatmap_templates.preprocess import resize_gray
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.registration import METHODS as REGISTRATIONS
from heatmap_templates.registration import Reference, Registrar, build_reference, reference_from_image
from heatmap_templates.store import INCLUDE_CHOICES, HeatmapReader, open_heatmaps, read_templates, save_templates
from heatmap_templates.templates import NORMALISATIONS, ClassAccumulator, Member, default_median_range

DEFAULT_OUT = Path("templates_out/templates.h5")
DEFAULT_REGISTRATION = "affine"
REFERENCE_SAMPLE = 200  # images averaged into a data-built reference: plenty for a stable mean, bounded cost


@dataclass
class BuildConfig:
    """How templates are built; every field is recorded in the templates file."""

    registration: str = DEFAULT_REGISTRATION
    normalisation: str = "minmax"
    include: str = "correct"
    reference: str | None = None  # an image file to use as the reference frame
    reference_iterations: int = 3
    n_components: int = 8
    bootstrap_replicates: int = 100
    median: bool = True
    batch_size: int = 32

    def validate(self) -> None:
        if self.registration not in REGISTRATIONS:
            raise HmtError(f"unknown registration {self.registration!r}; choose one of {', '.join(REGISTRATIONS)}")
        if self.normalisation not in NORMALISATIONS:
            raise HmtError(f"unknown normalisation {self.normalisation!r}; choose one of {', '.join(NORMALISATIONS)}")
        if self.include not in INCLUDE_CHOICES:
            raise HmtError(f"--include must be one of {', '.join(INCLUDE_CHOICES)}, not {self.include!r}")


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


def templates_settings(heatmap_settings: dict, config: BuildConfig) -> dict:
    """Settings recorded in a templates file: the heatmap store's plus how the templates were built."""
    return {
        **heatmap_settings,
        "registration": config.registration,
        "normalisation": config.normalisation,
        "include": config.include,
    }


def registrar_for(method: str, reference_image: np.ndarray, lung_mask: np.ndarray) -> Registrar:
    """The registrar that a templates file's stored reference and method describe (used by compare)."""
    return Registrar(method, Reference(np.asarray(reference_image, np.float32), np.asarray(lung_mask, bool)))


def _choose_reference(reader: HeatmapReader, out: Path, config: BuildConfig, member_indices: np.ndarray,
                      progress: Progress) -> Reference:
    """The user's image, else the reference stored in an existing output file, else a data-built mean."""
    if config.reference is not None:
        input_size = tuple(int(v) for v in reader.settings["input_size"])
        return reference_from_image(resize_gray(decode_image(config.reference).pixels, input_size))  # type: ignore[arg-type]
    if out.exists():
        existing = read_templates(out)
        if existing.reference_image is not None and existing.lung_mask is not None:
            return Reference(existing.reference_image, existing.lung_mask)
    if not len(member_indices):
        raise HmtError("no member images to build a registration reference from")
    # An evenly spaced, deterministic sample of the members keeps the reference cost bounded.
    chosen = np.sort(member_indices)[np.linspace(0, len(member_indices) - 1, min(REFERENCE_SAMPLE, len(member_indices))).astype(int)]
    images = [image.astype(np.float32) / 255.0 for batch in reader.iter_batches(config.batch_size, np.unique(chosen)) for image in batch.images]
    method = "affine" if config.registration == "lungs" else config.registration
    return build_reference(images, iterations=config.reference_iterations, method=method, progress=progress)


def build_templates(
    heatmaps: str | os.PathLike,
    classes: Sequence[str] | None,
    out: str | os.PathLike = DEFAULT_OUT,
    *,
    config: BuildConfig | None = None,
    command: str = "",
    progress: Progress | None = None,
) -> BuildSummary:
    """Build (or add) templates for ``classes`` (None: every class) from a heatmap store into ``out``.

    A requested class without member images is an error; with ``classes=None`` such classes are
    left out and listed in the summary.
    """
    config = config or BuildConfig()
    config.validate()
    progress = progress or NullProgress()
    out = Path(out)
    reader = open_heatmaps(heatmaps)
    class_names = list(reader.class_names)
    wanted = class_names if classes is None else list(classes)
    unknown = [name for name in wanted if name not in class_names]
    if unknown:
        raise HmtError(f"class {unknown[0]!r} is not one of the model's classes ({', '.join(class_names)})")
    members = {name: reader.indices_for(class_names.index(name), config.include) for name in wanted}
    empty = [name for name, indices in members.items() if not len(indices)]
    if classes is not None and empty:
        raise HmtError(f"{heatmaps}: class {empty[0]!r} has no {config.include} images to build a template from")
    wanted = [name for name in wanted if name not in empty]
    all_members = np.unique(np.concatenate([members[name] for name in wanted])) if wanted else np.zeros(0, np.int64)
    reference = _choose_reference(reader, out, config, all_members, progress)
    registrar = Registrar(config.registration, reference)
    input_size = reference.shape
    templates = []
    for name in wanted:
        templates.append(_build_class(reader, class_names.index(name), name, members[name], registrar, input_size, config, progress))
    settings = templates_settings(dict(reader.settings), config)
    save_templates(out, settings, templates, reference_image=reference.image, lung_mask=reference.lung_mask, command=command)
    return BuildSummary(
        out=out,
        members={t.class_name: t.count for t in templates},
        empty_classes=empty,
        registration=registrar.summary(),
        mean_pairwise_correlation={t.class_name: t.mean_pairwise_correlation for t in templates},
    )


def _build_class(reader: HeatmapReader, class_index: int, name: str, indices: np.ndarray, registrar: Registrar,
                 input_size: tuple[int, int], config: BuildConfig, progress: Progress):  # noqa: ANN202 (ClassTemplate)
    """Two streaming passes over one class's members: accumulate, then leave-one-out correlations."""
    median = config.median and default_median_range(config.normalisation) is not None
    accumulator = ClassAccumulator(
        name, input_size, normalisation=config.normalisation, n_components=config.n_components,
        bootstrap_replicates=config.bootstrap_replicates, median=median,
    )
    alignments = []
    progress.start(2 * len(indices), f"template {name}")
    try:
        for batch in reader.iter_batches(config.batch_size, indices):
            images = [image.astype(np.float32) / 255.0 for image in batch.images]
            batch_alignments, _, warped = registrar.register_batch(images, batch.maps_for(class_index))
            alignments.extend(batch_alignments)
            accumulator.add(warped, [
                Member(path, sha, float(probabilities[class_index]), float(alignment.quality), alignment.method)
                for path, sha, probabilities, alignment in zip(batch.paths, batch.sha256, batch.probabilities, batch_alignments)
            ])
            progress.advance(len(batch))
        template = accumulator.finalize()

        def registered_again():
            position = 0
            for batch in reader.iter_batches(config.batch_size, indices):
                maps = batch.maps_for(class_index)
                yield np.stack([registrar.warp(m, a) for m, a in zip(maps, alignments[position:position + len(maps)])])
                position += len(maps)
                progress.advance(len(maps))

        template.compute_leave_one_out(registered_again())
    finally:
        progress.finish()
    return template

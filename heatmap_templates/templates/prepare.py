"""Map preparation: the exact steps from a class activation map to a template-frame, normalised map.

Template members (``hmt build-templates``) and new images (``hmt compare``, and every later check)
go through :func:`prepare_maps`, so a new image's map is prepared exactly as the members' were:

1. upsampling: CAM maps at the layer's resolution, as the heatmap store keeps them, are upsampled to the
   image size with the one upsampler (:func:`heatmap_templates.numeric.resample.upsample_maps`);
2. registration: each image (uint8 at the model's input size) is aligned to the reference, or an
   alignment found earlier is reused, and the *same* transform moves the image's maps;
3. normalisation of each map with the templates' method.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from heatmap_templates.data.preprocess import unit_pixels
from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.resample import upsample_maps
from heatmap_templates.templates.normalisation import normalise
from heatmap_templates.templates.registration import Alignment, Reference, Registrar


@dataclass
class PreparedMaps:
    """Registered images (N, H, W) float32 in [0, 1] (None when prepared without them), their alignments, and
    registered, normalised maps (N, ..., H, W) float32 in the reference frame."""

    alignments: list[Alignment]
    images: np.ndarray | None
    maps: np.ndarray


def registrar_for(method: str, reference_image: np.ndarray | None, lung_mask: np.ndarray | None) -> Registrar:
    """The registrar that a templates file's stored reference and method describe."""
    if reference_image is None or lung_mask is None:
        raise HmtError("the templates file holds no registration reference (image and lung mask)")
    return Registrar(method, Reference(np.asarray(reference_image, np.float32), np.asarray(lung_mask, bool)))


def prepare_maps(images_u8: np.ndarray | None, maps: np.ndarray, registrar: Registrar, normalisation: str, *,
                 alignments: Sequence[Alignment] | None = None) -> PreparedMaps:
    """Register images and move their maps with them, then normalise each map.

    Parameters
    ----------
    images_u8 : (N, H, W) uint8, or None
        The images at the model's input size, as the heatmap store keeps them; None with ``alignments``
        (a later pass over the same members: maps are upsampled to the alignments' image size).
    maps : (N, ..., h, w) float
        Their CAM maps at the layer's resolution (one class or several per image), upsampled here.
    registrar : Registrar
        The templates' registration method and reference frame.
    normalisation : str
        A :data:`~heatmap_templates.templates.normalisation.NORMALISATIONS` name.
    alignments : sequence of Alignment, optional
        One per image: skip the estimation (a second pass over the same members).

    Returns
    -------
    PreparedMaps
        ``alignments``; ``images`` (N, h, w) float32 in the reference frame (h, w), None without
        ``images_u8``; ``maps`` (N, ..., h, w) float32, registered and normalised.
    """
    if images_u8 is None and (alignments is None or len(alignments) != len(maps)):
        raise HmtError("maps without their images need one alignment each")
    images = None if images_u8 is None else [unit_pixels(image) for image in images_u8]
    if images_u8 is not None:
        shape = np.shape(images_u8)[1:]
    else:
        assert alignments is not None  # checked above
        shape = alignments[0].image_shape if len(alignments) and alignments[0].image_shape else registrar.reference.shape
    stored = upsample_maps(maps, shape) if len(maps) else np.asarray(maps, np.float32)
    if alignments is None:
        assert images is not None  # checked above
        found, warped_images, warped = registrar.register_batch(images, list(stored))
    else:
        found = list(alignments)
        warped_images = None
        if images is not None:
            warped_images = np.stack([registrar.warp(image, a) for image, a in zip(images, found, strict=True)]) if images else \
                np.zeros((0, *registrar.reference.shape), np.float32)
        warped = np.stack([registrar.warp(m, a) for m, a in zip(stored, found, strict=True)]) if len(stored) else \
            np.zeros((0, *stored.shape[1:-2], *registrar.reference.shape), np.float32)
    assert warped is not None
    planes = warped.reshape(-1, *warped.shape[-2:])
    normalised = normalise(planes, normalisation).reshape(warped.shape) if len(planes) else warped.astype(np.float32)
    return PreparedMaps(found, warped_images, normalised)


def member_alignment(member, image_shape: tuple[int, int]) -> Alignment | None:
    """The alignment a build found for a template member (templates schema 3 keeps it), or None for older files."""
    if member.registration_matrix is None:
        return None
    return Alignment(np.reshape(np.asarray(member.registration_matrix, dtype=np.float64), (2, 3)), member.registration_method,
                     member.registration_quality, None, (int(image_shape[0]), int(image_shape[1])))


def prepared_member_maps(reader, template, registrar: Registrar, normalisation: str, class_index: int, *,
                         batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The prepared maps of a template's members again, from the heatmap store it was built from: batches of
    (member positions, maps (B, H, W)), in member order. The registration matrices the build kept are reused
    (a file written before they were kept registers the images again)."""
    where = {path: index for index, path in enumerate(reader.paths)}
    missing = [member.path for member in template.members if member.path not in where]
    if missing:
        raise HmtError(f"{reader.path}: holds no maps of {len(missing)} member(s) of class {template.class_name!r} "
                       f"(e.g. {missing[0]}); give the heatmap store the templates were built from")
    for start in range(0, len(template.members), batch_size):
        members = template.members[start:start + batch_size]
        indices = np.array([where[member.path] for member in members])
        yield np.arange(start, start + len(members)), prepared_rows(reader, indices, class_index, registrar, normalisation, members)


def prepared_rows(reader, indices: np.ndarray, class_index: int, registrar: Registrar, normalisation: str,
                  members: Sequence | None) -> np.ndarray:
    """The prepared maps (B, H, W) of store rows ``indices`` for ``class_index``: with the registrations a build kept
    (``members``, one per row or None for a row that is no member) when every row has one, reading only the maps;
    else the images are registered again."""
    image_shape = (int(reader.settings.input_size[0]), int(reader.settings.input_size[1]))
    found = [None if member is None else member_alignment(member, image_shape) for member in (members or [None] * len(indices))]
    alignments = [alignment for alignment in found if alignment is not None]
    if len(alignments) == len(indices):
        raw = next(reader.iter_raw(len(indices), indices))
        return prepare_maps(None, raw[:, class_index], registrar, normalisation, alignments=alignments).maps
    (batch,) = reader.iter_batches(len(indices), indices)
    return prepare_maps(batch.images, batch.raw[:, class_index], registrar, normalisation).maps

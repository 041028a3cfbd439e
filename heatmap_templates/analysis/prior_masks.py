"""The lung masks that training's attention prior and outside-lungs augmentation need, computed here (above the
model wing, which knows no segmentation) and handed down to :func:`heatmap_templates.model.training.train` as a
:class:`~heatmap_templates.model.attention_prior.MaskSource`.

Each training image's mask, at the model's input size, comes from:

- the user's mask folder when given (``folder``): for an image at ``<data>/<relative path>``, the mask is
  ``<folder>/<relative path>`` (or the same name with ``.png``), non-zero = lung, in the image's own pixels (a mask of
  another size than its image is refused, as is a missing one: one line naming the file);
- else the image's lung fields (:func:`heatmap_templates.templates.lungs.lung_fields`, the deletion test's lung region
  too): hmt's lung segmentation of the image at input size united with the lung mask of a reference built from an
  even sample of the training images (:func:`~heatmap_templates.templates.registration.build_reference`) moved back
  into the image with its affine registration (segmentation alone where that registration fails). Segmentation alone would leave out the opacities a class is about (a dense consolidation
  reads as soft tissue), and the prior would then penalise looking at them; where segmentation declines (about a
  quarter of cxr4, mostly pediatric images, so which images fall back depends on the image, never on its class), the
  moved reference alone.

The counts per class and source are recorded in the model's metadata. Outside-lungs augmentation removes the pixels
outside the mask with a removal of :data:`~heatmap_templates.analysis.faithfulness.REMOVALS` (ROAD's noisy linear
imputation by default), once per training image before training.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from heatmap_templates.analysis.faithfulness import DEFAULT_REMOVAL, REMOVALS
from heatmap_templates.data.datasets import Sample
from heatmap_templates.data.decode import image_size
from heatmap_templates.data.disk_arrays import DiskArray
from heatmap_templates.errors import BadFileError, HmtError, display_path
from heatmap_templates.templates.geometry import RegistrationError
from heatmap_templates.templates.lungs import LUNG_FIELD_SOURCES, lung_fields
from heatmap_templates.templates.registration import Reference, Registrar, build_reference

SOURCES = ("user", *LUNG_FIELD_SOURCES[:4])
REFERENCE_IMAGES = 256  # training images the fallback reference is built from, at most


class LungMasks:
    """A :class:`~heatmap_templates.model.attention_prior.MaskSource` of lung fields (module docstring): the user's masks
    in ``folder`` (images under ``root``), or each image's lung fields (segmentation united with the reference's lungs
    moved back)."""

    def __init__(self, root: str | Path, folder: str | Path | None = None, *, removal: str = DEFAULT_REMOVAL) -> None:
        self.root = Path(root)
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None and not self.folder.is_dir():
            raise BadFileError(self.folder, "not a folder of masks ($prior_masks)", parameters=("prior_masks",))
        self.removal = REMOVALS.check(removal)
        self._reference: Reference | None = None
        self._counts: dict[str, Counter] = {}

    def masks(self, samples: Sequence[Sample], images: np.ndarray) -> np.ndarray:
        """(n, H, W) bool lung masks of one chunk of training images (n, H, W) uint8."""
        out = np.zeros(images.shape, dtype=bool)
        if self.folder is not None:
            for index, (sample, image) in enumerate(zip(samples, images, strict=True)):
                out[index] = self._user_mask(sample, image.shape)
                self._count(sample, "user")
            return out
        registrar = Registrar("affine", self._reference_from(images))
        for index, (sample, image) in enumerate(zip(samples, images, strict=True)):
            pixels = image.astype(np.float32) / 255.0
            alignment = registrar.estimate(pixels, quality=False)
            mask, source = lung_fields(pixels, registrar.unwarp(registrar.reference.lung_mask.astype(np.float32), alignment),
                                       aligned=alignment.method != "none")
            assert mask is not None  # the moved reference is always at hand
            out[index] = mask
            self._count(sample, source)
        return out

    def prepare(self, images: np.ndarray | DiskArray) -> None:
        """Build the reference from an evenly spaced sample of (at most :data:`REFERENCE_IMAGES` of) ``images``, once:
        the first images of a split ordered by class would make it one class's mean chest (cxr4: 256 pediatric
        bacteria chests, to which 55 % of the adult covid chests could not be registered)."""
        if self.folder is not None or self._reference is not None or not len(images):
            return
        picks = np.unique(np.linspace(0, len(images) - 1, min(len(images), REFERENCE_IMAGES)).astype(np.int64))
        self._reference_from(np.stack([np.asarray(images[int(i)]) for i in picks]))

    @property
    def reference(self) -> Reference | None:
        """The reference the lung fields are moved back from (None before :meth:`prepare` or a first chunk)."""
        return self._reference

    def remove_outside(self, image: np.ndarray, outside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The image with its pixels outside the lungs removed by the chosen removal."""
        return REMOVALS[self.removal](image, outside, rng)

    def summary(self) -> dict:
        """Where the masks came from: the kind, the folder, the removal and the counts per class and source."""
        return {"masks": "user" if self.folder is not None else "lung_fields",
                "masks_folder": None if self.folder is None else display_path(self.folder),
                "removal": self.removal,
                "mask_counts": {label: {source: counts[source] for source in SOURCES}
                                for label, counts in sorted(self._counts.items())}}

    def _count(self, sample: Sample, source: str) -> None:
        self._counts.setdefault(sample.label, Counter())[source] += 1

    def _reference_from(self, images: np.ndarray) -> Reference:
        """The reference frame, built once from (at most :data:`REFERENCE_IMAGES` of) ``images`` (:meth:`prepare` gives
        an even sample of the training images; without it, the first chunk's)."""
        if self._reference is None:
            pictures = [image.astype(np.float32) / 255.0 for image in images[:REFERENCE_IMAGES]]
            try:
                self._reference = build_reference(pictures, method="affine")
            except RegistrationError:
                raise HmtError("lung segmentation declined on the training images and on their mean, so there is no "
                               "lung mask for $attention_prior; give the masks ($prior_masks)",
                               parameters=("attention_prior", "prior_masks")) from None
        return self._reference

    def _user_mask(self, sample: Sample, size: tuple[int, int]) -> np.ndarray:
        """The user's mask of one image, checked against the image's own size, at input size."""
        assert self.folder is not None
        try:
            relative = Path(sample.path).resolve().relative_to(self.root.resolve())
        except ValueError:
            relative = Path(Path(sample.path).name)
        candidates = [self.folder / relative, self.folder / relative.with_suffix(".png")]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            raise BadFileError(candidates[0], f"no mask for the training image {relative.as_posix()} in $prior_masks "
                                              "(one mask per image, with the image's name)", parameters=("prior_masks",))
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise BadFileError(path, "cannot read the mask (not an image OpenCV reads)")
        height, width = image_size(Path(sample.path))
        if mask.shape != (height, width):
            raise BadFileError(path, f"the mask is {mask.shape[1]}x{mask.shape[0]} px but its image {relative.as_posix()} "
                                     f"is {width}x{height} px")
        resized = cv2.resize((mask > 0).astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        return resized >= 0.5

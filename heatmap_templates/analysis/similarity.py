"""Similarities between heatmaps: the registry of measures (Pearson correlation itself is
:mod:`heatmap_templates.numeric.correlation`, below every stage that uses it).

Every measure takes registered, normalised maps (N, H, W), one template (H, W) and the reference
lung mask (which only ``pearson-lungs`` uses), and returns (N,) values where higher means more
alike. Pearson correlation is the measure of the papers and of the stored leave-one-out
distributions. Adding a measure is registering one function here.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.correlation import pearson
from heatmap_templates.registry import Registry

DEFAULT_SIMILARITY = "pearson"
SimilarityFunction = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]
SIMILARITIES: Registry[SimilarityFunction] = Registry("similarity", parameter="similarity")


@SIMILARITIES.register("pearson", help="Pearson correlation over the frame, the papers' measure")
def pearson_similarity(maps: np.ndarray, template: np.ndarray, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation of each map with the template.

    Reference: Pearson (1895), "Note on regression and inheritance in the case of two parents",
    https://doi.org/10.1098/rspl.1895.0041; the measure of Lucas et al. (2020), https://doi.org/10.1109/BIBE50027.2020.00077.
    """
    return pearson(maps, np.broadcast_to(np.asarray(template), np.shape(maps)))


@SIMILARITIES.register("pearson-lungs", help="Pearson correlation inside the reference lung mask")
def masked_pearson(maps: np.ndarray, template: np.ndarray, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation of each map with the template over ``lung_mask`` pixels only.

    Reference: Pearson (1895), https://doi.org/10.1098/rspl.1895.0041, restricted to the lung fields.
    """
    if lung_mask is None or not np.any(lung_mask):
        raise HmtError("similarity 'pearson-lungs' needs a non-empty lung mask")
    inside = np.asarray(lung_mask, dtype=bool).ravel()
    values = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)[:, inside]
    reference = np.asarray(template, dtype=np.float64).ravel()[inside]
    return pearson(values, np.broadcast_to(reference, values.shape))


@SIMILARITIES.register("cosine", help="cosine of the angle between map and template")
def cosine_similarity(maps: np.ndarray, template: np.ndarray, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Cosine of the angle between each map and the template (0 when either is all zero).

    Reference: Salton, Wong & Yang (1975), "A vector space model for automatic indexing",
    https://doi.org/10.1145/361219.361220.
    """
    values = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    reference = np.asarray(template, dtype=np.float64).ravel()
    norms = np.linalg.norm(values, axis=1) * np.linalg.norm(reference)
    dots = values @ reference
    return np.clip(np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0), -1.0, 1.0)


@SIMILARITIES.register("ssim", help="structural similarity (scikit-image)")
def ssim_similarity(maps: np.ndarray, template: np.ndarray, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Structural similarity (scikit-image, 7 x 7 windows, smaller for tiny maps) of each map with the template.

    The data range is that of the map and template together (1.0 when both are constant and equal).

    Reference: Wang, Bovik, Sheikh & Simoncelli (2004), "Image quality assessment: from error visibility to
    structural similarity", https://doi.org/10.1109/TIP.2003.819861.
    """
    from skimage.metrics import structural_similarity

    reference = np.asarray(template, dtype=np.float64)
    side = min(reference.shape)
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise HmtError(f"ssim needs maps of at least 3 x 3 pixels, got {reference.shape}")
    out = np.empty(len(maps))
    for index, plane in enumerate(np.asarray(maps, dtype=np.float64)):
        data_range = float(max(plane.max(), reference.max()) - min(plane.min(), reference.min()))
        out[index] = structural_similarity(plane, reference, win_size=window, data_range=data_range if data_range > 0 else 1.0)
    return out


def similarity_scores(maps: np.ndarray, template: np.ndarray, method: str = DEFAULT_SIMILARITY,
                      lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Similarity of each map with one template by a registered measure.

    Parameters
    ----------
    maps : (N, H, W) array
        Registered, normalised maps (:func:`heatmap_templates.templates.prepare.prepare_maps`).
    template : (H, W) array
        A class template (its mean).
    method : str
        A :data:`SIMILARITIES` name.
    lung_mask : (H, W) bool array, optional
        The reference lung mask (``pearson-lungs`` needs it).

    Returns
    -------
    (N,) float64, higher is more alike.
    """
    return SIMILARITIES[method](maps, template, lung_mask)

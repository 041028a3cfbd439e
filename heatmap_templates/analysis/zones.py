"""Where, in the radiologist's words: an anatomical zone atlas of the template frame, and each map's zone profile.

The seed paper's claim is anatomical (covid's evidence in the lower, peripheral lung zones). The atlas partitions the
whole frame into stable, named zones (:data:`ZONE_NAMES`):

- for each lung (patient's ``right`` = the image's left side in a PA view, and ``left``): ``upper`` / ``middle`` /
  ``lower`` thirds of that lung's own height (apex to its lowest point), each row split into a ``central`` half (nearer
  the midline) and a ``peripheral`` half of that lung's width in the row: 12 lung zones such as
  ``right_lower_peripheral``;
- ``mediastinum`` (between the lungs, heart included), ``upper_body`` (above the lungs: neck, shoulders, clavicles),
  ``chest_wall`` (lateral to the lungs inside the body, axillae included), ``below_diaphragm``, ``outside_body``, and
  ``border`` (a band one CAM cell wide along the frame's edge, where markers and labels are printed).

Where zones meet, the first of this order wins: border, outside_body, lung zones, mediastinum, upper_body, chest_wall,
below_diaphragm (which takes the rest of the body). The atlas comes from a lung mask and a body mask of the frame: the
reference's lung segmentation and Otsu's threshold of the reference image on real data, the phantom's exact canonical
anatomy when the templates are in its frame.

A map's zone profile: each zone's share of the positive part of the map's energy, its share of the frame's area, and
the enrichment (share / area share; 1 = as much as a uniform map would put there).

Reference: the zones of the chest radiograph, as radiologists report them: D. M. Hansell et al., "Fleischner Society:
glossary of terms for thoracic imaging", Radiology 246 (2008), https://doi.org/10.1148/radiol.2462070712; the
upper / middle / lower and central / peripheral split as in the BSTI COVID-19 CXR reporting templates and the
RALE score (M. A. Warren et al., Thorax 73 (2018), https://doi.org/10.1136/thoraxjnl-2017-211280).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from heatmap_templates.errors import HmtError

SIDES = ("right", "left")  # the patient's sides: right is the image's left in a PA view
LEVELS = ("upper", "middle", "lower")
DEPTHS = ("central", "peripheral")
LUNG_ZONES = tuple(f"{side}_{level}_{depth}" for side in SIDES for level in LEVELS for depth in DEPTHS)
OTHER_ZONES = ("mediastinum", "upper_body", "chest_wall", "below_diaphragm", "outside_body", "border")
ZONE_NAMES = LUNG_ZONES + OTHER_ZONES


@dataclass
class ZoneAtlas:
    """Zone index per pixel (H, W) into :data:`ZONE_NAMES` and where the atlas came from."""

    labels: np.ndarray
    source: str  # "reference" (segmentation and Otsu) or "phantom" (exact anatomy)

    def mask(self, name: str) -> np.ndarray:
        return self.labels == ZONE_NAMES.index(name)

    @property
    def areas(self) -> np.ndarray:
        """Each zone's share of the frame."""
        return np.bincount(self.labels.ravel(), minlength=len(ZONE_NAMES)) / self.labels.size


def _two_lungs(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient's right lung, patient's left lung): the two largest components, the image's left one first."""
    labelled, count = ndimage.label(lungs)
    if count < 2:
        raise HmtError("the lung mask needs two lung fields for a zone atlas; it has "
                       f"{count} (the reference's lungs could not be segmented in two)")
    sizes = ndimage.sum(lungs, labelled, range(1, count + 1))
    first, second = (int(i) + 1 for i in np.argsort(sizes)[::-1][:2])
    a, b = labelled == first, labelled == second
    return (a, b) if np.nonzero(a)[1].mean() < np.nonzero(b)[1].mean() else (b, a)


def _lung_zones(lung: np.ndarray, medial_is_right: bool) -> dict[str, np.ndarray]:
    """Thirds of the lung's height, each row split at the middle of the lung's span in that row (central: medial)."""
    rows = np.flatnonzero(lung.any(axis=1))
    top, bottom = rows.min(), rows.max() + 1
    cut = np.linspace(top, bottom, 4)
    zones: dict[str, np.ndarray] = {}
    columns = np.arange(lung.shape[1])
    central = np.zeros_like(lung)
    for row in rows:
        xs = np.flatnonzero(lung[row])
        middle = (xs.min() + xs.max() + 1) / 2.0
        central[row] = lung[row] & ((columns + 0.5 >= middle) if medial_is_right else (columns + 0.5 < middle))
    row_index = np.arange(lung.shape[0])[:, None]
    for number, level in enumerate(LEVELS):
        band = (row_index >= cut[number]) & (row_index < cut[number + 1])
        zones[f"{level}_central"] = lung & band & central
        zones[f"{level}_peripheral"] = lung & band & ~central
    return zones


def zone_atlas(lungs: np.ndarray, body: np.ndarray, cell: float, source: str = "reference") -> ZoneAtlas:
    """The atlas of a frame from its lung mask and body mask; ``cell`` (pixels) is the border band's width."""
    lungs, body = np.asarray(lungs, bool), np.asarray(body, bool) | np.asarray(lungs, bool)
    height, width = lungs.shape
    right, left = _two_lungs(lungs)
    candidates: list[tuple[str, np.ndarray]] = []
    band = max(1, int(round(cell)))
    border = np.zeros_like(lungs)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    candidates += [("border", border), ("outside_body", ~body)]
    for side, lung, medial_is_right in (("right", right, True), ("left", left, False)):
        candidates += [(f"{side}_{name}", mask) for name, mask in _lung_zones(lung, medial_is_right).items()]
    lung_rows = np.flatnonzero(lungs.any(axis=1))
    top, bottom = lung_rows.min(), lung_rows.max() + 1
    row_index, column_index = np.indices(lungs.shape)
    right_medial, left_medial = _edge(right, np.max, width), _edge(left, np.min, width)
    right_lateral, left_lateral = _edge(right, np.min, width), _edge(left, np.max, width)
    span = (row_index >= top) & (row_index < bottom)
    between = (column_index > right_medial[:, None]) & (column_index < left_medial[:, None])
    lateral = (column_index < right_lateral[:, None]) | (column_index > left_lateral[:, None])
    candidates += [("mediastinum", body & span & between), ("upper_body", body & (row_index < top)),
                   ("chest_wall", body & span & lateral), ("below_diaphragm", body)]
    labels = np.full(lungs.shape, -1, np.int64)
    for name, mask in candidates:  # in precedence order: the first zone to claim a pixel keeps it
        labels[(labels < 0) & mask] = ZONE_NAMES.index(name)
    labels[labels < 0] = ZONE_NAMES.index("outside_body")  # unreachable: body and ~body cover the frame
    return ZoneAtlas(labels, source)


def _edge(lung: np.ndarray, pick, width: int) -> np.ndarray:
    """Per row, the lung's column picked by ``pick`` (min or max); rows without lung take the lung's overall one."""
    overall = int(pick(np.nonzero(lung)[1]))
    out = np.full(lung.shape[0], overall, np.int64)
    for row in np.flatnonzero(lung.any(axis=1)):
        out[row] = int(pick(np.flatnonzero(lung[row])))
    return out


def zone_shares(maps: np.ndarray, atlas: ZoneAtlas) -> np.ndarray:
    """(N, Z) share of each map's positive energy in each zone (rows sum to 1; a map with no positive part: NaN)."""
    values = np.clip(np.asarray(maps, np.float64), 0.0, None).reshape(-1, atlas.labels.size)
    if values.shape[1] != atlas.labels.size:
        raise HmtError(f"maps of {values.shape[1]} pixels do not fit the zone atlas of {atlas.labels.shape}")
    onehot = np.zeros((atlas.labels.size, len(ZONE_NAMES)))
    onehot[np.arange(atlas.labels.size), atlas.labels.ravel()] = 1.0
    totals = values.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, (values @ onehot) / totals, np.nan)


def zone_profile(values: np.ndarray, atlas: ZoneAtlas) -> dict[str, dict[str, float]]:
    """One map's profile: per zone its energy share, area share and enrichment (share / area)."""
    shares = zone_shares(np.asarray(values)[None], atlas)[0]
    areas = atlas.areas
    return {name: {"share": float(shares[z]), "area": float(areas[z]),
                   "enrichment": float(shares[z] / areas[z]) if areas[z] > 0 else float("nan")}
            for z, name in enumerate(ZONE_NAMES)}


def zone_of(atlas: ZoneAtlas, row_share: float, column_share: float) -> str:
    """The zone at a point given as shares of the frame's height and width (a contrast cluster's peak)."""
    height, width = atlas.labels.shape
    y = min(height - 1, max(0, int(row_share * height)))
    x = min(width - 1, max(0, int(column_share * width)))
    return ZONE_NAMES[int(atlas.labels[y, x])]


def zone_comparison(heatmap: np.ndarray, template: np.ndarray, atlas: ZoneAtlas, top: int = 3) -> dict:
    """An image's zone profile beside its template's (both in the template frame): per zone the energy share of each
    and the image's enrichment, and the ``top`` most enriched zones of each."""
    image, reference = zone_profile(heatmap, atlas), zone_profile(template, atlas)

    def leading(profile: dict) -> list[str]:
        ranked = [zone for zone in ZONE_NAMES if profile[zone]["enrichment"] == profile[zone]["enrichment"]]  # not NaN
        return sorted(ranked, key=lambda zone: -profile[zone]["enrichment"])[:top]

    def shares(profile: dict) -> dict[str, float | None]:  # a map with no positive energy has no shares (None, not NaN)
        return {zone: round(profile[zone]["share"], 6) if np.isfinite(profile[zone]["share"]) else None for zone in ZONE_NAMES}

    return {"image": shares(image), "template": shares(reference),
            "image_most_enriched": leading(image), "template_most_enriched": leading(reference)}

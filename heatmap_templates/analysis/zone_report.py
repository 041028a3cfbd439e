"""The zone table of a templates file (`hmt zones`): each class template's and strategy's zone profile with intervals.

For each template: every zone's share of the positive energy of its mean map, its area share and the enrichment
(share / area), with a 95 % interval: over patients (percentile bootstrap of the members' mean map, a patient's images
drawn together) when the heatmap store is at hand, else from the template's stored bootstrap replicates. Strategies (when the file has them) need the
store: their members' maps are prepared again. The atlas (:mod:`heatmap_templates.analysis.zones`) comes from the
templates' reference (lung segmentation, Otsu body) or from given masks (a phantom's exact canonical anatomy).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from heatmap_templates.analysis.contrast_groups import patient_of
from heatmap_templates.analysis.deletion_regions import body_mask
from heatmap_templates.analysis.zones import ZONE_NAMES, ZoneAtlas, zone_atlas, zone_shares
from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.bootstrap import DEFAULT_RESAMPLES
from heatmap_templates.progress import NullProgress, Progress

CONFIDENCE_TAILS = (2.5, 97.5)


def atlas_of(file, *, lungs: np.ndarray | None = None, body: np.ndarray | None = None, cell: float | None = None) -> ZoneAtlas:
    """The zone atlas of a templates file's frame: from ``lungs`` and ``body`` (the phantom's exact anatomy) when
    given, else from the reference's lung mask and Otsu's threshold of the reference image; ``cell``: the CAM cell
    (border width) in frame pixels (default a 14th of the frame's height)."""
    if file.reference_image is None or file.lung_mask is None:
        raise HmtError(f"{file.path}: holds no registration reference (image and lung mask) to build zones from")
    shape = file.reference_image.shape
    cell = cell or shape[0] / 14.0
    if lungs is not None:
        if np.shape(lungs) != shape or (body is not None and np.shape(body) != shape):
            raise HmtError(f"the given anatomy ({np.shape(lungs)}) does not match the templates' frame {shape}")
        return zone_atlas(lungs, body if body is not None else body_mask(file.reference_image, lungs), cell, source="phantom")
    return zone_atlas(file.lung_mask, body_mask(file.reference_image, file.lung_mask), cell, source="reference")


def _percentiles(values: np.ndarray) -> list[list[float | None]]:
    """Per column, [2.5th, 97.5th] percentile of the finite values (None where there are none)."""
    out: list[list[float | None]] = []
    for column in values.T:
        finite = column[np.isfinite(column)]
        out.append([None, None] if not len(finite) else [float(v) for v in np.percentile(finite, CONFIDENCE_TAILS)])
    return out


def _rows(shares: np.ndarray, intervals: list, areas: np.ndarray) -> dict:
    """Per zone: share, share_ci, area, enrichment, enrichment_ci."""
    rows = {}
    for z, name in enumerate(ZONE_NAMES):
        ci = intervals[z]
        scale = 1.0 / areas[z] if areas[z] > 0 else None  # a zone the frame does not have: no enrichment
        share = float(shares[z]) if np.isfinite(shares[z]) else None  # a map with no positive energy: no share
        rows[name] = {"share": share, "share_ci": ci, "area": float(areas[z]),
                      "enrichment": None if scale is None or share is None else share * scale,
                      "enrichment_ci": [None if v is None or scale is None else float(v * scale) for v in ci]}
    return rows


def member_bootstrap(maps: np.ndarray, atlas: ZoneAtlas, *, patients: Sequence[str] | None = None,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[np.ndarray, list]:
    """Zone shares of the members' mean map and their percentile-bootstrap interval over patients (``patients``: one
    id per member; without them, each member is its own patient): a patient's images are drawn together, so a
    patient with many images does not narrow the interval as if they were independent (cluster bootstrap: Davison &
    Hinkley 1997, Bootstrap Methods and their Application, section 3.8).

    Non-negative maps (minmax normalisation): a resample's share is its weighted zone sums over its weighted totals,
    exact and cheap; maps with negative values (z-scores) recompute the resampled mean map's positive part (fewer
    resamples: 200)."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    shares = zone_shares(flat.mean(axis=0)[None], atlas)[0]
    rng = np.random.default_rng(seed)
    unit = _units(patients, len(flat))
    units = int(unit.max()) + 1 if len(unit) else 0

    def weights() -> np.ndarray:  # how often each member is drawn in one resample: its patient's count
        return np.bincount(rng.integers(0, units, units), minlength=units)[unit].astype(np.float64)

    if (flat >= 0).all():
        onehot = np.zeros((atlas.labels.size, len(ZONE_NAMES)))
        onehot[np.arange(atlas.labels.size), atlas.labels.ravel()] = 1.0
        per_member = flat @ onehot  # (n, Z) energy of each member in each zone
        counts = np.stack([weights() for _ in range(resamples)])
        zone_sums = counts @ per_member
        with np.errstate(invalid="ignore", divide="ignore"):
            resampled = zone_sums / zone_sums.sum(axis=1, keepdims=True)
    else:
        resampled = np.stack([zone_shares((weights() @ flat)[None], atlas)[0] for _ in range(200)])
    return shares, _percentiles(resampled)


def _units(patients: Sequence[str] | None, n: int) -> np.ndarray:
    """Each member's resampling unit (0..U-1): its patient, or itself without patients."""
    if patients is None:
        return np.arange(n)
    if len(patients) != n:
        raise HmtError(f"zone intervals need one patient per member: {len(patients)} for {n} members")
    index: dict[str, int] = {}
    return np.array([index.setdefault(p, len(index)) for p in patients], dtype=np.int64)


def member_patients(paths: Sequence[str]) -> list[str]:
    """Each member's patient from its file name's rules (an image of unknown patient is its own): the templates file
    keeps no patient ids, so a CSV's ``patient_id`` column or ``--patient-regex`` do not reach here."""
    return [patient_of(path, None) for path in paths]


def _patients_note(patients: Sequence[str]) -> str:
    return f"bootstrap over patients ({len(set(patients))} for {len(patients)} members; patients from file names)"


def template_zones(file, atlas: ZoneAtlas, store=None, *, seed: int = 0, progress: Progress | None = None) -> dict:
    """The zone table of every class template (and strategy, with the store) of a read templates file."""
    from heatmap_templates.templates.prepare import prepared_member_maps, registrar_for
    from heatmap_templates.templates.templates_file import bootstrap_replicate_means, read_strategies

    progress = progress or NullProgress()
    areas = atlas.areas
    record: dict = {"atlas": {"source": atlas.source, "areas": dict(zip(ZONE_NAMES, map(float, areas), strict=True))},
                    "classes": {}, "strategies": {}}
    strategies = read_strategies(file.path)
    registrar = registrar_for(file.settings.registration, file.reference_image, file.lung_mask)
    progress.start(len(file.templates), "zones")
    for name, template in file.templates.items():
        if store is not None:
            index = store.class_names.index(name)
            maps = np.concatenate([m for _, m in prepared_member_maps(store, template, registrar, file.settings.normalisation, index)])
            patients = member_patients([member.path for member in template.members])
            shares, intervals = member_bootstrap(maps, atlas, patients=patients, seed=seed)
            how = _patients_note(patients)
        else:
            maps, patients = None, None
            shares = zone_shares(np.asarray(template.mean)[None], atlas)[0]
            replicates = bootstrap_replicate_means(file.path, name)
            intervals = _percentiles(zone_shares(replicates, atlas)) if replicates is not None else [[None, None]] * len(ZONE_NAMES)
            how = "the template's bootstrap replicates" if replicates is not None else "none (no replicates kept)"
        record["classes"][name] = {"members": template.count, "interval": how, "zones": _rows(shares, intervals, areas)}
        if name in strategies:
            record["strategies"][name] = _strategy_zones(strategies[name], maps, patients, atlas, areas, seed)
        progress.advance()
    progress.finish()
    return record


def _strategy_zones(result, maps: np.ndarray | None, patients: list[str] | None, atlas: ZoneAtlas, areas: np.ndarray,
                    seed: int) -> dict:
    """Each strategy's zone rows: from its members' maps with intervals over patients, or its prototype alone without
    the store."""
    out = {}
    for number, strategy in enumerate(result.strategies, start=1):
        if maps is not None and patients is not None:
            inside = np.asarray(result.labels) == number - 1
            own = [p for p, i in zip(patients, inside, strict=True) if i]
            shares, intervals = member_bootstrap(maps[inside], atlas, patients=own, seed=seed)
            how = _patients_note(own)
        else:
            shares = zone_shares(np.asarray(strategy.mean)[None], atlas)[0]
            intervals = [[None, None]] * len(ZONE_NAMES)
            how = "none (the prototype alone; give the heatmap store)"
        out[str(number)] = {"members": strategy.size, "interval": how, "zones": _rows(shares, intervals, areas)}
    return out


def run_zones(templates: str | os.PathLike, heatmaps: str | os.PathLike | None = None, *, lungs: np.ndarray | None = None,
              body: np.ndarray | None = None, seed: int = 0, progress: Progress | None = None) -> tuple[dict, ZoneAtlas]:
    """The zone table of a templates file and its atlas (see :func:`template_zones`)."""
    from heatmap_templates.analysis.strategy_search import members_store
    from heatmap_templates.templates.templates_file import read_templates

    file = read_templates(templates)
    store = None if heatmaps is None else members_store(file, heatmaps)
    atlas = atlas_of(file, lungs=lungs, body=body, cell=cam_cell(file, store))
    return template_zones(file, atlas, store, seed=seed, progress=progress), atlas


def cam_cell(file, store=None) -> float | None:
    """One CAM cell in frame pixels (the border zone's width): from the given store, else the store the file records
    (None when neither can be read: the atlas then takes a 14th of the frame)."""
    from heatmap_templates.analysis.strategy_search import members_store

    if store is None:
        try:
            store = members_store(file)
        except (HmtError, OSError):
            return None
    if not len(store) or file.reference_image is None:
        return None
    raw = next(store.iter_raw(1, np.array([0])))
    return float(file.reference_image.shape[0] / raw.shape[-2])


def file_atlas(file) -> ZoneAtlas:
    """The zone atlas `hmt zones` stored in a read templates file, else one built from its reference now."""
    from heatmap_templates.templates.templates_file import read_zones

    stored = read_zones(file.path)
    if stored is not None:
        return ZoneAtlas(stored["atlas_labels"], stored["atlas"]["source"])
    return atlas_of(file, cell=cam_cell(file))

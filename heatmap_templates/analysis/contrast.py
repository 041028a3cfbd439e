"""Is a difference between two groups of maps real? Pixel-wise permutation contrasts (`hmt contrast`).

"The covid template, compared with normal, puts more weight on the lower peripheral zones": neuroimaging answers
"is that noise?" with voxel-wise permutation tests and family-wise error control; hmt does the same for heatmaps,
which registration and normalisation put in one frame. Two groups of a templates file's heatmap store
(:mod:`heatmap_templates.analysis.contrast_groups`), each image's map prepared exactly as the build prepares it
(registered, normalised at input size) and area-downsampled to the CAM grid (or ``resolution``), are compared
pixel by pixel (:func:`heatmap_templates.numeric.permutation.permutation_test`): Welch's t, or with a second store
of the same images (another model or CAM method) the one-sample t of per-image differences (paired); patients move
whole in the permutations. With ``min_difference`` Δ > 0 a pixel is significant only when the difference of the
means is significantly beyond Δ (an interval null, TREAT: "more than Δ", not "not zero"), in the prepared maps'
units (minmax: a share of each map's range), so that with large groups significance marks where the maps differ by
a difference that matters rather than wherever they differ at all. The output: t-map, corrected p-map, Cohen's d map and a table of significant clusters;
with ``null_check`` N, N random halvings of the first group against itself check the procedure on the user's own
maps (the share with any significant pixel should be close to alpha).

Reference: T. E. Nichols and A. P. Holmes, Human Brain Mapping 15 (2002), https://doi.org/10.1002/hbm.1058;
A. M. Winkler et al., "Permutation inference for the general linear model", NeuroImage 92 (2014),
https://doi.org/10.1016/j.neuroimage.2014.01.060.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, stats

from heatmap_templates.analysis.contrast_groups import (
    Group,
    GroupContext,
    check_groups,
    parse_group,
    read_columns,
    resolve_group,
)
from heatmap_templates.errors import HmtError, display_path
from heatmap_templates.numeric.permutation import (
    DEFAULT_ALPHA,
    DEFAULT_PERMUTATIONS,
    FOUR_CONNECTED,
    PermutationResult,
    permutation_test,
)
from heatmap_templates.numeric.resample import downsample
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.templates.prepare import prepared_rows, registrar_for


@dataclass(frozen=True)
class ContrastSettings:
    """How a contrast is computed (recorded beside its result)."""

    tail: str = "two-sided"
    correction: str = "maxt"
    permutations: int = DEFAULT_PERMUTATIONS
    alpha: float = DEFAULT_ALPHA
    resolution: int | None = None  # rows of the contrast grid (None: the CAM grid)
    null_check: int = 0
    seed: int = 0
    min_difference: float = 0.0  # > 0: significant only beyond this difference of means (an interval null, TREAT)

    def validate(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise HmtError(f"$alpha must lie in (0, 1), got {self.alpha}", parameters=("alpha",))
        if self.resolution is not None and self.resolution < 2:
            raise HmtError(f"$resolution must be at least 2 pixels, got {self.resolution}", parameters=("resolution",))
        if not self.min_difference >= 0.0:
            raise HmtError(f"$min_difference must be 0 or more, got {self.min_difference}", parameters=("min_difference",))
        if self.null_check < 0:
            raise HmtError(f"$null_check must be 0 or more, got {self.null_check}", parameters=("null_check",))


@dataclass
class ContrastResult:
    """A contrast's maps (at the contrast grid), its significant clusters and how it was made."""

    name: str
    group_a: str
    group_b: str | None
    classes: tuple[str, str]
    paired: bool
    n: tuple[int, int]
    patients: tuple[int, int]
    settings: ContrastSettings
    test: PermutationResult
    clusters: list[dict]
    other: str | None = None
    null_check: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON record (maps left out: they are stored in the templates file)."""
        return {"name": self.name, "group_a": self.group_a, "group_b": self.group_b, "classes": list(self.classes),
                "paired": self.paired, "other": self.other, "n_a": self.n[0], "n_b": self.n[1],
                "patients_a": self.patients[0], "patients_b": self.patients[1], "settings": asdict(self.settings),
                "permutations": self.test.permutations, "exact": self.test.exact, "shape": list(self.test.t.shape),
                "significant_pixels": int((self.test.p < self.settings.alpha).sum()),
                "max_abs_t": float(np.abs(self.test.t).max()), "min_p": float(self.test.p.min()),
                "clusters": self.clusters, "null_check": self.null_check, "notes": list(self.notes)}


def treat_null(tail: str, margin: float) -> str:
    """The interval null a margin tests, in words, for ``tail``."""
    return {"greater": f"difference <= {margin:g}", "less": f"difference >= -{margin:g}"}.get(tail, f"|difference| <= {margin:g}")


def significant_clusters(result: PermutationResult, alpha: float) -> list[dict]:
    """4-connected clusters of significant pixels of one sign: peak (row, column at the contrast grid and as shares of
    the frame), extent as % of the frame, mean Cohen's d, smallest p; largest first."""
    clusters = []
    height, width = result.t.shape
    for sign in (1, -1):
        labels, count = ndimage.label((result.p < alpha) & (np.sign(result.t) == sign), structure=FOUR_CONNECTED)
        for number in range(1, count + 1):
            inside = labels == number
            peak = np.unravel_index(np.argmax(np.where(inside, np.abs(result.t), -np.inf)), result.t.shape)
            clusters.append({
                "direction": "a > b" if sign > 0 else "a < b", "pixels": int(inside.sum()),
                "extent_percent": float(100.0 * inside.sum() / inside.size), "peak": [int(peak[0]), int(peak[1])],
                "peak_frame": [float((peak[0] + 0.5) / height), float((peak[1] + 0.5) / width)],
                "peak_t": float(result.t[peak]), "mean_effect": float(result.effect[inside].mean()),
                "p": float(result.p[inside].min()), "zone": None,
            })
    return sorted(clusters, key=lambda c: (-c["pixels"], c["p"]))


def name_zones(clusters: list[dict], templates_path) -> list[dict]:
    """Each cluster's peak named by the zone atlas of `hmt zones` (kept in the templates file), when it has one."""
    from heatmap_templates.analysis.zones import ZoneAtlas, zone_of
    from heatmap_templates.templates.templates_file import read_zones

    zones = read_zones(templates_path)
    if zones is None:
        return clusters
    atlas = ZoneAtlas(zones["atlas_labels"], zones["atlas"]["source"])
    return [cluster | {"zone": zone_of(atlas, *cluster["peak_frame"])} for cluster in clusters]


def _exchangeable_units(a: Group, b: Group) -> tuple[list[str], str | None]:
    """The units the permutations move whole: patients, unless some patient has images in both groups (then no
    relabelling that keeps patients whole reaches the observed split): images one by one, with a note saying so."""
    shared = set(a.patients) & set(b.patients)
    if not shared:
        return a.patients + b.patients, None
    images = [f"a:{row}" for row in a.rows] + [f"b:{row}" for row in b.rows]
    return images, (f"{len(shared)} patient(s) have images in both groups: permuted image by image, as if their images "
                    "were independent (p-values may be optimistic); groups of disjoint patients avoid this")


def _grid(store_shape: tuple[int, int], frame: tuple[int, int], resolution: int | None) -> tuple[int, int]:
    """The contrast grid: the CAM grid of the store, or ``resolution`` rows (columns in the frame's proportion)."""
    if resolution is None:
        return store_shape
    if resolution > frame[0]:
        raise HmtError(f"$resolution {resolution} is finer than the template frame ({frame[0]} rows)", parameters=("resolution",))
    return resolution, max(2, int(round(resolution * frame[1] / frame[0])))


def group_maps(reader, rows: np.ndarray, class_index: int, registrar, normalisation: str, grid: tuple[int, int],
               alignments: Mapping[str, Any], progress: Progress, batch_size: int = 64) -> np.ndarray:
    """(n, P) maps of ``rows`` for ``class_index``, prepared as the build prepares them (a member's kept registration
    reused), area-downsampled to ``grid``; read in batches so that only the small maps are held."""
    out = np.zeros((len(rows), grid[0] * grid[1]), np.float32)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        maps = prepared_rows(reader, chunk, class_index, registrar, normalisation, [alignments.get(reader.paths[r]) for r in chunk])
        out[start:start + len(chunk)] = downsample(maps, grid).reshape(len(chunk), -1)
        progress.advance(len(chunk))
    return out


def _null_check(maps: np.ndarray, patients: list[str], shape: tuple[int, int], settings: ContrastSettings,
                progress: Progress) -> dict:
    """``settings.null_check`` random halvings of one group against itself (by patient): the share with any
    significant pixel, with its binomial 95 % interval; close to alpha when the procedure holds on these maps. Without
    ``min_difference``: halves of one group differ by nothing, inside any interval null, so with it the check could
    only pass."""
    rng = np.random.default_rng(settings.seed + 7919)
    units = sorted(set(patients))
    if len(units) < 4:
        raise HmtError(f"the null check needs at least 4 patients in the first group, it has {len(units)}")
    hits = 0
    progress.start(settings.null_check, "null check")
    for run in range(settings.null_check):
        half = set(rng.permutation(len(units))[: len(units) // 2].tolist())
        first = np.array([units.index(p) in half for p in patients])
        test = permutation_test(maps[first], maps[~first], shape, units=[p for p, f in zip(patients, first, strict=True) if f]
                                + [p for p, f in zip(patients, first, strict=True) if not f], tail=settings.tail,
                                correction=settings.correction, permutations=settings.permutations, seed=settings.seed + 1 + run)
        hits += bool((test.p < settings.alpha).any())
        progress.advance(1)
    progress.finish()
    interval = stats.binomtest(hits, settings.null_check).proportion_ci(confidence_level=0.95)
    return {"runs": settings.null_check, "with_significant_pixels": hits, "share": hits / settings.null_check,
            "share_ci": [float(interval.low), float(interval.high)], "alpha": settings.alpha}


def run_contrast(templates: str | os.PathLike, group_a: str, group_b: str | None = None, *,
                 heatmaps: str | os.PathLike | None = None, other: str | os.PathLike | None = None,
                 columns: str | os.PathLike | None = None, settings: ContrastSettings | None = None,
                 name: str | None = None, progress: Progress | None = None) -> ContrastResult:
    """Contrast ``group_a`` with ``group_b`` of a templates file's store, or (``other``: a second store of the same
    images) the paired difference of ``group_a``'s maps in the two stores (``group_b`` then only names the other
    store's class). See the module docstring."""
    from heatmap_templates.analysis.strategy_search import members_store
    from heatmap_templates.store import open_heatmaps
    from heatmap_templates.templates.templates_file import read_strategies, read_templates

    settings = settings or ContrastSettings()
    settings.validate()
    progress = progress or NullProgress()
    file = read_templates(templates)
    reader = members_store(file, heatmaps)
    strategies = read_strategies(file.path)
    context = GroupContext(reader.paths, reader.class_names, reader.labels, reader.correct,
                           {n: [m.path for m in t.members] for n, t in file.templates.items()},
                           {n: [s.members for s in c.strategies] for n, c in strategies.items()},
                           None if columns is None else read_columns(columns))
    spec_a, spec_b = parse_group(group_a), None if group_b is None else parse_group(group_b)
    a = resolve_group(spec_a, context, spec_b.class_name if spec_b else None)
    registrar = registrar_for(file.settings.registration, file.reference_image, file.lung_mask)
    frame = registrar.reference.shape
    raw_shape = next(reader.iter_raw(1, np.array([0]))).shape[-2:] if len(reader) else frame
    grid = _grid((int(raw_shape[0]), int(raw_shape[1])), frame, settings.resolution)
    alignments = {m.path: m for t in file.templates.values() for m in t.members}
    normalisation = file.settings.normalisation
    if other is not None:
        return _paired(file, reader, open_heatmaps(other), a, spec_b, context, registrar, normalisation, grid, alignments,
                       settings, name, progress)
    if spec_b is None:
        raise HmtError("give a second group, or $other for a paired contrast of the same images", parameters=("other",))
    b = resolve_group(spec_b, context, a.class_name)
    check_groups(a, b)
    progress.start(a.n + b.n, "contrast: maps")
    maps_a = group_maps(reader, a.rows, reader.class_names.index(a.class_name), registrar, normalisation, grid, alignments, progress)
    maps_b = group_maps(reader, b.rows, reader.class_names.index(b.class_name), registrar, normalisation, grid, alignments, progress)
    progress.finish()
    units, note = _exchangeable_units(a, b)
    test = permutation_test(maps_a, maps_b, grid, units=units, tail=settings.tail,
                            correction=settings.correction, permutations=settings.permutations, seed=settings.seed,
                            margin=settings.min_difference,
                            progress=progress)
    result = ContrastResult(name or f"{a.spec.text} vs {b.spec.text}", a.spec.text, b.spec.text, (a.class_name, b.class_name),
                            False, (a.n, b.n), (len(set(a.patients)), len(set(b.patients))), settings, test,
                            name_zones(significant_clusters(test, settings.alpha), file.path), notes=[note] if note else [])
    if settings.null_check:
        result.null_check = _null_check(maps_a, a.patients, grid, settings, progress)
    return result


def _store_names(first: Path, second: Path) -> tuple[str, str]:
    """Two stores as a shared report may show them: by file name, with its folder's name when the names are alike
    (after/heatmaps.h5 - before/heatmaps.h5); never a whole path."""
    if first.name != second.name:
        return first.name, second.name
    return f"{first.absolute().parent.name}/{first.name}", f"{second.absolute().parent.name}/{second.name}"


def _paired(file, reader, other, a: Group, spec_b, context: GroupContext, registrar, normalisation: str,
            grid: tuple[int, int], alignments: dict, settings: ContrastSettings, name: str | None,
            progress: Progress) -> ContrastResult:
    """Group a's maps in the templates' store minus the same images' maps in ``other`` (class of ``spec_b`` when
    given), one-sample t of the differences by sign flipping."""
    where = {path: row for row, path in enumerate(other.paths)}
    missing = [reader.paths[r] for r in a.rows if reader.paths[r] not in where]
    if missing:
        raise HmtError(f"{display_path(other.path)}: holds no maps of {len(missing)} image(s) of group {a.spec.text!r} "
                       f"(e.g. {missing[0]}); a paired contrast needs the same images in both stores")
    other_rows = np.array([where[reader.paths[r]] for r in a.rows], dtype=np.int64)
    changed = [reader.paths[r] for r, o in zip(a.rows, other_rows, strict=True) if reader.sha256[r] != other.sha256[o]]
    if changed:
        raise HmtError(f"{display_path(other.path)}: {len(changed)} image(s) differ from the templates' store's "
                       f"(e.g. {changed[0]}: another content hash); a paired contrast needs the same images")
    other_class = spec_b.class_name if spec_b is not None and spec_b.class_name else a.class_name
    if other_class not in other.class_names:
        raise HmtError(f"{display_path(other.path)}: has no class {other_class!r} (classes: {', '.join(other.class_names)})")
    if a.n < 2:
        raise HmtError(f"group {a.spec.text!r} has {a.n} image(s); a paired contrast needs at least 2")
    progress.start(2 * a.n, "contrast: maps")
    first = group_maps(reader, a.rows, reader.class_names.index(a.class_name), registrar, normalisation, grid, alignments, progress)
    second = group_maps(other, other_rows, other.class_names.index(other_class), registrar, normalisation, grid, {}, progress)
    progress.finish()
    test = permutation_test(first - second, None, grid, paired=True, units=a.patients, tail=settings.tail,
                            correction=settings.correction, permutations=settings.permutations, seed=settings.seed,
                            margin=settings.min_difference,
                            progress=progress)
    first_name, second_name = _store_names(Path(reader.path), Path(other.path))
    label = f"{a.spec.text} ({first_name} - {second_name})"
    return ContrastResult(name or label, a.spec.text, spec_b.text if spec_b else None, (a.class_name, other_class), True,
                          (a.n, a.n), (len(set(a.patients)),) * 2, settings, test,
                          name_zones(significant_clusters(test, settings.alpha), file.path), other=display_path(other.path))

"""The templates file: per-class templates, their consistency statistics, the registration frame and
the exact accumulator state that merging needs. Schema: docs/hdf5_schema.md.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.files import ensure_folder
from heatmap_templates.numeric.correlation import similarity_matrix
from heatmap_templates.store.hdf5 import (
    TEMPLATES,
    atomic_h5,
    compressed,
    decode,
    jsonable,
    now,
    open_h5,
    read_root,
    string_dataset,
    strings,
    write_root,
)
from heatmap_templates.store.records import ClassStrategies, Strategy
from heatmap_templates.store.settings import HeatmapSettings
from heatmap_templates.templates.accumulator import (
    LOO_NOT_COMPUTED,
    AccumulatorState,
    ClassAccumulator,
    ClassTemplate,
    Member,
)
from heatmap_templates.templates.template_settings import TemplateSettings

TEMPLATE_IDENTITY_KEYS = TemplateSettings.IDENTITY_KEYS
HEATMAP_STORE_ATTRIBUTE = "heatmap_store"  # root attribute: the store the latest build read


@dataclass
class TemplateFile:
    """Contents of a templates file (accumulator states only when asked for)."""

    path: Path
    attrs: dict
    settings: TemplateSettings
    reference_image: np.ndarray | None
    lung_mask: np.ndarray | None
    templates: dict[str, ClassTemplate]
    similarity: np.ndarray
    similarity_classes: list[str]


def _check_class_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise HmtError(f"class name {name!r} cannot be stored in HDF5 (no '/' and not empty)")


def _write_template(root: h5py.File, template: ClassTemplate) -> None:
    """/templates/<class>/... and /consistency/<class>/... for one class."""
    if template.state is None:
        raise ValueError(f"template of class {template.class_name!r} has no accumulator state; build it with ClassAccumulator.finalize()")
    group = root.require_group("templates").create_group(template.class_name)
    group.attrs["normalisation"] = template.normalisation
    group.create_dataset("count", data=np.int64(template.count))
    for name in ("mean", "std"):
        compressed(group, name, np.asarray(getattr(template, name), dtype=np.float32))
    if template.median is not None:
        compressed(group, "median", np.asarray(template.median, dtype=np.float32))
    eigen = group.create_group("eigen")
    compressed(eigen, "components", np.asarray(template.components, dtype=np.float32))
    compressed(eigen, "components_reduced", np.asarray(template.components_reduced, dtype=np.float64))
    eigen.create_dataset("explained_variance", data=np.asarray(template.explained_variance_ratio, dtype=np.float64))
    eigen.create_dataset("eigenvalues", data=np.asarray(template.eigenvalues, dtype=np.float64))
    band = group.create_group("band")
    band.attrs["percentiles"] = [2.5, 97.5]
    band.attrs["replicates"] = int(template.state.config["bootstrap_replicates"])
    compressed(band, "lo", np.asarray(template.band_low, dtype=np.float32))
    compressed(band, "hi", np.asarray(template.band_high, dtype=np.float32))
    members = group.create_group("members")
    for column in ("path", "image_sha256", "registration_method"):
        string_dataset(members, column, [getattr(m, column) for m in template.members])
    for column in ("probability", "registration_quality"):
        members.create_dataset(column, data=np.array([getattr(m, column) for m in template.members], dtype=np.float64))
    matrices = [m.registration_matrix if m.registration_matrix is not None else (np.nan,) * 6 for m in template.members]
    members.create_dataset("registration_matrix", data=np.array(matrices, dtype=np.float64).reshape(-1, 2, 3))
    state = group.create_group("state")
    state.attrs["config"] = json.dumps(jsonable(template.state.config), sort_keys=True)
    for name, array in template.state.arrays.items():
        compressed(state, name, array)
    consistency = root.require_group("consistency").create_group(template.class_name)
    if template.mean_pairwise_correlation is not None:
        consistency.create_dataset("mean_pairwise_correlation", data=np.float64(template.mean_pairwise_correlation))
    consistency.create_dataset("loo_correlations", data=np.asarray(template.loo_correlations, dtype=np.float64))
    consistency.attrs["loo_method"] = template.loo_method


def _read_members(group: h5py.Group) -> list[Member]:
    columns = {name: strings(group[name]) for name in ("path", "image_sha256", "registration_method")}
    numbers = {name: group[name][...].tolist() for name in ("probability", "registration_quality")}
    count = len(columns["path"])
    stored = group["registration_matrix"][...].reshape(count, 6) if "registration_matrix" in group else np.full((count, 6), np.nan)
    matrices = [tuple(float(v) for v in row) if np.isfinite(row).all() else None for row in stored]  # schema < 3: none kept
    return [
        Member(columns["path"][i], columns["image_sha256"][i], float(numbers["probability"][i]), float(numbers["registration_quality"][i]),
               columns["registration_method"][i], matrices[i])
        for i in range(count)
    ]


def _read_state(group: h5py.Group, members: list[Member]) -> AccumulatorState:
    config = json.loads(decode(group["state"].attrs["config"]))
    arrays = {name: group["state"][name][...] for name in group["state"]}
    return AccumulatorState(config=config, arrays=arrays, members=members)


def _read_template(root: h5py.File, name: str, load_state: bool) -> ClassTemplate:
    group = root["templates"][name]
    consistency = root["consistency"][name]
    members = _read_members(group["members"])
    pairwise = consistency.get("mean_pairwise_correlation")
    return ClassTemplate(
        class_name=name,
        normalisation=str(decode(group.attrs["normalisation"])),
        count=int(group["count"][()]),
        mean=group["mean"][...].astype(np.float64),
        std=group["std"][...].astype(np.float64),
        median=group["median"][...].astype(np.float64) if "median" in group else None,
        components=group["eigen/components"][...],
        components_reduced=group["eigen/components_reduced"][...],
        eigenvalues=group["eigen/eigenvalues"][...],
        explained_variance_ratio=group["eigen/explained_variance"][...],
        band_low=group["band/lo"][...],
        band_high=group["band/hi"][...],
        mean_pairwise_correlation=float(pairwise[()]) if pairwise is not None else None,
        members=members,
        loo_correlations=consistency["loo_correlations"][...],
        loo_method=str(decode(consistency.attrs.get("loo_method", LOO_NOT_COMPUTED))),
        state=_read_state(group, members) if load_state else None,
    )


def read_templates(path: str | os.PathLike[str], *, expected_model_sha256: str | None = None, load_state: bool = False) -> TemplateFile:
    """Read a templates file; BadFileError for a foreign, damaged, newer or other-model file."""
    path = Path(path)
    with open_h5(path) as handle:
        attrs, recorded = read_root(handle, path, TEMPLATES)
        settings = TemplateSettings.read(recorded, path)
        if expected_model_sha256 is not None and settings.model_sha256 != expected_model_sha256:
            raise BadFileError(path, f"templates were built with model {settings.model_sha256[:12]}, not {expected_model_sha256[:12]}; rebuild them for this model")
        names = list(handle["templates"]) if "templates" in handle else []
        templates = {name: _read_template(handle, name, load_state) for name in ordered_classes(names, settings)}
        similarity = handle["consistency/similarity"][...] if "consistency/similarity" in handle else np.zeros((0, 0))
        similarity_classes = strings(handle["consistency/similarity_classes"]) if "consistency/similarity_classes" in handle else []
        reference = handle["reference/image"][...] if "reference/image" in handle else None
        lung_mask = handle["reference/lung_mask"][...] if "reference/lung_mask" in handle else None
    for template in templates.values():
        _check_finite(path, template)
    return TemplateFile(path, attrs, settings, reference, lung_mask, templates, similarity, similarity_classes)


def _check_finite(path: Path, template: ClassTemplate) -> None:
    """hmt never writes NaN or infinity into a template: a file that holds them is damaged (or tampered with)."""
    for field in ("mean", "std", "median", "components", "band_low", "band_high", "loo_correlations"):
        values = getattr(template, field)
        if values is not None and not np.isfinite(values).all():
            raise BadFileError(path, f"damaged file: non-finite values in the {field} of class {template.class_name!r}")


def ordered_classes(names: Iterable[str], settings: HeatmapSettings) -> list[str]:
    """Class names in the model's class order, unknown ones after them alphabetically."""
    order = {name: i for i, name in enumerate(settings.class_names)}
    return sorted(names, key=lambda name: (order.get(name, len(order)), name))


def check_same_reference(path: Path, stored: Sequence[np.ndarray | None], wanted: Sequence[np.ndarray | None]) -> None:
    for what, old, new in zip(("reference image", "lung mask"), stored, wanted, strict=True):
        if old is None or new is None:
            differs = (old is None) != (new is None)
        else:
            differs = old.shape != new.shape or not np.allclose(old, new, atol=1e-6)
        if differs:
            raise BadFileError(path, f"its templates use another {what}; templates in one file must share the registration frame (reuse the stored reference)")


def save_templates(
    path: str | Path,
    settings: TemplateSettings | Mapping[str, Any],
    templates: Iterable[ClassTemplate],
    *,
    reference_image: np.ndarray | None = None,
    lung_mask: np.ndarray | None = None,
    command: str = "",
    heatmap_store: str | None = None,
) -> Path:
    """Write templates (atomically), adding to or replacing classes of an existing compatible file.

    `settings` are :class:`TemplateSettings` (or their dict, which must hold TEMPLATE_IDENTITY_KEYS); settings
    hmt does not know are stored too. An existing file must have the same identity settings and reference, else
    BadFileError. ``heatmap_store`` (root attribute, like the command: where this file's maps came from) lets
    strategies and checks find the members' maps again.
    """
    path = Path(path)
    settings = TemplateSettings.of(settings)  # ValueError naming the settings a dict lacks
    new = {template.class_name: template for template in templates}
    for name in new:
        _check_class_name(name)
    ensure_folder(path.parent, path)
    reference = (None if reference_image is None else np.asarray(reference_image), None if lung_mask is None else np.asarray(lung_mask))
    existing_file = path if path.exists() else None
    if existing_file is not None:
        with open_h5(path) as handle:
            _, recorded = read_root(handle, path, TEMPLATES)
            TemplateSettings.read(recorded, path).check_same(path, settings)
            stored_reference = tuple(handle[f"reference/{n}"][...] if f"reference/{n}" in handle else None for n in ("image", "lung_mask"))
        check_same_reference(path, stored_reference, reference)
    write_templates_file(path, settings, new, reference, command, existing_file, heatmap_store)
    return path


def write_templates_file(path: Path, settings: TemplateSettings, new: Mapping[str, ClassTemplate], reference: tuple, command: str,
                         existing_file: Path | None, heatmap_store: str | None = None) -> None:
    """New file: kept classes copied from `existing_file`, `new` classes written, similarity recomputed."""
    means: dict[str, np.ndarray] = {name: np.asarray(t.mean) for name, t in new.items()}
    source = h5py.File(existing_file, "r") if existing_file is not None else None
    try:
        with atomic_h5(path) as out:
            write_root(out, TEMPLATES, settings.to_dict(), command, {HEATMAP_STORE_ATTRIBUTE: heatmap_store} if heatmap_store else None)
            reference_group = out.create_group("reference")
            for name, array in zip(("image", "lung_mask"), reference, strict=True):
                if array is not None:
                    compressed(reference_group, name, array)
            out.create_group("templates")
            out.create_group("consistency")
            if source is not None:
                for name in source["templates"]:
                    if name not in new:
                        source.copy(source[f"templates/{name}"], out["templates"], name=name)
                        source.copy(source[f"consistency/{name}"], out["consistency"], name=name)
                        means[name] = source[f"templates/{name}/mean"][...]
                        if f"{STRATEGIES_GROUP}/{name}" in source:  # a rebuilt class's strategies are stale; others stay
                            source.copy(source[f"{STRATEGIES_GROUP}/{name}"], out.require_group(STRATEGIES_GROUP), name=name)
            for template in new.values():
                _write_template(out, template)
            order = ordered_classes(means, settings)
            out["consistency"].create_dataset("similarity", data=similarity_matrix([means[name] for name in order]))
            string_dataset(out["consistency"], "similarity_classes", order)
    finally:
        if source is not None:
            source.close()


def _read_class_state(path: Path, class_name: str) -> AccumulatorState:
    with open_h5(path) as handle:
        read_root(handle, path, TEMPLATES)
        classes = list(handle["templates"]) if "templates" in handle else []
        if class_name not in classes:
            raise BadFileError(path, f"has no template for class {class_name!r} (it has {', '.join(classes) or 'none'})")
        group = handle["templates"][class_name]
        return _read_state(group, _read_members(group["members"]))


def replicate_interval(path: str | Path, class_name: str, measure: Callable[[np.ndarray], Any]) -> tuple[list[float] | None, int]:
    """The 2.5th and 97.5th percentiles of ``measure`` ((B, H, W) -> (B,)) over the template's bootstrap replicate
    means (:func:`bootstrap_replicate_means`) and the replicates they rest on; (None, 0) when the file keeps none."""
    means = bootstrap_replicate_means(path, class_name)
    if means is None or not len(means):
        return None, 0
    values = np.atleast_1d(np.asarray(measure(means), np.float64))
    return [float(v) for v in np.percentile(values, [2.5, 97.5])], len(values)


def load_accumulator(path: str | Path, class_name: str) -> ClassAccumulator:
    """The exact accumulator stored for one class (to add images to it or merge it)."""
    path = Path(path)
    state = _read_class_state(path, class_name)
    try:
        return ClassAccumulator.from_state(state)
    except (KeyError, ValueError) as error:
        raise BadFileError(path, f"damaged accumulator state of class {class_name!r}: {error}") from None


@contextmanager
def _rewritten(path: Path, existing: TemplateFile, group_name: str, keep: Callable[[str], bool]) -> Iterator[tuple[h5py.File, h5py.Group]]:
    """Rewrite a templates file atomically at the current schema version: everything is copied as it is except the
    group ``group_name``, of whose members only those that ``keep`` are copied; yields the new file and that group."""
    with h5py.File(path, "r") as source, atomic_h5(path) as out:
        attrs = {key: decode(value) for key, value in source.attrs.items()}
        store = attrs.get(HEATMAP_STORE_ATTRIBUTE)
        write_root(out, TEMPLATES, existing.settings.to_dict(), str(attrs.get("command", "")),
                   {HEATMAP_STORE_ATTRIBUTE: store} if store else None)
        for key in source:
            if key != group_name:
                source.copy(source[key], out, name=key)
        group = out.create_group(group_name)
        if group_name in source:
            for key in source[group_name]:
                if keep(key):
                    source.copy(source[f"{group_name}/{key}"], group, name=key)
        yield out, group


# --------------------------------------------------------------------------- strategies (schema 4)

STRATEGIES_GROUP = "strategies"


def _write_strategies(root: h5py.File, result: ClassStrategies, command: str) -> None:
    """/strategies/<class>/: the clustering (labels, embedding, eigenvalues) and each cluster's prototype."""
    group = root.require_group(STRATEGIES_GROUP).create_group(result.class_name)
    group.attrs["k"] = int(result.k)
    group.attrs["chosen_by"] = result.chosen_by
    group.attrs["settings"] = json.dumps(jsonable(result.settings), sort_keys=True)
    group.attrs["stability"] = json.dumps(jsonable(result.stability), sort_keys=True)
    group.attrs["command"] = command
    group.create_dataset("labels", data=np.asarray(result.labels, dtype=np.int32))
    group.create_dataset("eigenvalues", data=np.asarray(result.eigenvalues, dtype=np.float64))
    group.create_dataset("embedding", data=np.asarray(result.embedding, dtype=np.float64))
    group.create_dataset("typicality", data=np.asarray(result.typicality, dtype=np.float64))
    for number, strategy in enumerate(result.strategies):
        cluster = group.create_group(f"clusters/{number}")
        cluster.attrs["size"] = int(strategy.size)
        if strategy.consistency is not None:
            cluster.attrs["consistency"] = float(strategy.consistency)
        compressed(cluster, "mean", np.asarray(strategy.mean, dtype=np.float32))
        compressed(cluster, "std", np.asarray(strategy.std, dtype=np.float32))


def save_strategies(path: str | os.PathLike[str], results: Mapping[str, ClassStrategies], *, command: str = "") -> Path:
    """Add (or replace) the strategies of some classes in a templates file, atomically; the rest is copied as it
    is and the file is written at the current schema version."""
    path = Path(path)
    existing = read_templates(path)
    for name, result in results.items():
        template = existing.templates.get(name)
        if template is None:
            raise HmtError(f"{path}: has no template of class {name!r} to add strategies to")
        if len(result.labels) != template.count:
            raise HmtError(f"strategies of class {name!r} label {len(result.labels)} members, its template has {template.count}")
    with _rewritten(path, existing, STRATEGIES_GROUP, lambda name: name not in results and name in existing.templates) as (out, _):
        for result in results.values():
            _write_strategies(out, result, command)
    return path


def read_strategies(path: str | Path) -> dict[str, ClassStrategies]:
    """The strategies stored in a templates file, by class (empty for a file without them, or of schema < 4)."""
    path = Path(path)
    data = read_templates(path)
    results: dict[str, ClassStrategies] = {}
    with open_h5(path) as handle:
        if STRATEGIES_GROUP not in handle:
            return results
        for name in ordered_classes(list(handle[STRATEGIES_GROUP]), data.settings):
            group = handle[f"{STRATEGIES_GROUP}/{name}"]
            template = data.templates.get(name)
            if template is None:
                continue
            labels = group["labels"][...].astype(np.int64)
            paths = [member.path for member in template.members]
            strategies = []
            for number in range(int(group.attrs["k"])):
                cluster = group[f"clusters/{number}"]
                consistency = cluster.attrs.get("consistency")
                strategies.append(Strategy(int(cluster.attrs["size"]), [paths[i] for i in np.flatnonzero(labels == number)],
                                           cluster["mean"][...].astype(np.float64), cluster["std"][...].astype(np.float64),
                                           None if consistency is None else float(consistency)))
            results[name] = ClassStrategies(
                class_name=name, k=int(group.attrs["k"]), chosen_by=str(decode(group.attrs["chosen_by"])),
                eigenvalues=group["eigenvalues"][...], labels=labels, embedding=group["embedding"][...],
                stability=json.loads(decode(group.attrs["stability"])), strategies=strategies,
                settings=json.loads(decode(group.attrs["settings"])), typicality=group["typicality"][...],
            )
    return results


# --------------------------------------------------------------------------- stored results: checks, contrasts, zones


def _stamp(group: h5py.Group, record: Mapping[str, Any], command: str) -> None:
    """A stored result's record (JSON), the command that made it and when: the attributes every stored result has."""
    group.attrs["result"] = json.dumps(jsonable(dict(record)), sort_keys=True)
    group.attrs["command"] = command
    group.attrs["created"] = now()


def _stamped(group: h5py.Group, path: Path, what: str) -> dict:
    """A stored result's record with its ``command``; a one-line BadFileError naming ``what`` when it is not JSON."""
    try:
        record = json.loads(decode(group.attrs["result"]))
    except (KeyError, json.JSONDecodeError):
        raise BadFileError(path, f"damaged {what} (its record is not JSON)") from None
    return record | {"command": str(decode(group.attrs.get("command", "")))}


# --------------------------------------------------------------------------- checks (schema 5)

CHECKS_GROUP = "checks"
GROUND_TRUTH_CHECK = "ground_truth"  # the stored check of a phantom's templates against its planted lesions (the demo writes it)


def save_check(path: str | Path, name: str, result: Mapping[str, Any], *, command: str = "",
               maps: Mapping[str, np.ndarray] | None = None) -> Path:
    """Store one check's result (JSON: `hmt sanity`, deletion faithfulness, localisation, the demo's ground truth)
    under /checks/<name>, with its ``maps`` (name -> array, e.g. the ground truth's lesion maps) as datasets beside it,
    atomically, replacing an earlier one of that name; the rest of the file is copied as it is."""
    path = Path(path)
    existing = read_templates(path)
    with _rewritten(path, existing, CHECKS_GROUP, lambda key: key != name) as (_, checks):
        group = checks.create_group(name)
        for map_name, values in (maps or {}).items():
            compressed(group, map_name, np.asarray(values, np.float32))
        _stamp(group, result, command)
    return path


def read_checks(path: str | Path) -> dict[str, dict]:
    """The checks stored in a templates file by name, each with its stored maps under ``maps`` when it has any (empty
    for files without checks or of schema < 5)."""
    path = Path(path)
    with open_h5(path) as handle:
        read_root(handle, path, TEMPLATES)
        if CHECKS_GROUP not in handle:
            return {}
        checks = {}
        for name in handle[CHECKS_GROUP]:
            group = handle[f"{CHECKS_GROUP}/{name}"]
            checks[name] = _stamped(group, path, f"check {name!r}") | {"created": str(decode(group.attrs.get("created", "")))}
            stored = {key: group[key][...] for key in group if isinstance(group[key], h5py.Dataset)}
            if stored:
                checks[name]["maps"] = stored
        return checks


# --------------------------------------------------------------------------- contrasts (schema 6)

CONTRASTS_GROUP = "contrasts"
CONTRAST_MAPS = ("t", "p", "p_uncorrected", "effect", "tfce")


def contrast_key(name: str) -> str:
    """The HDF5 group name of a contrast: its name with every character other than letters, digits, '-' and '_'
    replaced by '_' (the name itself is kept in the record)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "contrast"


def save_contrast(path: str | Path, name: str, record: Mapping[str, Any], maps: Mapping[str, np.ndarray | None], *,
                  command: str = "") -> Path:
    """Store one contrast under /contrasts/<key>: its maps (t, p, p_uncorrected, effect, tfce where present) as
    datasets and its record (JSON), atomically, replacing an earlier contrast of the same key."""
    path = Path(path)
    existing = read_templates(path)
    key = contrast_key(name)
    with _rewritten(path, existing, CONTRASTS_GROUP, lambda other: other != key) as (_, contrasts):
        group = contrasts.create_group(key)
        for map_name, values in maps.items():
            if values is not None:
                group.create_dataset(map_name, data=np.asarray(values, np.float32))
        _stamp(group, dict(record) | {"name": name}, command)
    return path


def read_contrasts(path: str | Path) -> dict[str, dict]:
    """The contrasts of a templates file by name: each record with its maps under ``maps`` (empty for files of
    schema < 6 or without contrasts)."""
    path = Path(path)
    with open_h5(path) as handle:
        read_root(handle, path, TEMPLATES)
        if CONTRASTS_GROUP not in handle:
            return {}
        contrasts = {}
        for key in handle[CONTRASTS_GROUP]:
            group = handle[f"{CONTRASTS_GROUP}/{key}"]
            record = _stamped(group, path, f"contrast {key!r}")
            record["maps"] = {name: group[name][...] for name in CONTRAST_MAPS if name in group}
            contrasts[record.get("name", key)] = record
        return contrasts


def bootstrap_replicate_means(path: str | Path, class_name: str) -> np.ndarray | None:
    """The template's bootstrap replicate means (B, H, W), from the accumulator state the file keeps: the mean of
    each replicate's Poisson-weighted members (what the template's band is made of). None when the file keeps no
    replicates of that class (built with none)."""
    path = Path(path)
    with open_h5(path) as handle:
        read_root(handle, path, TEMPLATES)
        group = handle.get(f"templates/{class_name}/state")
        if group is None or "bootstrap_sums" not in group or "bootstrap_weights" not in group:
            return None
        sums, weights = group["bootstrap_sums"][...], group["bootstrap_weights"][...]
        shape = handle[f"templates/{class_name}/mean"].shape
    if not len(weights):
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / weights[:, None]
    return means[weights > 0].reshape(-1, *shape)


# --------------------------------------------------------------------------- zones (schema 7)

ZONES_GROUP = "zones"


def save_zones(path: str | Path, record: Mapping[str, Any], labels: np.ndarray, names: Sequence[str], *, command: str = "") -> Path:
    """Store the zone atlas (labels (H, W) into ``names``) and the zone table (JSON) under /zones, atomically,
    replacing an earlier one."""
    path = Path(path)
    existing = read_templates(path)
    with _rewritten(path, existing, ZONES_GROUP, lambda key: False) as (_, group):
        group.create_dataset("atlas", data=np.asarray(labels, np.uint8), compression="gzip")
        string_dataset(group, "names", list(names))
        _stamp(group, record, command)
    return path


def read_zones(path: str | Path) -> dict | None:
    """The zone table of a templates file with its atlas (``atlas``: labels, ``names``), None for files without one
    (schema < 7, or `hmt zones` not run)."""
    path = Path(path)
    with open_h5(path) as handle:
        read_root(handle, path, TEMPLATES)
        if ZONES_GROUP not in handle or "atlas" not in handle[ZONES_GROUP]:
            return None
        group = handle[ZONES_GROUP]
        record = _stamped(group, path, "zone table")
        record["atlas_labels"] = group["atlas"][...].astype(np.int64)
        record["names"] = strings(group["names"])
        return record

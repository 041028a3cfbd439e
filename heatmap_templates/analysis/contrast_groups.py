"""Groups of maps for a contrast: which images of a heatmap store, and which class's map of each.

A group is written ``KIND:ARGUMENT`` (registry :data:`GROUP_KINDS`):

- ``class:NAME``: the members of class NAME's template (the build's own images);
- ``images:NAME``: every image of true class NAME; ``correct:NAME`` those the model got right;
  ``misclassified:NAME`` those it got wrong;
- ``strategy:NAME/K``: the members of strategy K (as printed, from 1) of class NAME;
- ``column:COL=VALUE@CLASS``: the images whose row in a CSV (``columns``: e.g. site, view, sex) has COL equal to
  VALUE (several conditions, all met: ``COL=VALUE,COL2=VALUE2``); ``@CLASS`` names the class whose map is used
  (without it, the other group's class).

Unless a group names another, each image contributes its map for the class the group is about. Patients come from a
``patient_id`` column of the CSV where there is one, else from the file names' rules
(:func:`heatmap_templates.data.datasets.patient_id_from_name`); an image of unknown patient is its own.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heatmap_templates.data.datasets import patient_id_from_name
from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.registry import Registry


@dataclass(frozen=True)
class GroupSpec:
    """A parsed group: its kind, the class it is about (None for a column group without @CLASS), its argument."""

    text: str
    kind: str
    class_name: str | None
    argument: str = ""  # strategy number, or COL=VALUE


@dataclass
class Group:
    """A resolved group: store rows, the class whose map each contributes, and each image's patient."""

    spec: GroupSpec
    rows: np.ndarray
    class_name: str
    patients: list[str]

    @property
    def n(self) -> int:
        return len(self.rows)


@dataclass
class GroupContext:
    """What resolving a group reads: the store's per-image fields, the templates' members and strategies, the CSV."""

    paths: Sequence[str]
    class_names: Sequence[str]
    labels: np.ndarray
    correct: np.ndarray
    members: Mapping[str, Sequence[str]]  # class -> member paths
    strategies: Mapping[str, Sequence[Sequence[str]]]  # class -> each strategy's member paths
    columns: Mapping[str, Mapping[str, str]] | None = None  # resolved image path -> CSV row

    def column_row(self, row: int) -> Mapping[str, str] | None:
        """The CSV row of store row ``row`` (by resolved path), None without one."""
        if self.columns is None:
            return None
        return self.columns.get(str(Path(self.paths[row]).resolve()))

    def class_index(self, name: str, spec: str) -> int:
        if name not in self.class_names:
            raise HmtError(f"group {spec!r}: no class {name!r} (classes: {', '.join(self.class_names)})")
        return list(self.class_names).index(name)

    def rows_of(self, paths: Sequence[str], spec: str) -> np.ndarray:
        where = {path: row for row, path in enumerate(self.paths)}
        missing = [path for path in paths if path not in where]
        if missing:
            raise HmtError(f"group {spec!r}: {len(missing)} image(s) are not in the heatmap store (e.g. {missing[0]})")
        return np.array([where[path] for path in paths], dtype=np.int64)


def _true_class(context: GroupContext, spec: GroupSpec) -> np.ndarray:
    index = context.class_index(spec.class_name or "", spec.text)
    labels = np.asarray(context.labels)
    return labels[:, index] == 1 if labels.ndim == 2 else labels == index


def _right(context: GroupContext, spec: GroupSpec) -> np.ndarray:
    correct = np.asarray(context.correct)
    return correct[:, context.class_index(spec.class_name or "", spec.text)].astype(bool) if correct.ndim == 2 else correct.astype(bool)


def _members(context: GroupContext, spec: GroupSpec) -> np.ndarray:
    members = context.members.get(spec.class_name or "")
    if members is None:
        raise HmtError(f"group {spec.text!r}: the templates file has no template of class {spec.class_name!r}")
    return context.rows_of(members, spec.text)


def _strategy(context: GroupContext, spec: GroupSpec) -> np.ndarray:
    strategies = context.strategies.get(spec.class_name or "")
    if not strategies:
        raise HmtError(f"group {spec.text!r}: no strategies of class {spec.class_name!r} in the templates file "
                       "(run `hmt strategies` first)")
    number = int(spec.argument)
    if not 1 <= number <= len(strategies):
        raise HmtError(f"group {spec.text!r}: class {spec.class_name!r} has strategies 1 to {len(strategies)}")
    return context.rows_of(strategies[number - 1], spec.text)


def _column(context: GroupContext, spec: GroupSpec) -> np.ndarray:
    if context.columns is None:
        raise HmtError(f"group {spec.text!r} needs a CSV of image columns ($columns)", parameters=("columns",))
    conditions = [condition.split("=", 1) for condition in spec.argument.split(",")]
    header = next(iter(context.columns.values()), {})
    for column, _ in conditions:
        if column not in header:
            raise HmtError(f"group {spec.text!r}: the CSV has no column {column!r} (it has {', '.join(header)})")

    def matches(row: int) -> bool:
        values = context.column_row(row)
        return values is not None and all((values.get(column) or "").strip() == value for column, value in conditions)

    return np.array([row for row in range(len(context.paths)) if matches(row)], dtype=np.int64)


GROUP_KINDS: Registry[Callable[[GroupContext, GroupSpec], np.ndarray]] = Registry("group kind", parameter="group")
GROUP_KINDS.add("class", _members, help="class:NAME, the members of class NAME's template")
GROUP_KINDS.add("images", lambda c, s: np.flatnonzero(_true_class(c, s)), help="images:NAME, every image of true class NAME")
GROUP_KINDS.add("correct", lambda c, s: np.flatnonzero(_true_class(c, s) & _right(c, s)),
                help="correct:NAME, images of true class NAME the model got right")
GROUP_KINDS.add("misclassified", lambda c, s: np.flatnonzero(_true_class(c, s) & ~_right(c, s)),
                help="misclassified:NAME, images of true class NAME the model got wrong")
GROUP_KINDS.add("strategy", _strategy, help="strategy:NAME/K, the members of strategy K (from 1) of class NAME")
GROUP_KINDS.add("column", _column, help="column:COL=VALUE@CLASS, images whose CSV row has COL = VALUE (COL=V,COL2=V2: all); @CLASS: whose map")


FORMS = ("class:NAME", "images:NAME", "correct:NAME", "misclassified:NAME", "strategy:NAME/K", "column:COL=VALUE@CLASS")


def parse_group(text: str) -> GroupSpec:
    """``KIND:ARGUMENT`` as a :class:`GroupSpec` (HmtError naming the forms for anything else)."""
    kind, separator, argument = text.partition(":")
    if not separator or kind not in GROUP_KINDS.names() or not argument:
        raise HmtError(f"group {text!r}: write one of " + ", ".join(FORMS))
    if kind == "strategy":
        name, _, number = argument.rpartition("/")
        if not name or not number.isdigit():
            raise HmtError(f"group {text!r}: write strategy:NAME/K with K a number from 1")
        return GroupSpec(text, kind, name, number)
    if kind == "column":
        condition, _, class_name = argument.partition("@")
        if any("=" not in part or not part.split("=", 1)[0] for part in condition.split(",")):
            raise HmtError(f"group {text!r}: write column:COL=VALUE@CLASS (several conditions: COL=VALUE,COL2=VALUE2)")
        return GroupSpec(text, kind, class_name or None, condition)
    return GroupSpec(text, kind, argument)


def read_columns(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """A CSV with a ``path`` column (absolute or relative to the CSV's folder) as resolved path -> row."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise BadFileError(path, "needs a 'path' column naming each image")
            rows = {}
            for number, row in enumerate(reader, start=2):
                if not (row.get("path") or "").strip():
                    raise BadFileError(path, f"line {number}: no path")
                image = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
                rows[str(image.resolve())] = row
    except OSError as error:
        raise BadFileError(path, f"cannot read ({error.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise BadFileError(path, f"not a readable CSV ({error})") from None
    if not rows:
        raise BadFileError(path, "has no rows")
    return rows


def resolve_group(spec: GroupSpec, context: GroupContext, default_class: str | None) -> Group:
    """The store rows of ``spec``, its map class (its own, else ``default_class``) and each image's patient."""
    class_name = spec.class_name or default_class
    if class_name is None:
        raise HmtError(f"group {spec.text!r}: name the class whose map is used (column:COL=VALUE@CLASS)")
    context.class_index(class_name, spec.text)
    rows = np.unique(GROUP_KINDS[spec.kind](context, spec))
    return Group(spec, rows, class_name, [patient_of(context.paths[r], context.column_row(r)) for r in rows])


def patient_of(path: str, row: Mapping[str, str] | None) -> str:
    """The patient of an image: its CSV row's ``patient_id``, else the file name's rules, else the image itself."""
    if row and (row.get("patient_id") or "").strip():
        return str(row["patient_id"]).strip()
    return patient_id_from_name(Path(path).name) or f"image:{path}"


def check_groups(a: Group, b: Group | None, minimum: int = 2) -> None:
    """Refuse groups too small or overlapping (an image in both groups makes the two samples dependent)."""
    for group in (a, b):
        if group is not None and group.n < minimum:
            raise HmtError(f"group {group.spec.text!r} has {group.n} image(s); a contrast needs at least {minimum} per group")
    if b is not None:  # the same image in both groups (whatever the class of its map) makes them dependent
        shared = np.intersect1d(a.rows, b.rows)
        if len(shared):
            raise HmtError(f"groups {a.spec.text!r} and {b.spec.text!r} share {len(shared)} image(s); choose disjoint "
                           "groups (or $other for a paired contrast of the same images)", parameters=("other",))


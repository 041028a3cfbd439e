"""Data sets: discover samples (class folders or a CSV manifest), split them by patient, check them.

Decoding single files is :mod:`heatmap_templates.data.decode`; this module knows about collections:
which files form a data set and with which labels, patient groups and splits, and which rows or
files had to be skipped (``Dataset.problems``, reported at the end of a run).
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from heatmap_templates.data.decode import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, DecodedImage, decode_image
from heatmap_templates.errors import BadImageError, HmtError, Problem, SkipLog, display_path, one_line, problems_json
from heatmap_templates.files import file_sha256
from heatmap_templates.progress import NullProgress, Progress
from heatmap_templates.registry import Registry

SPLIT_NAMES = ("train", "val", "test")
# The phantom generator (synth) writes its ground truth beside the class folders.
IGNORED_TOP_LEVEL_FOLDERS = frozenset({"ground_truth"})

UNKNOWN = -1  # a finding that is not known for an image: left out of its loss and evaluation
NO_FINDING = "none"  # the stratum of a multi-label image without a positive finding
UNCERTAIN: Registry[int] = Registry("uncertain-label policy", parameter="uncertain")
UNCERTAIN.add("zero", 0, help="an uncertain finding (-1) counts as negative")
UNCERTAIN.add("one", 1, help="an uncertain finding counts as positive")
UNCERTAIN.add("ignore", UNKNOWN, help="an uncertain finding is unknown: left out of its loss and evaluation")
DEFAULT_UNCERTAIN = "ignore"

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test"}


# Default patient-id rules over file names, tried in order (cxr4's naming; see its README).
# Each maps a match to a patient id; names matching none (e.g. twitter_<id>) are their own group.
_DEFAULT_PATIENT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?:^|_)person(\d+)_"), "person{0}"),  # Kermany personN_bacteria_M / personN_virus_M
    (re.compile(r"NORMAL2-IM-(\d+)"), "NORMAL2-IM-{0}"),  # Kermany NORMAL2-IM-XXXX-YYYY (own numbering)
    (re.compile(r"(?:^|_)IM-(\d+)-"), "IM-{0}"),  # Kermany IM-XXXX-YYYY
    (re.compile(r"^ieee8023_p([^_]+)_"), "ieee8023-p{0}"),  # ieee8023_p<patientid>_...
    (re.compile(r"^figure1_COVID-(\d+)[a-z]?(?:\.|$)"), "figure1-COVID-{0}"),  # letter = same patient
    (re.compile(r"^actualmed_(ANON\d+)_"), "actualmed-{0}"),
)


@dataclass(frozen=True)
class Sample:
    """One labelled image of a data set; ``split`` comes from a CSV ``split`` column when present.

    A multi-label sample has ``findings``, one value per finding of its data set: 1 positive,
    0 negative, -1 unknown (a blank cell, or an uncertain one under the ``ignore`` policy); its
    ``label`` is its first positive finding, or ``none`` (what splits are stratified by).
    """

    path: Path
    label: str
    patient_id: str | None = None
    split: str | None = None
    findings: tuple[int, ...] | None = None


@dataclass
class Dataset:
    """Discovered samples. ``root`` is the class-folder root or the CSV manifest's folder.

    A multi-label data set (``multi_label``) has one finding per entry of ``class_names``; each
    sample's ``findings`` says which are present (:class:`Sample`).
    """

    root: Path
    samples: list[Sample]
    class_names: list[str]
    source: Literal["folder", "csv"]
    problems: list[Problem] = field(default_factory=list)
    multi_label: bool = False

    def counts(self) -> dict[str, int]:
        """Number of samples per class (positive samples per finding), in ``class_names`` order."""
        if self.multi_label:
            return {name: sum(1 for sample in self.samples if sample.findings is not None and sample.findings[k] == 1)
                    for k, name in enumerate(self.class_names)}
        counter = Counter(sample.label for sample in self.samples)
        return {name: counter.get(name, 0) for name in self.class_names}

    def finding_matrix(self, samples: Iterable[Sample] | None = None) -> np.ndarray:
        """(N, L) int8 findings of ``samples`` (default: all): 1 positive, 0 negative, -1 unknown."""
        chosen = list(self.samples if samples is None else samples)
        return np.array([sample.findings for sample in chosen], dtype=np.int8).reshape(len(chosen), len(self.class_names))


def relative_path(sample: Sample, root: Path) -> str:
    """A sample's path relative to its data set's root (POSIX form), or its absolute path if outside it."""
    try:
        return Path(sample.path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(sample.path).resolve().as_posix()


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over (relative path, label, file hash) of every sample: identifies a data set wherever it lies."""
    digest = hashlib.sha256()
    rows = sorted((relative_path(sample, dataset.root), sample.label if sample.findings is None else ",".join(map(str, sample.findings)),
                   str(sample.path)) for sample in dataset.samples)
    for rel, label, path in rows:
        try:
            content = file_sha256(path)
        except OSError:
            content = "unreadable"
        digest.update(f"{rel}\t{label}\t{content}\n".encode("utf-8", "backslashreplace"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- data sets


def load_dataset(
    source: str | os.PathLike,
    *,
    patient_regex: str | None = None,
    classes: Iterable[str] | None = None,
    labels: Iterable[str] | None = None,
    uncertain: str = DEFAULT_UNCERTAIN,
    strict: bool = False,
) -> Dataset:
    """Discover a data set: a folder with one subfolder per class, or a CSV manifest.

    The CSV has columns ``path,label`` (cxr4's ``file,label`` works too) and optionally ``split``
    and ``patient_id``; relative paths resolve against the CSV's folder. ``classes`` restricts and
    orders the classes. With ``labels`` (finding columns of a CSV) the data set is multi-label: each
    named column holds 1 (positive), 0 (negative), -1 (uncertain, resolved by ``uncertain``, a
    :data:`UNCERTAIN` policy) or nothing (unknown); other columns (age, sex, view) are ignored.
    Rows or files that cannot be used become ``dataset.problems`` (the first one raises in
    ``strict`` mode); a data set that cannot be used at all raises :class:`HmtError`.
    """
    path = Path(os.fsdecode(os.fspath(source)))
    wanted = _normalise_classes(classes)
    findings = _normalise_findings(labels)
    UNCERTAIN.check(uncertain)
    patient_pattern = _compile_patient_regex(patient_regex)
    if not path.exists():
        raise HmtError(f"{display_path(path)}: data set path does not exist")
    log = SkipLog(strict)
    if findings is not None:
        if path.suffix.lower() != ".csv" or path.is_dir():
            raise HmtError(f"{display_path(path)}: $labels reads finding columns of a CSV manifest, not a folder",
                           parameters=("labels",))
        dataset = _load_multi_label_csv(path, findings, uncertain, patient_pattern, log)
    elif path.is_dir():
        dataset = _load_folder(path, wanted, patient_pattern, log)
    elif path.suffix.lower() == ".csv":
        dataset = _load_csv(path, wanted, patient_pattern, log)
    else:
        raise HmtError(f"{display_path(path)}: not a folder of class folders or a .csv manifest")
    if not dataset.samples:
        raise HmtError(f"{display_path(path)}: no usable images in the data set")
    return dataset


def _normalise_classes(classes: Iterable[str] | None) -> list[str] | None:
    if classes is None:
        return None
    names = [name.strip() for name in classes if name.strip()]
    if len(set(names)) != len(names):
        raise HmtError(f"classes are listed twice: {', '.join(names)}")
    if len(names) < 2:
        raise HmtError(f"need at least 2 classes, got {len(names)}: {', '.join(names) or '(none)'}")
    return names


def _normalise_findings(labels: Iterable[str] | None) -> list[str] | None:
    if labels is None:
        return None
    names = [name.strip() for name in labels if name.strip()]
    if not names or len(set(names)) != len(names):
        raise HmtError(f"$labels needs distinct finding column names, got {', '.join(names) or '(none)'}", parameters=("labels",))
    return names


def _compile_patient_regex(patient_regex: str | None) -> re.Pattern[str] | None:
    if patient_regex is None:
        return None
    try:
        pattern = re.compile(patient_regex)
    except re.error as error:
        raise HmtError(f"invalid patient regex {patient_regex!r}: {error}") from None
    if pattern.groups != 1:
        raise HmtError(f"patient regex {patient_regex!r} must have exactly one group (the patient id), it has {pattern.groups}")
    return pattern


def patient_id_from_name(name: str, patient_regex: re.Pattern[str] | str | None = None) -> str | None:
    """The patient id in a file name, or None when unknown (the image is then its own group).

    A user regex (one group) replaces the default rules, which know cxr4's naming: Kermany
    ``personN_`` / ``IM-XXXX-`` / ``NORMAL2-IM-XXXX-``, ``ieee8023_p<id>_``, ``figure1_COVID-000NN[a|b|c]``,
    ``actualmed_ANONnn_``; ``twitter_<id>`` images have no known patient.
    """
    if patient_regex is not None:
        pattern = _compile_patient_regex(patient_regex) if isinstance(patient_regex, str) else patient_regex
        assert pattern is not None  # compiled from a str
        match = pattern.search(name)
        return match.group(1) if match and match.group(1) else None
    for pattern, template in _DEFAULT_PATIENT_RULES:
        match = pattern.search(name)
        if match:
            return template.format(*match.groups())
    return None


def patient_groups(samples: Sequence[Sample]) -> list[str] | None:
    """Each sample's unit in a bootstrap over patients (its patient id; an image of unknown patient is its own), or
    None when every image is its own unit (resampling images is then the same)."""
    groups = [f"patient:{s.patient_id}" if s.patient_id else f"image:{s.path}" for s in samples]
    return groups if len(set(groups)) < len(groups) else None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _load_folder(root: Path, wanted: list[str] | None, patient_pattern: re.Pattern[str] | None, log: SkipLog) -> Dataset:
    root = root.resolve()
    present = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not _is_hidden(entry.name) and entry.name not in IGNORED_TOP_LEVEL_FOLDERS
    )
    if wanted is not None:
        missing = [name for name in wanted if name not in present]
        if missing:
            raise HmtError(f"{display_path(root)}: no class folder for {', '.join(missing)} (found: {', '.join(present) or 'none'})")
        class_names = wanted
    else:
        class_names = present
    if len(class_names) < 2:
        raise HmtError(f"{display_path(root)}: need at least 2 class folders, found {len(class_names)} ({', '.join(class_names) or 'none'})")
    samples: list[Sample] = []
    for label in class_names:
        files = _image_files(root / label, log)
        if not files:
            raise HmtError(f"{display_path(root / label)}: class folder {label!r} has no images")
        samples += [Sample(file, label, patient_id_from_name(file.name, patient_pattern), None) for file in files]
    return Dataset(root, samples, class_names, "folder", log.problems)


def _image_files(folder: Path, log: SkipLog) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped, symlinked folders not followed)."""
    found: list[Path] = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(name for name in subdirs if not _is_hidden(name))
        for name in subdirs:
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                log.add(Path(directory) / name, "is a directory, not an image file")
        for name in sorted(files):
            if _is_hidden(name):
                continue
            file = Path(directory) / name
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES or (suffix == "" and _has_dicom_preamble(file)):
                found.append(file)
    return found


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _load_csv(manifest: Path, wanted: list[str] | None, patient_pattern: re.Pattern[str] | None, log: SkipLog) -> Dataset:
    manifest = manifest.resolve()
    base, shown = manifest.parent, display_path(manifest)
    rows, column, path_column = _read_csv(manifest)
    if "label" not in column:
        raise HmtError(f"{shown}: CSV manifest has no 'label' column (columns: {', '.join(column)})")
    label_column, split_column, patient_column = column["label"], column.get("split"), column.get("patient_id")

    samples: list[Sample] = []
    first_row_of: dict[Path, int] = {}
    for row_number, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"{shown}:row {row_number}"
        relative = (row.get(path_column) or "").strip()
        label = (row.get(label_column) or "").strip()
        if not relative:
            log.add(where, "empty path")
            continue
        file = Path(relative) if os.path.isabs(relative) else base / relative
        if not label:
            log.add(file, f"empty label (row {row_number})")
            continue
        if wanted is not None and label not in wanted:
            log.add(file, f"unknown label {label!r} (row {row_number}; classes: {', '.join(wanted)})")
            continue
        file = Path(os.path.normpath(file))
        if not _new_existing_file(file, row_number, first_row_of, log):
            continue
        split, patient = _split_and_patient(row, file, split_column, patient_column, patient_pattern, where)
        samples.append(Sample(file, label, patient, split))

    class_names = wanted if wanted is not None else sorted({sample.label for sample in samples})
    counts = Counter(sample.label for sample in samples)
    if not samples:
        raise HmtError(f"{shown}: no usable rows in the CSV manifest")
    if len(class_names) < 2:
        raise HmtError(f"{shown}: need at least 2 classes, found {len(class_names)} ({', '.join(class_names)})")
    empty = [name for name in class_names if counts[name] == 0]
    if empty:
        raise HmtError(f"{shown}: class {empty[0]!r} has no usable rows")
    return Dataset(base, samples, class_names, "csv", log.problems)


def _read_csv(manifest: Path) -> tuple[list[dict], dict[str, str], str]:
    """The rows of a CSV manifest, its columns by lower-case name, and the path column's name."""
    shown = display_path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise HmtError(f"{shown}: cannot read CSV manifest ({one_line(error)})") from None
    column = _columns(reader.fieldnames or [])
    path_column = _path_column(column)
    if path_column is None:
        raise HmtError(f"{shown}: CSV manifest has no 'path' column (columns: {', '.join(column) or 'none'})")
    return rows, column, path_column


def _columns(raw_names: Iterable[str]) -> dict[str, str]:
    """A CSV header's columns by their lower-case, stripped name."""
    return {raw.strip().lower(): raw for raw in raw_names}


def _path_column(column: dict[str, str]) -> str | None:
    """The name of a manifest's path column (``path``, or cxr4's ``file``), None when the header has none."""
    return column.get("path", column.get("file"))


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether a file is a CSV manifest :func:`load_dataset` reads: a ``.csv`` file whose header has a path column.
    Any other CSV (a table of scores, a file that cannot be read) is not one."""
    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return _path_column(_columns(header)) is not None


def _load_multi_label_csv(manifest: Path, findings: list[str], uncertain: str, patient_pattern: re.Pattern[str] | None,
                          log: SkipLog) -> Dataset:
    """A CSV manifest with one column per finding (CheXpert convention), as a multi-label data set."""
    manifest = manifest.resolve()
    base, shown = manifest.parent, display_path(manifest)
    rows, column, path_column = _read_csv(manifest)
    missing = [name for name in findings if name.strip().lower() not in column]
    if missing:
        raise HmtError(f"{shown}: CSV manifest has no column {missing[0]!r} for $labels (columns: {', '.join(column)})",
                       parameters=("labels",))
    finding_columns = [column[name.strip().lower()] for name in findings]
    split_column, patient_column = column.get("split"), column.get("patient_id")
    samples: list[Sample] = []
    first_row_of: dict[Path, int] = {}
    for row_number, row in enumerate(rows, start=2):
        where = f"{shown}:row {row_number}"
        relative = (row.get(path_column) or "").strip()
        if not relative:
            log.add(where, "empty path")
            continue
        file = Path(os.path.normpath(Path(relative) if os.path.isabs(relative) else base / relative))
        try:
            values = tuple(_finding_value(row.get(name) or "", uncertain) for name in finding_columns)
        except ValueError as error:
            log.add(file, f"{error} (row {row_number})")
            continue
        if not _new_existing_file(file, row_number, first_row_of, log):
            continue
        split, patient = _split_and_patient(row, file, split_column, patient_column, patient_pattern, where)
        stratum = next((name for name, value in zip(findings, values, strict=True) if value == 1), NO_FINDING)
        samples.append(Sample(file, stratum, patient, split, values))
    if not samples:
        raise HmtError(f"{shown}: no usable rows in the CSV manifest")
    return Dataset(base, samples, findings, "csv", log.problems, multi_label=True)


def _finding_value(text: str, uncertain: str) -> int:
    """1, 0 or -1 (unknown) from a CheXpert-style cell: 1 positive, 0 negative, -1 uncertain, blank unknown."""
    cleaned = text.strip()
    if not cleaned:
        return UNKNOWN
    try:
        number = float(cleaned)
    except ValueError:
        raise ValueError(f"finding value {cleaned!r} is not 1, 0, -1 or blank") from None
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"finding value {cleaned!r} is not 1, 0, -1 or blank")
    return UNCERTAIN[uncertain] if number == -1.0 else int(number)


def _new_existing_file(file: Path, row_number: int, first_row_of: dict[Path, int], log: SkipLog) -> bool:
    """Whether a manifest row's file is seen for the first time and exists (else the reason goes to ``log``)."""
    if file in first_row_of:
        log.add(file, f"duplicate path (row {row_number}, first at row {first_row_of[file]})")
        return False
    first_row_of[file] = row_number
    if not os.path.lexists(file):
        log.add(file, f"file does not exist (row {row_number})")
        return False
    return True


def _split_and_patient(row: dict, file: Path, split_column: str | None, patient_column: str | None,
                       patient_pattern: re.Pattern[str] | None, where: str) -> tuple[str | None, str | None]:
    """A manifest row's split (None when not given) and patient id (its column, else the file-name rules)."""
    split = _parse_split((row.get(split_column) or "") if split_column else "", where)
    patient = ((row.get(patient_column) or "").strip() if patient_column else "") or patient_id_from_name(file.name, patient_pattern)
    return split, patient


def _parse_split(value: str, where: str) -> str | None:
    text = value.strip().lower()
    if not text:
        return None
    if text not in _SPLIT_ALIASES:
        raise HmtError(f"{where}: unknown split {value.strip()!r} (expected train, val or test)")
    return _SPLIT_ALIASES[text]


# --------------------------------------------------------------------------- splits


def split_dataset(
    dataset: Dataset, *, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Sample]]:
    """Split into ``train``/``val``/``test``: stratified by class, grouped by patient, deterministic for a seed.

    Images without a patient id are their own group. A CSV ``split`` column is honoured; rows
    without a value are assigned here, following their patient when it is already placed.
    Each class gets at least one group in every split with a positive fraction when it has enough groups.
    """
    targets = _check_fractions(fractions)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in dataset.samples:
        key = f"patient:{sample.patient_id}" if sample.patient_id else f"image:{sample.path}"
        groups[key].append(sample)

    assignment: dict[str, str] = {}
    for key, members in groups.items():
        given = {sample.split for sample in members if sample.split}
        if len(given) > 1:
            raise HmtError(f"patient {key.split(':', 1)[1]!r} is in more than one split ({', '.join(sorted(given))}) in the CSV split column")
        if given:
            assignment[key] = given.pop()

    by_class: dict[str, list[str]] = defaultdict(list)
    for key, members in sorted(groups.items()):
        majority = Counter(sample.label for sample in members).most_common(1)[0][0]
        by_class[majority].append(key)

    rng = np.random.default_rng(seed)
    for label in sorted(by_class):
        keys = by_class[label]
        counts = Counter({name: 0 for name in SPLIT_NAMES})
        for key in keys:
            if key in assignment:
                counts[assignment[key]] += len(groups[key])
        free = [keys[index] for index in rng.permutation(len(keys)) if keys[index] not in assignment]
        free.sort(key=lambda key: -len(groups[key]))  # stable: big groups first, ties in random order
        total = sum(len(groups[key]) for key in keys)
        positive = [name for name, share in zip(SPLIT_NAMES, targets, strict=True) if share > 0]
        # Seed each empty positive-fraction split (smallest share first) with one of the smallest groups.
        for name in sorted(positive, key=lambda name: targets[SPLIT_NAMES.index(name)]):
            if counts[name] == 0 and len(free) > 1 and name != positive[0]:
                key = free.pop()
                assignment[key] = name
                counts[name] += len(groups[key])
        for key in free:
            deficits = [targets[i] * total - counts[name] for i, name in enumerate(SPLIT_NAMES)]
            name = SPLIT_NAMES[int(np.argmax(deficits))]
            assignment[key] = name
            counts[name] += len(groups[key])

    result: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    for key, members in groups.items():
        result[assignment[key]].extend(members)
    for name in SPLIT_NAMES:
        result[name].sort(key=lambda sample: str(sample.path))
    return result


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    values = tuple(float(value) for value in fractions)
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise HmtError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    if values[0] <= 0:
        raise HmtError("the train fraction must be positive")
    return values[0], values[1], values[2]


# --------------------------------------------------------------------------- whole-data-set pass


def decode_samples(
    samples: Iterable[Sample],
    *,
    skip_log: SkipLog,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
    total: int | None = None,
    description: str = "decoding images",
) -> Iterator[tuple[Sample, DecodedImage]]:
    """Decode samples one by one, skipping (and logging) bad files so that a run goes on."""
    progress = progress or NullProgress()
    progress.start(total, description)
    try:
        for sample in samples:
            try:
                decoded = decode_image(sample.path, max_pixels=max_pixels)
            except BadImageError as error:
                skip_log.add_error(error)
            else:
                yield sample, decoded
            progress.advance(1)
    finally:
        progress.finish()


@dataclass
class CheckReport:
    """What ``hmt check`` found: decodable images per class and per format, and skipped files."""

    dataset: Dataset
    images_by_class: dict[str, int]
    images_by_format: dict[str, int]
    problems: list[Problem]

    def to_dict(self) -> dict:
        return {
            "root": display_path(self.dataset.root),
            "source": self.dataset.source,
            "classes": list(self.dataset.class_names),
            "images_by_class": dict(self.images_by_class),
            "images_by_format": dict(self.images_by_format),
            "usable": sum(self.images_by_class.values()),
            "skipped": problems_json(self.problems),
        }


def check_dataset(
    dataset: Dataset, *, max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = False, progress: Progress | None = None
) -> CheckReport:
    """Decode every image of a data set and count what is usable (``strict`` raises on the first bad file)."""
    log = SkipLog(strict, dataset.problems)
    by_class: Counter[str] = Counter()
    by_format: Counter[str] = Counter()
    for sample, decoded in decode_samples(
        dataset.samples, skip_log=log, max_pixels=max_pixels, progress=progress, total=len(dataset.samples)
    ):
        by_class[sample.label] += 1
        by_format[decoded.source_format] += 1
    return CheckReport(
        dataset,
        {name: by_class.get(name, 0) for name in dataset.class_names},
        dict(sorted(by_format.items())),
        log.problems,
    )

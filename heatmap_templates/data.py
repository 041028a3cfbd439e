"""Input stage: discover samples, decode every image format to one form, report bad files, split by patient.

Every later stage sees images only as :class:`DecodedImage` (float32 grayscale in [0, 1] plus
metadata), so format quirks (16-bit, alpha, palettes, DICOM windowing, MONOCHROME1) are handled
here once. Bad files never crash a run: :func:`decode_image` raises :class:`BadImageError` with a
short reason, and runs collect those in a :class:`SkipLog` to report at the end.

Choices worth knowing:

* Images smaller than :data:`MIN_IMAGE_SIDE` pixels on a side (a 1 x 1 image, for instance) are
  rejected as "too small": nothing useful can be classified or registered at that size.
* The declared size is read from the header *before* decoding, so a decompression bomb is refused
  without allocating its pixels.
* RGB(A) becomes luma (ITU-R BT.601 weights, as OpenCV and Pillow use); alpha is composited on black.
* Integer pixels are scaled by their type's range (a 16-bit image by 65535). Float pixels already in
  [0, 1] are kept, other float images are min-max scaled; non-finite pixels are refused.
* DICOM without a window or VOI LUT is min-max scaled over the image (what viewers' auto-window does).
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import stat
import struct
import warnings
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from heatmap_templates.errors import BadImageError, HmtError, one_line
from heatmap_templates.progress import NullProgress, Progress

DEFAULT_MAX_PIXELS = 50_000_000
MIN_IMAGE_SIDE = 8
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
SPLIT_NAMES = ("train", "val", "test")
# The phantom generator (synth.py) writes its ground truth beside the class folders.
IGNORED_TOP_LEVEL_FOLDERS = frozenset({"ground_truth"})

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test"}
_LUMA_WEIGHTS_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TAIL_SEARCH_BYTES = 4096

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
    """One labelled image of a data set; ``split`` comes from a CSV ``split`` column when present."""

    path: Path
    label: str
    patient_id: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Problem:
    """A file (or CSV row) that was skipped, with a short reason."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Dataset:
    """Discovered samples. ``root`` is the class-folder root or the CSV manifest's folder."""

    root: Path
    samples: list[Sample]
    class_names: list[str]
    source: Literal["folder", "csv"]
    problems: list[Problem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of samples per class, in ``class_names`` order."""
        counter = Counter(sample.label for sample in self.samples)
        return {name: counter.get(name, 0) for name in self.class_names}


@dataclass(frozen=True)
class DecodedImage:
    """An image in hmt's single internal form plus what was known about its source."""

    pixels: np.ndarray  # float32 (H, W) in [0, 1]
    original_size: tuple[int, int]  # (H, W)
    source_format: str  # png, jpeg, bmp, tiff, dicom
    bit_depth: int
    pixel_spacing: tuple[float, float] | None = None  # (row, col) in mm, DICOM only


class SkipLog:
    """Collects skipped files during a run for the end-of-run report; ``strict`` raises on the first."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._problems: list[Problem] = []

    def add(self, path: str | os.PathLike | bytes, reason: str) -> None:
        """Record one skipped file, or raise :class:`BadImageError` for it in strict mode."""
        shown = display_path(path)
        if self.strict:
            raise BadImageError(shown, reason)
        self._problems.append(Problem(shown, reason))

    def add_error(self, error: BadImageError) -> None:
        """Record a decoding failure (the error already names its file)."""
        self.add(error.path, error.reason)

    @property
    def problems(self) -> list[Problem]:
        return list(self._problems)

    def __len__(self) -> int:
        return len(self._problems)

    def summary_lines(self, limit: int | None = None) -> list[str]:
        """Lines for the end-of-run report: a count, then one ``path: reason`` line per file."""
        if not self._problems:
            return []
        noun = "file" if len(self._problems) == 1 else "files"
        lines = [f"skipped {len(self._problems)} {noun}:"]
        shown = self._problems if limit is None else self._problems[:limit]
        lines += [f"  {problem}" for problem in shown]
        if len(shown) < len(self._problems):
            lines.append(f"  ... and {len(self._problems) - len(shown)} more")
        return lines


def display_path(path: str | os.PathLike | bytes) -> str:
    """A printable form of any path, including names that are not valid UTF-8 (escaped, never an error)."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (data-set fingerprints, cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- decoding


def decode_image(path: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode one image file (PNG, JPEG, BMP, TIFF or DICOM) to float32 grayscale in [0, 1].

    Raises :class:`BadImageError` (naming the file, with a short reason) for every file that cannot
    be used; no other exception escapes for bad file contents.
    """
    shown = display_path(path)
    data = _read_file(path, shown)
    suffix = os.path.splitext(os.fsdecode(os.fspath(path)))[1].lower()
    kind = _sniff_format(data, suffix)
    if kind is None:
        raise BadImageError(shown, "not an image (unrecognised file content)")
    if kind == "dicom":
        decoded = _decode_dicom(data, shown, max_pixels)
    else:
        decoded = _decode_raster(data, kind, shown, max_pixels)
    height, width = decoded.pixels.shape
    if min(height, width) < MIN_IMAGE_SIDE:
        raise BadImageError(shown, f"image too small ({width}x{height} px; at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} needed)")
    return decoded


def _read_file(path: str | os.PathLike | bytes, shown: str) -> bytes:
    """Read the whole file, turning every OS-level failure into a one-line reason."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise BadImageError(shown, "is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise BadImageError(shown, "not a regular file")
        if info.st_size == 0:
            raise BadImageError(shown, "empty file (0 bytes)")
        with open(path, "rb") as handle:
            data = handle.read()
    except PermissionError:
        raise BadImageError(shown, "permission denied (unreadable file)") from None
    except FileNotFoundError:
        raise BadImageError(shown, "file not found (or a broken symlink)") from None
    except OSError as error:
        if error.errno == getattr(os, "ELOOP", None) or "symbolic links" in str(error):
            raise BadImageError(shown, "symlink loop") from None
        raise BadImageError(shown, f"cannot read file: {error.strerror or error}") from None
    if not data:
        raise BadImageError(shown, "empty file (0 bytes)")
    return data


def _sniff_format(data: bytes, suffix: str) -> str | None:
    """Identify the format from the file's magic bytes (DICOM by its 'DICM' preamble or its suffix)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if suffix in DICOM_SUFFIXES:  # DICOM without the preamble (old ACR-NEMA style files)
        return "dicom"
    return None


def _check_complete(data: bytes, kind: str, shown: str) -> None:
    """Refuse truncated files instead of letting a decoder return a half-filled image."""
    tail = data[-_TAIL_SEARCH_BYTES:]
    if kind == "png" and b"IEND" not in tail:
        raise BadImageError(shown, "truncated PNG (no IEND chunk)")
    if kind == "jpeg" and b"\xff\xd9" not in tail:
        raise BadImageError(shown, "truncated JPEG (no end-of-image marker)")
    if kind == "bmp" and len(data) >= 34:
        declared_size = struct.unpack_from("<I", data, 2)[0]
        if declared_size > len(data):
            raise BadImageError(shown, f"truncated BMP ({len(data)} of {declared_size} bytes)")


def _check_png_stream(data: bytes, shown: str) -> None:
    """Verify chunk checksums and that the pixel stream inflates, before OpenCV sees the file.

    libpng reports damage by printing to the process's stderr, which would break hmt's one-line
    errors; checking here turns every such file into a clean BadImageError. Inflating costs about
    as much as the decode itself and is bounded by the declared size (checked before this runs).
    """
    position = len(_PNG_MAGIC)
    inflater = zlib.decompressobj()
    while position + 12 <= len(data):
        length, = struct.unpack_from(">I", data, position)
        kind = data[position + 4:position + 8]
        end = position + 12 + length
        if end > len(data):
            raise BadImageError(shown, "cannot decode PNG (truncated chunk)")
        body = data[position + 8:end - 4]
        if zlib.crc32(kind + body) != struct.unpack_from(">I", data, end - 4)[0]:
            raise BadImageError(shown, f"cannot decode PNG (bad checksum in {kind.decode('latin-1')} chunk)")
        if kind == b"IDAT":
            try:
                while body:
                    inflater.decompress(body, 1 << 20)
                    body = inflater.unconsumed_tail
            except zlib.error:
                raise BadImageError(shown, "cannot decode PNG (corrupt compressed pixel data)") from None
        if kind == b"IEND":
            break
        position = end
    if not inflater.eof:
        raise BadImageError(shown, "cannot decode PNG (incomplete compressed pixel data)")


def _declared_size(data: bytes, kind: str, shown: str, max_pixels: int) -> tuple[int, int]:
    """Read (H, W) from the header without decoding and refuse sizes over ``max_pixels``."""
    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", data, 16)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # bomb and corrupt-EXIF warnings: we report problems ourselves
                with Image.open(io.BytesIO(data)) as header:
                    width, height = header.size
        except Image.DecompressionBombError:
            raise BadImageError(shown, f"declared size is over the pixel limit of {max_pixels} (decompression bomb?)") from None
        except UnidentifiedImageError:
            raise BadImageError(shown, f"corrupt or truncated {kind.upper()} (unreadable header)") from None
        except (OSError, ValueError, SyntaxError, struct.error, EOFError) as error:
            raise BadImageError(shown, f"corrupt or truncated {kind.upper()} ({one_line(error)})") from None
    _check_pixel_count(width, height, max_pixels, shown)
    return height, width


def _check_pixel_count(width: int, height: int, max_pixels: int, shown: str) -> None:
    if width <= 0 or height <= 0:
        raise BadImageError(shown, f"invalid declared size {width}x{height}")
    if width * height > max_pixels:
        raise BadImageError(
            shown, f"declared size {width}x{height} = {width * height} pixels is over the limit of {max_pixels} (decompression bomb?)"
        )


def _decode_raster(data: bytes, kind: str, shown: str, max_pixels: int) -> DecodedImage:
    """PNG/JPEG/BMP/TIFF: OpenCV for speed, Pillow for what OpenCV cannot read."""
    _check_complete(data, kind, shown)
    original_size = _declared_size(data, kind, shown, max_pixels)
    if kind == "png":
        _check_png_stream(data, shown)
    # JPEG: keep depth and colour but apply the EXIF orientation (IMREAD_UNCHANGED would ignore it).
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if kind == "jpeg" else cv2.IMREAD_UNCHANGED
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        array = None
    if array is not None and array.size > 0:
        pixels, bit_depth = _to_gray_unit(array, channel_order="bgr", shown=shown)
    else:
        pixels, bit_depth = _decode_with_pillow(data, kind, shown)
    return DecodedImage(pixels, original_size, kind, bit_depth, None)


def _decode_with_pillow(data: bytes, kind: str, shown: str) -> tuple[np.ndarray, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return _pillow_to_gray_unit(image, shown)
    except BadImageError:
        raise
    except Exception as error:  # Pillow raises many types on corrupt data; each means "cannot decode"
        raise BadImageError(shown, f"cannot decode {kind.upper()} ({one_line(error)})") from None


def _pillow_to_gray_unit(image: Image.Image, shown: str) -> tuple[np.ndarray, int]:
    mode = image.mode
    if mode.startswith("I;16"):
        return _to_gray_unit(np.asarray(image).astype(np.uint16), "rgb", shown)
    if mode == "I":
        values = np.asarray(image)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _to_gray_unit(values.astype(np.uint16), "rgb", shown)
        return _to_gray_unit(values, "rgb", shown)
    if mode == "F":
        return _to_gray_unit(np.asarray(image), "rgb", shown)
    if mode in ("1", "L"):
        return _to_gray_unit(np.asarray(image.convert("L")), "rgb", shown)
    has_alpha = "A" in mode or "transparency" in image.info
    return _to_gray_unit(np.asarray(image.convert("RGBA" if has_alpha else "RGB")), "rgb", shown)


def _to_gray_unit(array: np.ndarray, channel_order: str, shown: str) -> tuple[np.ndarray, int]:
    """Any decoded array (H, W[, C]) of any numeric type -> float32 (H, W) in [0, 1] and its bit depth."""
    unit, bit_depth = _scale_to_unit(array, shown)
    if unit.ndim == 2:
        gray = unit
    elif unit.ndim == 3 and unit.shape[2] in (1, 2, 3, 4):
        channels = unit.shape[2]
        if channels <= 2:
            gray = unit[..., 0]
        else:
            color = unit[..., :3] if channel_order == "rgb" else unit[..., 2::-1]
            gray = color @ _LUMA_WEIGHTS_RGB
        if channels in (2, 4):
            gray = gray * unit[..., -1]  # composite on black
    else:
        raise BadImageError(shown, f"unsupported pixel layout {array.shape}")
    gray = np.clip(gray, 0.0, 1.0).astype(np.float32, copy=False)
    return np.ascontiguousarray(gray), bit_depth


def _scale_to_unit(array: np.ndarray, shown: str) -> tuple[np.ndarray, int]:
    if array.dtype == np.bool_:
        return array.astype(np.float32), 1
    if np.issubdtype(array.dtype, np.unsignedinteger):
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max), array.dtype.itemsize * 8
    if np.issubdtype(array.dtype, np.signedinteger):
        info = np.iinfo(array.dtype)
        scaled = (array.astype(np.float64) - info.min) / (float(info.max) - info.min)
        return scaled.astype(np.float32), array.dtype.itemsize * 8
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise BadImageError(shown, "image has non-finite (NaN or infinite) pixel values")
        return _minmax_unless_unit(values), array.dtype.itemsize * 8
    raise BadImageError(shown, f"unsupported pixel type {array.dtype}")


def _minmax_unless_unit(values: np.ndarray) -> np.ndarray:
    """Keep values already in [0, 1]; min-max scale others (a constant image becomes zeros)."""
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values
    if high - low <= 0.0 or not math.isfinite(high - low):
        return np.zeros_like(values, dtype=np.float32)
    return ((values.astype(np.float64) - low) / (high - low)).astype(np.float32)


def _decode_dicom(data: bytes, shown: str, max_pixels: int) -> DecodedImage:
    """DICOM via pydicom: Modality LUT, then VOI LUT or windowing, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, get_decoder

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        has_pixels = "PixelData" in dataset or "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset
        rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        bits_stored = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)) or 8)
        spacing = _dicom_pixel_spacing(dataset)
        transfer_syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    except Exception as error:  # pydicom raises many types on corrupt headers; each means "unreadable"
        raise BadImageError(shown, f"unreadable DICOM ({one_line(error)})") from None
    if not has_pixels:
        raise BadImageError(shown, "DICOM has no pixel data")
    _check_pixel_count(columns, rows * max(frames, 1), max_pixels, shown)  # every frame gets decoded
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        try:
            available = get_decoder(transfer_syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise BadImageError(shown, f"unsupported DICOM transfer syntax {transfer_syntax.name} (no decoder installed)")
    try:
        raw = dataset.pixel_array
        if frames > 1 and raw.ndim >= 3:
            raw = raw[0]
        if raw.ndim == 3:  # colour DICOM: pydicom returns RGB
            pixels, _ = _to_gray_unit(raw, "rgb", shown)
            values = pixels.astype(np.float64)
        else:
            values = _apply_voi(np.asarray(apply_modality_lut(raw, dataset)), dataset)
    except BadImageError:
        raise
    except Exception as error:  # decoder failures on corrupt pixel data come in many types
        raise BadImageError(shown, f"cannot decode DICOM pixel data ({one_line(error)})") from None
    if not np.isfinite(values).all():
        raise BadImageError(shown, "DICOM has non-finite pixel values")
    values = np.clip(values, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    return DecodedImage(values.astype(np.float32), (rows or values.shape[0], columns or values.shape[1]), "dicom", bits_stored, spacing)


def _apply_voi(modality: np.ndarray, dataset) -> np.ndarray:  # noqa: ANN001 (pydicom Dataset)
    """Map modality values to [0, 1]: window centre/width, else a VOI LUT, else the image's min-max."""
    values = modality.astype(np.float64)
    center, width = _first_value(dataset.get("WindowCenter")), _first_value(dataset.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(dataset.get("VOILUTFunction", "LINEAR")).strip().upper()
        if function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if function == "LINEAR_EXACT":
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        if width >= 1:  # DICOM PS3.3 C.11.2.1.2.1 linear window
            return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-12) + 0.5, 0.0, 1.0)
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence) > 0:
        from pydicom.pixels import apply_voi

        lut_item = dataset.VOILUTSequence[0]
        mapped = np.asarray(apply_voi(modality, dataset, index=0), dtype=np.float64)  # LUTs index integer values
        lut_bits = int(lut_item.LUTDescriptor[2])
        return mapped / float(2**lut_bits - 1)
    return _minmax_unless_unit(values.astype(np.float32)).astype(np.float64) if values.size else values


def _first_value(value) -> float | None:  # noqa: ANN001 (pydicom DS or MultiValue)
    if value is None:
        return None
    try:
        if not isinstance(value, (int, float, str, bytes)):  # pydicom MultiValue: several windows, use the first
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _dicom_pixel_spacing(dataset) -> tuple[float, float] | None:  # noqa: ANN001 (pydicom Dataset)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        if value is not None:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError, IndexError):
                continue
            if row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col):
                return row, col
    return None


# --------------------------------------------------------------------------- data sets


def load_dataset(
    source: str | os.PathLike,
    *,
    patient_regex: str | None = None,
    classes: Iterable[str] | None = None,
    strict: bool = False,
) -> Dataset:
    """Discover a data set: a folder with one subfolder per class, or a CSV manifest.

    The CSV has columns ``path,label`` (cxr4's ``file,label`` works too) and optionally ``split``
    and ``patient_id``; relative paths resolve against the CSV's folder. ``classes`` restricts and
    orders the classes. Rows or files that cannot be used become ``dataset.problems`` (the first one
    raises in ``strict`` mode); a data set that cannot be used at all raises :class:`HmtError`.
    """
    path = Path(os.fsdecode(os.fspath(source)))
    wanted = _normalise_classes(classes)
    patient_pattern = _compile_patient_regex(patient_regex)
    if not path.exists():
        raise HmtError(f"{display_path(path)}: data set path does not exist")
    log = SkipLog(strict)
    if path.is_dir():
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
        match = pattern.search(name)
        return match.group(1) if match and match.group(1) else None
    for pattern, template in _DEFAULT_PATIENT_RULES:
        match = pattern.search(name)
        if match:
            return template.format(*match.groups())
    return None


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
    base = manifest.parent
    shown = display_path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise HmtError(f"{shown}: cannot read CSV manifest ({one_line(error)})") from None
    raw_names = reader.fieldnames or []
    column = {name.strip().lower(): raw for name, raw in zip(header, raw_names)}
    path_column = column.get("path", column.get("file"))
    if path_column is None:
        raise HmtError(f"{shown}: CSV manifest has no 'path' column (columns: {', '.join(header) or 'none'})")
    if "label" not in column:
        raise HmtError(f"{shown}: CSV manifest has no 'label' column (columns: {', '.join(header)})")
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
        if file in first_row_of:
            log.add(file, f"duplicate path (row {row_number}, first at row {first_row_of[file]})")
            continue
        first_row_of[file] = row_number
        if not os.path.lexists(file):
            log.add(file, f"file does not exist (row {row_number})")
            continue
        split = _parse_split((row.get(split_column) or "") if split_column else "", where)
        patient = ((row.get(patient_column) or "").strip() if patient_column else "") or patient_id_from_name(file.name, patient_pattern)
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
        positive = [name for name, share in zip(SPLIT_NAMES, targets) if share > 0]
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
    return values  # type: ignore[return-value]


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
            "skipped": [{"path": problem.path, "reason": problem.reason} for problem in self.problems],
        }


def check_dataset(
    dataset: Dataset, *, max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = False, progress: Progress | None = None
) -> CheckReport:
    """Decode every image of a data set and count what is usable (``strict`` raises on the first bad file)."""
    log = SkipLog(strict)
    for problem in dataset.problems:
        log.add(problem.path, problem.reason)
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

"""Decoding: every image format hmt reads, to one form, with a one-line reason for every bad file.

Every later stage sees images only as :class:`DecodedImage` (float32 grayscale in [0, 1] plus
metadata), so format quirks (16-bit, alpha, palettes, DICOM windowing, MONOCHROME1) are handled
here once. Bad files never crash a run: :func:`decode_image` raises :class:`BadImageError` with a
short reason, and runs collect those in a :class:`~heatmap_templates.errors.SkipLog`.

Choices worth knowing:

* Images smaller than :data:`MIN_IMAGE_SIDE` pixels on a side (a 1 x 1 image, for instance) are
  rejected as "too small": nothing useful can be classified or registered at that size.
* The declared size is read from the header *before* decoding, so a decompression bomb is refused
  without allocating its pixels.
* RGB(A) becomes luma (ITU-R BT.601 weights, as OpenCV and Pillow use); alpha is composited on black.
* Integer pixels are scaled by the intensity mode (:data:`INTENSITIES`, default ``bits``): by the
  range their bits actually use. A 16-bit PNG or TIFF whose values sit in the low 12 bits (as PACS
  exports and several public CXR sets store them) is scaled by 4095, not 65535, which would leave
  the image almost black. A PNG ``sBIT`` chunk (or a TIFF ``MaxSampleValue``) declares the bits: a
  compliant file is already stretched to the full 16 bits and is scaled by 65535; one whose values
  fit in the declared bits is scaled by them. Without a declaration, a 16-bit image whose maximum
  is below 4096 is taken as 12-bit data. ``full`` divides by the type's range, ``minmax`` stretches
  each image to [0, 1]. Float pixels already in [0, 1] are kept, other float images are min-max
  scaled; non-finite pixels are refused.
* DICOM without a window or VOI LUT is min-max scaled over the image (what viewers' auto-window does).
"""
from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.TiffImagePlugin import TiffImageFile

from heatmap_templates.errors import BadImageError, display_path, one_line
from heatmap_templates.registry import Registry

DEFAULT_MAX_PIXELS = 50_000_000
MIN_IMAGE_SIDE = 8
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})

_LUMA_WEIGHTS_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_UNDECLARED_LOW_BITS = 12  # a 16-bit image below 2**12 without a declaration is 12-bit data
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TAIL_SEARCH_BYTES = 4096


@dataclass(frozen=True)
class DecodedImage:
    """An image in hmt's single internal form plus what was known about its source."""

    pixels: np.ndarray  # float32 (H, W) in [0, 1]
    original_size: tuple[int, int]  # (H, W)
    source_format: str  # png, jpeg, bmp, tiff, dicom
    bit_depth: int
    pixel_spacing: tuple[float, float] | None = None  # (row, col) in mm, DICOM only



@dataclass(frozen=True)
class Scaling:
    """How integer pixels of one file become [0, 1]: the intensity mode and the bits the file declares."""

    intensity: str
    declared_bits: int | None = None


IntensityFunction = Callable[[np.ndarray, int, "int | None"], "tuple[np.ndarray, int]"]
INTENSITIES: Registry[IntensityFunction] = Registry("intensity mode", parameter="intensity")
DEFAULT_INTENSITY = "bits"
LEGACY_INTENSITY = "full"  # what models trained before the intensity was recorded were decoded with


def used_bits(maximum: int, type_bits: int, declared_bits: int | None) -> int:
    """The bits an unsigned image uses: declared bits its values fit in, else 12 for an undeclared 16-bit
    image whose maximum is below 4096, else the type's bits (see the module docstring)."""
    if type_bits <= 8:
        return type_bits
    if declared_bits is not None and declared_bits < type_bits:
        return declared_bits if maximum < 2**declared_bits else type_bits
    if declared_bits is None and maximum < 2**_UNDECLARED_LOW_BITS:
        return _UNDECLARED_LOW_BITS
    return type_bits


@INTENSITIES.register("bits", help="scale by the bits the values use: 12-bit data in 16-bit files is found and stretched")
def _by_used_bits(array: np.ndarray, type_bits: int, declared_bits: int | None) -> tuple[np.ndarray, int]:
    bits = used_bits(int(array.max()) if array.size else 0, type_bits, declared_bits)
    return array.astype(np.float32) / np.float32(2**bits - 1), bits


@INTENSITIES.register("full", help="scale by the pixel type's range (65535 for 16-bit files)")
def _by_type_range(array: np.ndarray, type_bits: int, declared_bits: int | None) -> tuple[np.ndarray, int]:
    return array.astype(np.float32) / np.float32(2**type_bits - 1), type_bits


@INTENSITIES.register("minmax", help="stretch each image's darkest to brightest pixel to [0, 1]")
def _by_image_range(array: np.ndarray, type_bits: int, declared_bits: int | None) -> tuple[np.ndarray, int]:
    return _minmax_unless_unit(array.astype(np.float32), always=True), type_bits


def decode_image(path: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 intensity: str = DEFAULT_INTENSITY) -> DecodedImage:
    """Decode one image file (PNG, JPEG, BMP, TIFF or DICOM) to float32 grayscale in [0, 1].

    ``intensity`` (:data:`INTENSITIES`) says how integer pixels are scaled; DICOM files use their
    own modality and VOI transforms. Raises :class:`BadImageError` (naming the file, with a short
    reason) for every file that cannot be used; no other exception escapes for bad file contents.
    """
    INTENSITIES.check(intensity)
    shown = display_path(path)
    data = _read_file(path, shown)
    suffix = os.path.splitext(os.fsdecode(os.fspath(path)))[1].lower()
    kind = _sniff_format(data, suffix)
    if kind is None:
        raise BadImageError(shown, "not an image (unrecognised file content)")
    if kind == "dicom":
        decoded = _decode_dicom(data, shown, max_pixels)
    else:
        decoded = _decode_raster(data, kind, shown, max_pixels, intensity)
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


def _decode_raster(data: bytes, kind: str, shown: str, max_pixels: int, intensity: str) -> DecodedImage:
    """PNG/JPEG/BMP/TIFF: OpenCV for speed, Pillow for what OpenCV cannot read."""
    _check_complete(data, kind, shown)
    original_size = _declared_size(data, kind, shown, max_pixels)
    if kind == "png":
        _check_png_stream(data, shown)
    scaling = Scaling(intensity, _significant_bits(data, kind))
    # JPEG: keep depth and colour but apply the EXIF orientation (IMREAD_UNCHANGED would ignore it).
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if kind == "jpeg" else cv2.IMREAD_UNCHANGED
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        array = None
    if array is not None and array.size > 0:
        pixels, bit_depth = _to_gray_unit(array, "bgr", shown, scaling)
    else:
        pixels, bit_depth = _decode_with_pillow(data, kind, shown, scaling)
    return DecodedImage(pixels, original_size, kind, bit_depth, None)


def _significant_bits(data: bytes, kind: str) -> int | None:
    """The bits per sample a file declares it really uses: PNG ``sBIT``, TIFF ``MaxSampleValue`` (None if absent)."""
    if kind == "png":
        position = len(_PNG_MAGIC)
        while position + 12 <= len(data):
            length, = struct.unpack_from(">I", data, position)
            chunk = data[position + 4:position + 8]
            if chunk == b"sBIT" and length >= 1:
                body = data[position + 8:position + 8 + length]
                return max(body[:3]) if length >= 3 else body[0]  # colour channels (alpha excluded), or gray
            if chunk in (b"IDAT", b"IEND"):
                return None
            position += 12 + length
        return None
    if kind == "tiff":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data)) as header:
                    value = header.tag_v2.get(281) if isinstance(header, TiffImageFile) else None  # MaxSampleValue
        except Exception:
            return None
        if value is None:
            return None
        maximum = max(value) if isinstance(value, tuple) else value
        return int(maximum).bit_length() if int(maximum) > 0 else None
    return None


def _decode_with_pillow(data: bytes, kind: str, shown: str, scaling: Scaling) -> tuple[np.ndarray, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return _pillow_to_gray_unit(image, shown, scaling)
    except BadImageError:
        raise
    except Exception as error:  # Pillow raises many types on corrupt data; each means "cannot decode"
        raise BadImageError(shown, f"cannot decode {kind.upper()} ({one_line(error)})") from None


def _pillow_to_gray_unit(image: Image.Image, shown: str, scaling: Scaling) -> tuple[np.ndarray, int]:
    mode = image.mode
    if mode.startswith("I;16"):
        return _to_gray_unit(np.asarray(image).astype(np.uint16), "rgb", shown, scaling)
    if mode == "I":
        values = np.asarray(image)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _to_gray_unit(values.astype(np.uint16), "rgb", shown, scaling)
        return _to_gray_unit(values, "rgb", shown, scaling)
    if mode == "F":
        return _to_gray_unit(np.asarray(image), "rgb", shown, scaling)
    if mode in ("1", "L"):
        return _to_gray_unit(np.asarray(image.convert("L")), "rgb", shown, scaling)
    has_alpha = "A" in mode or "transparency" in image.info
    return _to_gray_unit(np.asarray(image.convert("RGBA" if has_alpha else "RGB")), "rgb", shown, scaling)


def _to_gray_unit(array: np.ndarray, channel_order: str, shown: str, scaling: Scaling) -> tuple[np.ndarray, int]:
    """Any decoded array (H, W[, C]) of any numeric type -> float32 (H, W) in [0, 1] and its bit depth."""
    unit, bit_depth = _scale_to_unit(array, shown, scaling)
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


def _scale_to_unit(array: np.ndarray, shown: str, scaling: Scaling) -> tuple[np.ndarray, int]:
    if array.dtype == np.bool_:
        return array.astype(np.float32), 1
    if np.issubdtype(array.dtype, np.unsignedinteger):
        return INTENSITIES[scaling.intensity](array, array.dtype.itemsize * 8, scaling.declared_bits)
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


def _minmax_unless_unit(values: np.ndarray, *, always: bool = False) -> np.ndarray:
    """Keep values already in [0, 1] (unless ``always``); min-max scale others (a constant image becomes zeros)."""
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0 and not always:
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
            pixels, _ = _to_gray_unit(raw, "rgb", shown, Scaling(LEGACY_INTENSITY))
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


def _apply_voi(modality: np.ndarray, dataset) -> np.ndarray:
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


def _first_value(value) -> float | None:
    if value is None:
        return None
    try:
        if not isinstance(value, (int, float, str, bytes)):  # pydicom MultiValue: several windows, use the first
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _dicom_pixel_spacing(dataset) -> tuple[float, float] | None:
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


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file as :func:`decode_image` gives it: from the header where PIL reads one, sides
    swapped for a JPEG whose EXIF orientation (5-8) turns it, else by decoding."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            height, width = image.height, image.width
            turned = image.format == "JPEG" and image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            return (width, height) if turned else (height, width)
    except Exception:
        height, width = decode_image(path).pixels.shape[:2]
        return int(height), int(width)

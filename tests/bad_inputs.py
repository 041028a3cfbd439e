"""Writers for a corpus of bad and odd inputs, shared by the tests of every stage.

Each ``write_*`` function writes one case into a folder and returns what a test needs to check it:
:class:`BadImage` (a file that must give ``BadImageError`` whose reason contains ``reason``),
:class:`ValidImage` (an odd but valid file and the exact pixels it must decode to) or
:class:`BadDataset` (a data set that ``load_dataset`` must refuse, or whose rows it must skip).
``BAD_IMAGE_WRITERS``, ``VALID_IMAGE_WRITERS`` and ``BAD_DATASET_WRITERS`` list them for parametrising.

Later stages (heatmaps, build-templates) can drop ``write_bad_images(folder)`` into a class folder
and check that the run goes on and reports each file.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SIZE = 32  # side of the small test images
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class BadImage:
    kind: str
    path: Path
    reason: str  # substring of the expected BadImageError reason
    needs_non_root: bool = False  # root reads every file: the check needs a monkeypatch there


@dataclass(frozen=True)
class ValidImage:
    kind: str
    path: Path
    expected: np.ndarray  # float32 (H, W) in [0, 1]
    source_format: str
    bit_depth: int
    atol: float = 1e-6  # lossy formats (JPEG) need more
    pixel_spacing: tuple[float, float] | None = None


@dataclass(frozen=True)
class BadDataset:
    kind: str
    path: Path  # folder or CSV to pass to load_dataset
    message: str  # substring of the HmtError message, or of the skipped row's reason
    fatal: bool  # True: load_dataset raises HmtError; False: the row is skipped into dataset.problems


def gradient_u8(height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """A deterministic, non-constant 8-bit image (so value checks are meaningful)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows * 7 + cols * 3) % 256).astype(np.uint8)


def _png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _jpeg_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encoded.tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


# --------------------------------------------------------------------------- bad images


def write_zero_byte(folder: Path) -> BadImage:
    path = folder / "zero_byte.png"
    path.write_bytes(b"")
    return BadImage("zero_byte", path, "empty file")


def write_truncated_png(folder: Path) -> BadImage:
    path = folder / "truncated.png"
    data = _png_bytes(gradient_u8(64, 64))
    path.write_bytes(data[: len(data) // 2])
    return BadImage("truncated_png", path, "truncated PNG")


def write_truncated_jpeg(folder: Path) -> BadImage:
    path = folder / "truncated.jpg"
    data = _jpeg_bytes(gradient_u8(64, 64))
    path.write_bytes(data[: len(data) // 2])
    return BadImage("truncated_jpeg", path, "truncated JPEG")


def write_truncated_bmp(folder: Path) -> BadImage:
    path = folder / "truncated.bmp"
    ok, encoded = cv2.imencode(".bmp", gradient_u8())
    assert ok
    path.write_bytes(encoded.tobytes()[:-200])
    return BadImage("truncated_bmp", path, "truncated BMP")


def write_truncated_tiff(folder: Path) -> BadImage:
    path = folder / "truncated.tiff"
    ok, encoded = cv2.imencode(".tiff", gradient_u8(64, 64))
    assert ok
    path.write_bytes(encoded.tobytes()[: len(encoded) * 6 // 10])
    return BadImage("truncated_tiff", path, "corrupt or truncated TIFF")


def write_text_as_png(folder: Path) -> BadImage:
    path = folder / "notes.png"
    path.write_text("this is a text file, not an image\n")
    return BadImage("text_as_png", path, "not an image")


def write_corrupt_png_data(folder: Path) -> BadImage:
    """Complete chunk structure (IEND present) but garbage where the compressed pixels should be."""
    path = folder / "corrupt_data.png"
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 0, 0, 0, 0)
    data = _PNG_MAGIC + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"\x13\x37" * 40) + _png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return BadImage("corrupt_png_data", path, "cannot decode PNG")


def write_one_pixel(folder: Path) -> BadImage:
    path = folder / "one_pixel.png"
    path.write_bytes(_png_bytes(np.array([[128]], dtype=np.uint8)))
    return BadImage("one_pixel", path, "too small")


def write_png_bomb(folder: Path) -> BadImage:
    """A PNG that declares 100000 x 100000 pixels (10 gigapixels) in a few hundred bytes."""
    path = folder / "bomb.png"
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    path.write_bytes(_PNG_MAGIC + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return BadImage("png_bomb", path, "decompression bomb")


def write_bmp_bomb(folder: Path) -> BadImage:
    """A BMP header declaring 60000 x 60000 pixels (the size is read from the header, not decoded)."""
    path = folder / "bomb.bmp"
    width = height = 60_000
    pixel_bytes = 64
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 0, 2835, 2835, 256, 0)
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + len(info) + len(palette)
    file_header = b"BM" + struct.pack("<IHHI", offset + pixel_bytes, 0, 0, offset)
    path.write_bytes(file_header + info + palette + b"\x00" * pixel_bytes)
    return BadImage("bmp_bomb", path, "decompression bomb")


def write_nan_tiff(folder: Path) -> BadImage:
    path = folder / "nan.tiff"
    image = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    image[3, 5] = np.nan
    assert cv2.imwrite(str(path), image)
    return BadImage("nan_tiff", path, "non-finite")


def write_directory_named_png(folder: Path) -> BadImage:
    path = folder / "folder.png"
    path.mkdir()
    return BadImage("directory_named_png", path, "is a directory")


def write_unreadable(folder: Path) -> BadImage:
    path = folder / "unreadable.png"
    path.write_bytes(_png_bytes(gradient_u8()))
    path.chmod(0)
    return BadImage("unreadable", path, "permission denied", needs_non_root=True)


def write_symlink_loop(folder: Path) -> BadImage:
    first, second = folder / "loop_a.png", folder / "loop_b.png"
    os.symlink(second.name, first)
    os.symlink(first.name, second)
    return BadImage("symlink_loop", first, "symlink loop")


def write_broken_symlink(folder: Path) -> BadImage:
    path = folder / "dangling.png"
    os.symlink("does_not_exist.png", path)
    return BadImage("broken_symlink", path, "not found")


def write_non_utf8_name(folder: Path) -> BadImage:
    """A truncated PNG whose file name is not valid UTF-8 (the error message must still print)."""
    raw = os.fsencode(folder) + b"/bad_name_\xff\xfe.png"
    data = _png_bytes(gradient_u8())
    with open(raw, "wb") as handle:
        handle.write(data[:40])
    return BadImage("non_utf8_name", Path(os.fsdecode(raw)), "truncated PNG")


def write_dicom_no_pixels(folder: Path) -> BadImage:
    path = folder / "no_pixels.dcm"
    dataset = _dicom_dataset(np.zeros((SIZE, SIZE), np.uint16), "MONOCHROME2")
    del dataset.PixelData
    dataset.save_as(path, enforce_file_format=True)
    return BadImage("dicom_no_pixels", path, "no pixel data")


def write_dicom_unsupported_syntax(folder: Path) -> BadImage:
    """JPEG-LS compressed pixel data: pydicom has no built-in decoder for it."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    path = folder / "jpeg_ls.dcm"
    dataset = _dicom_dataset(np.zeros((SIZE, SIZE), np.uint16), "MONOCHROME2")
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 60])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return BadImage("dicom_unsupported_syntax", path, "unsupported DICOM transfer syntax")


def write_dicom_garbage(folder: Path) -> BadImage:
    """The DICOM preamble and magic followed by bytes that are not a data set."""
    path = folder / "garbage.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff\xfe\x13\x37" * 8)
    return BadImage("dicom_garbage", path, "DICOM")


BAD_IMAGE_WRITERS: tuple[Callable[[Path], BadImage], ...] = (
    write_zero_byte,
    write_truncated_png,
    write_truncated_jpeg,
    write_truncated_bmp,
    write_truncated_tiff,
    write_text_as_png,
    write_corrupt_png_data,
    write_one_pixel,
    write_png_bomb,
    write_bmp_bomb,
    write_nan_tiff,
    write_directory_named_png,
    write_unreadable,
    write_symlink_loop,
    write_broken_symlink,
    write_non_utf8_name,
    write_dicom_no_pixels,
    write_dicom_unsupported_syntax,
    write_dicom_garbage,
)


def write_bad_images(folder: Path) -> list[BadImage]:
    """Write every bad-image kind into ``folder`` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [writer(folder) for writer in BAD_IMAGE_WRITERS]


# --------------------------------------------------------------------------- odd but valid images


def write_png_gray8(folder: Path) -> ValidImage:
    image = gradient_u8()
    path = folder / "gray8.png"
    path.write_bytes(_png_bytes(image))
    return ValidImage("png_gray8", path, image / np.float32(255), "png", 8)


def write_png_gray16(folder: Path) -> ValidImage:
    image = (gradient_u8().astype(np.uint16) * 257 + 3).astype(np.uint16)
    path = folder / "gray16.png"
    path.write_bytes(_png_bytes(image))
    return ValidImage("png_gray16", path, image / np.float32(65535), "png", 16)


def _rgb_planes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = gradient_u8()
    return base, base[::-1].copy(), base[:, ::-1].copy()


def _luma(red: np.ndarray, green: np.ndarray, blue: np.ndarray, scale: float) -> np.ndarray:
    return (0.299 * red + 0.587 * green + 0.114 * blue).astype(np.float32) / np.float32(scale)


def write_png_rgb(folder: Path) -> ValidImage:
    red, green, blue = _rgb_planes()
    path = folder / "rgb.png"
    path.write_bytes(_png_bytes(np.dstack([blue, green, red])))
    return ValidImage("png_rgb", path, _luma(red, green, blue, 255), "png", 8)


def write_png_rgb16(folder: Path) -> ValidImage:
    red, green, blue = (plane.astype(np.uint16) * 257 for plane in _rgb_planes())
    path = folder / "rgb16.png"
    path.write_bytes(_png_bytes(np.dstack([blue, green, red])))
    return ValidImage("png_rgb16", path, _luma(red, green, blue, 65535), "png", 16)


def write_png_rgba(folder: Path) -> ValidImage:
    """RGBA: the expected gray is luma times alpha (composited on black)."""
    red, green, blue = _rgb_planes()
    alpha = np.tile(np.linspace(0, 255, SIZE).astype(np.uint8), (SIZE, 1))
    path = folder / "rgba.png"
    path.write_bytes(_png_bytes(np.dstack([blue, green, red, alpha])))
    return ValidImage("png_rgba", path, _luma(red, green, blue, 255) * (alpha / np.float32(255)), "png", 8)


def write_png_palette(folder: Path) -> ValidImage:
    indices = (gradient_u8() % 16).astype(np.uint8)
    palette_rgb = np.array([[i * 16, 255 - i * 16, (i * 40) % 256] for i in range(16)], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette_rgb.flatten().tolist())
    path = folder / "palette.png"
    image.save(path)
    rgb = palette_rgb[indices]
    return ValidImage("png_palette", path, _luma(rgb[..., 0], rgb[..., 1], rgb[..., 2], 255), "png", 8)


def write_png_constant(folder: Path) -> ValidImage:
    image = np.full((SIZE, SIZE), 77, dtype=np.uint8)
    path = folder / "constant.png"
    path.write_bytes(_png_bytes(image))
    return ValidImage("png_constant", path, image / np.float32(255), "png", 8)


def write_jpeg_gray(folder: Path) -> ValidImage:
    image = np.repeat(np.linspace(0, 255, SIZE).astype(np.uint8)[None, :], SIZE, axis=0)
    path = folder / "gray.jpg"
    path.write_bytes(_jpeg_bytes(image))
    return ValidImage("jpeg_gray", path, image / np.float32(255), "jpeg", 8, atol=0.03)


def write_bmp_rgb(folder: Path) -> ValidImage:
    red, green, blue = _rgb_planes()
    path = folder / "rgb.bmp"
    assert cv2.imwrite(str(path), np.dstack([blue, green, red]))
    return ValidImage("bmp_rgb", path, _luma(red, green, blue, 255), "bmp", 8)


def write_tiff_gray16(folder: Path) -> ValidImage:
    image = (gradient_u8().astype(np.uint16) * 250).astype(np.uint16)
    path = folder / "gray16.tif"
    assert cv2.imwrite(str(path), image)
    return ValidImage("tiff_gray16", path, image / np.float32(65535), "tiff", 16)


def write_tiff_float(folder: Path) -> ValidImage:
    """A float TIFF outside [0, 1] is min-max scaled."""
    image = np.linspace(-5, 20, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    path = folder / "float.tiff"
    assert cv2.imwrite(str(path), image)
    return ValidImage("tiff_float", path, (image + 5) / np.float32(25), "tiff", 32, atol=1e-5)


def write_dicom_mono2_windowed(folder: Path) -> ValidImage:
    """16-bit MONOCHROME2 with rescale (HU = 2 * stored - 1000) and a window (centre 0, width 1000)."""
    stored = (gradient_u8().astype(np.uint16) * 4 + 300).astype(np.uint16)
    dataset = _dicom_dataset(stored, "MONOCHROME2")
    dataset.RescaleSlope, dataset.RescaleIntercept = 2, -1000
    dataset.WindowCenter, dataset.WindowWidth = 0, 1000
    dataset.PixelSpacing = [0.14, 0.15]
    path = folder / "mono2.dcm"
    dataset.save_as(path, enforce_file_format=True)
    hounsfield = stored.astype(np.float64) * 2 - 1000
    expected = np.clip((hounsfield + 0.5) / 999 + 0.5, 0, 1).astype(np.float32)
    return ValidImage("dicom_mono2_windowed", path, expected, "dicom", 12, atol=1e-5, pixel_spacing=(0.14, 0.15))


def write_dicom_mono1(folder: Path) -> ValidImage:
    """MONOCHROME1 (white = low values), no window: min-max scaled, then inverted; no file suffix."""
    stored = (gradient_u8().astype(np.uint16) * 16).astype(np.uint16)
    dataset = _dicom_dataset(stored, "MONOCHROME1")
    dataset.ImagerPixelSpacing = [0.2, 0.2]
    path = folder / "mono1_no_suffix"
    dataset.save_as(path, enforce_file_format=True)
    scaled = (stored - stored.min()) / float(stored.max() - stored.min())
    return ValidImage("dicom_mono1", path, (1 - scaled).astype(np.float32), "dicom", 12, atol=1e-6, pixel_spacing=(0.2, 0.2))


def write_dicom_voi_lut(folder: Path) -> ValidImage:
    """A VOI LUT sequence (no window): 1024 entries of 16 bits mapping stored value v to 64 v."""
    from pydicom.dataset import Dataset

    stored = (gradient_u8().astype(np.uint16) * 5).astype(np.uint16)  # up to 1275: beyond the LUT clamps to its last entry
    dataset = _dicom_dataset(stored, "MONOCHROME2")
    lut_item = Dataset()
    lut_item.LUTDescriptor = [1024, 0, 16]
    lut_item.add_new(0x00283006, "OW", (np.arange(1024) * 64).astype("<u2").tobytes())  # LUTData
    dataset.VOILUTSequence = [lut_item]
    path = folder / "voi_lut.dcm"
    dataset.save_as(path, enforce_file_format=True)
    expected = (np.minimum(stored, 1023) * 64).astype(np.float32) / np.float32(65535)
    return ValidImage("dicom_voi_lut", path, expected, "dicom", 12, atol=1e-6)


VALID_IMAGE_WRITERS: tuple[Callable[[Path], ValidImage], ...] = (
    write_png_gray8,
    write_png_gray16,
    write_png_rgb,
    write_png_rgb16,
    write_png_rgba,
    write_png_palette,
    write_png_constant,
    write_jpeg_gray,
    write_bmp_rgb,
    write_tiff_gray16,
    write_tiff_float,
    write_dicom_mono2_windowed,
    write_dicom_mono1,
    write_dicom_voi_lut,
)


def _dicom_dataset(stored: np.ndarray, photometric: str):
    """A minimal, uncompressed single-frame grayscale DICOM data set around ``stored`` (uint16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = stored.astype("<u2").tobytes()
    return dataset



# --------------------------------------------------------------------------- bad data sets


def write_class_folders(root: Path, counts: dict[str, int]) -> Path:
    """A small valid class-per-folder data set (gradient PNGs) under ``root``."""
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (root / label / f"{label}_{index:03d}.png").write_bytes(_png_bytes(np.roll(gradient_u8(), index, axis=1)))
    return root


def write_empty_class_folder(folder: Path) -> BadDataset:
    root = write_class_folders(folder / "empty_class", {"covid": 2, "normal": 2})
    (root / "virus").mkdir()
    return BadDataset("empty_class_folder", root, "'virus' has no images", fatal=True)


def write_one_class_only(folder: Path) -> BadDataset:
    root = write_class_folders(folder / "one_class", {"covid": 2})
    return BadDataset("one_class_only", root, "at least 2 class", fatal=True)


def write_csv_missing_column(folder: Path) -> BadDataset:
    root = write_class_folders(folder / "missing_column", {"covid": 1, "normal": 1})
    manifest = root / "manifest.csv"
    manifest.write_text("path,diagnosis\ncovid/covid_000.png,covid\nnormal/normal_000.png,normal\n")
    return BadDataset("csv_missing_column", manifest, "no 'label' column", fatal=True)


def _manifest_with_extra_row(folder: Path, name: str, extra_row: str) -> Path:
    root = write_class_folders(folder / name, {"covid": 2, "normal": 2})
    rows = ["path,label", "covid/covid_000.png,covid", "covid/covid_001.png,covid", "normal/normal_000.png,normal", "normal/normal_001.png,normal"]
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows + [extra_row]) + "\n")
    return manifest


def write_csv_unknown_label(folder: Path) -> BadDataset:
    """Skipped when ``classes=["covid", "normal"]`` is given (otherwise 'virus' would be a third class)."""
    (folder / "unknown_label" / "virus").mkdir(parents=True)
    (folder / "unknown_label" / "virus" / "v.png").write_bytes(_png_bytes(gradient_u8()))
    manifest = _manifest_with_extra_row(folder, "unknown_label", "virus/v.png,virus")
    return BadDataset("csv_unknown_label", manifest, "unknown label 'virus'", fatal=False)


def write_csv_duplicate_path(folder: Path) -> BadDataset:
    manifest = _manifest_with_extra_row(folder, "duplicate_path", "covid/./covid_000.png,covid")
    return BadDataset("csv_duplicate_path", manifest, "duplicate path", fatal=False)


def write_csv_missing_file(folder: Path) -> BadDataset:
    manifest = _manifest_with_extra_row(folder, "missing_file", "covid/not_there.png,covid")
    return BadDataset("csv_missing_file", manifest, "does not exist", fatal=False)


BAD_DATASET_WRITERS: tuple[Callable[[Path], BadDataset], ...] = (
    write_empty_class_folder,
    write_one_class_only,
    write_csv_missing_column,
    write_csv_unknown_label,
    write_csv_duplicate_path,
    write_csv_missing_file,
)

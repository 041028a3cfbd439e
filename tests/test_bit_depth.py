"""Bit depth: 12-bit data in 16-bit files keeps its full contrast, in every format, and the intensity
mode a model was trained with is recorded and reused by every later command."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt
from PIL import Image

from heatmap_templates.data.decode import INTENSITIES, LEGACY_INTENSITY, decode_image, used_bits
from heatmap_templates.errors import HmtError
from heatmap_templates.model.model_file import ModelInfo, load_model, read_model_info

SIZE = 48


def chest_like() -> np.ndarray:
    """A known test image in [0, 1]: a horizontal gradient with two darker 'lungs' (min 0, max 1)."""
    yy, xx = np.mgrid[:SIZE, :SIZE] / (SIZE - 1)
    image = 0.2 + 0.8 * xx
    for centre in (0.3, 0.7):
        image = np.where(((xx - centre) / 0.12) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1, image * 0.4, image)
    return (image - image.min()) / (image.max() - image.min())


def _with_sbit(png: bytes, bits: int) -> bytes:
    """The PNG with an sBIT chunk (declared significant bits) inserted after IHDR."""
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]


def _png16(values: np.ndarray) -> bytes:
    encoded, data = cv2.imencode(".png", values.astype(np.uint16))
    assert encoded
    return data.tobytes()


def _tiff16(values: np.ndarray, max_sample: int | None = None) -> bytes:
    buffer = io.BytesIO()
    tags = {281: max_sample} if max_sample is not None else {}
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="TIFF", tiffinfo=tags)
    return buffer.getvalue()


def _dicom12(values: np.ndarray) -> bytes:
    import bad_inputs  # the DICOM writer of the bad-input corpus

    dataset = bad_inputs._dicom_dataset(values.astype(np.uint16), "MONOCHROME2")
    dataset.BitsStored, dataset.HighBit = 12, 11
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encode(kind: str, image: np.ndarray) -> tuple[str, bytes]:
    twelve = np.rint(image * 4095)  # 12-bit data, as PACS exports store it in 16-bit files
    if kind == "png8":
        return ".png", cv2.imencode(".png", np.rint(image * 255).astype(np.uint8))[1].tobytes()
    if kind == "png16":
        return ".png", _png16(np.rint(image * 65535))
    if kind == "png16_low12":
        return ".png", _png16(twelve)
    if kind == "png16_low12_sbit":
        return ".png", _with_sbit(_png16(twelve), 12)
    if kind == "png16_scaled12_sbit":  # a compliant PNG: 12-bit data stretched to 16 bits, sBIT records 12
        scaled = twelve.astype(np.uint32)
        return ".png", _with_sbit(_png16((scaled << 4) | (scaled >> 8)), 12)
    if kind == "tiff16":
        return ".tif", _tiff16(np.rint(image * 65535))
    if kind == "tiff16_low12":
        return ".tif", _tiff16(twelve)
    if kind == "tiff16_low12_max_sample":
        return ".tif", _tiff16(twelve, 4095)
    if kind == "jpeg":
        return ".jpg", cv2.imencode(".jpg", np.rint(image * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()
    if kind == "bmp":
        return ".bmp", cv2.imencode(".bmp", np.rint(image * 255).astype(np.uint8))[1].tobytes()
    if kind == "dicom12":
        return ".dcm", _dicom12(twelve)
    raise AssertionError(kind)


FORMATS = ["png8", "png16", "png16_low12", "png16_low12_sbit", "png16_scaled12_sbit", "tiff16", "tiff16_low12",
           "tiff16_low12_max_sample", "jpeg", "bmp", "dicom12"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_keeps_the_full_contrast_of_a_known_image(kind: str, tmp_path: Path) -> None:
    image = chest_like()
    suffix, data = _encode(kind, image)
    path = tmp_path / f"{kind}{suffix}"
    path.write_bytes(data)
    pixels = decode_image(path).pixels
    tolerance = 0.03 if kind == "jpeg" else 0.005
    assert pixels.min() <= tolerance and pixels.max() >= 1 - tolerance, (pixels.min(), pixels.max())
    np.testing.assert_allclose(pixels, image, atol=tolerance + 0.01)


def test_the_old_full_range_scaling_left_12_bit_images_almost_black(tmp_path: Path) -> None:
    path = tmp_path / "low12.png"
    path.write_bytes(_png16(np.rint(chest_like() * 4095)))
    assert decode_image(path, intensity="full").pixels.max() == pytest.approx(4095 / 65535, abs=1e-6)  # about 0.06
    assert decode_image(path, intensity="bits").pixels.max() == pytest.approx(1.0)
    darker = tmp_path / "darker.png"
    darker.write_bytes(_png16(np.rint(chest_like() * 3000 + 500)))
    minmax = decode_image(darker, intensity="minmax").pixels
    assert minmax.min() == pytest.approx(0.0) and minmax.max() == pytest.approx(1.0)


def test_used_bits_by_hand() -> None:
    assert used_bits(255, 8, None) == 8
    assert used_bits(4095, 16, None) == 12 and used_bits(4096, 16, None) == 16
    assert used_bits(1023, 16, 10) == 10 and used_bits(65535, 16, 12) == 16  # fits the declaration, or stretched
    assert used_bits(4000, 16, 16) == 16
    assert set(INTENSITIES.names()) == {"bits", "full", "minmax"}


def test_intensity_is_recorded_in_the_model_and_older_models_read_as_full(tmp_path: Path) -> None:
    import json
    import zipfile

    from test_reliability import save_tiny_model

    path = save_tiny_model(tmp_path / "model.keras")
    assert read_model_info(path).intensity == "bits"
    with zipfile.ZipFile(path) as archive:
        record = json.loads(archive.read("hmt_info.json"))
    del record["intensity"]
    assert ModelInfo.from_dict(record).intensity == LEGACY_INTENSITY == "full"
    with pytest.raises(HmtError, match="does not match the model's recorded intensity bits"):
        load_model(path, intensity="minmax")
    assert load_model(path, intensity="bits")[1].intensity == "bits"


def test_training_records_the_intensity_and_heatmaps_decode_with_it(tmp_path: Path, capsys, monkeypatch) -> None:
    """A data set of 12-bit PNGs: `hmt train --intensity` is recorded, and `hmt heatmaps` stores the images decoded that way."""
    from heatmap_templates.store import open_heatmaps

    for label, shift in (("covid", 0.0), ("normal", 0.3)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(4):
            image = np.clip(chest_like() * 0.7 + shift * (index % 2), 0, 1)
            (tmp_path / "data" / label / f"{label}_{index}.png").write_bytes(_png16(np.rint(image * 4095)))
    model = tmp_path / "model.keras"
    for intensity, brightest in (("bits", range(250, 256)), ("full", range(12, 17))):  # 12-bit data: 255, or 4095/65535 of it
        code, _, err = run_hmt(["train", tmp_path / "data", "--backbone", "small", "--input-size", "32", "--epochs", "1",
                                "--batch-size", "4", "--intensity", intensity, "--out", model, "--project-dir", tmp_path,
                                "--val-fraction", "0.25", "--test-fraction", "0.25"], capsys, monkeypatch)
        assert code == 0, err
        assert read_model_info(model).intensity == intensity
        store = tmp_path / f"{intensity}.h5"
        code, _, err = run_hmt(["heatmaps", model, tmp_path / "data", "--out", store], capsys, monkeypatch)
        assert code == 0, err
        reader = open_heatmaps(store)
        assert reader.settings.intensity == intensity
        assert next(reader.iter_batches(8)).images.max() in brightest
    code, _, err = run_hmt(["train", tmp_path / "data", "--intensity", "loud"], capsys, monkeypatch)
    assert_user_error(code, err, "unknown intensity 'loud' (--intensity); choose one of bits, full, minmax")

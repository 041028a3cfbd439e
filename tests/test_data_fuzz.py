"""Property tests for decode_image (and preprocessing of what it returns): only BadImageError, never a crash or NaN."""
from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heatmap_templates.data.decode import MIN_IMAGE_SIDE, decode_image, used_bits
from heatmap_templates.data.preprocess import PREPROCESSING, prepare_batch
from heatmap_templates.errors import BadImageError

FUZZ_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_counter = itertools.count()

# (extension, dtype, channel counts) that OpenCV can write.
ENCODABLE = [
    (".png", np.uint8, (1, 3, 4)),
    (".png", np.uint16, (1, 3, 4)),
    (".jpg", np.uint8, (1, 3)),
    (".bmp", np.uint8, (1, 3)),
    (".tiff", np.uint8, (1, 3, 4)),
    (".tiff", np.uint16, (1, 3)),
    (".tiff", np.float32, (1,)),
]
MAGIC_PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"\x00" * 128 + b"DICM"]


def _write(folder: Path, suffix: str, content: bytes) -> Path:
    path = folder / f"fuzz_{next(_counter)}{suffix}"
    path.write_bytes(content)
    return path


def _assert_decodes_or_bad_image_error(path: Path) -> None:
    """The contract: a valid [0, 1] float32 image without NaN, or BadImageError naming the file."""
    try:
        decoded = decode_image(path, max_pixels=1_000_000)
    except BadImageError as error:
        assert error.path == str(path) and error.reason and "\n" not in error.reason
        return
    pixels = decoded.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert min(pixels.shape) >= MIN_IMAGE_SIDE
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


@FUZZ_SETTINGS
@given(
    prefix=st.sampled_from(MAGIC_PREFIXES),
    body=st.binary(max_size=600),
    suffix=st.sampled_from([".png", ".jpg", ".bmp", ".tif", ".dcm", ""]),
)
def test_random_bytes_never_crash(tmp_path: Path, prefix: bytes, body: bytes, suffix: str) -> None:
    _assert_decodes_or_bad_image_error(_write(tmp_path, suffix, prefix + body))


@st.composite
def encoded_images(draw: st.DrawFn) -> tuple[str, bytes, np.ndarray]:
    """A random valid image encoded by OpenCV, with the array it was made from."""
    suffix, dtype, channel_options = draw(st.sampled_from(ENCODABLE))
    channels = draw(st.sampled_from(channel_options))
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == np.float32:
        array = (rng.random(shape, dtype=np.float32) * draw(st.sampled_from([1.0, 300.0]))).astype(np.float32)
    else:
        array = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)
    ok, encoded = cv2.imencode(suffix, array)
    assert ok
    return suffix, encoded.tobytes(), array


@FUZZ_SETTINGS
@given(
    image=encoded_images(),
    input_size=st.tuples(st.integers(8, 48), st.integers(8, 48)),
    channels=st.sampled_from([1, 3]),
    mode=st.sampled_from(PREPROCESSING.names()),
)
def test_valid_images_decode_and_preprocess(
    tmp_path: Path, image: tuple[str, bytes, np.ndarray], input_size: tuple[int, int], channels: int, mode: str
) -> None:
    suffix, content, array = image
    path = _write(tmp_path, suffix, content)
    if min(array.shape[:2]) < MIN_IMAGE_SIDE:
        with pytest.raises(BadImageError, match="too small"):
            decode_image(path)
        return
    decoded = decode_image(path)
    assert decoded.pixels.shape == array.shape[:2] == decoded.original_size
    _assert_decodes_or_bad_image_error(path)
    if array.ndim == 2 and array.dtype != np.float32 and suffix != ".jpg":  # lossless gray: exact values
        bits = used_bits(int(array.max()), array.dtype.itemsize * 8, None)  # the default intensity mode, `bits`
        expected = array.astype(np.float64) / (2**bits - 1)
        np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
        np.testing.assert_allclose(decode_image(path, intensity="full").pixels, array / np.iinfo(array.dtype).max, atol=1e-6)
    batch = prepare_batch([decoded.pixels], input_size, channels, mode)
    assert batch.shape == (1, *input_size, channels) and batch.dtype == np.float32
    assert np.isfinite(batch).all()


@FUZZ_SETTINGS
@given(image=encoded_images(), cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=6))
def test_damaged_images_never_crash(tmp_path: Path, image: tuple[str, bytes, np.ndarray], cut: float, flips: list[tuple[float, int]]) -> None:
    suffix, content, _ = image
    damaged = bytearray(content[: max(1, int(len(content) * cut))] if cut < 1.0 else content)
    for position, mask in flips:
        index = min(int(position * len(damaged)), len(damaged) - 1)
        damaged[index] ^= mask
    _assert_decodes_or_bad_image_error(_write(tmp_path, suffix, bytes(damaged)))

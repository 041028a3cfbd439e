"""Training beyond the memory budget: decoded images (and pooled features) stream from a disk cache and give
the same split, the same weights and the same test metrics as training in memory."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_classifier import _write_toy_set

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.data.disk_arrays import DiskArray
from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.model.training import TrainConfig, train


def test_disk_array_reads_what_was_appended_by_slice_index_and_order(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).integers(0, 256, (10, 3, 4), dtype=np.uint8)
    array = DiskArray(tmp_path / "rows.u8", (3, 4), np.uint8)
    array.append(rows[:4])
    array.append(rows[4:])
    assert len(array) == 10 and array.shape == (10, 3, 4) and array.nbytes == rows.nbytes
    np.testing.assert_array_equal(array[2:7], rows[2:7])
    np.testing.assert_array_equal(array[[9, 0, 9, 3]], rows[[9, 0, 9, 3]])
    np.testing.assert_array_equal(array[5], rows[5])
    np.testing.assert_array_equal(array[::3], rows[::3])
    np.testing.assert_array_equal(np.asarray(array), rows)
    assert array[10:12].shape == (0, 3, 4)
    with pytest.raises(IndexError):
        array[[10]]
    with pytest.raises(ValueError, match="do not fit"):
        array.append(np.zeros((1, 4, 3), np.uint8))


def test_disk_array_in_a_missing_folder_is_a_one_line_write_error(tmp_path: Path) -> None:
    with pytest.raises(BadFileError, match="cannot write"):
        DiskArray(tmp_path / "missing" / "rows.u8", (2,), np.float32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_toy_set(tmp_path_factory.mktemp("streaming") / "data")


@pytest.mark.parametrize("backbone", ["small", "vgg16"])  # full-model fit through tf.data; head fit on cached features
def test_streamed_training_equals_training_in_memory(toy: Path, tmp_path: Path, backbone: str) -> None:
    config = TrainConfig(backbone=backbone, weights="none", epochs=2, input_size=32, batch_size=8, val_fraction=0.25,
                         test_fraction=0.25, dense_units=16)
    dataset = load_dataset(toy)
    in_memory = train(dataset, config)
    streamed = train(dataset, replace(config, memory_budget_gb=1e-6, cache_dir=str(tmp_path)))
    assert not in_memory.info.training["streamed_from_disk"] and streamed.info.training["streamed_from_disk"]
    assert streamed.info.training["cached_features"] == (backbone == "vgg16")
    assert streamed.info.split == in_memory.info.split
    assert streamed.test_report == in_memory.test_report
    for streamed_weights, memory_weights in zip(streamed.model.get_weights(), in_memory.model.get_weights(), strict=True):
        np.testing.assert_array_equal(streamed_weights, memory_weights)
    assert not any(tmp_path.iterdir())  # the disk cache is removed


def test_memory_budget_must_be_positive() -> None:
    with pytest.raises(HmtError, match="memory budget"):
        TrainConfig(backbone="small", memory_budget_gb=0).validate()

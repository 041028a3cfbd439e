"""HDF5 storage: heatmap store round trips and crash safety, templates file round trips, merges, refusals, CLI."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py  # only to craft damaged files; the library itself touches HDF5 through store/ and templates/templates_file.py alone
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from heatmap_templates.errors import BadFileError, HmtError
from heatmap_templates.store import TEMPLATES, HeatmapBatch, HeatmapWriter, open_heatmaps
from heatmap_templates.templates.accumulator import LOO_EXACT, LOO_MERGED, ClassAccumulator, Member
from heatmap_templates.templates.build import merge_template_files
from heatmap_templates.templates.members import member_indices
from heatmap_templates.templates.templates_file import load_accumulator, read_templates, save_templates
from hmt_cli.inspect import describe

ROOT = Path(__file__).resolve().parents[1]
SIZE = (16, 12)
HEATMAP_SETTINGS = {
    "model_sha256": "ab" * 32,
    "class_names": ["covid", "normal"],
    "layer": "block/conv",
    "cam_method": "gradcam",
    "score": "logit",
    "input_size": list(SIZE),
    "preprocessing": "unit",
    "intensity": "bits",
    "threshold": 0.5,
}
TEMPLATE_SETTINGS = HEATMAP_SETTINGS | {"registration": "affine", "normalisation": "minmax"}


def make_batch(start: int, n: int) -> HeatmapBatch:
    """Images numbered start..start+n-1, each row a function of its number alone (labels alternate,
    every third image misclassified), so any slice of images can be rebuilt for comparison."""
    rows = [np.random.default_rng(i) for i in range(start, start + n)]
    index = np.arange(start, start + n)
    labels = index % 2
    predicted = np.where(index % 3 == 0, 1 - labels, labels)
    return HeatmapBatch(
        paths=[f"data/img_{i:04d}.png" for i in index],
        sha256=[f"{i:064x}" for i in index],
        labels=labels,
        predicted=predicted,
        probabilities=np.array([rng.random(2) for rng in rows], dtype=np.float32).reshape(n, 2),
        correct=labels == predicted,
        images=np.array([rng.integers(0, 256, SIZE) for rng in rows], dtype=np.uint8).reshape(n, *SIZE),
        raw=np.array([rng.random((2, 4, 3)) for rng in rows], dtype=np.float32).reshape(n, 2, 4, 3),
    )


def batch_row(batch: HeatmapBatch, row: int) -> HeatmapBatch:
    """One row of a batch as a batch of one."""
    return HeatmapBatch(
        [batch.paths[row]], [batch.sha256[row]], *(getattr(batch, name)[row : row + 1] for name in ("labels", "predicted", "probabilities", "correct", "images", "raw"))
    )


def _assert_rows_match(batch: HeatmapBatch, expected: HeatmapBatch) -> None:
    assert batch.paths == expected.paths and batch.sha256 == expected.sha256
    for name in ("labels", "predicted", "probabilities", "correct", "images", "raw", "upsampled"):  # upsampled: derived
        np.testing.assert_array_equal(getattr(batch, name), getattr(expected, name), err_msg=name)


# ----------------------------------------------------------------------------- heatmap store


def test_heatmap_store_round_trip_resume_and_selection(tmp_path: Path) -> None:
    path = tmp_path / "heatmaps.h5"
    with HeatmapWriter(path, HEATMAP_SETTINGS) as writer:
        writer.append(make_batch(0, 5))
        writer.append(make_batch(5, 4))
    assert path.is_file() and not (tmp_path / "heatmaps.h5.parts").exists()
    with HeatmapWriter(path, HEATMAP_SETTINGS) as writer:  # resume: adds to the finalised file
        assert {"data/img_0008.png", f"{8:064x}"} <= writer.done and "data/img_0009.png" not in writer.done
        writer.append(make_batch(9, 3))
    reader = open_heatmaps(path)
    assert len(reader) == 12 and reader.settings.to_dict() == HEATMAP_SETTINGS
    everything = make_batch(0, 12)
    assert reader.paths == [f"data/img_{i:04d}.png" for i in range(12)]
    picked = [10, 1, 7]
    (batch,) = reader.iter_batches(8, indices=picked)
    for row, number in enumerate(picked):
        _assert_rows_match(batch_row(batch, row), make_batch(number, 1))
    assert sum(len(b) for b in reader.iter_batches(5)) == 12
    np.testing.assert_array_equal(batch.maps_for(1), everything.upsampled[picked, 1])
    labels, correct, predicted = everything.labels, everything.correct, everything.predicted
    np.testing.assert_array_equal(member_indices(reader, 0), np.flatnonzero((labels == 0) & correct))
    np.testing.assert_array_equal(member_indices(reader, 0, "all"), np.flatnonzero(labels == 0))
    np.testing.assert_array_equal(member_indices(reader, 1, "predicted"), np.flatnonzero(predicted == 1))
    with pytest.raises(HmtError, match="unknown include rule 'wrong'"):
        member_indices(reader, 0, "wrong")


@pytest.mark.parametrize("rows", [[3], list(range(5, 40)), list(range(0, 300, 7)), [0, 15, 16, 17, 250, 299]])
def test_rows_read_by_slices_equal_hdf5s_point_selection(tmp_path: Path, rows: list[int]) -> None:
    """_read_rows reads a span, or one slice per stored chunk for sparse rows; h5py's point selection is the reference."""
    from heatmap_templates.store.heatmap_store import _read_rows

    path = tmp_path / "rows.h5"
    values = np.random.default_rng(0).integers(0, 255, size=(300, 6, 5)).astype(np.uint8)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("image", data=values, chunks=(16, 6, 5), compression="lzf")
        handle.create_dataset("path", data=np.array([f"p{i}.png" for i in range(300)], dtype=object), dtype=h5py.string_dtype())
    index = np.array(rows)
    with h5py.File(path, "r") as handle:
        np.testing.assert_array_equal(_read_rows(handle["image"], index), handle["image"][rows])
        assert list(_read_rows(handle["path"], index)) == [f"p{i}.png" for i in rows]


def test_two_writers_never_overwrite_each_others_shards(tmp_path: Path) -> None:
    path = tmp_path / "heatmaps.h5"
    first, second = HeatmapWriter(path, HEATMAP_SETTINGS), HeatmapWriter(path, HEATMAP_SETTINGS)
    first.append(make_batch(0, 3))
    second.append(make_batch(3, 3))
    second.finalize()
    assert open_heatmaps(path).paths == make_batch(0, 6).paths


def test_heatmap_store_refuses_other_settings_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "heatmaps.h5"
    with HeatmapWriter(path, HEATMAP_SETTINGS) as writer:
        writer.append(make_batch(0, 2))
    for key, value in [("layer", "other/conv"), ("model_sha256", "cd" * 32), ("input_size", [32, 32]), ("class_names", ["a", "b"])]:
        with pytest.raises(BadFileError, match=f"heatmaps.h5: made with {key}="):
            HeatmapWriter(path, HEATMAP_SETTINGS | {key: value})
    shards_only = tmp_path / "partial.h5"
    HeatmapWriter(shards_only, HEATMAP_SETTINGS).append(make_batch(0, 2))
    with pytest.raises(BadFileError, match=r"000000\.h5: made with score="):
        HeatmapWriter(shards_only, HEATMAP_SETTINGS | {"score": "probability"})
    with pytest.raises(ValueError, match="images"):
        HeatmapWriter(tmp_path / "x.h5", HEATMAP_SETTINGS).append(_wrong_size_batch())
    float32_run = tmp_path / "float32.h5"
    HeatmapWriter(float32_run, HEATMAP_SETTINGS | {"mixed_precision": False}).append(make_batch(0, 2))
    with pytest.raises(BadFileError, match="made with mixed_precision=false"):
        HeatmapWriter(float32_run, HEATMAP_SETTINGS | {"mixed_precision": True})


def _wrong_size_batch() -> HeatmapBatch:
    batch = make_batch(0, 2)
    batch.images = np.zeros((2, 8, 8), np.uint8)
    return batch


_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_store import HEATMAP_SETTINGS, make_batch
    from heatmap_templates.store import HeatmapWriter
    writer = HeatmapWriter({path!r}, HEATMAP_SETTINGS)
    start = max([int(p.split('_')[-1][:4]) + 1 for p in writer.done if p.startswith('data/')] or [0])
    for first in range(start, 400, 4):
        writer.append(make_batch(first, 4))
        print(first, flush=True)
        if {finalize} and first >= 12:
            print("finalizing", flush=True)
            writer.finalize()
            print("finalized", flush=True)
            time.sleep(60)
    time.sleep(60)
    """
)


def _run_and_kill(path: Path, *, finalize: bool, wait_for: str) -> list[str]:
    """Run a writer in a child process and SIGKILL it once it prints `wait_for`; returns what it printed."""
    code = _CHILD.format(tests=str(ROOT / "tests"), path=str(path), finalize=finalize)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    try:
        for line in child.stdout:
            lines.append(line.strip())
            if line.strip() == wait_for:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    return lines


@pytest.mark.timeout(180)
def test_sigkill_mid_run_leaves_complete_batches_and_rerun_resumes(tmp_path: Path) -> None:
    path = tmp_path / "heatmaps.h5"
    _run_and_kill(path, finalize=False, wait_for="8")  # killed while appending later batches
    reader = open_heatmaps(path)
    assert len(reader) >= 12 and len(reader) % 4 == 0 and reader.pending_shards == len(reader) // 4
    _assert_rows_match(next(reader.iter_batches(len(reader))), make_batch(0, len(reader)))
    writer = HeatmapWriter(path, HEATMAP_SETTINGS)  # the rerun: knows what is done, computes only the rest
    assert {p for p in writer.done if p.startswith("data/")} == set(reader.paths)
    writer.append(make_batch(len(reader), 4))
    writer.finalize()
    final = open_heatmaps(path)
    assert final.pending_shards == 0 and not (tmp_path / "heatmaps.h5.parts").exists()
    _assert_rows_match(next(final.iter_batches(100)), make_batch(0, len(reader) + 4))


@pytest.mark.timeout(180)
def test_sigkill_during_finalize_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "heatmaps.h5"
    printed = _run_and_kill(path, finalize=True, wait_for="finalizing")
    appended = 4 * len([line for line in printed if line.isdigit()])
    reader = open_heatmaps(path)  # old state (shards) or new file, perhaps both: never a damaged file
    assert len(reader) == appended
    _assert_rows_match(next(reader.iter_batches(100)), make_batch(0, appended))
    with HeatmapWriter(path, HEATMAP_SETTINGS) as writer:
        assert len([p for p in writer.done if p.startswith("data/")]) == appended
    assert len(open_heatmaps(path)) == appended and open_heatmaps(path).pending_shards == 0


def test_kill_between_final_rename_and_shard_removal_counts_each_image_once(tmp_path: Path) -> None:
    path = tmp_path / "heatmaps.h5"
    writer = HeatmapWriter(path, HEATMAP_SETTINGS)
    writer.append(make_batch(0, 4))
    writer.append(make_batch(4, 4))
    parts = tmp_path / "heatmaps.h5.parts"
    shutil.copytree(parts, tmp_path / "saved_parts")
    writer.finalize()
    shutil.copytree(tmp_path / "saved_parts", parts)  # the state a SIGKILL right after the rename leaves
    (parts / ".000002.h5.tmp-99999").write_bytes(b"half-written")  # and a half-written temporary shard
    reader = open_heatmaps(path)
    assert len(reader) == 8 and reader.pending_shards == 2
    _assert_rows_match(next(reader.iter_batches(100)), make_batch(0, 8))
    HeatmapWriter(path, HEATMAP_SETTINGS).finalize()
    assert len(open_heatmaps(path)) == 8 and not parts.exists()


def test_open_heatmaps_refuses_missing_corrupt_and_other_kind_files(tmp_path: Path) -> None:
    with pytest.raises(BadFileError, match="no such heatmap store"):
        open_heatmaps(tmp_path / "missing.h5")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    with pytest.raises(BadFileError, match="corrupt.h5: not a readable HDF5 file"):
        open_heatmaps(corrupt)
    templates = _save_class(tmp_path / "templates.h5", "covid", 0, 6)
    with pytest.raises(BadFileError, match="is a 'hmt-templates' file, not 'hmt-heatmaps'"):
        open_heatmaps(templates)


# ----------------------------------------------------------------------------- templates file


def _maps(start: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + start)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    centres = rng.normal([8, 6], 1.5, size=(n, 2))
    return np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 10.0) + rng.uniform(0, 0.2, (n, *SIZE))


def _members(start: int, n: int) -> list[Member]:
    return [Member(f"data/img_{i:04d}.png", f"{i:064x}", 0.8, 0.9, "affine") for i in range(start, start + n)]


def _accumulator(name: str, start: int, n: int) -> ClassAccumulator:
    accumulator = ClassAccumulator(name, SIZE, pca_size=8, n_components=3, bootstrap_replicates=30)
    accumulator.add(_maps(start, n), _members(start, n))
    return accumulator


REFERENCE = np.linspace(0, 1, SIZE[0] * SIZE[1]).reshape(SIZE).astype(np.float32)
LUNGS = (REFERENCE > 0.5).astype(np.uint8)


def _save_class(path: Path, name: str, start: int, n: int, settings: dict = TEMPLATE_SETTINGS) -> Path:
    template = _accumulator(name, start, n).finalize()
    template.compute_leave_one_out([_maps(start, n)])
    return save_templates(path, settings, [template], reference_image=REFERENCE, lung_mask=LUNGS, command="hmt build-templates --class " + name)


def test_templates_round_trip_and_adding_a_class(tmp_path: Path) -> None:
    path = tmp_path / "out" / "templates.h5"
    built = _accumulator("covid", 0, 12).finalize()
    built.compute_leave_one_out([_maps(0, 12)])
    save_templates(path, TEMPLATE_SETTINGS, [built], reference_image=REFERENCE, lung_mask=LUNGS, command="hmt build-templates --class covid")
    _save_class(path, "normal", 100, 9)  # adds, keeps covid
    data = read_templates(path, expected_model_sha256="ab" * 32)
    assert list(data.templates) == ["covid", "normal"] and data.settings.to_dict() == TEMPLATE_SETTINGS
    assert data.attrs["kind"] == "hmt-templates" and data.attrs["schema_version"] == TEMPLATES.version and data.attrs["layer"] == "block/conv"
    np.testing.assert_array_equal(data.reference_image, REFERENCE)
    np.testing.assert_array_equal(data.lung_mask, LUNGS)
    covid = data.templates["covid"]
    assert covid.count == 12 and covid.members == _members(0, 12) and covid.loo_method == LOO_EXACT
    np.testing.assert_allclose(covid.mean, built.mean, atol=1e-6)
    np.testing.assert_allclose(covid.band_high, built.band_high, atol=1e-6)
    np.testing.assert_allclose(covid.components, built.components, atol=1e-6)
    np.testing.assert_allclose(covid.loo_correlations, built.loo_correlations)
    assert covid.mean_pairwise_correlation == pytest.approx(built.mean_pairwise_correlation)
    assert data.similarity_classes == ["covid", "normal"] and data.similarity.shape == (2, 2)
    np.testing.assert_allclose(np.diag(data.similarity), 1.0)
    restored = load_accumulator(path, "covid")
    assert restored.count == 12 and np.array_equal(restored.statistics["band"].bootstrap.sums, _accumulator("covid", 0, 12).statistics["band"].bootstrap.sums)


def test_templates_file_refusals(tmp_path: Path) -> None:
    path = _save_class(tmp_path / "templates.h5", "covid", 0, 6)
    with pytest.raises(BadFileError, match="made with registration="):
        _save_class(path, "normal", 50, 5, TEMPLATE_SETTINGS | {"registration": "none"})
    with pytest.raises(BadFileError, match="built with model cdcdcdcdcdcd, not"):
        read_templates(_other_model(tmp_path), expected_model_sha256="ab" * 32)
    with pytest.raises(BadFileError, match="another reference image"):
        save_templates(path, TEMPLATE_SETTINGS, [_accumulator("normal", 50, 5).finalize()], reference_image=REFERENCE * 0.5, lung_mask=LUNGS)
    with h5py.File(path, "a") as handle:
        handle.attrs["schema_version"] = TEMPLATES.version + 1
    with pytest.raises(BadFileError, match=f"unknown schema version {TEMPLATES.version + 1}"):
        read_templates(path)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not hdf5 at all")
    with pytest.raises(BadFileError, match="corrupt.h5: not a readable HDF5 file"):
        read_templates(corrupt)
    heatmaps = tmp_path / "heatmaps.h5"
    with HeatmapWriter(heatmaps, HEATMAP_SETTINGS) as writer:
        writer.append(make_batch(0, 2))
    with pytest.raises(BadFileError, match="is a 'hmt-heatmaps' file, not 'hmt-templates'"):
        read_templates(heatmaps)


def _other_model(tmp_path: Path) -> Path:
    return _save_class(tmp_path / "other.h5", "covid", 0, 4, TEMPLATE_SETTINGS | {"model_sha256": "cd" * 32})


def test_merge_templates_equals_one_build_over_the_union(tmp_path: Path) -> None:
    first = _save_class(tmp_path / "a.h5", "covid", 0, 14)
    _save_class(first, "normal", 200, 7)
    second = _save_class(tmp_path / "b.h5", "covid", 14, 11)
    union = ClassAccumulator("covid", SIZE, pca_size=8, n_components=3, bootstrap_replicates=30)
    union.add(_maps(0, 14), _members(0, 14))
    union.add(_maps(14, 11), _members(14, 11))
    expected = union.finalize()
    merged = merge_template_files([first, second], tmp_path / "merged.h5", command="hmt merge-templates a.h5 b.h5 -o merged.h5")
    covid = merged.templates["covid"]
    assert covid.count == 25 and covid.members == _members(0, 25)
    for name in ("mean", "std", "median", "band_low", "band_high", "components"):
        np.testing.assert_allclose(getattr(covid, name), getattr(expected, name), atol=1e-6, err_msg=name)
    np.testing.assert_allclose(covid.explained_variance_ratio, expected.explained_variance_ratio, rtol=1e-9)
    assert covid.mean_pairwise_correlation == pytest.approx(expected.mean_pairwise_correlation, abs=1e-12)
    assert covid.loo_method == LOO_MERGED and len(covid.loo_correlations) == 25
    assert merged.templates["normal"].count == 7 and merged.templates["normal"].loo_method == LOO_EXACT
    with pytest.raises(BadFileError, match="shares image data/img_0000.png of class 'covid'"):
        merge_template_files([first, first], tmp_path / "twice.h5")
    with pytest.raises(BadFileError, match="made with model_sha256="):
        merge_template_files([first, _other_model(tmp_path)], tmp_path / "mixed.h5")


# ----------------------------------------------------------------------------- CLI


def _hmt(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point in a child process (exit codes, one-line errors)."""
    return subprocess.run([sys.executable, "-c", "from hmt_cli.main import run; run()", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _hmt_in_process(*args: str) -> Result:
    """Successful commands in this process (a child costs seconds of imports on a busy CI machine)."""
    from hmt_cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, list(args))


def test_cli_merge_and_inspect(tmp_path: Path) -> None:
    first = _save_class(tmp_path / "a.h5", "covid", 0, 8)
    second = _save_class(tmp_path / "b.h5", "covid", 8, 6)
    merged = tmp_path / "merged.h5"
    result = _hmt("merge-templates", str(first), str(second), "-o", str(merged))
    assert result.returncode == 0, result.stderr
    assert "covid 14" in result.stdout
    result = _hmt_in_process("inspect", str(merged), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "hmt-templates" and summary["classes"]["covid"]["count"] == 14
    assert summary["attrs"]["command"].startswith("hmt merge-templates")
    result = _hmt_in_process("inspect", str(merged))
    assert "class covid: 14 members" in result.stdout and "leave-one-out correlation: p5" in result.stdout
    heatmaps = tmp_path / "heatmaps.h5"
    with HeatmapWriter(heatmaps, HEATMAP_SETTINGS) as writer:
        writer.append(make_batch(0, 6))
    result = _hmt_in_process("inspect", str(heatmaps))
    assert result.exit_code == 0, result.output
    assert "images: 6" in result.stdout and "covid:" in result.stdout


def test_cli_user_errors_exit_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from hmt_cli.main import run

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    for arguments, message in [
        (["inspect", str(bad)], f"hmt: error: {bad}: not a readable HDF5 file"),
        (["merge-templates", str(bad), "-o", str(tmp_path / "out.h5")], "hmt: error: merge-templates needs at least two input files"),
    ]:
        monkeypatch.setattr(sys, "argv", ["hmt", *arguments])
        with pytest.raises(SystemExit) as exit_info:
            run()
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == message


def test_describe_heatmap_store_counts(tmp_path: Path) -> None:
    path = tmp_path / "heatmaps.h5"
    HeatmapWriter(path, HEATMAP_SETTINGS).append(make_batch(0, 6))  # not finalised: described from shards
    summary = describe(path)
    batch = make_batch(0, 6)
    assert summary["images"] == 6 and summary["pending_shards"] == 1
    assert summary["classes"]["covid"]["correct"] == int(((batch.labels == 0) & batch.correct).sum())
    assert summary["shapes"] == {"image": list(SIZE), "raw": [2, 4, 3]}

"""Faults while writing: every output hmt writes, under a full disk, a read-only file system, a quota,
a permission refusal, or its folder removed mid-run.

Each must end with one line naming the output and the reason, exit code 2, no temporary file left,
the previous file (if any) as it was, and the work already completed kept so that a rerun resumes.
Real conditions are made where the machine allows (a tiny tmpfs for "no space", a read-only bind
mount); root cannot be refused permission or a quota, so those are injected at the write call
(``files.fsync_path``, which every writer calls on its finished temporary file, and the HDF5 open).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt
from prerequisites import mounted
from test_reliability import save_tiny_model, write_phantom_set

from heatmap_templates import files
from heatmap_templates.errors import BadFileError
from heatmap_templates.files import fault_reason
from heatmap_templates.store import open_heatmaps
from heatmap_templates.templates.templates_file import read_templates

TEMPORARY = ".tmp-"
_real_fsync = files.fsync_path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A phantom set, a tiny model, its heatmap store and a templates file, made once."""
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.templates.build import BuildConfig, build_templates

    root = tmp_path_factory.mktemp("faults")
    data = write_phantom_set(root / "data", 6)
    model = save_tiny_model(root / "model.keras")
    store = root / "heatmaps.h5"
    extract_heatmaps(model, data, store, batch_size=4)
    config = BuildConfig(registration="none", include="all", bootstrap_replicates=4)
    templates = root / "templates.h5"
    build_templates(store, None, templates, config=config)
    halves = [root / f"templates_{name}.h5" for name in ("covid", "normal")]  # disjoint, one frame: mergeable
    shared = BuildConfig(registration="none", include="all", bootstrap_replicates=4, reference=str(next((data / "normal").iterdir())))
    for half in halves:
        build_templates(store, [half.stem.split("_")[1]], half, config=shared)
    return {"root": root, "data": data, "model": model, "store": store, "templates": templates, "halves": halves}


def _leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if TEMPORARY in path.name]


def _fail_writes_of(monkeypatch: pytest.MonkeyPatch, name_part: str, number: int, after: int = 0) -> None:
    """Make the write of any file whose name contains ``name_part`` fail with OSError ``number`` (after ``after`` successes)."""
    real = files.fsync_path
    seen = {"count": 0}

    def failing(path: Path) -> None:
        if name_part in path.name:
            seen["count"] += 1
            if seen["count"] > after:
                raise OSError(number, os.strerror(number))
        real(path)

    monkeypatch.setattr(files, "fsync_path", failing)


def test_fault_reasons_name_the_condition() -> None:
    assert fault_reason(OSError(errno.ENOSPC, "No space left on device")) == "no space left on the device"
    assert fault_reason(OSError(errno.EROFS, "x")) == "read-only file system"
    assert fault_reason(OSError(errno.EDQUOT, "x")) == "disk quota exceeded"
    assert fault_reason(OSError(errno.EACCES, "x")) == "permission denied"
    assert fault_reason(OSError(errno.ENOENT, "x")) == "the output folder no longer exists"
    hdf5 = RuntimeError("Can't synchronously write data (file write failed: ..., errno = 28, error message = 'No space')")
    assert fault_reason(hdf5) == "no space left on the device"


# --------------------------------------------------------------------------- every writer, fault injected at its write


def _commands(setup: dict[str, Path], out: Path) -> dict[str, tuple[list, Path]]:
    """Each command that writes, with the output whose write is made to fail."""
    image = next((setup["data"] / "covid").iterdir())
    return {
        "heatmap store": (["heatmaps", setup["model"], setup["data"], "--out", out / "h.h5", "--batch-size", "4"], out / "h.h5"),
        "templates file": (["build-templates", "--heatmaps", setup["store"], "--all-classes", "--include", "all",
                            "--registration", "none", "--bootstrap", "4", "--out", out / "t.h5"], out / "t.h5"),
        "merged templates": (["merge-templates", *setup["halves"], "-o", out / "m.h5"], out / "m.h5"),
        "figures": (["figures", setup["templates"], "--out", out, "--format", "png", "--dpi", "40"], out / "template_means.png"),
        "model file": (["train", setup["data"], "--backbone", "small", "--input-size", "32", "--epochs", "1", "--batch-size", "8",
                        "--out", out / "model.keras", "--project-dir", out], out / "model.keras"),
        "training history": (["train", setup["data"], "--backbone", "small", "--input-size", "32", "--epochs", "1",
                              "--batch-size", "8", "--out", out / "model.keras", "--project-dir", out], out / "model.history.csv"),
        "project record": (["train", setup["data"], "--backbone", "small", "--input-size", "32", "--epochs", "1",
                            "--batch-size", "8", "--out", out / "model.keras", "--project-dir", out], out / "project.json"),
        "evaluation": (["evaluate", setup["model"], setup["data"], "--split", "all", "--out", out], out / "evaluation.json"),
        "predictions": (["evaluate", setup["model"], setup["data"], "--split", "all", "--predictions", out / "p.csv"], out / "p.csv"),
        "comparison table": (["compare", image, "--templates", setup["templates"], "--csv", out / "c.csv"], out / "c.csv"),
        "comparison figure": (["compare", image, "--templates", setup["templates"], "--figure", out / "c.png"], out / "c.png"),
        "phantom data set": (["synth", out / "phantoms", "-n", "2", "--size", "64", "--workers", "1"], out / "phantoms" / "manifest.csv"),
        "report": (["report", setup["templates"], "--heatmaps", setup["store"], "--out", out / "report", "--gallery", "1"],
                   out / "report" / "index.html"),
        "strategies": (["strategies", out / "t.h5", "--heatmaps", setup["store"]], out / "t.h5"),
    }


WRITERS = ["heatmap store", "templates file", "merged templates", "figures", "model file", "training history", "project record",
           "evaluation", "predictions", "comparison table", "comparison figure", "phantom data set", "report", "strategies"]


@pytest.mark.parametrize("number", [errno.EDQUOT, errno.EACCES], ids=["quota", "permission"])
@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_stops_in_one_line_and_leaves_nothing_half_written(writer: str, number: int, setup: dict[str, Path],
                                                                        tmp_path: Path, capsys, monkeypatch) -> None:
    arguments, target = _commands(setup, tmp_path / "out")[writer]
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = _previous_file(writer, setup)
    if previous is not None:
        target.write_bytes(previous)  # must survive the failed write untouched
    failing_name = target.name
    if writer == "report":  # the folder of an earlier report, which a failed report must leave as it was
        (target.parent / "report.json").write_text("{}")
    folder_output = writer in ("report", "figures", "phantom data set")  # written whole beside, swapped in: the folder is named
    if folder_output:
        earlier = sorted(p.name for p in target.parent.iterdir())
        target = target.parent
    monkeypatch.chdir(tmp_path)
    _fail_writes_of(monkeypatch, failing_name, number)
    code, _, err = run_hmt(arguments, capsys, monkeypatch)
    err = "".join(line for line in err.splitlines(keepends=True) if " epoch " not in line)  # train's epoch lines
    assert_user_error(code, err, str(target), f"cannot write ({fault_reason(OSError(number, ''))})")
    if folder_output:
        assert sorted(p.name for p in target.iterdir()) == earlier
        assert previous is None or (target / failing_name).read_bytes() == previous
    else:
        assert previous is None or target.read_bytes() == previous
    assert not _leftovers(tmp_path)


def _previous_file(writer: str, setup: dict[str, Path]) -> bytes | None:
    """What the output held before the run: a file the command replaces, or one it adds to (None: a new output)."""
    if writer in ("heatmap store", "phantom data set"):
        return None
    if writer in ("templates file", "strategies"):
        return setup["templates"].read_bytes()  # build-templates adds classes to it, strategies add their results
    if writer == "project record":
        return json.dumps({"model": str(setup["model"]), "data": str(setup["data"])}).encode()
    return b"the previous file"


# --------------------------------------------------------------------------- resume after a failed heatmap run


def test_heatmaps_failing_mid_run_keep_the_stored_batches_and_a_rerun_resumes(setup: dict[str, Path], tmp_path: Path,
                                                                              capsys, monkeypatch) -> None:
    out = tmp_path / "h.h5"
    arguments = ["heatmaps", setup["model"], setup["data"], "--out", out, "--batch-size", "4", "--json"]
    _fail_writes_of(monkeypatch, "000002.h5", errno.ENOSPC)  # the third shard
    code, _, err = run_hmt(arguments, capsys, monkeypatch)
    assert_user_error(code, err, str(out), "no space left on the device", "the 8 images stored before are kept")
    assert len(open_heatmaps(out)) == 8 and not _leftovers(tmp_path)
    monkeypatch.setattr(files, "fsync_path", _real_fsync)
    code, out_text, err = run_hmt(arguments, capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out_text)
    assert summary["resumed"] == 8 and summary["computed"] == 4
    _assert_same_store(out, setup["store"])



def _assert_same_store(path: Path, reference: Path) -> None:
    mine, theirs = open_heatmaps(path), open_heatmaps(reference)
    order = [theirs.paths.index(p) for p in mine.paths]
    np.testing.assert_array_equal(mine.predicted, theirs.predicted[order])
    (batch,) = mine.iter_batches(64)
    (expected,) = theirs.iter_batches(64, order)
    np.testing.assert_allclose(batch.raw, expected.raw, rtol=1e-5, atol=1e-6)


def test_output_folder_removed_mid_run_stops_with_one_line(setup: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    from heatmap_templates.store import HeatmapWriter

    out = tmp_path / "run" / "h.h5"
    append = HeatmapWriter.append

    def append_then_remove_the_folder(self, batch) -> None:
        append(self, batch)
        shutil.rmtree(out.parent)

    monkeypatch.setattr(HeatmapWriter, "append", append_then_remove_the_folder)
    code, _, err = run_hmt(["heatmaps", setup["model"], setup["data"], "--out", out, "--batch-size", "4"], capsys, monkeypatch)
    assert_user_error(code, err, str(out), "the output folder no longer exists")


def test_failed_finalize_keeps_every_shard_and_the_rerun_finishes_the_store(setup: dict[str, Path], tmp_path: Path,
                                                                            capsys, monkeypatch) -> None:
    out = tmp_path / "h.h5"
    arguments = ["heatmaps", setup["model"], setup["data"], "--out", out, "--batch-size", "4"]
    _fail_writes_of(monkeypatch, "h.h5.tmp", errno.ENOSPC)  # the final file, not the shards
    code, _, err = run_hmt(arguments, capsys, monkeypatch)
    assert_user_error(code, err, str(out), "no space left on the device", "all 12 images are kept in its shards")
    assert not out.exists() and len(open_heatmaps(out)) == 12
    monkeypatch.setattr(files, "fsync_path", _real_fsync)
    code, _, err = run_hmt(arguments, capsys, monkeypatch)
    assert code == 0 and out.is_file() and not (tmp_path / "h.h5.parts").exists(), err
    _assert_same_store(out, setup["store"])


# --------------------------------------------------------------------------- real conditions


def test_full_disk_during_heatmaps_exits_2_and_a_rerun_with_space_resumes(setup: dict[str, Path], tmp_path: Path,
                                                                          capsys, monkeypatch) -> None:
    disk = tmp_path / "disk"
    with mounted("tmpfs", disk, "-t", "tmpfs", "-o", "size=64k"):  # a few shards fit, not the whole store
        out = disk / "h.h5"
        arguments = ["heatmaps", setup["model"], setup["data"], "--out", out, "--batch-size", "2", "--json"]
        code, _, err = run_hmt(arguments, capsys, monkeypatch)
        assert_user_error(code, err, str(out), "no space left on the device")
        kept = len(open_heatmaps(out))
        assert 0 < kept < 12 and not _leftovers(disk)
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        code, text, err = run_hmt(arguments, capsys, monkeypatch)
        assert code == 0, err
        assert json.loads(text)["resumed"] == kept
        _assert_same_store(out, setup["store"])


def test_read_only_file_system_refuses_each_output_in_one_line(setup: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    shutil.copy(setup["templates"], folder / "templates.h5")
    with mounted(folder, folder, "--bind", "-o", "ro"):
        for arguments, target in [
            (["build-templates", "--heatmaps", setup["store"], "--all-classes", "--registration", "none", "--include", "all",
              "--bootstrap", "4", "--out", folder / "templates.h5"], folder / "templates.h5"),
            (["figures", setup["templates"], "--out", folder / "figures", "--format", "png"], folder / "figures"),
            (["heatmaps", setup["model"], setup["data"], "--out", folder / "h.h5"], folder / "h.h5"),
        ]:
            code, _, err = run_hmt(arguments, capsys, monkeypatch)
            assert_user_error(code, err, str(target), "read-only file system")
        read_templates(folder / "templates.h5")  # the earlier file is intact


def test_model_file_write_failure_leaves_the_previous_model_loadable(setup: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    import keras

    from heatmap_templates.model.model_file import load_model, save_model

    path = tmp_path / "model.keras"
    shutil.copy(setup["model"], path)
    model, info = load_model(path)

    def full_disk(self, *args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(BadFileError, match="no space left on the device"):
        save_model(model, info, path)
    assert path.read_bytes() == setup["model"].read_bytes() and not _leftovers(tmp_path)

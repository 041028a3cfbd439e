"""A real full disk under every writer of hmt, at both phases: full from the start, and full at the final write.

One driver process (tests/full_disk_driver.py) runs every case against a real tmpfs and reports what happened;
the tests below judge each case. Every writer must end with exit code 2 and one line naming its output and "no
space left on the device", with no traceback (h5py printed "Exception ignored ... OSError: [Errno 28]" from object
finalisers, then the process died with a segmentation fault), no temporary file left, every earlier file as it
was, and what it may keep complete. Single-file outputs (stores, templates files, the model) keep the earlier file
intact; folder outputs (figures, report, synth) are swapped in whole, so the earlier folder stays as it was; the
model's companion files are each written atomically; the heatmap store keeps its shards and a rerun with room
finishes it. A crash as the process exits (HDF5 flushing a file left open) shows as the driver's exit code, which
an in-process test could not see. Mounting needs root: elsewhere the tests skip, under CI they fail.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prerequisites import mounted

DRIVER = Path(__file__).with_name("full_disk_driver.py")
DISK_SIZE = "192m"  # room for a templates file (about 28 MB: its PCA state) three times over, and the filler's pages
NO_SPACE = "cannot write (no space left on the device)"
WRITERS = ["heatmaps", "heatmaps onto an earlier store", "build-templates", "merge-templates", "strategies", "sanity",
           "evaluate-templates", "figures", "report", "train", "synth"]
PHASES = ["start", "final"]


def _tmpfs(target: Path, size: str):
    """A tmpfs of ``size`` mounted at ``target`` for the block (a missing prerequisite where this machine cannot mount)."""
    return mounted("tmpfs", target, "-t", "tmpfs", "-o", f"size={size}")


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every case, run once by the driver process on a real tmpfs."""
    root = tmp_path_factory.mktemp("full_disk")
    (root / "work").mkdir()
    results = root / "results.json"
    with _tmpfs(root / "disk", DISK_SIZE):
        done = subprocess.run([sys.executable, str(DRIVER), str(root / "work"), str(root / "disk"), str(results)],
                              capture_output=True, text=True, timeout=400)
    report = json.loads(results.read_text()) if results.is_file() else {}
    last = root / "work" / "last_stderr.txt"  # what the last run printed, when the driver crashed during it
    return {"code": done.returncode, "stderr": done.stderr, "last_stderr": last.read_text() if last.is_file() else "", **report}


def test_the_driver_ends_cleanly(driven: dict) -> None:
    """No crash (a segmentation fault is exit code -11), during a case or as the process exits, and nothing printed."""
    where = f"during {driven['running']}" if driven.get("running") else "as it exited (or before its first case)"
    assert driven["code"] == 0, (f"the driver ended with {driven['code']} {where}:\n{driven['stderr'][-3000:]}\n"
                                 f"that run printed:\n{driven['last_stderr'][:4000]}")
    for sign in ("Traceback", "Exception ignored", "Fatal Python error"):
        assert sign not in driven["stderr"], driven["stderr"][-3000:]
    assert [(writer, sizes["code"]) for writer, sizes in driven["measured"].items()] == [(w, 0) for w in WRITERS], \
        {writer: sizes["stderr"][-500:] for writer, sizes in driven["measured"].items() if sizes["code"]}


def _case(driven: dict, writer: str, phase: str) -> dict:
    found = [case for case in driven.get("cases", []) if case["writer"] == writer and case["phase"] == phase]
    assert found, f"the driver did not run {writer} ({phase}); it stopped during {driven.get('running')}: {driven.get('stderr', '')[-2000:]}"
    return found[0]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_disk_stops_the_writer_in_one_line_and_keeps_the_earlier_output(driven: dict, writer: str, phase: str) -> None:
    case = _case(driven, writer, phase)
    folder, err = Path(case["folder"]), case["stderr"]
    for sign in ("Traceback", "Exception ignored"):
        assert sign not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert case["code"] == 2 and len(lines) == 1 and lines[0].startswith("hmt: error: "), (case["code"], err)
    named = lines[0][len("hmt: error: "):].split(": ", 1)[0]
    if writer == "train" and phase == "final":  # the model is saved; one of its companion files is not
        assert Path(named).parent == folder and Path(named).name.startswith("model.") and named != case["target"], lines[0]
        assert not Path(named).exists() and case["model_archive_ok"], (lines[0], case)
    else:
        assert named == case["target"], lines[0]
    assert NO_SPACE in lines[0], lines[0]
    assert case["leftovers"] == [], "temporary files or folders were left behind"
    assert case["open_hdf5_files"] == 0, "an HDF5 file stayed open: HDF5 would flush it as the process exits"
    before, after = case["before"], case["after"]
    assert {name: after.get(name) for name in before} == before, "an earlier file was changed or removed"
    new = sorted(set(after) - set(before))
    assert new == _allowed_new_files(writer, phase, new), f"new files: {new}"


def _allowed_new_files(writer: str, phase: str, new: list[str]) -> list[str]:
    """What a failed run may add: nothing, except the store's shards and a model saved before its companions failed."""
    if phase == "final" and writer.startswith("heatmaps"):
        return [name for name in new if name.startswith("h.h5.parts/") and name.endswith(".h5")]
    if phase == "final" and writer == "train":
        return [name for name in new if name.startswith("model.")]
    return []


def test_an_hdf5_write_into_a_full_disk_is_one_oserror_the_copy_stops_early_and_nothing_stays_open(tmp_path: Path, capsys) -> None:
    """The library's side of it: HDF5 never sees the failed write, so it closes cleanly and prints nothing; the OSError
    surfaces as one BadFileError naming the file, at the first `check_writes` after it, long before the copy's end."""
    import h5py
    import numpy as np

    from heatmap_templates.errors import BadFileError
    from heatmap_templates.store.hdf5 import atomic_h5, check_writes

    disk = tmp_path / "disk"
    blocks = []
    with _tmpfs(disk, "256k"), pytest.raises(BadFileError) as raised:
        with atomic_h5(disk / "x.h5") as out:
            data = out.create_dataset("x", shape=(400, 64, 64), dtype=np.float32, chunks=(4, 64, 64))
            for start in range(0, 400, 8):  # 6.5 MB of noise into 256 kB
                data[start : start + 8] = np.random.default_rng(start).random((8, 64, 64), dtype=np.float32)
                blocks.append(start)
                check_writes(out)
    assert str(raised.value) == f"{disk / 'x.h5'}: cannot write (no space left on the device)"
    assert len(blocks) <= 16, "the copy went on after the disk was full"  # of 50; HDF5's 1 MiB chunk cache is 8 blocks
    assert not h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE), "an HDF5 file stayed open"
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize("writer, earlier", [("heatmaps", 0), ("heatmaps onto an earlier store", 6)])
def test_a_full_disk_keeps_the_stored_heatmaps_and_a_rerun_with_room_finishes_the_store(driven: dict, writer: str,
                                                                                        earlier: int) -> None:
    start, final = _case(driven, writer, "start"), _case(driven, writer, "final")
    assert f"the {earlier} images stored before are kept" in start["stderr"] and start["stored"] == earlier
    assert "all 9 images are kept in its shards and a rerun finishes the store" in final["stderr"] and final["stored"] == 9
    rerun = final["rerun"]
    assert rerun["code"] == 0 and rerun["stored"] == 9 and not rerun["parts_left"], rerun["stderr"]

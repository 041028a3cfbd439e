"""SIGKILL in the middle of `hmt heatmaps` and `hmt build-templates`: no corrupt output, resumable.

Each run is a real `hmt` process killed with SIGKILL. So that the kill lands mid-run on a fast or
a loaded machine alike, the child process slows one step down (a sleep after each stored batch, or
inside the templates write) before calling the ordinary `hmt_cli.main.run`; nothing else changes,
except that the templates build skips the TensorFlow pre-import (it runs no model).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_hmt
from test_reliability import save_tiny_model, write_phantom_set

from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.store import open_heatmaps
from heatmap_templates.templates.build import BuildConfig, build_templates
from heatmap_templates.templates.templates_file import read_templates

SLOW_APPEND = """
import time
from heatmap_templates import store
append = store.HeatmapWriter.append
def slow_append(self, batch):
    append(self, batch)
    time.sleep(1.0)
store.HeatmapWriter.append = slow_append
"""
STALL_TEMPLATES_WRITE = """
import time
from heatmap_templates.templates import templates_file
from hmt_cli import main
main.TENSORFLOW_COMMANDS = frozenset()  # a build from a heatmap store runs no model: skip TensorFlow's start-up
write_template = templates_file._write_template
def stalled_write_template(root, template):
    write_template(root, template)
    time.sleep(60)
templates_file._write_template = stalled_write_template
"""


def start_hmt(prelude: str, args: list, cwd: Path) -> subprocess.Popen:
    """`hmt ARGS` in a new process after `prelude`; its stderr goes to cwd/stderr.txt (a pipe nobody reads could fill up)."""
    code = prelude + "\nfrom hmt_cli.main import run\nrun()\n"
    with open(cwd / "stderr.txt", "w") as stderr:
        return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)


def kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL `process` as soon as `ready()` is true; fail if it exits first or never gets there.
    The tests run in the child's working folder, where start_hmt puts its stderr."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"hmt exited ({process.returncode}) before the kill point: {(Path.cwd() / 'stderr.txt').read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=30)
            pytest.fail("hmt did not reach the kill point in time")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)  # reaped: its PID is no longer alive
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crash")
    return {"data": write_phantom_set(root / "data", 6), "small_data": write_phantom_set(root / "small_data", 3),
            "model": save_tiny_model(root / "model.keras")}


def _contents(path: Path) -> dict[str, tuple]:
    """Per image path: its hash, labels, probabilities and maps."""
    reader = open_heatmaps(path)
    batch = next(reader.iter_batches(len(reader)))
    return {p: (s, int(l), int(q), pr.tobytes(), im.tobytes(), raw.tobytes(), up.tobytes())
            for p, s, l, q, pr, im, raw, up in zip(batch.paths, batch.sha256, batch.labels, batch.predicted,
                                                   batch.probabilities, batch.images, batch.raw, batch.upsampled, strict=True)}


def test_heatmaps_killed_mid_run_resumes_to_the_same_store(setup: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "heatmaps.h5"
    parts = tmp_path / "heatmaps.h5.parts"
    arguments = ["heatmaps", setup["model"], setup["data"], "--out", out, "--batch-size", "2"]
    process = start_hmt(SLOW_APPEND, arguments, tmp_path)
    kill_when(process, lambda: parts.is_dir() and any(parts.glob("*.h5")))

    assert not out.exists()  # never finalised: no final file at all, let alone a corrupt one
    pending = open_heatmaps(out)  # the finished batches are complete shards, readable as they are
    assert 0 < len(pending) < 12 and pending.pending_shards >= 1

    code, stdout, err = run_hmt([*arguments, "--json"], capsys, monkeypatch)
    assert code == 0, err

    summary = json.loads(stdout)
    assert summary["total"] == 12
    assert summary["resumed"] >= len(pending) and summary["computed"] + summary["resumed"] == 12
    assert summary["computed"] < summary["total"]  # finished batches were not recomputed
    assert not parts.exists()

    clean = tmp_path / "clean" / "heatmaps.h5"
    extract_heatmaps(setup["model"], setup["data"], clean, batch_size=2)
    resumed, single = _contents(out), _contents(clean)
    assert sorted(resumed) == sorted(single)
    for path in single:
        assert resumed[path] == single[path], path


def test_build_templates_killed_while_writing_keeps_the_earlier_file(setup: dict[str, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "heatmaps.h5"
    extract_heatmaps(setup["model"], setup["small_data"], store, batch_size=8)
    out = tmp_path / "templates.h5"
    build_templates(store, ["covid"], out, config=BuildConfig(registration="none", include="all", bootstrap_replicates=4))
    earlier = out.read_bytes()
    arguments = ["build-templates", "--heatmaps", store, "--class", "normal", "--out", out,
                 "--registration", "none", "--include", "all", "--bootstrap", "4"]

    process = start_hmt(STALL_TEMPLATES_WRITE, arguments, tmp_path)
    temporaries = lambda: list(tmp_path.glob(".templates.h5.tmp-*"))
    kill_when(process, lambda: bool(temporaries()))

    assert out.read_bytes() == earlier  # the atomic rename never happened: the earlier file is untouched
    assert list(read_templates(out).templates) == ["covid"]
    assert temporaries(), "the killed writer's half-written temp file is what this test is about"

    code, _, err = run_hmt(arguments, capsys, monkeypatch)
    assert code == 0, err
    finished = read_templates(out)
    assert list(finished.templates) == ["covid", "normal"]
    assert all(np.isfinite(t.mean).all() for t in finished.templates.values())
    assert not temporaries()  # the dead writer's temp file was cleaned up, nothing left to trip over

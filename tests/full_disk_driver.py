"""The driver of tests/test_full_disk.py: every writer of hmt run against a real, full file system, in one process.

    python tests/full_disk_driver.py WORK DISK RESULTS.json

WORK is a folder on an ordinary disk for the inputs (nine 128-px phantoms, an untrained `small` model, its heatmap
store and templates); DISK is an empty tmpfs mount for the outputs. Each writer runs first with room (what it writes
is measured and is the earlier output of the runs that follow), then twice with the disk full: from the start (no
byte free) and at the final write (a filler file leaves room for what comes before the final write and half of it).
Each run is the `hmt` entry point in this process with file descriptors 1 and 2 caught, so finaliser tracebacks that
h5py prints are seen; a crash as the process exits (HDF5 flushing a file left open) shows as this driver's exit code.
RESULTS.json holds, per case, the exit code, stderr, the files before and after and what the driver checked.
"""
from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["MPLBACKEND"] = "Agg"

PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs counts space in pages
LAST_STDERR = "last_stderr.txt"  # in WORK: what the last run printed on file descriptor 2
CLASSES = ("covid", "normal", "virus")
SIZE = 128


@dataclass
class Writer:
    """One writer: its command (given the case folder), the output its message must name, and how it is set up.

    ``prepare`` puts its inputs in a case folder; ``start_from`` / ``final_from`` say whether a full-disk run starts
    from the measured run's outputs (the earlier output it must leave intact) or from the prepared inputs only;
    ``split`` divides the measured bytes into (what the writes before the final write take, what the final write takes)."""

    name: str
    args: Callable[[Path], list]
    target: Callable[[Path], Path]
    prepare: Callable[[Path], None] = lambda folder: None
    start_from: str = "measured"
    final_from: str = "measured"
    split: Callable[[Path, int], tuple[int, int]] = lambda folder, total: (0, total)
    measured: Path = field(default_factory=Path)


# --------------------------------------------------------------------------- the inputs, made once on an ordinary disk


def make_inputs(work: Path) -> dict[str, Path]:
    """Nine 128-px phantoms (and six of them), an untrained `small` model, its store, templates and two halves."""
    from test_reliability import save_tiny_model, write_phantom_set

    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.templates.build import BuildConfig, build_templates

    data = write_phantom_set(work / "data", 3, size=SIZE, classes=CLASSES)
    six = work / "data6"
    for label in CLASSES:
        (six / label).mkdir(parents=True)
        for image in sorted((data / label).iterdir())[:2]:
            shutil.copy(image, six / label / image.name)
    model = save_tiny_model(work / "model.keras", classes=CLASSES, size=SIZE)
    store, store6 = work / "heatmaps.h5", work / "heatmaps6.h5"
    extract_heatmaps(model, data, store)
    extract_heatmaps(model, six, store6)
    config = BuildConfig(registration="none", include="all", bootstrap_replicates=4, median=False)
    templates = work / "templates.h5"
    build_templates(store, None, templates, config=config)
    halves = [work / f"templates_{name}.h5" for name in ("covid", "rest")]
    shared = BuildConfig(registration="none", include="all", bootstrap_replicates=4, median=False, reference=str(next((data / "normal").iterdir())))
    build_templates(store, ["covid"], halves[0], config=shared)
    build_templates(store, ["normal", "virus"], halves[1], config=shared)
    return {"data": data, "data6": six, "model": model, "store": store, "store6": store6, "templates": templates,
            "halves": halves}


def writers(inputs: dict[str, Path]) -> list[Writer]:
    """Every command that writes, with its output and how its full-disk runs are set up."""
    model, data, store, templates = inputs["model"], inputs["data"], inputs["store"], inputs["templates"]

    def copy_templates(folder: Path) -> None:
        shutil.copy(templates, folder / "t.h5")

    def shards_then_store(share: float) -> Callable[[Path, int], tuple[int, int]]:
        return lambda folder, total: (int(total * share), total)

    heatmaps = ["heatmaps", model, data, "--batch-size", "32"]
    return [
        Writer("heatmaps", lambda f: [*heatmaps, "--out", f / "h.h5"], lambda f: f / "h.h5", start_from="prepared",
               final_from="prepared", split=shards_then_store(1.0)),  # the shards take about what the store takes
        Writer("heatmaps onto an earlier store", lambda f: [*heatmaps, "--out", f / "h.h5"], lambda f: f / "h.h5",
               prepare=lambda f: shutil.copy(inputs["store6"], f / "h.h5"), start_from="prepared", final_from="prepared",
               split=shards_then_store(3 / 9)),  # the shard of the three new images
        Writer("build-templates", lambda f: ["build-templates", "--heatmaps", store, "--all-classes", "--include", "all",
                                             "--registration", "none", "--bootstrap", "4", "--no-median", "--out", f / "t.h5"], lambda f: f / "t.h5"),
        Writer("merge-templates", lambda f: ["merge-templates", *inputs["halves"], "-o", f / "m.h5"], lambda f: f / "m.h5"),
        Writer("strategies", lambda f: ["strategies", f / "t.h5", "--heatmaps", store], lambda f: f / "t.h5", prepare=copy_templates),
        Writer("sanity", lambda f: ["sanity", f / "t.h5", "--heatmaps", store, "--sample", "2"], lambda f: f / "t.h5",
               prepare=copy_templates),
        Writer("evaluate-templates", lambda f: ["evaluate-templates", f / "t.h5", data, "--faithfulness", "--deletion-sample", "2"],
               lambda f: f / "t.h5", prepare=copy_templates),
        Writer("figures", lambda f: ["figures", templates, "--out", f / "figures", "--format", "png", "--dpi", "40"],
               lambda f: f / "figures"),
        Writer("report", lambda f: ["report", templates, "--heatmaps", store, "--out", f / "report", "--gallery", "1"],
               lambda f: f / "report"),
        Writer("train", lambda f: ["train", data, "--backbone", "small", "--input-size", "32", "--epochs", "1", "--batch-size", "8",
                                   "--out", f / "model.keras", "--project-dir", f], lambda f: f / "model.keras", final_from="prepared",
               split=lambda folder, total: (_pages(folder / "model.keras"), total - _pages(folder / "model.keras"))),  # model, companions
        Writer("synth", lambda f: ["synth", f / "phantoms", "-n", "3", "--size", "128", "--workers", "2",  # a worker's error crosses
                                   "--classes", "covid,normal,virus"], lambda f: f / "phantoms"),  # the process pool
    ]


# --------------------------------------------------------------------------- the disk


def _pages(path: Path) -> int:
    """Bytes a file or folder takes on tmpfs (each file rounded up to whole pages)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in files)


def free_bytes(disk: Path) -> int:
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


def leave_free(disk: Path, wanted: int) -> None:
    """Fill the disk with a filler file until ``wanted`` bytes (rounded down to pages) are free."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    size = free_bytes(disk) - wanted // PAGE * PAGE
    if size > 0:
        descriptor = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(descriptor, 0, size)
        finally:
            os.close(descriptor)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: relative path -> SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- running hmt in this process


def run_hmt(arguments: list) -> tuple[int, str]:
    """The `hmt` entry point in this process: (exit code, everything written to file descriptor 2)."""
    from hmt_cli.main import run

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(LAST_STDERR, "w+b") as err, open(os.devnull, "wb") as out:  # named: a crash leaves what the run printed
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = ["hmt", *map(str, arguments)]
        try:
            run()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return code, "".join(line for line in text.splitlines(keepends=True) if " epoch " not in line)  # train's epoch lines


def open_hdf5_files() -> int:
    """HDF5 files this process still has open (none may outlive a command: HDF5 would flush them at exit)."""
    import h5py

    return len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))


def run_case(writer: Writer, phase: str, disk: Path, wanted_free: int) -> dict:
    """One full-disk run of ``writer`` from its earlier state; what happened, for the test to judge."""
    folder = disk / _slug(writer.name) / phase
    origin = writer.start_from if phase == "start" else writer.final_from
    if origin == "measured":
        shutil.copytree(writer.measured, folder)
    else:
        folder.mkdir(parents=True)
        writer.prepare(folder)
    before = snapshot(folder)
    leave_free(disk, wanted_free)
    started = time.perf_counter()
    code, err = run_hmt(writer.args(folder))
    result = {"writer": writer.name, "phase": phase, "code": code, "stderr": err, "target": str(writer.target(folder)),
              "folder": str(folder), "free": wanted_free, "seconds": round(time.perf_counter() - started, 2),
              "before": before, "after": snapshot(folder), "open_hdf5_files": open_hdf5_files(),
              "leftovers": sorted(str(p) for p in disk.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)}
    (disk / "filler").unlink(missing_ok=True)
    result.update(_complete(writer, phase, folder))
    return result


def _complete(writer: Writer, phase: str, folder: Path) -> dict:
    """What is checked of the new files a failed run kept: shards hold their images, a saved model is a whole archive;
    and for the heatmaps, that a rerun with room finishes the store."""
    checked: dict = {}
    if writer.name.startswith("heatmaps"):
        checked["stored"] = _stored(folder / "h.h5")
        if phase == "final":
            code, err = run_hmt(writer.args(folder))
            checked["rerun"] = {"code": code, "stderr": err, "stored": _stored(folder / "h.h5"),
                                "parts_left": (folder / "h.h5.parts").exists()}
    if writer.name == "train" and (folder / "model.keras").is_file():
        with zipfile.ZipFile(folder / "model.keras") as archive:
            checked["model_archive_ok"] = archive.testzip() is None
    return checked


def _stored(path: Path) -> int:
    """Images a heatmap store holds, its shards included (0 for none at all)."""
    from heatmap_templates.errors import BadFileError
    from heatmap_templates.store import open_heatmaps

    try:
        return len(open_heatmaps(path))
    except BadFileError:
        return 0


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def measure(writer: Writer, disk: Path) -> dict:
    """The writer's run with room: its outputs are the earlier outputs of the full-disk runs, their size sets the free space."""
    folder = disk / _slug(writer.name) / "measured"
    folder.mkdir(parents=True)
    writer.prepare(folder)
    code, err = run_hmt(writer.args(folder))
    writer.measured = folder
    target = writer.target(folder)
    total = _pages(target) if writer.name != "train" else _pages(folder)
    before, last = writer.split(folder, total)
    return {"code": code, "stderr": err, "total": total, "before_final": before, "final_write": last}


def main(work: Path, disk: Path, results_path: Path) -> None:
    started = time.perf_counter()
    faulthandler.enable()  # a crash prints where it happened (on the run's file descriptor 2: LAST_STDERR)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.chdir(work)
    from hmt_cli.main import _import_tensorflow_quietly

    _import_tensorflow_quietly()
    import tensorflow

    tensorflow.get_logger().setLevel("ERROR")  # its retracing warnings come from running many commands in one process
    inputs = make_inputs(work)
    results: dict = {"setup_seconds": round(time.perf_counter() - started, 1), "cases": [], "measured": {}, "running": None}

    def running(what: str | None) -> None:
        """Written before each run, so a crash of this process still says which run it was."""
        results["running"] = what
        results_path.write_text(json.dumps(results, indent=1))

    for writer in writers(inputs):
        running(f"{writer.name} (measured, with room)")
        sizes = measure(writer, disk)
        results["measured"][writer.name] = sizes
        if sizes["code"] != 0:
            continue
        running(f"{writer.name} (disk full from the start)")
        results["cases"].append(run_case(writer, "start", disk, 0))
        running(f"{writer.name} (disk full at the final write)")
        results["cases"].append(run_case(writer, "final", disk, sizes["before_final"] + sizes["final_write"] // 2))
        shutil.rmtree(disk / _slug(writer.name))
    results["seconds"] = round(time.perf_counter() - started, 1)
    running(None)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))

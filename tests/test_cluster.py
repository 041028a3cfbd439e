"""Cluster runs on Dask: the same store and templates as a run in this process, failed tasks retried,
interrupted runs resumed. A LocalCluster of two worker processes checks equality across processes;
an in-process cluster (threads) lets a test make one task fail."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import distributed  # a dependency (dask[distributed]): its absence fails here, it does not skip
import h5py
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates.executors import LocalExecutor, executor_for
from heatmap_templates.explain import heatmaps as heatmaps_module
from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.store import open_heatmaps
from heatmap_templates.templates import build as build_module
from heatmap_templates.templates.build import BuildConfig, build_templates

SIZE = 32
CLASSES = ("covid", "normal")
CONFIG = BuildConfig(include="all", n_components=2, bootstrap_replicates=4, reference_iterations=1, chunk_images=5, batch_size=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Phantoms, a small untrained model, and a store and templates file made in this process."""
    from heatmap_templates.model.backbones import build_model
    from heatmap_templates.model.layers import default_cam_layer
    from heatmap_templates.model.model_file import ModelInfo, save_model
    from heatmap_templates.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("cluster")
    synthesize_dataset(root / "data", n_per_class=8, size=SIZE, seed=2, classes=CLASSES, workers=1, probability_samples=4)
    model = build_model("small", len(CLASSES), SIZE)
    info = ModelInfo(class_names=list(CLASSES), backbone="small", input_size=(SIZE, SIZE), channels=1, preprocessing="unit",
                     cam_layer=default_cam_layer(model))
    model_path = save_model(model, info, root / "model.keras")
    store = root / "local.h5"
    extract_heatmaps(model_path, root / "data", store, batch_size=4)
    templates = root / "local_templates.h5"
    build_templates(store, None, templates, config=CONFIG)
    return {"root": root, "data": root / "data", "model": model_path, "store": store, "templates": templates}


def _local_client(processes: bool):
    """A Dask LocalCluster of two single-threaded workers, processes or threads of this process, and its client."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def two_processes():
    """A Dask LocalCluster of two single-threaded worker processes (what `--scheduler local:2` starts)."""
    yield from _local_client(processes=True)


@pytest.fixture()
def in_process():
    """A Dask cluster of two worker threads in this process, so a test can patch what its tasks run."""
    yield from _local_client(processes=False)


def _datasets(path: Path) -> dict[str, bytes]:
    """Every dataset of an HDF5 file as bytes (dtype, shape and values)."""
    contents = {}
    with h5py.File(path, "r") as handle:
        def visit(name: str, item) -> None:
            if isinstance(item, h5py.Dataset):
                value = np.asarray(item[()])
                contents[name] = repr(value.tolist()).encode() if value.dtype.kind == "O" else value.tobytes()
        handle.visititems(visit)
    return contents


def _assert_same_store(path: Path, expected: Path, atol: float = 1e-5) -> None:
    first, second = open_heatmaps(path), open_heatmaps(expected)
    assert first.paths == second.paths and first.sha256 == second.sha256
    np.testing.assert_array_equal(first.predicted, second.predicted)
    np.testing.assert_allclose(first.probabilities, second.probabilities, rtol=0, atol=atol)
    raw, expected_raw = (np.concatenate(list(reader.iter_raw(64))) for reader in (first, second))
    np.testing.assert_allclose(raw, expected_raw, rtol=0, atol=atol * max(1.0, float(expected_raw.max())))
    images = np.concatenate([batch.images for batch in first.iter_batches(64)])
    np.testing.assert_array_equal(images, np.concatenate([batch.images for batch in second.iter_batches(64)]))


def test_two_worker_processes_give_the_store_and_a_bit_identical_templates_file(world: dict, two_processes, tmp_path: Path) -> None:
    store = tmp_path / "cluster.h5"
    summary = extract_heatmaps(world["model"], world["data"], store, batch_size=4, scheduler=two_processes)
    assert summary.computed == 16
    _assert_same_store(store, world["store"])
    templates = tmp_path / "cluster_templates.h5"
    build_templates(world["store"], None, templates, config=CONFIG, scheduler=two_processes)
    local, cluster = _datasets(world["templates"]), _datasets(templates)
    assert sorted(local) == sorted(cluster)
    assert [name for name in local if local[name] != cluster[name]] == []


def test_the_build_does_not_depend_on_local_threads(world: dict, tmp_path: Path) -> None:
    out = tmp_path / "three_threads.h5"
    build_templates(world["store"], None, out, config=replace(CONFIG, threads=3))
    local, threaded = _datasets(world["templates"]), _datasets(out)
    assert [name for name in local if local[name] != threaded[name]] == []


def _failing_once(function, marker: Path):
    """``function`` that raises once, on the call that finds no ``marker`` file (tasks are copied into their
    workers, so the state that survives a call must live outside the function)."""

    def run(*arguments):
        if not marker.exists():
            marker.touch()
            raise RuntimeError("worker lost")
        return function(*arguments)

    return run


def test_a_failed_task_is_retried_and_only_its_chunk_recomputed(world: dict, in_process, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "failed_once"
    monkeypatch.setattr(build_module, "accumulate_chunk", _failing_once(build_module.accumulate_chunk, marker))
    out = tmp_path / "retried.h5"
    build_templates(world["store"], None, out, config=CONFIG, scheduler=in_process)
    assert marker.exists()
    local, retried = _datasets(world["templates"]), _datasets(out)
    assert [name for name in local if local[name] != retried[name]] == []

    marker = tmp_path / "extraction_failed_once"
    monkeypatch.setattr(heatmaps_module, "EXTRACT_CHUNK_IMAGES", 5)
    monkeypatch.setattr(heatmaps_module, "extract_chunk", _failing_once(heatmaps_module.extract_chunk, marker))
    store = tmp_path / "retried_store.h5"
    extract_heatmaps(world["model"], world["data"], store, batch_size=4, scheduler=in_process)
    assert marker.exists()
    _assert_same_store(store, world["store"])


def test_an_interrupted_cluster_run_keeps_its_chunks_and_resumes(world: dict, in_process, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    original = heatmaps_module.extract_chunk

    def broken_third_chunk(paths, job):
        if any(path.endswith("normal_0000.png") for path in paths):
            raise RuntimeError("node crashed")
        return original(paths, job)

    monkeypatch.setattr(heatmaps_module, "EXTRACT_CHUNK_IMAGES", 5)
    monkeypatch.setattr(heatmaps_module, "extract_chunk", broken_third_chunk)
    store = tmp_path / "interrupted.h5"
    with pytest.raises(RuntimeError, match="node crashed"):
        extract_heatmaps(world["model"], world["data"], store, batch_size=4, scheduler=in_process)
    kept = len(open_heatmaps(store))
    assert 0 < kept < 16 and kept % 5 == 0  # whole chunks before the broken one
    monkeypatch.setattr(heatmaps_module, "extract_chunk", original)
    summary = extract_heatmaps(world["model"], world["data"], store, batch_size=4, scheduler=in_process)
    assert summary.resumed == kept and summary.computed == 16 - kept
    _assert_same_store(store, world["store"])


def test_scheduler_values(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, world: dict) -> None:
    assert isinstance(executor_for(None, threads=2), LocalExecutor)
    for value, fragment in [("local:0", "local:N needs a number of workers"), ("local:x", "local:N needs"),
                            ("tcp://127.0.0.1:9", "cannot reach a Dask scheduler")]:
        code, _, err = run_hmt(["build-templates", "--heatmaps", world["store"], "--all-classes", "--scheduler", value,
                                "--out", world["root"] / "never.h5"], capsys, monkeypatch)
        assert_user_error(code, err, fragment)


def test_the_slurm_example_writes_a_job_script_for_one_gpu_worker_per_job() -> None:
    """docs/examples/slurm.py (the docs/cluster.md example): the job script dask-jobqueue would submit."""
    import importlib.util

    import dask_jobqueue  # noqa: F401  # a dev dependency: the example needs it
    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "slurm.py"
    spec = importlib.util.spec_from_file_location("slurm_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    cluster = example.slurm_cluster(queue="gpu", cores=6, memory="24GB", walltime="02:00:00", account="lab", venv="/shared/hmt/.venv")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for directive in ("#SBATCH -p gpu", "#SBATCH --cpus-per-task=6", "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:1",
                      "#SBATCH --account=lab"):
        assert directive in lines, script
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    assert "source /shared/hmt/.venv/bin/activate" in lines
    worker = next(line for line in lines if "dask_worker" in line)
    assert worker.startswith("python -m distributed.cli.dask_worker tcp://") and "--nthreads 1" in worker


def test_local_threads_run_chunks_at_once_in_order_with_few_in_flight() -> None:
    import threading
    import time

    lock, running, most = threading.Lock(), [0], [0]

    def work(item: int, offset: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (item % 3))  # later items often finish first
        with lock:
            running[0] -= 1
        return item + offset

    done: list[int] = []
    executor = LocalExecutor(threads=3)
    assert executor.inner_threads(0, 1) == 3 and executor.inner_threads(0, 10) == 1 and LocalExecutor(4).inner_threads(0, 2) == 2
    given: dict[int, int] = {}

    def threaded_work(item: int, *, threads: int) -> int:
        given[item] = threads
        return item

    assert list(executor.map(threaded_work, list(range(7)), threaded=True)) == list(range(7))
    assert given == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 3}  # the last chunk to start has the spare threads
    assert list(LocalExecutor(4).map(threaded_work, [10, 11, 12], threaded=True)) == [10, 11, 12]
    assert [given[item] for item in (10, 11, 12)] == [1, 1, 1]  # started together: 4 threads shared by 3
    assert list(executor.map(work, list(range(10)), 100, done=done.append)) == list(range(100, 110))
    assert done == list(range(10)) and 2 <= most[0] <= 3
    assert executor.fold(lambda a, b: a * 10 + b, iter([1, 2, 3])) == 123
    with pytest.raises(ZeroDivisionError):  # a chunk's error reaches the caller
        list(executor.map(lambda item: 1 // (item - 4), list(range(8))))

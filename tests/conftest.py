"""Shared test set-up: quiet, CPU-only, deterministic TensorFlow; fixtures for optional real data."""
from __future__ import annotations

import os
from pathlib import Path

# One BLAS thread: the suite runs beside TensorFlow's own thread pools on a 2-core machine, where
# OpenBLAS threads oversubscribe the cores (a 1024 x 1024 eigh took 8 s with 2 threads, 0.25 s with 1).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
from prerequisites import missing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

CXR4_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr4"


@pytest.fixture(scope="session")
def cxr4_dir() -> Path:
    """The optional real chest X-ray set beside the project; tests using it skip when it is absent."""
    if not (CXR4_DIR / "manifest.csv").is_file():
        missing("../shared/data/cxr4 is not present (CI has it beside the project)")
    return CXR4_DIR


# --------------------------------------------------------------------------- phantom models trained once per session
# Toy sizes (48 px, a few dozen images, 12 epochs of the `small` CNN, no augmentation): enough for the
# templates to find the planted lesions better than chance, small enough for the suite's budget.
MODEL_KIND_SIZE = 48
_FINDINGS = ("bacteria", "covid", "virus")


def _train_and_template(root: Path, dataset, *, size: int = MODEL_KIND_SIZE, classes: list[str] | None = None,
                        **config_fields) -> dict:
    """Train a `small` model on ``dataset`` at ``size`` px, save it, extract its heatmaps and build the templates of
    ``classes`` (default every class) in the phantom's canonical frame (so they can be scored against the planted
    lesions)."""
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.model.model_file import save_model
    from heatmap_templates.model.training import TrainConfig, train
    from heatmap_templates.templates.build import BuildConfig, build_templates

    config = TrainConfig(backbone="small", input_size=size, epochs=12, batch_size=16, learning_rate=3e-3,
                         val_fraction=0.2, test_fraction=0.2, augment=False, **config_fields)
    result = train(dataset, config)
    model = save_model(result.model, result.info, root / "model.keras")
    store = root / "heatmaps.h5"
    extract_heatmaps(model, dataset, store, batch_size=16)
    templates = root / "templates.h5"
    reference = dataset.root / "ground_truth" / "canonical_chest.png"
    build_templates(store, classes, templates, config=BuildConfig(registration="affine", reference=str(reference),
                                                               bootstrap_replicates=4, n_components=2))
    return {"root": root, "data": dataset.root, "dataset": dataset, "model": model, "result": result, "store": store,
            "templates": templates}


@pytest.fixture(scope="session")
def binary_phantom(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """covid against the rest: three phantom classes, a one-output sigmoid model (`--binary covid`), its heatmap
    store and templates of both classes (covid, not-covid); made once per session."""
    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("binary_phantom")
    synthesize_dataset(root / "data", n_per_class=30, size=MODEL_KIND_SIZE, seed=1, classes=("bacteria", "covid", "normal"),
                       workers=1, probability_samples=4)
    return _train_and_template(root, load_dataset(root / "data"), binary="covid")


@pytest.fixture(scope="session")
def multi_label_phantom(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Phantoms carrying several lesion types at once (`hmt synth --multi-label`), a model with one sigmoid per
    finding, its heatmap store and each finding's template; made once per session."""
    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.synth import synthesize_multi_label

    root = tmp_path_factory.mktemp("multi_label_phantom")
    synthesize_multi_label(root / "data", n_images=100, size=MODEL_KIND_SIZE, seed=1, findings=_FINDINGS, probability_samples=4)
    return _train_and_template(root, load_dataset(root / "data" / "manifest.csv", labels=list(_FINDINGS)))


@pytest.fixture(scope="session")
def shortcut_phantom(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """covid and normal phantoms, half of the covid images carrying a planted side marker and no lesions
    (`--shortcut covid:0.5 --shortcut-lesions 0`: the marker is their only sign of covid, so any model that classifies
    them uses it), a `small` softmax model trained on them, its store and the covid template in the canonical frame.

    With lesions under the marker too, whether a toy model of 12 epochs uses the marker at all depends on the
    seed and on the machine's floating point (ARI with the planted tags 0.39, -0.01, -0.02 for seeds 0-2 on one
    machine); without them it is 1.00 for all three."""
    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.model.model_file import save_model
    from heatmap_templates.model.training import TrainConfig, train
    from heatmap_templates.synth import synthesize_dataset
    from heatmap_templates.templates.build import BuildConfig, build_templates

    root = tmp_path_factory.mktemp("shortcut_phantom")
    synthesize_dataset(root / "data", n_per_class=60, size=64, seed=1, classes=("covid", "normal"), workers=1,
                       probability_samples=4, shortcuts={"covid": 0.5}, shortcut_lesions=0.0)
    dataset = load_dataset(root / "data")
    result = train(dataset, TrainConfig(backbone="small", input_size=64, epochs=12, batch_size=16, learning_rate=3e-3,
                                        val_fraction=0.2, test_fraction=0.2, augment=False))
    model = save_model(result.model, result.info, root / "model.keras")
    store = root / "heatmaps.h5"
    extract_heatmaps(model, dataset, store, batch_size=32)
    templates = root / "templates.h5"
    build_templates(store, ["covid"], templates, config=BuildConfig(
        reference=str(root / "data" / "ground_truth" / "canonical_chest.png"), bootstrap_replicates=4, n_components=2))
    return {"root": root, "data": root / "data", "model": model, "store": store, "templates": templates}


@pytest.fixture(scope="session")
def zone_phantom(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """covid, normal and virus phantoms at 96 px (a 48-px model's 6 x 6 CAM cannot resolve lung zones), a `small`
    model of 12 epochs, its store and the covid and virus templates in the canonical frame; made once per session
    (about half a minute)."""
    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("zone_phantom")
    synthesize_dataset(root / "data", n_per_class=40, size=96, seed=2, classes=("covid", "normal", "virus"), workers=1,
                       probability_samples=16)
    return _train_and_template(root, load_dataset(root / "data"), size=96, classes=["covid", "virus"])


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium driven over its DevTools pipe (tests/browser.py): real mouse and key events; one per test
    module that asks for it."""
    from browser import Browser, BrowserError, find_chromium

    executable = find_chromium()
    if executable is None:
        missing("no Chromium here: `.ci/run` installs Debian's chromium package; install it to run this test")
    try:
        driver = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    except (BrowserError, OSError) as error:
        missing(f"Chromium's DevTools pipe does not work here: {error}")
    yield driver
    driver.close()

"""Shared test set-up: quiet, CPU-only, deterministic TensorFlow; fixtures for optional real data."""
from __future__ import annotations

import os
from pathlib import Path

# One BLAS thread: the suite runs beside TensorFlow's own thread pools on a 2-core machine, where
# OpenBLAS threads oversubscribe the cores (a 1024 x 1024 eigh took 8 s with 2 threads, 0.25 s with 1).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

CXR4_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr4"


@pytest.fixture(scope="session")
def cxr4_dir() -> Path:
    """The optional real chest X-ray set beside the project; tests using it skip when it is absent."""
    if not (CXR4_DIR / "manifest.csv").is_file():
        pytest.skip("../shared/data/cxr4 is not present")
    return CXR4_DIR

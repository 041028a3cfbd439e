"""Shared test set-up: quiet, CPU-only, deterministic TensorFlow; fixtures for optional real data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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

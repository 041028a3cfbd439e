"""What a test needs from the machine: under CI a missing prerequisite fails the test, elsewhere it skips.

`.ci/run` installs what CI needs (Chromium) and runs as root (tmpfs and bind mounts); the real data set sits beside the
project there. A test that quietly skipped in CI would pass without testing anything.
"""
from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """The run is CI's (``CI=true``, as GitHub Actions and `.ci/run` callers set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    """Stop a test whose prerequisite is missing: a failure under CI, a skip elsewhere."""
    if in_ci():
        pytest.fail(f"prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)

"""What a test needs from the machine: under CI a missing prerequisite fails the test, elsewhere it skips.

`.ci/run` installs what CI needs (Chromium) and runs as root (tmpfs and bind mounts); the real data set sits beside the
project there. A test that quietly skipped in CI would pass without testing anything.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def in_ci() -> bool:
    """The run is CI's (``CI=true``, as GitHub Actions and `.ci/run` callers set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    """Stop a test whose prerequisite is missing: a failure under CI, a skip elsewhere."""
    if in_ci():
        pytest.fail(f"prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def mounted(source: str | Path, target: Path, *options: str) -> Iterator[None]:
    """``mount OPTIONS SOURCE TARGET`` for the block (a tmpfs, a bind mount); a missing prerequisite where this machine
    cannot mount (not root, no capability). Unmounted lazily at the end."""
    target.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        missing("mounting needs root: the condition cannot be created here")
    done = subprocess.run(["mount", *options, str(source), str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"cannot mount here ({done.stderr.strip()}): the condition cannot be created")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)

"""The fault-injection patches (tests/faults/, run by `make faults`) still fit the tree: each applies cleanly (no fuzz)
and names tests that exist, so a refactor that moves the code or the tests under a fault is caught here."""
from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
from prerequisites import missing

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "faults"
PATCHES = sorted(FAULTS.glob("*.patch"))
AUDITED = ("sanity_flag_never_fires", "pearson_for_spearman", "independent_runs_cascading", "lung_regions_swapped",
           "stability_labels_with_themselves")


@functools.cache
def _runner():
    """tests/faults/run.py as a module (tests/faults is no package)."""
    spec = importlib.util.spec_from_file_location("fault_runner", FAULTS / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_audited_faults_are_kept() -> None:
    names = {re.sub(r"^\d+_", "", patch.stem) for patch in PATCHES}
    assert set(AUDITED) <= names


@pytest.mark.parametrize("patch", PATCHES, ids=[patch.stem for patch in PATCHES])
def test_each_fault_applies_cleanly_and_names_tests_that_exist(patch: Path) -> None:
    if shutil.which("patch") is None and shutil.which("git") is None:
        missing("neither GNU patch nor git is installed")
    runner = _runner()
    assert runner.header(patch, "fault"), f"{patch.name}: no '# fault:' line says what it does"
    tests = runner.named_tests(patch)
    assert tests, f"{patch.name}: no '# tests:' line names its tests"
    for test in tests:
        path, _, function = test.partition("::")
        assert (ROOT / path).is_file(), f"{patch.name}: {path} does not exist"
        if function:
            assert re.search(rf"^def {re.escape(function.split('[')[0])}\(", (ROOT / path).read_text(encoding="utf-8"),
                             re.MULTILINE), f"{patch.name}: {test} does not exist"
    code, output = runner.apply(patch, ROOT, dry_run=True)
    assert code == 0, f"{patch.name} no longer applies to the tree: {output}"

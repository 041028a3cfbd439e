"""Fault injection: every ``tests/faults/NN_name.patch`` plants one deliberate fault, and the suite must reject it.

For each patch: the project's source (``heatmap_templates/``, ``cli/``, ``tests/``, ``pyproject.toml``, ``setup.py``;
tracked files and untracked ones git does not ignore, as they are now) is copied into a temporary folder, the patch is
applied there (``patch -p1``, no fuzz), and the tests its header names run on the copy with this Python, the copy first
on ``PYTHONPATH`` (so the copied package is imported, not the editable install: checked before the tests run). A fault
is caught when its tests fail (pytest exit code 1); one that passes them survived, and one whose patch does not apply,
whose tests cannot be collected or that runs past the time limit is broken. Before the faults, all the named tests run
once on an unpatched copy and must pass: a test that fails anyway would "catch" every fault.

A patch is a unified diff against the tree (``diff -u --label a/PATH --label b/PATH``, or ``git diff``) after a header:

    # fault: what the fault does
    # tests: tests/test_x.py::test_y tests/test_z.py

Run: ``python tests/faults/run.py`` (every ``tests/faults/*.patch``; ``make faults``), or name other patches:
``python tests/faults/run.py ../more_faults/*.patch``. Exit code 0 when every fault is caught, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent
SOURCES = ("heatmap_templates", "cli", "tests", "pyproject.toml", "setup.py")
PACKAGES = {"heatmap_templates": "heatmap_templates", "hmt_cli": "cli"}  # imported name -> folder in the copy
TIMEOUT_S = 600


@dataclass
class Outcome:
    """What one fault (or the unpatched baseline) did to its tests."""

    name: str
    status: str  # caught, survived, broken (or, for the baseline: passed, failed)
    detail: str
    seconds: float


def header(patch: Path, key: str) -> list[str]:
    """The words after ``# key:`` in the patch's header (the lines before its first ``---``)."""
    words: list[str] = []
    for line in patch.read_text(encoding="utf-8").splitlines():
        if line.startswith("--- "):
            break
        if line.startswith(f"# {key}:"):
            words += line.split(":", 1)[1].split()
    return words


def named_tests(patch: Path) -> list[str]:
    """The test ids (``tests/test_x.py::test_y`` or a whole file) a patch names in its ``# tests:`` header."""
    return header(patch, "tests")


def patch_command(patch: Path, directory: Path, *, dry_run: bool = False) -> list[str]:
    """GNU patch applying ``patch`` to ``directory`` strictly: no fuzz, no questions, not when it seems applied
    (``git apply``, as strict, on a machine without GNU patch; run it in ``directory``)."""
    if shutil.which("patch") is None:
        return ["git", "apply", "-p1", *(["--check"] if dry_run else []), str(patch)]
    return ["patch", "-p1", "--forward", "--fuzz=0", "--batch", "--silent", *(["--dry-run"] if dry_run else []),
            "-d", str(directory), "-i", str(patch)]


def apply(patch: Path, directory: Path, *, dry_run: bool = False) -> tuple[int, str]:
    """(exit code, output) of applying ``patch`` to ``directory`` (0: applied cleanly)."""
    done = subprocess.run(patch_command(patch, directory, dry_run=dry_run), cwd=directory, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip()


def source_files(root: Path = ROOT) -> list[str]:
    """The files copied: tracked and untracked-but-not-ignored files under :data:`SOURCES` that exist now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SOURCES],
                            cwd=root, capture_output=True, check=True).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def copy_source(destination: Path, files: list[str]) -> None:
    """Copy ``files`` from the project into ``destination``; the CLI's folder ``cli/`` is importable as ``hmt_cli``."""
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    (destination / "hmt_cli").symlink_to("cli", target_is_directory=True)


def environment(copy: Path) -> dict[str, str]:
    """This environment with the copy first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports(copy: Path) -> str | None:
    """None when the copy's packages are the ones imported there, else why not."""
    code = "import heatmap_templates, hmt_cli; print(heatmap_templates.__file__); print(hmt_cli.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=copy, env=environment(copy), capture_output=True, text=True)
    files = done.stdout.split()
    if done.returncode != 0 or len(files) != 2:
        return f"cannot import the copied packages: {done.stderr.strip().splitlines()[-1:] or done.stdout}"
    for imported, folder in zip(files, PACKAGES.values(), strict=True):
        if Path(imported).resolve() != (copy / folder / "__init__.py").resolve():
            return f"{imported} is imported instead of the copy's {folder}/"
    return None


def run_tests(copy: Path, tests: list[str]) -> tuple[int | None, str]:
    """(pytest's exit code, or None past the time limit; its last line and the failures it names) for ``tests`` run
    on ``copy``."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=environment(copy), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"ran past {TIMEOUT_S} s"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failures = [line[:160] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return done.returncode, "\n    ".join([lines[-1] if lines else done.stderr.strip()[-300:], *failures])


def try_fault(patch: Path | None, tests: list[str], files: list[str]) -> Outcome:
    """Copy the source, apply ``patch`` (None: the unpatched baseline) and run ``tests`` there."""
    started = time.perf_counter()
    name = patch.stem if patch is not None else "baseline (no fault)"
    with tempfile.TemporaryDirectory(prefix="hmt_fault_") as folder:
        copy = Path(folder)
        copy_source(copy, files)
        if patch is not None:
            code, output = apply(patch, copy)
            if code != 0:
                return Outcome(name, "broken", f"the patch does not apply: {output}", time.perf_counter() - started)
        problem = check_imports(copy)
        if problem is not None:
            return Outcome(name, "broken", problem, time.perf_counter() - started)
        code, summary = run_tests(copy, tests)
    seconds = time.perf_counter() - started
    if patch is None:
        return Outcome(name, "passed" if code == 0 else "failed", summary, seconds)
    status = {0: "survived", 1: "caught"}.get(code, "broken") if code is not None else "broken"
    return Outcome(name, status, summary, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patches", nargs="*", type=Path, help="fault patches (default: tests/faults/*.patch)")
    parser.add_argument("--jobs", type=int, default=1, help="faults tried at once (default 1)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the named tests without a fault")
    arguments = parser.parse_args(argv)
    patches = [path.resolve() for path in arguments.patches] or sorted(FAULTS.glob("*.patch"))
    if not patches:
        print("no fault patches found", file=sys.stderr)
        return 1
    unnamed = [patch.name for patch in patches if not named_tests(patch)]
    if unnamed:
        print(f"no '# tests:' header in {', '.join(unnamed)}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    files = source_files()
    if not arguments.no_baseline:
        every = list(dict.fromkeys(test for patch in patches for test in named_tests(patch)))
        baseline = try_fault(None, every, files)
        print(f"{baseline.status:9} {baseline.name}: {baseline.detail} ({baseline.seconds:.1f} s)", flush=True)
        if baseline.status != "passed":
            print("the named tests fail without any fault; fix them before trying faults", file=sys.stderr)
            return 1
    with ThreadPoolExecutor(max_workers=max(1, arguments.jobs)) as pool:
        outcomes = []
        for outcome in pool.map(lambda patch: try_fault(patch, named_tests(patch), files), patches):
            print(f"{outcome.status:9} {outcome.name}: {outcome.detail} ({outcome.seconds:.1f} s)", flush=True)
            outcomes.append(outcome)
    failed = [outcome for outcome in outcomes if outcome.status != "caught"]
    total = time.perf_counter() - started
    if failed:
        print(f"{len(failed)} of {len(outcomes)} faults not caught: "
              + ", ".join(f"{outcome.name} ({outcome.status})" for outcome in failed) + f"; {total:.1f} s", file=sys.stderr)
        return 1
    print(f"all {len(outcomes)} faults caught by their tests in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

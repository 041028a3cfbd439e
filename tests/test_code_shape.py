"""The code's shape: no function over 80 lines and no module over 600, in the library and the CLI.

A long function usually does several things; split it into helpers that each do one (and say why in a
one-line docstring). A function's length counts every line from its ``def`` (decorators excluded) to its
last line, the docstring included.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("heatmap_templates", "cli")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600


def _modules() -> list[Path]:
    """Every Python module of the library and the CLI, sorted (so failures read the same each run)."""
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _long_functions(path: Path) -> list[str]:
    """The functions and methods of one module longer than the limit, as ``path:line name (N lines)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_modules_exist():
    assert len(_modules()) > 20


def test_no_function_over_80_lines():
    long = [entry for path in _modules() for entry in _long_functions(path)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_no_module_over_600_lines():
    long = []
    for path in _modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_tests_skip_only_through_the_prerequisites_helper() -> None:
    """A skipped test tests nothing: a test may skip only for a missing machine prerequisite, through
    tests/prerequisites.py (which fails instead under CI), never because a function or command is absent."""
    tests = Path(__file__).resolve().parent
    allowed = ("prerequisites.py", Path(__file__).name)  # the helper itself, and this test's own word list
    offenders = [f"{path.name}:{number}" for path in sorted(tests.glob("*.py")) if path.name not in allowed
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if any(word in line for word in ("pytest.skip(", "importorskip(", "mark.skipif(", "mark.skip("))]
    assert not offenders, offenders

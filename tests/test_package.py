"""The package as users get it: the lazy public API, the wings' layers contract, and a wheel that works on its own."""
from __future__ import annotations

import importlib
import inspect
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import heatmap_templates

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def test_importing_the_package_imports_no_wing_and_no_tensorflow(tmp_path: Path) -> None:
    code = ("import sys, heatmap_templates\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('heatmap_templates', 'tensorflow', 'keras', 'h5py', 'matplotlib', 'cv2'))))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), check=True, capture_output=True,
                            text=True).stdout.split()
    assert sorted(loaded) == ["heatmap_templates", "heatmap_templates._version", "heatmap_templates.errors"]


def _defining_modules() -> dict[str, set[str]]:
    """Each top-level name assigned, defined or registered-into-existence in a module, by the modules that do it."""
    import ast

    where: dict[str, set[str]] = {}
    for path in sorted((ROOT / "heatmap_templates").rglob("*.py")):
        module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            for name in names:
                where.setdefault(name, set()).add(module_name)
    return where


DEFINED_IN = _defining_modules()


@pytest.mark.parametrize("name", sorted(heatmap_templates._EXPORTS))
def test_every_public_name_resolves_to_the_module_that_defines_it(name: str) -> None:
    value = getattr(heatmap_templates, name)
    module = importlib.import_module(f"heatmap_templates.{heatmap_templates._EXPORTS[name]}")
    assert getattr(module, name) is value
    # Defined (by source) in that module or, for a package, in one of its own modules: not merely passing through.
    defining = DEFINED_IN.get(name, set())
    assert any(found == module.__name__ or found.startswith(module.__name__ + ".") for found in defining), (name, defining)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert value.__module__.startswith(module.__name__), (name, value.__module__)


def test_the_public_api_covers_every_registry_and_rejects_unknown_names() -> None:
    from heatmap_templates.registry import Registry

    registries = set()
    for path in sorted((ROOT / "heatmap_templates").rglob("*.py")):
        module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(module_name)
        registries |= {name for name, value in vars(module).items() if isinstance(value, Registry) and name.isupper()}
    assert len(registries) >= 18
    assert registries <= set(heatmap_templates.__all__), sorted(registries - set(heatmap_templates.__all__))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        heatmap_templates.not_a_name  # noqa: B018
    code = ("import heatmap_templates as h\n"
            f"print(' '.join(getattr(h, wing).__name__ for wing in {heatmap_templates._SUBPACKAGES!r}))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), check=True, capture_output=True,
                            text=True).stdout.split()
    assert loaded == [f"heatmap_templates.{wing}" for wing in heatmap_templates._SUBPACKAGES]


def test_the_layers_contract_holds() -> None:
    """import-linter's contracts in pyproject.toml: wings import only downwards, the library never imports the CLI,
    h5py only in the store and the templates file."""
    result = subprocess.run([str(VENV_BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            env=_clean_env())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_contracts_reject_an_upward_import_and_h5py_outside_the_store(tmp_path: Path) -> None:
    """The contracts would fail CI: in a copy of the package, a numeric primitive that imports the analysis wing and
    a scoring module that imports h5py each break one."""
    shutil.copytree(ROOT / "heatmap_templates", tmp_path / "heatmap_templates", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "cli", tmp_path / "hmt_cli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "heatmap_templates" / "numeric" / "metrics.py", "a") as handle:
        handle.write("\nfrom heatmap_templates.analysis import similarity  # an upward import\n")
    with open(tmp_path / "heatmap_templates" / "analysis" / "scoring.py", "a") as handle:
        handle.write("\nimport h5py  # HDF5 outside the store\n")
    result = subprocess.run([str(VENV_BIN / "lint-imports"), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                            env=_clean_env(PYTHONPATH=str(tmp_path)))
    assert result.returncode != 0
    assert "heatmap_templates.numeric.metrics -> heatmap_templates.analysis.similarity" in result.stdout
    assert "heatmap_templates.analysis.scoring -> h5py" in result.stdout
    assert "Contracts: 1 kept, 2 broken." in result.stdout


@pytest.mark.slow
def test_a_wheel_installs_into_a_fresh_environment_and_runs_hmt(tmp_path: Path) -> None:
    """Build the wheel (package discovery, not a hand-kept list), install it alone into a new virtual environment
    that sees the dependencies but not this checkout, and run `hmt --help` and `hmt synth` from there."""
    source = tmp_path / "source"  # only what a source distribution holds: no stale build/ or egg-info of a checkout
    for part in ("heatmap_templates", "cli"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / part, source / part)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, env=_clean_env())
    (wheel,) = wheels.glob("hmt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("heatmap_templates/present/report/__init__.py", "heatmap_templates/templates/chunks.py",
                    "heatmap_templates/numeric/correlation.py", "hmt_cli/main.py"):
        assert package in names, package
    folders_with_code = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "heatmap_templates").rglob("*.py")}
    assert folders_with_code <= {name.rsplit("/", 1)[0] for name in names}
    for folder in folders_with_code:  # every folder of code is a package: discovery finds it, imports work
        assert (ROOT / folder / "__init__.py").is_file(), folder

    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    fresh_python = fresh / "bin" / "python"
    site = subprocess.run([str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies come from the test environment's site-packages as a plain path entry: its .pth files (the
    # editable install of this checkout among them) are not run, so hmt itself can only come from the wheel.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh_python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, env=_clean_env())
    where = subprocess.run([str(fresh_python), "-c", "import heatmap_templates, hmt_cli; print(heatmap_templates.__file__)"],
                           cwd=tmp_path, check=True, capture_output=True, text=True, env=_clean_env()).stdout.strip()
    assert where.startswith(str(fresh)), where

    hmt = fresh / "bin" / "hmt"
    shown = subprocess.run([str(hmt), "--help"], cwd=tmp_path, capture_output=True, text=True, env=_clean_env(COLUMNS="120"))
    assert shown.returncode == 0, shown.stderr
    assert "build-templates" in shown.stdout and "synth" in shown.stdout
    made = subprocess.run([str(hmt), "synth", str(tmp_path / "phantom"), "--n-per-class", "2", "--size", "64", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, env=_clean_env())
    assert made.returncode == 0, made.stderr[-2000:]
    assert len(list((tmp_path / "phantom").rglob("*.png"))) >= 8


def test_the_type_checkers_view_of_the_api_matches_the_lazy_table() -> None:
    """The TYPE_CHECKING imports (what mypy and editors see) name the same modules as the lazy table."""
    import ast

    tree = ast.parse((ROOT / "heatmap_templates" / "__init__.py").read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"]
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names:
            if node.module == "heatmap_templates":
                assert alias.name in heatmap_templates._SUBPACKAGES
                continue
            seen[alias.name] = node.module.removeprefix("heatmap_templates.")
    assert seen == heatmap_templates._EXPORTS

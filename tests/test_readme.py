"""The README's command tour, run as written (at toy sizes) in a fresh working folder.

A new user copies these lines; they must work. Sizes are shrunk (fewer phantoms, fewer epochs) so
the whole tour stays cheap; every command, argument and default path is otherwise the README's.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHEAPER = {"--n-per-class 150": "--n-per-class 40", "--size 128": "--size 64", "--backbone small": "--backbone small --input-size 64"}
NEEDS_OTHER_FILES = ("merge-templates",)  # merging needs two sites' files; tests/test_build.py covers it


def tour_commands() -> list[str]:
    """The `hmt ...` lines of the README's tour block, comments stripped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## A tour of the commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("hmt "):
            commands.append(line)
    return commands


def test_readme_tour_lists_every_command() -> None:
    names = {command.split()[1] for command in tour_commands()}
    assert names >= {"synth", "check", "train", "evaluate", "heatmaps", "build-templates", "inspect", "compare",
                     "evaluate-templates", "figures", "merge-templates"}


@pytest.mark.slow
def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    hmt = [sys.executable, "-c", "from hmt_cli.main import run; run()"]
    for command in tour_commands():
        if any(name in command for name in NEEDS_OTHER_FILES):
            continue
        for original, cheaper in CHEAPER.items():
            command = command.replace(original, cheaper)
        if command.startswith("hmt compare image.png") and not (tmp_path / "image.png").exists():
            shutil.copy(sorted((tmp_path / "data/phantom/covid").glob("*.png"))[0], tmp_path / "image.png")
        done = subprocess.run(hmt + shlex.split(command)[1:], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"`{command}` failed ({done.returncode}):\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr
    assert (tmp_path / "templates_out/templates.h5").is_file()
    assert any(re.match(r"template_means\.(pdf|svg|png)$", p.name) for p in (tmp_path / "figures").iterdir())

"""The README's command tour, run as written (at toy sizes) in a fresh working folder, through the `hmt` entry point.

A new user copies these lines; they must work. Sizes are shrunk (fewer phantoms, fewer epochs) so
the whole tour stays cheap; every command, argument and default path is otherwise the README's.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from cli_helpers import run_hmt

ROOT = Path(__file__).resolve().parents[1]
CHEAPER = {"--n-per-class 150": "--n-per-class 24", "--size 128": "--size 64", "--backbone small": "--backbone small --input-size 64",
           "--epochs 40": "--epochs 3", "--dpi 300": "--dpi 60"}
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
                     "evaluate-templates", "strategies", "sanity", "figures", "report", "merge-templates"}


@pytest.mark.slow
def test_readme_tour_runs_as_written(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line through the `hmt` entry point, in this process (a new process per line would mostly import TensorFlow)."""
    monkeypatch.chdir(tmp_path)
    for command in tour_commands():
        if any(name in command for name in NEEDS_OTHER_FILES):
            continue
        for original, cheaper in CHEAPER.items():
            command = command.replace(original, cheaper)
        if command.startswith("hmt compare image.png") and not (tmp_path / "image.png").exists():
            shutil.copy(sorted((tmp_path / "data/phantom/covid").glob("*.png"))[0], tmp_path / "image.png")
        code, _, err = run_hmt(shlex.split(command)[1:], capsys, monkeypatch)
        assert code == 0, f"`{command}` failed ({code}):\n{err[-2000:]}"
        assert "Traceback" not in err
    assert (tmp_path / "templates_out/templates.h5").is_file()
    assert any(re.match(r"template_means\.(pdf|svg|png)$", p.name) for p in (tmp_path / "figures").iterdir())
    assert (tmp_path / "templates_out/report/index.html").is_file()


# Every list of choices the README shows, written `--flag a|b|c`, must be its registry's list (the CLI's choices and
# --help come from the same registries). A registry added here must have such a list in the README.
README_CHOICES = {
    "--backbone": "heatmap_templates.model.backbones:BACKBONES",
    "--method": "heatmap_templates.explain.cam_methods:METHODS",
    "--score": "heatmap_templates.explain.scores:SCORES",
    "--registration": "heatmap_templates.templates.registration:REGISTRATIONS",
    "--normalisation": "heatmap_templates.templates.normalisation:NORMALISATIONS",
    "--include": "heatmap_templates.templates.members:INCLUDES",
    "--similarity": "heatmap_templates.analysis.similarity:SIMILARITIES",
    "--preprocessing": "heatmap_templates.data.preprocess:PREPROCESSING",
    "--schedule": "heatmap_templates.model.recipe:SCHEDULES",
    "--prior-penalty": "heatmap_templates.model.attention_prior:ATTENTION_PRIORS",
    "--head": "heatmap_templates.model.heads:HEADS",
    "--uncertain": "heatmap_templates.data.datasets:UNCERTAIN",
    "--correction": "heatmap_templates.numeric.permutation:CORRECTIONS",
    "--tail": "heatmap_templates.numeric.permutation:TAILS",
}
_CHOICE_LIST = re.compile(r"`(--[a-z-]+) ([a-z0-9+_-]+(?:\|[a-z0-9+_-]+)+)`")


def _registry(location: str):
    import importlib

    module, name = location.split(":")
    return getattr(importlib.import_module(module), name)


def test_readme_lists_of_choices_are_the_registries() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())  # a list may wrap across lines
    found: dict[str, list[list[str]]] = {}
    for flag, choices in _CHOICE_LIST.findall(text):
        found.setdefault(flag, []).append(choices.split("|"))
    assert set(README_CHOICES) <= set(found), f"README shows no `--flag a|b` list for {sorted(set(README_CHOICES) - set(found))}"
    for flag, lists in found.items():
        assert flag in README_CHOICES, f"README lists choices of {flag}; add its registry to README_CHOICES"
        names = _registry(README_CHOICES[flag]).names()
        for listed in lists:
            assert sorted(listed) == sorted(names), f"README's {flag} list {listed} differs from the registry's {names}"

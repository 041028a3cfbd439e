"""Library errors speak of parameters; the CLI maps parameters to flags (heatmap_templates/errors.py).

A message raised in the library names a parameter as ``$name`` and lists it in ``parameters``: ``str(error)`` reads
``parameter 'name'``, and ``hmt`` prints the running command's flag instead (``hmt_cli.main.run``), or the library's
form where that command has no such flag. No message raised in the library names a ``--flag`` itself.
"""
from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates.errors import BadFileError, HmtError, OptionError
from heatmap_templates.synth import synthesize_dataset
from hmt_cli.main import PARAMETER_FLAGS, app, parameter_flags

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
PLACEHOLDER = re.compile(r"\$([A-Za-z_]\w*)")


def _strings(node: ast.AST) -> list[str]:
    """Every string constant under ``node``, the literal parts of f-strings included."""
    return [child.value for child in ast.walk(node) if isinstance(child, ast.Constant) and isinstance(child.value, str)]


def _declared_parameters(node: ast.Raise) -> set[str] | None:
    """The names in the raised call's ``parameters=(...)``, or None when it has none."""
    call = node.exc
    for keyword in getattr(call, "keywords", []):
        if keyword.arg == "parameters":
            return {element.value for element in getattr(keyword.value, "elts", []) if isinstance(element, ast.Constant)}
    return None


def _problems(source: str, where: str) -> list[str]:
    """Raise statements of one module whose message names a CLI flag, or whose placeholders and ``parameters`` disagree."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        text = " ".join(_strings(node.exc))
        if FLAG.search(text):
            found.append(f"{where}:{node.lineno}: names a flag ({FLAG.search(text)[0]}): {text[:100]!r}")
        declared, used = _declared_parameters(node), set(PLACEHOLDER.findall(text))
        if (declared or set()) != used:
            found.append(f"{where}:{node.lineno}: placeholders {sorted(used)} but parameters={sorted(declared or ())}")
    return found


def test_the_scan_finds_a_flag_and_a_forgotten_parameter() -> None:
    source = 'raise HmtError(f"pass --layer {name}")\nraise HmtError("pass $layer")\nraise HmtError("a--b and -1")\n'
    problems = _problems(source, "example.py")
    assert len(problems) == 2 and "--layer" in problems[0] and "parameters=[]" in problems[1], problems


def test_no_library_message_names_a_cli_flag() -> None:
    modules = sorted((ROOT / "heatmap_templates").rglob("*.py"))
    assert len(modules) > 20
    problems = [problem for path in modules
                for problem in _problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert not problems, "library messages must name parameters ($name, parameters=...), not flags:\n" + "\n".join(problems)


def test_a_message_renders_the_library_form_or_the_given_names() -> None:
    error = HmtError("$fine_tune_blocks and $fine_tune_epochs must not be negative ($other stays)",
                     parameters=("fine_tune_blocks", "fine_tune_epochs"))
    assert str(error) == "parameter 'fine_tune_blocks' and parameter 'fine_tune_epochs' must not be negative ($other stays)"
    assert error.render({"fine_tune_epochs": "--fine-tune-epochs"}) == (
        "parameter 'fine_tune_blocks' and --fine-tune-epochs must not be negative ($other stays)")
    copy = pickle.loads(pickle.dumps(error))  # errors cross process boundaries on a Dask cluster
    assert str(copy) == str(error) and copy.render({"fine_tune_blocks": "-b"}).startswith("-b and parameter")
    assert str(HmtError("plain $text")) == "plain $text" and HmtError("a", "b").args == ("a", "b")
    bad = BadFileError("m.keras", "pass $unsafe only if you trust the file", parameters=("unsafe",))
    assert str(bad) == "m.keras: pass parameter 'unsafe' only if you trust the file" and bad.reason == str(bad)[len("m.keras: "):]
    assert bad.render({"unsafe": "--unsafe-load"}) == "m.keras: pass --unsafe-load only if you trust the file"
    option = OptionError("method", "x", "CAM method", ["gradcam"])
    assert option.render({}) == str(option) == "unknown CAM method 'x'; choose one of gradcam"
    assert option.render({"method": "--method"}) == "unknown method 'x' (--method); choose one of gradcam"


def test_the_cli_maps_parameters_to_the_running_commands_flags() -> None:
    import typer

    import hmt_cli.commands  # noqa: F401  (registers the commands on `app`, as run() does)

    assert parameter_flags(["unsafe", "layer", "binary", "shortcut_lesions"], ["heatmaps"]) == {
        "unsafe": "--unsafe-load", "layer": "--layer"}
    assert parameter_flags(["gallery_size"], ["report"]) == {"gallery_size": "--gallery"}
    assert parameter_flags(["layer"], ["no-such-command"]) == {} and parameter_flags(["layer"], []) == {}
    commands = typer.main.get_command(app).commands.values()
    every_flag = {flag for command in commands for parameter in command.params for flag in parameter.opts}
    assert set(PARAMETER_FLAGS.values()) <= every_flag  # the explicit mapping names flags that exist


def test_synth_errors_name_the_parameter_in_python_and_the_flag_in_hmt(tmp_path: Path, capsys, monkeypatch) -> None:
    with pytest.raises(HmtError) as caught:
        synthesize_dataset(tmp_path / "a", n_per_class=2, size=64, shortcut_lesions=2.0)
    assert str(caught.value) == "parameter 'shortcut_lesions' must be between 0 and 1, got 2.0"
    code, _, err = run_hmt(["synth", tmp_path / "a", "-n", "2", "--size", "64", "--shortcut-lesions", "2"], capsys, monkeypatch)
    assert_user_error(code, err, "hmt: error: --shortcut-lesions must be between 0 and 1, got 2.0")
    with pytest.raises(HmtError, match=r"^parameter 'shortcuts': class 'nosuch' is not one of the classes made"):
        synthesize_dataset(tmp_path / "b", n_per_class=2, size=64, shortcuts={"nosuch": 0.5})
    code, _, err = run_hmt(["synth", tmp_path / "b", "-n", "2", "--size", "64", "--shortcut", "nosuch:0.5"], capsys, monkeypatch)
    line = assert_user_error(code, err, "hmt: error: --shortcut: class 'nosuch' is not one of the classes made")
    assert "parameter" not in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_parameter_the_command_has_no_flag_for_keeps_the_library_form(tmp_path: Path, capsys, monkeypatch) -> None:
    import hmt_cli.synth

    def fail(*args: object, **kwargs: object) -> None:
        raise HmtError("model has no 4-D layer; pass $layer", parameters=("layer",))

    monkeypatch.setattr(hmt_cli.synth, "synthesize_dataset", fail)
    code, _, err = run_hmt(["synth", tmp_path / "c"], capsys, monkeypatch)
    assert_user_error(code, err, "hmt: error: model has no 4-D layer; pass parameter 'layer'")


def test_train_errors_name_the_flags_of_hmt_train(tmp_path: Path, capsys, monkeypatch) -> None:
    from heatmap_templates.data.datasets import load_dataset
    from heatmap_templates.model.objectives import objective_for
    from heatmap_templates.model.training import TrainConfig

    monkeypatch.chdir(tmp_path)
    for label in ("covid", "normal"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(2):
            cv2.imwrite(str(tmp_path / "data" / label / f"{index}.png"), np.full((16, 16), 40 * index, np.uint8))
    with pytest.raises(HmtError, match=r"^parameter 'fine_tune_blocks' and parameter 'fine_tune_epochs' must not be"):
        TrainConfig(backbone="small", fine_tune_blocks=-1).validate()
    code, _, err = run_hmt(["train", "data", "--backbone", "small", "--fine-tune-blocks", "-1"], capsys, monkeypatch)
    assert_user_error(code, err, "hmt: error: --fine-tune-blocks and --fine-tune-epochs must not be negative")
    with pytest.raises(HmtError, match=r"^parameter 'binary': 'nosuch' is not a class of the data set \(covid, normal\)"):
        objective_for(load_dataset(tmp_path / "data"), "nosuch")
    code, _, err = run_hmt(["train", "data", "--backbone", "small", "--binary", "nosuch"], capsys, monkeypatch)
    assert_user_error(code, err, "hmt: error: --binary: 'nosuch' is not a class of the data set (covid, normal)")


def test_every_parameter_a_message_names_is_a_flag_of_some_command() -> None:
    """A parameter named in a library message is one a user can set: some command has its flag (a typo such as
    ``$heatmap`` for ``heatmaps`` would leave CLI users reading the library's form)."""
    from hmt_cli.main import _register_commands

    _register_commands()
    declared = {name for path in sorted((ROOT / "heatmap_templates").rglob("*.py"))
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Raise) and node.exc is not None for name in (_declared_parameters(node) or ())}
    assert len(declared) >= 10
    commands = [name for name in (command.name for command in app.registered_commands) if name]
    reachable = {parameter for command in commands for parameter in parameter_flags(declared, [command])}
    assert declared <= reachable, f"parameters no command has a flag for: {sorted(declared - reachable)}"

"""Running the `hmt` entry point in-process and checking its user errors, shared by the CLI tests."""
from __future__ import annotations

import sys

import pytest


def run_hmt(args: list, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run the `hmt` entry point in this process: (exit code, stdout, stderr)."""
    from hmt_cli.main import run

    monkeypatch.setattr(sys, "argv", ["hmt", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_user_error(code: int, err: str, *fragments: str) -> str:
    """Exit code 2, one non-blank stderr line starting `hmt: error:`, no traceback, containing every fragment."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("hmt: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]

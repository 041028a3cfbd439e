"""Error types shared by every stage, and the log of inputs a run skipped.

`HmtError` is a *user* error: the CLI prints its message on one line and exits with code 2,
never a traceback. Library users catch it like any other exception.

Library errors speak of parameters; the CLI maps parameters to flags. A message that names a
parameter of the call writes it as the placeholder ``$name`` (string.Template's syntax, so an
f-string needs no escaping) and lists the names in ``parameters``::

    raise HmtError("model has no 4-D layer; name one with $layer", parameters=("layer",))

``str(error)`` is the library's form, each placeholder written ``parameter 'layer'`` (the keyword a
library user passes); ``error.render({"layer": "--layer"})`` writes any other form, which is what the
CLI does with the running command's flags (``hmt_cli.main.run``), keeping the library's form for a
parameter that command has no flag for. `OptionError` (a value outside a parameter's choices) is the
same idea with a message of its own shape. No library message names a CLI flag (``tests/test_errors.py``).

Runs never stop at a bad input file: they record a :class:`Problem` in a :class:`SkipLog` and
report the log at the end (``strict`` runs raise on the first one instead).
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class HmtError(Exception):
    """A problem the user can fix (bad argument, bad file, missing input); exit code 2.

    ``parameters``: the library parameters the message names, each as ``$name`` (module docstring);
    ``template`` keeps the message with its placeholders, ``str(error)`` is its library form.
    """

    def __init__(self, *args: object, parameters: Sequence[str] = ()) -> None:
        self.parameters = tuple(parameters)
        self.template = str(args[0]) if args else ""
        super().__init__(*((self.render({}), *args[1:]) if self.parameters and args else args))

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each parameter in ``names`` written as given (the CLI: its flag), every
        other parameter in the library's form, ``parameter 'name'``."""
        if not self.parameters:
            return self.template
        placeholder = re.compile(r"\$(" + "|".join(map(re.escape, self.parameters)) + r")\b")
        return placeholder.sub(lambda found: names.get(found[1], f"parameter {found[1]!r}"), self.template)


class OptionError(HmtError):
    """A parameter got a value outside its choices; ``parameter`` is the library's name for it."""

    def __init__(self, parameter: str, value: object, what: str, choices: Sequence[str]) -> None:
        self.parameter = parameter
        self.value = value
        self.what = what
        self.choices = tuple(choices)
        super().__init__(f"unknown {what} {value!r}; choose one of {', '.join(self.choices)}", parameters=(parameter,))

    def __reduce__(self) -> tuple:
        """Pickled as its arguments (it may come from a worker process)."""
        return type(self), (self.parameter, self.value, self.what, self.choices)

    def render(self, names: Mapping[str, str]) -> str:
        """The library's message, or :meth:`for_flag`'s when ``names`` gives the parameter a flag."""
        flag = names.get(self.parameter)
        return super().render(names) if flag is None else self.for_flag(flag)

    def for_flag(self, flag: str) -> str:
        """The message with the CLI's flag named, e.g. "unknown registration 'x' (--registration); ..."."""
        return f"unknown {flag.lstrip('-')} {self.value!r} ({flag}); choose one of {', '.join(self.choices)}"


class BadImageError(HmtError):
    """One input image cannot be used; runs skip it and report it at the end."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple:
        """Pickled as its arguments (it may come from a worker process)."""
        return type(self), (self.path, self.reason)


class BadFileError(HmtError):
    """A model, template or heatmap file cannot be used (wrong kind, corrupt, incompatible, unwritable).

    ``reason`` may name ``parameters`` as ``$name`` (module docstring); the attribute is its library form."""

    def __init__(self, path: str | os.PathLike[str], reason: str, *, parameters: Sequence[str] = ()) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {reason}", parameters=parameters)
        self.reason = HmtError(reason, parameters=parameters).render({})
        self._given = reason

    def __reduce__(self) -> tuple:
        """Pickled as its arguments: a worker process's error (`hmt synth`, a Dask cluster) reaches the caller whole."""
        return functools.partial(type(self), parameters=self.parameters), (self.path, self._given)


def one_line(error: BaseException, limit: int = 120) -> str:
    """An exception's message collapsed to one line of at most ``limit`` characters, for reasons and errors."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def display_path(path: str | os.PathLike | bytes) -> str:
    """A printable form of any path, including names that are not valid UTF-8 (escaped, never an error)."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Problem:
    """A file (or CSV row) that was skipped, with a short reason."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        """The JSON form every command's ``skipped`` list uses."""
        return {"path": self.path, "reason": self.reason}


def problems_json(problems: Iterable[Problem]) -> list[dict[str, str]]:
    """A list of problems in their JSON form."""
    return [problem.to_dict() for problem in problems]


class SkipLog:
    """Collects skipped files during a run for the end-of-run report; ``strict`` raises on the first.

    ``SkipLog(strict, problems)`` starts from problems found earlier (a data set's unreadable rows),
    so that a run reports them with its own.
    """

    def __init__(self, strict: bool = False, problems: Iterable[Problem] = ()) -> None:
        self.strict = strict
        self._problems: list[Problem] = []
        for problem in problems:
            self.add(problem.path, problem.reason)

    def add(self, path: str | os.PathLike | bytes, reason: str) -> None:
        """Record one skipped file, or raise :class:`BadImageError` for it in strict mode."""
        shown = display_path(path)
        if self.strict:
            raise BadImageError(shown, reason)
        self._problems.append(Problem(shown, reason))

    def add_error(self, error: BadImageError) -> None:
        """Record a decoding failure (the error already names its file)."""
        self.add(error.path, error.reason)

    @property
    def problems(self) -> list[Problem]:
        return list(self._problems)

    def __len__(self) -> int:
        return len(self._problems)

    def summary_lines(self, limit: int | None = None) -> list[str]:
        """Lines for the end-of-run report: a count, then one ``path: reason`` line per file."""
        if not self._problems:
            return []
        noun = "file" if len(self._problems) == 1 else "files"
        lines = [f"skipped {len(self._problems)} {noun}:"]
        shown = self._problems if limit is None else self._problems[:limit]
        lines += [f"  {problem}" for problem in shown]
        if len(shown) < len(self._problems):
            lines.append(f"  ... and {len(self._problems) - len(shown)} more")
        return lines

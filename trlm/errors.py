"""What trlm reports to users, and the one place that prints it.

`TrlmError` is a problem with the user's config, inputs or environment (not a bug in trlm): one line
that says what is wrong and what to do. A config can hold several at once: `Problems` carries every
`Problem` the checks found, so a command with three mistakes is refused once, naming the three.
Every command prints them through `report`: one `trlm: error: ...` line each, exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

EXIT_REFUSED = 2


class TrlmError(Exception):
    """A problem with the user's config, inputs or environment (not a bug in trlm)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a setting: `key=value rule; hint`."""

    key: str  # the setting (stage.recipe.learning_rate), or the part of the command (data, hardware)
    rule: str  # what is wrong with it, as the rest of the sentence
    value: str | None = None  # the value as the message shows it; None: the key alone is the subject
    hint: str = ""  # what to do

    def __str__(self) -> str:
        said = f"{self.key} {self.rule}" if self.value is None else f"{self.key}={self.value} {self.rule}"
        return f"{said}; {self.hint}" if self.hint else said


class Problems(TrlmError):
    """Every problem found, raised together before anything is created."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple:  # a job's error crosses to the sweeper pickled (submitit)
        return Problems, (self.problems,)


def error_lines(error: TrlmError) -> list[str]:
    said = [str(p) for p in error.problems] if isinstance(error, Problems) else [str(error)]
    lines = [f"trlm: error: {line}" for line in said]
    if len(said) > 1:
        lines.append(f"trlm: error: {len(said)} problems; nothing was run or written")
    return lines


def report(error: TrlmError, stream: TextIO | None = None) -> int:
    """Prints the error the trlm way and returns the exit code a refused command ends with."""
    print("\n".join(error_lines(error)), file=stream or sys.stderr, flush=True)
    return EXIT_REFUSED

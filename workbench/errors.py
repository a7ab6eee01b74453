"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class WorkbenchError(Exception):
    """A problem the user can fix: bad recipe, missing file, unknown name.

    The message is shown as-is, so it should name the file, key or value and what would be right.
    """

    exit_code = 2


class RecipeError(WorkbenchError):
    """One or more problems in a recipe; `problems` holds every one, message joins them."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("; ".join(f"{source}: {p}" for p in problems))


class RunError(WorkbenchError):
    """A run that cannot start or continue (directory conflicts, bad checkpoint, NaN loss)."""

    exit_code = 1


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the nearest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""

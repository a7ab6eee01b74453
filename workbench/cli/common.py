"""What every command group shares: the two consoles, the registry, and the state of the main options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

PLUGINS_DIR_ENV = "WORKBENCH_PLUGINS_DIR"
"""The documented variable behind `--plugins-dir` (docs/plugins.md)."""

# Piped output is read by people too: wide enough that the results table never wraps.
out = Console() if Console().is_terminal else Console(width=220)
# Plain (non-terminal) stderr never hard-wraps: a log or a grep sees each message on one line.
err = Console(stderr=True) if Console(stderr=True).is_terminal else Console(stderr=True, soft_wrap=True)


@dataclass(frozen=True)
class CliState:
    """The main options (`workbench --plugins-dir DIR COMMAND`), handed to every command by its context."""

    plugins_dir: Path | None = None


def cli_state(ctx: typer.Context | None) -> CliState:
    """The main options of this invocation; a sub-app invoked on its own (tests) reads the variable."""
    state = ctx.find_object(CliState) if ctx is not None else None
    if state is not None:
        return state
    return CliState(plugins_dir=Path(os.environ[PLUGINS_DIR_ENV]) if os.environ.get(PLUGINS_DIR_ENV) else None)


def registry(ctx: typer.Context | None):
    """The registry, with plugin-loading problems shown once as warnings."""
    from workbench import load_registry

    plugins_dir = cli_state(ctx).plugins_dir
    reg = load_registry(plugins_dir=str(plugins_dir) if plugins_dir is not None else None)
    for problem in reg.problems:
        err.print(f"[yellow]warning:[/] {problem}", highlight=False)
    return reg


def print_recipe_error(exc) -> None:
    """Every problem of a RecipeError, one line each, named by its file."""
    for problem in exc.problems:
        err.print(f"{exc.source}: {problem}", highlight=False, soft_wrap=True)


def raise_keyboard_interrupt(signum, frame) -> None:
    """SIGTERM (a cancel from the TUI) stops a run like Ctrl-C: cleanly and resumable."""
    raise KeyboardInterrupt

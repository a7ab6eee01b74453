"""`workbench tui`: the only command that imports Textual, and only when it runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import PLUGINS_DIR_ENV, cli_state
from workbench.errors import WorkbenchError


def tui(ctx: typer.Context,
        runs_dir: Annotated[Path, typer.Option(help="Folder holding run directories.")] = Path("runs")) -> None:
    """Compose recipes and watch runs live (Textual)."""
    try:
        from workbench.tui.app import WorkbenchApp
    except ImportError as exc:
        raise WorkbenchError(f"the TUI could not start: {exc}") from None
    from workbench import load_registry

    plugins_dir = cli_state(ctx).plugins_dir
    if plugins_dir is not None:
        # The runs the TUI launches are processes of their own: they read the documented variable.
        os.environ[PLUGINS_DIR_ENV] = str(plugins_dir)
    registry = load_registry(plugins_dir=str(plugins_dir) if plugins_dir is not None else None)
    WorkbenchApp(runs_dir=runs_dir, registry=registry).run()

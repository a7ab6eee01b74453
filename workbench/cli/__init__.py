"""The `workbench` command line (Typer). Importing this never imports Textual."""

from __future__ import annotations

from workbench.cli.main import app, main

__all__ = ["app", "main"]

"""`workbench plugins new`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from workbench.scaffold import KINDS, write_plugin_package


def plugins_new(
    name: Annotated[str, typer.Argument(help="Component name, e.g. `dcor`; the package is workbench-NAME.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to create the package in.")] = Path(
        "."
    ),
    kind: Annotated[
        str, typer.Option(help=f"Kind of the example component: {', '.join(KINDS)}.")
    ] = "dependency",
) -> None:
    """Write a ready plugin package: pyproject with the entry point, one working component of the
    kind, its tests (they pass before you change anything) and a README."""
    folder = write_plugin_package(name, output, kind)
    Console().print(f"wrote {folder}\nnext: pytest {folder} && pip install -e {folder}", highlight=False)

"""`workbench plugins new`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def plugins_new(
    name: Annotated[str, typer.Argument(help="Component name, e.g. `dcor`; the package is workbench-NAME.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to create the package in.")] = Path(
        "."
    ),
    kind: Annotated[
        str, typer.Option(help="Kind of the example component: dependency, defense, metric, backbone.")
    ] = "dependency",
) -> None:
    """Write a ready plugin package: pyproject with the entry point, one component, a test, a README."""
    from workbench.scaffold import write_plugin_package

    folder = write_plugin_package(name, output, kind)
    Console().print(f"wrote {folder}\nnext: pip install -e {folder} && pytest {folder}", highlight=False)

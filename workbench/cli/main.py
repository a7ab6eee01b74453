"""The `workbench` command: the Typer app, assembled from one module per command group.

Textual is imported only by `tui`, and only when it runs.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from workbench import __version__
from workbench.cli import cache, data, export, plugins, recipes, run, runs, sweep, tui
from workbench.cli.common import PLUGINS_DIR_ENV, CliState, err, out
from workbench.errors import WorkbenchError

app = typer.Typer(
    name="workbench",
    help="Defend image classifiers against model inversion with BiDO and BiDO+: train, attack, measure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"workbench {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    plugins_dir: Annotated[Path | None, typer.Option(
        "--plugins-dir", envvar=PLUGINS_DIR_ENV,
        help="Load every *.py in this folder as a plugin (quick local research).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    ctx.obj = CliState(plugins_dir=plugins_dir)  # every command reads it from its context


app.command()(run.run)
app.command()(sweep.sweep)
app.command()(export.export)
app.command()(tui.tui)
app.add_typer(recipes.app, name="recipes")
app.add_typer(plugins.app, name="plugins")
app.add_typer(runs.app, name="runs")
app.add_typer(cache.app, name="cache")
app.add_typer(data.app, name="data")


@functools.cache
def click_command() -> typer.core.TyperGroup:
    """The Click command tree of `app`, built once per process: `app()` rebuilds it from the commands'
    annotations on every call (about 50 ms, half of a `recipes validate`), which callers that run the
    CLI in-process many times (the test suite's fuzzer: over a thousand calls) would pay each time.
    Pretty exceptions are off, so calling the tree is what `app()` does."""
    return typer.main.get_command(app)


def main() -> None:
    """Console entry point: user errors end in one line on stderr and a non-zero exit."""
    try:
        click_command()()
    except WorkbenchError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)

"""`workbench runs`: read run directories (and sweep directories)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.common import out

app = typer.Typer(help="Read run directories.", no_args_is_help=True)


@app.command("list")
def runs_list(
    runs_dir: Annotated[Path, typer.Option(help="Folder holding run directories.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="JSON rows.")] = False,
) -> None:
    """Every run under the runs folder: status, recipe, start, duration, headline figures."""
    from workbench.storage.runs import list_runs

    runs = list_runs(runs_dir)
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in runs], indent=2) + "\n")
        return
    table = Table(title=f"runs in {runs_dir}", title_justify="left")
    for column in ("run", "status", "recipe", "started", "duration", "variants", "procs", "headline"):
        table.add_column(column)
    for r in runs:
        table.add_row(r.name, r.status, r.recipe, r.started_text, r.duration_text, str(len(r.variants)),
                      str(r.world_size), r.headline)
    out.print(table)


@app.command("show")
def runs_show(run: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """One run: status, stages, and its results table."""
    from workbench.cli.tables import aggregate_table, results_table
    from workbench.errors import WorkbenchError
    from workbench.storage.runs import is_run_dir, read_json_file, summarize

    if not run.is_dir():
        what = "does not exist" if not run.exists() and not run.is_symlink() else "is not a folder"
        raise WorkbenchError(f"{run}: {what}; `runs show` takes a run or sweep directory (see `workbench runs list`)")
    if not is_run_dir(run):
        raise WorkbenchError(f"{run}: not a run or sweep directory (no run.json, events.jsonl, recipe.toml or "
                             "sweep.json); see `workbench runs list`")
    info = summarize(run)
    procs = f"  {info.world_size} processes (DDP)" if info.world_size > 1 else ""
    out.print(f"[bold]{info.name}[/]  {info.status}  recipe {info.recipe}  started {info.started_text}  "
              f"duration {info.duration_text}{procs}", highlight=False)
    if info.error:
        out.print(f"[red]error:[/] {info.error}", highlight=False)
    if info.kind == "sweep":
        out.print(info.headline, highlight=False)
        aggregate = read_json_file(Path(run) / "aggregate.json")
        if isinstance(aggregate, dict):
            out.print(aggregate_table(aggregate))
            out.print(f"report: {Path(run) / 'report.md'}  plot: {Path(run) / 'pareto.png'}", highlight=False)
        return
    if info.results:
        out.print(results_table(info.results))
    else:
        out.print(f"no results yet; last event: {info.last_event}", highlight=False)

"""`workbench cache`: the stage cache (evaluation models, GAN priors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.common import out

app = typer.Typer(help="The stage cache (evaluation models, GAN priors).", no_args_is_help=True)


@app.command("list")
def cache_list(cache_dir: Annotated[Path | None, typer.Option(help="Cache folder.")] = None) -> None:
    """Cached stages (evaluation models, GAN priors) with their size."""
    from workbench.storage.cache import StageCache, default_cache_dir

    cache = StageCache(cache_dir or default_cache_dir())
    table = Table(title=f"stage cache {cache.root}", title_justify="left")
    for column in ("stage", "key", "size", "what"):
        table.add_column(column)
    for entry in cache.entries():
        what = entry["meta"].get("summary", "")
        table.add_row(entry["stage"], entry["key"], f"{entry['bytes'] / 1e6:.1f} MB", what)
    out.print(table)


@app.command("clear")
def cache_clear(
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
) -> None:
    """Remove cached stages; they are rebuilt when next needed."""
    from workbench.storage.cache import StageCache, default_cache_dir

    removed = StageCache(cache_dir or default_cache_dir()).clear(stage)
    out.print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")

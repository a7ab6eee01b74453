"""`workbench export`: replay a run's events into an event sink after the fact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import out, registry


def export(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run directory (finished, or stopped: what it holds).")],
    sink: Annotated[str, typer.Option("--sink", help="Event sink to replay into: tensorboard, mlflow, or a plugin's.")],
    to: Annotated[str | None, typer.Option(
        "--to", help="Where the sink writes (its `directory`; default RUN_DIR/<sink>, which must be empty); "
                     "for mlflow also a tracking URI.")] = None,
) -> None:
    """Replay a run's events.jsonl into an event sink: the same result as the sink attached live."""
    from workbench.storage.sinks import export_run

    target, count = export_run(registry(ctx), run_dir, sink, to)
    where = f" -> {target}" if target is not None else (f" -> {to}" if to else "")
    out.print(f"exported {count} events of {run_dir} to {sink}{where}", highlight=False)

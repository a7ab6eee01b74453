"""`workbench sweep` (and `workbench run --seeds`): a recipe over seeds and a grid, on an executor."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import cli_state, err, out, print_recipe_error, raise_keyboard_interrupt, registry


def sweep(
    ctx: typer.Context,
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP", help="Sweep TOML file, or a sweep directory to resume.")],
    sweep_dir: Annotated[Path | None, typer.Option(help="Where the sweep is written (default runs/<sweep>-<time>).")] = None,
    executor: Annotated[str | None, typer.Option(
        help="Run on this executor instead of the file's (inline, processes, submitit, ray...).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a value: a sweep key (seeds=0-9, executor.workers=4, grid.<path>=[...]) or a "
                      "recipe path for every run (key.path=value). Repeatable.")] = None,
    resume: Annotated[bool, typer.Option(help="Finish what is missing in --sweep-dir: skip complete runs, resume "
                                              "interrupted ones, retry failed ones.")] = False,
    force: Annotated[bool, typer.Option(help="Move an existing sweep in --sweep-dir aside and start over.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Stage cache folder (default $WORKBENCH_CACHE_DIR or the user cache dir).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress lines; the summary only.")] = False,
    sink: Annotated[list[str] | None, typer.Option(
        "--sink", help="Also send every run's events to this event sink (tensorboard, mlflow...); repeatable.")] = None,
) -> None:
    """Run a recipe over seeds and a grid of values on an executor; aggregate with 95 % CIs."""
    from workbench.sweeps import SweepOptions

    check_sinks(registry(ctx), sink)
    options = SweepOptions(sweep=sweep_file, sweep_dir=sweep_dir, overrides=set_ or [], executor=executor,
                           resume=resume, force=force, cache_dir=cache_dir, plugins_dir=cli_state(ctx).plugins_dir,
                           sinks=list(dict.fromkeys(sink or [])))
    _sweep(options, quiet)


def check_sinks(reg, names: list[str] | None) -> None:
    """`--sink` names: a misspelt one is an error before anything is written. A sweep hands them to
    every run (`SweepOptions.sinks`, in the jobs' options), in whatever process or host it runs."""
    for name in names or []:
        reg.get("event_sink", name)


def run_seeds(ctx: typer.Context, recipe: Path, seeds: str, run_dir: Path | None, overrides: list[str],
              resume: bool, force: bool, cache_dir: Path | None, quiet: bool, sinks: list[str]) -> None:
    """`workbench run RECIPE --seeds 0-4`: a seeds-only sweep of the recipe (processes executor)."""
    from workbench.errors import RecipeError
    from workbench.sweeps import SweepOptions
    from workbench.sweeps.spec import seeds_only_sweep

    reg = registry(ctx)
    try:
        sweep_spec = seeds_only_sweep(recipe, seeds, overrides, reg)
    except RecipeError as exc:
        print_recipe_error(exc)
        raise typer.Exit(2) from None
    options = SweepOptions(sweep=recipe, sweep_dir=run_dir, resume=resume, force=force, cache_dir=cache_dir,
                           plugins_dir=cli_state(ctx).plugins_dir, sinks=list(dict.fromkeys(sinks)))
    _sweep(options, quiet, sweep_spec)


def _sweep(options, quiet: bool, spec=None) -> None:
    from workbench.cli.tables import aggregate_table
    from workbench.errors import RecipeError
    from workbench.sweeps import SweepRunner

    previous = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        try:
            runner = SweepRunner.start(options, listeners=[] if quiet else [_sweep_printer()], sweep=spec)
        except RecipeError as exc:
            print_recipe_error(exc)
            raise typer.Exit(2) from None
        result = runner.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.print(aggregate_table(result.aggregate))
    out.print(f"sweep directory: {result.sweep_dir}  (report: {result.sweep_dir / 'report.md'})", highlight=False)
    if result.failed:
        for run_id, error in sorted(result.failed.items()):
            err.print(f"[red]failed:[/] {run_id}: {error}", highlight=False, soft_wrap=True)
        err.print(f"{len(result.failed)} run(s) failed; retry them with: workbench sweep {result.sweep_dir} --resume",
                  highlight=False)
        raise typer.Exit(1)


def _sweep_printer():
    """Sweep events as plain lines: a run queued, started, finished or failed, with k of N."""
    state = {"total": 0, "done": 0}

    def listener(event: dict) -> None:
        kind = event["type"]
        if kind == "sweep_started":
            state["total"] = len(event.get("runs", []))
            err.print(f"sweep of {state['total']} runs on {event.get('executor')} -> {event.get('sweep_dir')}",
                      highlight=False)
        elif kind in ("sweep_run_skipped", "sweep_run_finished", "sweep_run_failed"):
            state["done"] += 1
            what = {"sweep_run_skipped": "complete, skipped", "sweep_run_finished": "finished",
                    "sweep_run_failed": f"[red]failed[/]: {event.get('error')}"}[kind]
            err.print(f"[{state['done']}/{state['total']}] {event['run']} {what}", highlight=False, soft_wrap=True)
        elif kind == "sweep_run_started":
            err.print(f"  {event['run']} started", highlight=False)
        elif kind == "log":
            err.print(event.get("message", ""), highlight=False)

    return listener

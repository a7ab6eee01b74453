"""The `workbench` command. One Typer sub-app per command group; Textual is imported only by `tui`."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from workbench import __version__
from workbench.cli.data import app as data_app
from workbench.cli.scaffold import plugins_new
from workbench.errors import WorkbenchError

PLUGINS_DIR_ENV = "WORKBENCH_PLUGINS_DIR"

app = typer.Typer(
    name="workbench",
    help="Defend image classifiers against model inversion with BiDO and BiDO+: train, attack, measure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
recipes_app = typer.Typer(help="Validate, show, create and describe recipes.", no_args_is_help=True)
plugins_app = typer.Typer(help="Registered components and the plugins that provide them.", no_args_is_help=True)
runs_app = typer.Typer(help="Read run directories.", no_args_is_help=True)
cache_app = typer.Typer(help="The stage cache (evaluation models, GAN priors).", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
app.add_typer(plugins_app, name="plugins")
app.add_typer(runs_app, name="runs")
app.add_typer(cache_app, name="cache")
app.add_typer(data_app, name="data")
plugins_app.command("new")(plugins_new)

# Piped output is read by people too: wide enough that the results table never wraps.
out = Console() if Console().is_terminal else Console(width=220)
# Plain (non-terminal) stderr never hard-wraps: a log or a grep sees each message on one line.
err = Console(stderr=True) if Console(stderr=True).is_terminal else Console(stderr=True, soft_wrap=True)


def registry():
    """The registry, with plugin-loading problems shown once as warnings."""
    from workbench import load_registry

    reg = load_registry(plugins_dir=os.environ.get(PLUGINS_DIR_ENV))
    for problem in reg.problems:
        err.print(f"[yellow]warning:[/] {problem}", highlight=False)
    return reg


def version_callback(value: bool) -> None:
    if value:
        out.print(f"workbench {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    plugins_dir: Annotated[Path | None, typer.Option(
        "--plugins-dir", help="Load every *.py in this folder as a plugin (quick local research).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    if plugins_dir is not None:
        os.environ[PLUGINS_DIR_ENV] = str(plugins_dir)


# ------------------------------------------------------------------ run


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file, or a run directory to resume.")],
    run_dir: Annotated[Path | None, typer.Option(help="Where the run is written (default runs/<recipe>-<time>).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe value: key.path=value (TOML value), repeatable.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --run-dir from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Move an existing run in --run-dir aside and start over.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Stage cache folder (default $WORKBENCH_CACHE_DIR or the user cache dir).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Variants trained in parallel processes (default: up to the CPU count; 1 on CUDA).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output; results table only.")] = False,
    sink: Annotated[list[str] | None, typer.Option(
        "--sink", help="Also send the run's events to this event sink (tensorboard, mlflow, or a plugin's), "
                       "besides the recipe's [[sinks]]; repeatable.")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Run the recipe over these seeds as a sweep (\"0-4\", \"0,3,7\"); --run-dir is then the sweep "
             "directory. Same as `workbench sweep` with a seeds-only sweep file.")] = None,
    nproc: Annotated[int | None, typer.Option(
        min=1, help="Train each target data-parallel (DDP) in N processes on this machine: starts torch's own "
                    "launcher, as `torchrun --standalone --nproc-per-node N -m workbench run ...` does. "
                    "target.train.batch_size stays the global batch.")] = None,
) -> None:
    """Run a whole experiment from a recipe: train every variant, evaluate, report."""
    from workbench.cli.progress import ConsoleReporter
    from workbench.running.distributed import launched_world_size
    from workbench.running.runner import Runner, RunOptions

    if (nproc or 1) > 1 or launched_world_size() > 1:
        if seeds is not None:
            raise WorkbenchError("--seeds with --nproc or torchrun: run the seeds one after another, or as a sweep "
                                 "on an executor; data-parallel runs take one seed")
        if launched_world_size() == 1:  # `--nproc N`: torch's launcher starts N copies of this command
            _launch_torchrun(nproc, recipe, run_dir, set_ or [], resume, force, cache_dir, quiet, sink or [])
            return

    if cache_dir is not None:
        from workbench.storage.cache import StageCache

        StageCache(cache_dir)  # a --cache-dir that is a file: one line before any run directory is made
    if seeds is not None:
        _sinks_for_every_run(registry(), sink)
        _run_seeds(recipe, seeds, run_dir, set_ or [], resume, force, cache_dir, quiet)
        return
    if launched_world_size() > 1:  # started by torchrun: join the process group; rank 0 leads
        from workbench.running import distributed

        distributed.setup()
        if not distributed.is_main_process():
            _follow_rank_zero()
            return
    reg = registry()  # surfaces plugin warnings before the run starts
    for name in sink or []:
        reg.get("event_sink", name)  # a misspelt --sink is an error before anything is written
    options = RunOptions(recipe=recipe, run_dir=run_dir, overrides=set_ or [], resume=resume, force=force,
                         cache_dir=cache_dir, workers=workers, sinks=sink or [],
                         plugins_dir=Path(os.environ[PLUGINS_DIR_ENV]) if os.environ.get(PLUGINS_DIR_ENV) else None)
    reporter = ConsoleReporter(err, quiet=quiet)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        if launched_world_size() > 1:  # rank 0 under torchrun: the run, which brings the others in
            from workbench.running.leader import lead_run

            runner, results = lead_run(options, [reporter], reg, live=reporter)
        else:
            runner = Runner.start(options, listeners=[reporter], registry=reg)
            with reporter:
                results = runner.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    from workbench.cli.tables import results_table

    out.print(results_table(results))
    out.print(f"run directory: {runner.run_dir}  (report: {runner.run_dir / 'report.md'})", highlight=False)


def _follow_rank_zero() -> None:
    """A rank other than 0 under torchrun: train each target's slices with rank 0; write nothing."""
    from workbench.running.leader import follow_run

    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        follow_run()
    except KeyboardInterrupt:
        sys.exit(130)  # rank 0 says so (it writes the run); one line, not N
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launch_torchrun(nproc: int, recipe: Path, run_dir: Path | None, overrides: list[str], resume: bool,
                     force: bool, cache_dir: Path | None, quiet: bool, sinks: list[str]) -> None:
    """`workbench run --nproc N`: torch.distributed.run (torchrun) starts N ranks of `-m workbench run`
    on this machine; a rank that fails ends them all, and this says which in one line."""
    import logging

    # torchrun's own warnings and failure report (its loggers read LOGLEVEL when first imported):
    # ours is one line.
    os.environ.setdefault("LOGLEVEL", "ERROR")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    from workbench.storage.runs import default_run_dir

    if run_dir is None:  # chosen here, so that the line after a failure can name it
        run_dir = recipe if recipe.is_dir() else default_run_dir(recipe)
    argv = ["run", str(recipe), "--run-dir", str(run_dir)]
    for value in overrides:
        argv += ["--set", value]
    argv += ["--resume"] * resume + ["--force"] * force + ["--quiet"] * quiet
    argv += ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
    for name in sinks:
        argv += ["--sink", name]
    # torchrun would set 1 thread per rank with a warning; share the cores out instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun(parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", "workbench", *argv]))
    except ChildFailedError as exc:
        # The root cause: a rank killed by a signal (out of memory, kill -9) rather than one that
        # stopped because it was gone, or that torchrun itself stopped (SIGTERM); torchrun does not
        # always list the first rank to die, so when it lists only stopped ones, say no more.
        listed = sorted((rank, f) for rank, f in exc.failures.items() if f.exitcode != -signal.SIGTERM)
        killed = [(rank, f) for rank, f in listed if f.exitcode < 0]
        resume = f"The run directory is resumable: workbench run {run_dir} --resume --nproc {nproc}"
        if not listed:
            raise _LaunchFailed(f"a rank failed and torchrun stopped all {nproc}. {resume}", 1) from None
        rank, failure = killed[0] if killed else listed[0]
        code = failure.exitcode
        if code == 2:  # a user error: the rank said it in one line already; nothing to resume
            raise typer.Exit(code=2) from None
        how = f"was killed by signal {failure.signal_name()}" if code < 0 else f"exited with code {code}"
        raise _LaunchFailed(f"rank {rank} of {nproc} {how}; the others were stopped. {resume}",
                            130 if code == 130 else 1) from None
    except SignalException:  # Ctrl-C or SIGTERM: torchrun stopped the ranks; rank 0 recorded where
        raise _LaunchFailed(f"interrupted; continue with: workbench run {run_dir} --resume --nproc {nproc}",
                            130) from None


class _LaunchFailed(WorkbenchError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _raise_keyboard_interrupt(signum, frame) -> None:
    """SIGTERM (a cancel from the TUI) stops a run like Ctrl-C: cleanly and resumable."""
    raise KeyboardInterrupt


# ------------------------------------------------------------------ sweep


@app.command()
def sweep(
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

    _sinks_for_every_run(registry(), sink)
    options = SweepOptions(sweep=sweep_file, sweep_dir=sweep_dir, overrides=set_ or [], executor=executor,
                           resume=resume, force=force, cache_dir=cache_dir, plugins_dir=_plugins_dir())
    _sweep(options, quiet)


def _sinks_for_every_run(reg, names: list[str] | None) -> None:
    """`--sink` of a sweep: every run of it, in whatever process or host its executor runs it, gets
    these sinks (through $WORKBENCH_SINKS, as --plugins-dir reaches them through its variable)."""
    from workbench.storage.sinks import SINKS_ENV

    for name in names or []:
        reg.get("event_sink", name)  # a misspelt --sink is an error before anything is written
    if names:
        os.environ[SINKS_ENV] = ",".join(dict.fromkeys(names))


def _plugins_dir() -> Path | None:
    return Path(os.environ[PLUGINS_DIR_ENV]) if os.environ.get(PLUGINS_DIR_ENV) else None


def _run_seeds(recipe: Path, seeds: str, run_dir: Path | None, overrides: list[str], resume: bool, force: bool,
               cache_dir: Path | None, quiet: bool) -> None:
    """`workbench run RECIPE --seeds 0-4`: a seeds-only sweep of the recipe (processes executor)."""
    from workbench.errors import RecipeError
    from workbench.sweeps import SweepOptions
    from workbench.sweeps.spec import seeds_only_sweep

    reg = registry()
    try:
        sweep_spec = seeds_only_sweep(recipe, seeds, overrides, reg)
    except RecipeError as exc:
        for problem in exc.problems:
            err.print(f"{exc.source}: {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    options = SweepOptions(sweep=recipe, sweep_dir=run_dir, resume=resume, force=force, cache_dir=cache_dir,
                           plugins_dir=_plugins_dir())
    _sweep(options, quiet, sweep_spec)


def _sweep(options, quiet: bool, spec=None) -> None:
    from workbench.errors import RecipeError
    from workbench.sweeps import SweepRunner

    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        try:
            runner = SweepRunner.start(options, listeners=[] if quiet else [_sweep_printer()], sweep=spec)
        except RecipeError as exc:
            for problem in exc.problems:
                err.print(f"{exc.source}: {problem}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        result = runner.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.print(_aggregate_table(result.aggregate))
    out.print(f"sweep directory: {result.sweep_dir}  (report: {result.sweep_dir / 'report.md'})", highlight=False)
    if result.failed:
        for run_id, error in sorted(result.failed.items()):
            err.print(f"[red]failed:[/] {run_id}: {error}", highlight=False, soft_wrap=True)
        err.print(f"{len(result.failed)} run(s) failed; retry them with: workbench sweep {result.sweep_dir} --resume",
                  highlight=False)
        raise typer.Exit(1)


def _aggregate_table(data: dict) -> Table:
    """A sweep's aggregate: mean ± std (n) per point and variant, the headline figures."""
    from workbench.sweeps.aggregate import cell, figure_title, headline_figures

    columns = headline_figures(data)
    table = Table(title="mean ± std (n) over seeds", title_justify="left")
    for column in ("point", "variant", *(figure_title(c) for c in columns)):
        table.add_column(column)
    for point in data["points"]:
        for variant in point["variants"]:
            table.add_row(point["id"], variant["name"], *(cell(variant["figures"].get(c)) for c in columns))
    return table


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


# ------------------------------------------------------------------ export


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (finished, or stopped: what it holds).")],
    sink: Annotated[str, typer.Option("--sink", help="Event sink to replay into: tensorboard, mlflow, or a plugin's.")],
    to: Annotated[str | None, typer.Option(
        "--to", help="Where the sink writes (its `directory`; default RUN_DIR/<sink>, which must be empty); "
                     "for mlflow also a tracking URI.")] = None,
) -> None:
    """Replay a run's events.jsonl into an event sink: the same result as the sink attached live."""
    from workbench.storage.sinks import export_run

    target, count = export_run(registry(), run_dir, sink, to)
    where = f" -> {target}" if target is not None else (f" -> {to}" if to else "")
    out.print(f"exported {count} events of {run_dir} to {sink}{where}", highlight=False)


# ------------------------------------------------------------------ recipes


@recipes_app.command("validate")
def recipes_validate(files: Annotated[list[Path], typer.Argument(help="Recipe files to check.")]) -> None:
    """Check recipes: structure, every component name and every param. Lists all problems."""
    from workbench.errors import RecipeError
    from workbench.recipe.schema import load_recipe

    reg = registry()
    failed = False
    for path in files:
        try:
            load_recipe(path, registry=reg)
        except RecipeError as exc:
            failed = True
            for problem in exc.problems:
                err.print(f"{path}: {problem}", highlight=False, soft_wrap=True)
            continue
        out.print(f"{path}: ok", highlight=False)
    if failed:
        raise typer.Exit(2)


@recipes_app.command("show")
def recipes_show(
    file: Annotated[Path, typer.Argument(help="Recipe file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=value.")] = None,
) -> None:
    """Print the recipe as it will run: every default filled in, overrides applied."""
    from workbench.recipe.schema import load_recipe, recipe_hash, resolve, to_toml

    reg = registry()
    recipe = load_recipe(file, set_ or [], reg)
    resolved = resolve(recipe, reg)
    sys.stdout.write(to_toml(resolved, f"{file}, resolved (hash {recipe_hash(resolved)})"))


@recipes_app.command("new")
def recipes_new(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """A commented starter recipe to copy and edit."""
    from workbench.recipe.template import STARTER_RECIPE

    if output is None:
        sys.stdout.write(STARTER_RECIPE)
        return
    if output.exists():
        raise WorkbenchError(f"{output}: already exists; choose another --output")
    if not output.parent.is_dir():
        raise WorkbenchError(f"{output}: the folder {output.parent} does not exist or is not a folder; "
                             "create it first or choose another --output")
    try:
        with output.open("x", encoding="utf-8") as handle:  # "x": never overwrite what appeared meanwhile
            handle.write(STARTER_RECIPE)
    except OSError as exc:
        raise WorkbenchError(f"{output}: cannot write ({exc.strerror or exc}); choose another --output") from None
    out.print(f"wrote {output}; check it with: workbench recipes validate {output}", highlight=False)


@recipes_app.command("schema")
def recipes_schema() -> None:
    """JSON Schema of recipes (component tables narrowed to registered names) for editors."""
    from workbench.recipe.schema import json_schema

    sys.stdout.write(json.dumps(json_schema(registry()), indent=2) + "\n")


# ------------------------------------------------------------------ plugins


@plugins_app.command("list")
def plugins_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON rows: kind, name, plugin, summary, params.")] = False,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
) -> None:
    """Every registered component by kind, with the plugin that provides it and its params."""
    from workbench.components.registry import KINDS

    reg = registry()
    kinds = [kind] if kind else list(KINDS)
    rows = []
    for k in kinds:
        reg.names(k)  # unknown kind -> clear error
        for component in reg.components(k):
            info = reg.manager.info.get(component.plugin)
            rows.append({
                "kind": component.kind, "name": component.name, "plugin": component.plugin,
                "distribution": info.distribution if info else None, "version": info.version if info else None,
                "summary": component.summary, "params": _params_rows(component.params),
            })
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    for k in kinds:
        table = Table(title=f"{k}", title_justify="left", show_lines=False, expand=False)
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("plugin", style="dim")
        table.add_column("summary")
        table.add_column("params", style="green")
        kind_rows = [r for r in rows if r["kind"] == k]
        for r in kind_rows:
            params = ", ".join(f"{p['name']}={p['default']}" if p["default"] is not None else p["name"]
                               for p in r["params"])
            plugin = r["plugin"] + (f" ({r['distribution']} {r['version']})" if r["distribution"] else "")
            table.add_row(r["name"], plugin, r["summary"], params)
        if not kind_rows:
            table.add_row("(none registered)", "", "", "")
        out.print(table)


def _params_rows(model) -> list[dict]:
    rows = []
    for name, field in model.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if hasattr(default, "model_dump"):
            default = default.model_dump(mode="json")
        rows.append({
            "name": name, "type": _type_name(field.annotation), "default": _jsonable(default),
            "required": field.is_required(), "help": field.description or "",
        })
    return rows


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


# ------------------------------------------------------------------ runs


@runs_app.command("list")
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


@runs_app.command("show")
def runs_show(run: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """One run: status, stages, and its results table."""
    from workbench.cli.tables import results_table
    from workbench.storage.runs import summarize

    info = summarize(run)
    procs = f"  {info.world_size} processes (DDP)" if info.world_size > 1 else ""
    out.print(f"[bold]{info.name}[/]  {info.status}  recipe {info.recipe}  started {info.started_text}  "
              f"duration {info.duration_text}{procs}", highlight=False)
    if info.error:
        out.print(f"[red]error:[/] {info.error}", highlight=False)
    if info.kind == "sweep":
        out.print(info.headline, highlight=False)
        aggregate = Path(run) / "aggregate.json"
        if aggregate.exists():
            out.print(_aggregate_table(json.loads(aggregate.read_text())))
            out.print(f"report: {Path(run) / 'report.md'}  plot: {Path(run) / 'pareto.png'}", highlight=False)
        return
    if info.results:
        out.print(results_table(info.results))
    else:
        out.print(f"no results yet; last event: {info.last_event}", highlight=False)


# ------------------------------------------------------------------ cache


@cache_app.command("list")
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


@cache_app.command("clear")
def cache_clear(
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
) -> None:
    """Remove cached stages; they are rebuilt when next needed."""
    from workbench.storage.cache import StageCache, default_cache_dir

    removed = StageCache(cache_dir or default_cache_dir()).clear(stage)
    out.print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")


# ------------------------------------------------------------------ tui


@app.command()
def tui(runs_dir: Annotated[Path, typer.Option(help="Folder holding run directories.")] = Path("runs")) -> None:
    """Compose recipes and watch runs live (Textual)."""
    try:
        from workbench.tui.app import WorkbenchApp
    except ImportError as exc:
        raise WorkbenchError(f"the TUI could not start: {exc}") from None
    WorkbenchApp(runs_dir=runs_dir).run()


def main() -> None:
    """Console entry point: user errors end in one line on stderr and a non-zero exit."""
    try:
        app()
    except WorkbenchError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)

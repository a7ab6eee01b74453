"""`workbench run`: one recipe, one run directory; `--seeds` hands over to a sweep, `--nproc` to torchrun."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import cli_state, err, out, raise_keyboard_interrupt, registry
from workbench.errors import WorkbenchError


def run(
    ctx: typer.Context,
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
    from workbench.running.runner import RunOptions, execute, start_run

    plugins_dir = cli_state(ctx).plugins_dir
    if (nproc or 1) > 1 or launched_world_size() > 1:
        if seeds is not None:
            raise WorkbenchError("--seeds with --nproc or torchrun: run the seeds one after another, or as a sweep "
                                 "on an executor; data-parallel runs take one seed")
        _data_parallel_run(ctx, nproc, recipe, run_dir, set_ or [], resume, force, cache_dir, workers, quiet,
                           sink or [], plugins_dir)
        return

    if cache_dir is not None:
        from workbench.storage.cache import StageCache

        StageCache(cache_dir)  # a --cache-dir that is a file: one line before any run directory is made
    if seeds is not None:
        from workbench.cli.sweep import check_sinks, run_seeds

        check_sinks(registry(ctx), sink)
        run_seeds(ctx, recipe, seeds, run_dir, set_ or [], resume, force, cache_dir, quiet, sink or [])
        return
    reg = registry(ctx)  # surfaces plugin warnings before the run starts
    for name in sink or []:
        reg.get("event_sink", name)  # a misspelt --sink is an error before anything is written
    options = RunOptions(recipe=recipe, run_dir=run_dir, overrides=set_ or [], resume=resume, force=force,
                         cache_dir=cache_dir, workers=workers, sinks=sink or [], plugins_dir=plugins_dir)
    reporter = ConsoleReporter(err, quiet=quiet)
    previous = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        run = start_run(options, listeners=[reporter], registry=reg)
        with reporter:
            results = execute(run)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _print_results(run.run_dir, results)


def _print_results(run_dir: Path, results) -> None:
    from workbench.cli.tables import results_table

    out.print(results_table(results))
    out.print(f"run directory: {run_dir}  (report: {run_dir / 'report.md'})", highlight=False)


# ------------------------------------------------------------------ data-parallel (torchrun)


def _data_parallel_run(ctx: typer.Context, nproc: int | None, recipe: Path, run_dir: Path | None,
                       overrides: list[str], resume: bool, force: bool, cache_dir: Path | None,
                       workers: int | None, quiet: bool, sinks: list[str], plugins_dir: Path | None) -> None:
    """`--nproc N` or a rank started by torchrun: the whole data-parallel branch of `run`, in one place.

    Without torchrun, start it (N copies of this command); under it, join the process group, where
    every rank runs the same program (rank 0 alone writes the run directory and prints).
    """
    from workbench.cli.progress import ConsoleReporter
    from workbench.running import distributed
    from workbench.running.distributed import launched_world_size
    from workbench.running.runner import RankLost, RunInterrupted, RunOptions, run_on_every_rank

    if launched_world_size() == 1:  # `--nproc N`: torch's launcher starts N copies of this command
        _launch_torchrun(nproc, recipe, run_dir, overrides, resume, force, cache_dir, quiet, sinks, plugins_dir)
        return
    if cache_dir is not None:
        from workbench.storage.cache import StageCache

        StageCache(cache_dir)  # a --cache-dir that is a file: one line before any run directory is made
    distributed.setup()  # started by torchrun: join the process group; every rank runs the same program
    reg = registry(ctx)  # surfaces plugin warnings before the run starts
    for name in sinks:
        reg.get("event_sink", name)  # a misspelt --sink is an error before anything is written
    options = RunOptions(recipe=recipe, run_dir=run_dir, overrides=overrides, resume=resume, force=force,
                         cache_dir=cache_dir, workers=workers, sinks=sinks, plugins_dir=plugins_dir)
    main = distributed.is_main_process()
    reporter = ConsoleReporter(err, quiet=quiet)
    previous = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        run, results = run_on_every_rank(options, [reporter] if main else [], reg, live=reporter)
    except KeyboardInterrupt:
        if main:
            raise
        sys.exit(130)  # rank 0 says so (it writes the run); one line, not N
    except (RankLost, RunInterrupted) as exc:
        # Under `--nproc` the launcher's one line names the rank that died (or the interrupt) and how
        # to resume; a rank that lost the others, or was stopped because of it, says nothing more.
        if main and not os.environ.get(distributed.ENV_LAUNCHER):
            raise
        sys.exit(exc.exit_code)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if main and run is not None:
        _print_results(run.run_dir, results)


def _launch_torchrun(nproc: int, recipe: Path, run_dir: Path | None, overrides: list[str], resume: bool,
                     force: bool, cache_dir: Path | None, quiet: bool, sinks: list[str],
                     plugins_dir: Path | None) -> None:
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

    from workbench.running.distributed import ENV_LAUNCHER
    from workbench.running.runner import RankLost
    from workbench.storage.runs import default_run_dir

    if run_dir is None:  # chosen here, so that the line after a failure can name it
        run_dir = recipe if recipe.is_dir() else default_run_dir(recipe)
    argv = ["--plugins-dir", str(plugins_dir)] if plugins_dir is not None else []
    argv += ["run", str(recipe), "--run-dir", str(run_dir)]
    for value in overrides:
        argv += ["--set", value]
    argv += ["--resume"] * resume + ["--force"] * force + ["--quiet"] * quiet
    argv += ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
    for name in sinks:
        argv += ["--sink", name]
    # torchrun would set 1 thread per rank with a warning; share the cores out instead.
    from workbench.running.threads import usable_cores

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        with _environment(ENV_LAUNCHER, "1"):  # the ranks leave the line about a lost rank to this process
            torchrun(parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", "workbench", *argv]))
    except ChildFailedError as exc:
        # The root cause: a rank killed by a signal (out of memory, kill -9) rather than one that
        # stopped because it was gone, or that torchrun itself stopped (SIGTERM); torchrun does not
        # always list the first rank to die, so when it lists only stopped ones, say no more.
        listed = sorted((rank, f) for rank, f in exc.failures.items()
                        if f.exitcode not in (-signal.SIGTERM, RankLost.exit_code))
        killed = [(rank, f) for rank, f in listed if f.exitcode < 0]
        resume = f"The run directory is resumable: workbench run {run_dir} --resume --nproc {nproc}"
        if not listed:
            raise _LaunchFailed(f"a rank failed and torchrun stopped all {nproc}. {resume}", 1) from None
        rank, failure = killed[0] if killed else listed[0]
        code = failure.exitcode
        if code == 2:  # a user error: the rank said it in one line already; nothing to resume
            raise typer.Exit(code=2) from None
        how = f"was killed by signal {failure.signal_name()}" if code < 0 else f"exited with code {code}"
        line = f"rank {rank} of {nproc} {how}; the others were stopped. {resume}"
        if code < 0:
            _record_lost_rank(run_dir, line)
        raise _LaunchFailed(line, 130 if code == 130 else 1) from None
    except SignalException:  # Ctrl-C or SIGTERM: torchrun stopped the ranks; rank 0 recorded where
        raise _LaunchFailed(f"interrupted; continue with: workbench run {run_dir} --resume --nproc {nproc}",
                            130) from None


@contextlib.contextmanager
def _environment(name: str, value: str):
    """`name=value` in this process's environment (which torchrun's ranks inherit) inside the block only."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _record_lost_rank(run_dir: Path, line: str) -> None:
    """`run_failed` naming the rank that was killed, when rank 0 could not say it: torchrun stopped it
    (its events end `run_interrupted`) while it worked alone. Written here once every rank has ended."""
    from workbench.storage.events import EventWriter, read_events

    if not (run_dir / "events.jsonl").is_file():
        return
    events = list(read_events(run_dir))
    if not events or events[-1]["type"] == "run_failed":
        return
    with contextlib.suppress(OSError, WorkbenchError):
        writer = EventWriter(run_dir)
        writer.emit("run_failed", error=line)
        writer.close()


class _LaunchFailed(WorkbenchError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

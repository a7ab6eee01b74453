"""A run from start to end: a recipe in, a run directory out.

`start_run` checks the recipe and the run directory and records this process as the run's owner;
`execute` runs the stages (`workbench.running.stages`) between the events that begin and end
every run (`announce_*`, shared with a sweep's runs); `run_recipe` does both. Independent pieces
(the trained shared stages, the variants) run as jobs on the run's worker processes when there
are several (`workbench.running.pool`), else here. The run directory's layout and lifecycle on
disk live in `workbench.storage.runs`. Everything a user or the TUI sees comes from `events.jsonl`.

Under torchrun every rank runs this same program (`run_on_every_rank`): rank 0 starts the run and
hands the others what it resolved (the recipe, the run directory; no shared file system is
needed), then every rank executes the same stages in lockstep.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.components.registry import Registry, load_registry
from workbench.errors import WorkbenchError
from workbench.recipe.load import load_recipe, recipe_hash, resolve, validate_raw
from workbench.recipe.write import to_toml
from workbench.running import distributed, stages
from workbench.running.context import NoEvents, RunContext, World
from workbench.running.device import resolve_device
from workbench.running.pool import WorkerPool
from workbench.running.threads import resolve_workers
from workbench.running.training_parts import global_batch_problem
from workbench.storage.cache import StageCache, default_cache_dir
from workbench.storage.checkpoint import atomic_write_text
from workbench.storage.events import EventWriter
from workbench.storage.runs import RECIPE_FILE, default_run_dir, prepare_run_dir, write_run_file
from workbench.version import __version__


class RunInterrupted(WorkbenchError):
    """Ctrl-C or a cancel from the TUI: the run stopped cleanly and can be resumed."""

    exit_code = 130


@dataclass
class RunOptions:
    """What `workbench run` was asked to do."""

    recipe: Path
    run_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    force: bool = False
    cache_dir: Path | None = None
    plugins_dir: Path | None = None
    workers: int | None = None
    """Variants trained in parallel worker processes; None = as many as the CPU allows (1 on CUDA)."""
    sinks: list[str] = field(default_factory=list)
    """Event sinks by name (`--sink`), added to the recipe's `[[sinks]]`."""
    executor: str = "processes"
    """The executor that runs a run's parallel pieces (shared stages, variants, attack shards) when
    it has several workers: any executor that declares `shares_machine` (its jobs see this run
    directory and cache)."""


# ------------------------------------------------------------------ the three ways into a run


def start_run(options: RunOptions, listeners: Sequence[Any] = (), registry: Registry | None = None) -> RunContext:
    """Check the recipe and the run directory, record this process as the run's owner; `registry`
    when the caller (the CLI) already built one, so plugins load once."""
    registry = registry or load_registry(plugins_dir=str(options.plugins_dir) if options.plugins_dir else None)
    source = Path(options.recipe)
    if source.is_dir():  # `workbench run RUN_DIR --resume`
        options.run_dir = options.run_dir or source
        source = source / RECIPE_FILE
    recipe = load_recipe(source, options.overrides, registry)
    world = World.current()
    problem = global_batch_problem(recipe.target.train, world.size) if world.parallel else None
    if problem:  # before anything is written or trained, so no rank starts what cannot finish
        raise WorkbenchError(problem)
    resolved = resolve(recipe, registry)
    digest = recipe_hash(resolved)
    run_dir = Path(options.run_dir) if options.run_dir else default_run_dir(source)
    resumed = prepare_run_dir(run_dir, digest, resume=options.resume, force=options.force)
    if not resumed:
        header = (f"Resolved recipe of this run (from {source}); every default filled in.\n"
                  f"Resume with: workbench run {run_dir} --resume")
        atomic_write_text(run_dir / RECIPE_FILE, to_toml(resolved, header))
    write_run_file(run_dir, digest, source, __version__, world_size=world.size)
    events = EventWriter(run_dir)
    events.listeners.extend(listeners)
    from workbench.storage.sinks import attach_sinks  # TensorBoard, MLflow...: each on its own thread
    attach_sinks(events, registry, recipe.sinks, options.sinks, run_dir, resolved)
    device = resolve_device(recipe.device)
    cache = StageCache(options.cache_dir or default_cache_dir(), registry=registry)
    # Under torchrun every target trains in this process with the other ranks, one after another.
    workers = 1 if world.parallel else resolve_workers(options.workers, len(recipe.variants), device)
    return _context(recipe, resolved, digest, registry, run_dir, source, cache, events, device, world, resumed,
                    options.plugins_dir, workers, options.executor)


def join_run(start: dict[str, Any], registry: Registry | None = None) -> RunContext:
    """A rank other than 0: the run rank 0 started (`start`, from `run_on_every_rank`). It writes
    nothing: no events, no stage-cache folder (rank 0 decides hits and hands its weights over)."""
    registry = registry or load_registry(plugins_dir=start["plugins_dir"])
    run_dir = Path(start["run_dir"])
    recipe = validate_raw(start["resolved"], f"{run_dir / RECIPE_FILE} (sent by rank 0)", registry)
    return _context(recipe, start["resolved"], start["digest"], registry, run_dir, run_dir / RECIPE_FILE,
                    StageCache(None, registry=registry), NoEvents(), resolve_device(recipe.device), World.current(),
                    start["resumed"], Path(start["plugins_dir"]) if start["plugins_dir"] else None, 1, "processes")


def worker_context(run_dir: Path, cache_dir: Path | None, plugins_dir: Path | None, resumed: bool) -> RunContext:
    """A job in a worker process: the run's saved recipe, its event file, its cache."""
    registry = load_registry(plugins_dir=str(plugins_dir) if plugins_dir else None)
    recipe = load_recipe(run_dir / RECIPE_FILE, registry=registry)
    resolved = resolve(recipe, registry)
    return _context(recipe, resolved, recipe_hash(resolved), registry, run_dir, run_dir / RECIPE_FILE,
                    StageCache(cache_dir, registry=registry), EventWriter(run_dir), resolve_device(recipe.device),
                    World(), resumed, plugins_dir, 1, "processes")


def _context(recipe, resolved, digest, registry, run_dir, source, cache, events, device, world, resumed,
             plugins_dir, workers, executor) -> RunContext:
    cache.device_type = device.type  # part of every stage-cache key
    # A corrupt cache entry is named in the run's events (the TUI and the log show it), then recomputed.
    cache.on_problem = cache.on_problem or (lambda message: events.emit("log", level="warning", message=message))
    return RunContext(recipe=recipe, resolved=resolved, digest=digest, registry=registry, run_dir=run_dir,
                      source=source, cache=cache, events=events, device=device, world=world, resumed=resumed,
                      plugins_dir=Path(plugins_dir) if plugins_dir else None, workers=workers, executor=executor)


# ------------------------------------------------------------------ one lifecycle


def announce_start(ctx: RunContext) -> float:
    """`run_started` (and, under torchrun, how the ranks train); the start time back."""
    recipe = ctx.recipe
    ctx.emit("run_started", recipe=str(ctx.source), run_dir=str(ctx.run_dir), variants=[v.name for v in recipe.variants],
             seed=recipe.seed, version=__version__, resumed=ctx.resumed, device=str(ctx.device),
             recipe_hash=ctx.digest, world_size=ctx.world.size)
    if ctx.world.parallel:
        ctx.emit("log", level="info", message=distributed.describe(ctx.device, recipe.target.train.sync_batchnorm))
    return time.perf_counter()


def announce_finish(ctx: RunContext, started: float) -> None:
    ctx.emit("run_finished", seconds=round(time.perf_counter() - started, 3))
    ctx.events.close()


def announce_failure(ctx: RunContext, error: str) -> str:
    """`run_failed`, when it can still be written: a full disk that failed the run must not hide
    the file that failed behind the event log's own write error."""
    with contextlib.suppress(OSError, WorkbenchError):
        ctx.emit("run_failed", error=error)
    with contextlib.suppress(OSError, WorkbenchError):
        ctx.events.close()
    return error


def announce_interrupt(ctx: RunContext) -> None:
    with contextlib.suppress(OSError, WorkbenchError):
        ctx.emit("run_interrupted", message="stopped by the user; resumable")
    with contextlib.suppress(OSError, WorkbenchError):
        ctx.events.close()


def execute(ctx: RunContext) -> dict[str, Any] | None:
    """Every stage of the run, on every rank together; the results on rank 0 (None on the others)."""
    started = announce_start(ctx)
    pool = WorkerPool(ctx)
    try:
        with distributed.lockstep():
            ctx = stages.with_data(ctx)
            shared = stages.prepare_shared_stages(ctx, pool)
            stages.run_variants(ctx, shared, pool)
        pool.close()
        results = None
        if ctx.world.is_main:
            results = stages.collect_results(ctx, shared)
            stages.write_report(ctx, results)
    except KeyboardInterrupt:
        pool.close(cancel=True)
        announce_interrupt(ctx)
        raise RunInterrupted(f"interrupted; continue with: workbench run {ctx.run_dir} --resume") from None
    except WorkbenchError as exc:
        pool.close(cancel=True)
        announce_failure(ctx, str(exc))
        raise
    except Exception as exc:
        pool.close(cancel=True)
        if ctx.world.parallel and collective_failed(exc):  # another rank died: run_failed names it
            lost = rank_lost(exc, ctx.run_dir)
            announce_failure(ctx, str(lost))
            raise lost from None
        announce_failure(ctx, f"{type(exc).__name__}: {exc}")
        raise
    announce_finish(ctx, started)
    return results


def run_recipe(options: RunOptions, listeners: Sequence[Any] = ()) -> tuple[Path, dict[str, Any]]:
    """Start and run; returns the run directory and the results."""
    ctx = start_run(options, listeners)
    return ctx.run_dir, execute(ctx)


# ------------------------------------------------------------------ one program on every rank


def run_on_every_rank(options: RunOptions, listeners: Sequence[Any] = (), registry: Registry | None = None,
                      live: AbstractContextManager | None = None) -> tuple[RunContext | None, dict[str, Any] | None]:
    """Every rank of a started process group (torchrun, or the tasks of one submitit job): rank 0
    starts the run and hands the others its start; then every rank executes the same stages.
    Returns `(context, results)`: rank 0's results, None elsewhere (and no context on a rank whose
    run never started because rank 0 could not start it). `live`: a context rank 0 holds while the
    run trains (the console reporter). Leaves the process group, also on error.

    A run that cannot start (a bad recipe, a global batch that does not divide over the ranks) fails
    on rank 0 before anything trains, and the others end quietly. A collective that fails because
    another rank went away becomes one line that says how to resume."""
    from torch.distributed import DistError

    ctx = None
    try:
        if distributed.is_main_process():
            try:
                ctx = start_run(options, listeners, registry)
            except BaseException:
                distributed.broadcast_object(None)  # the others end quietly; this rank says what went wrong
                raise
            distributed.broadcast_object({"resolved": ctx.resolved, "digest": ctx.digest, "run_dir": str(ctx.run_dir),
                                          "resumed": ctx.resumed,
                                          "plugins_dir": str(ctx.plugins_dir) if ctx.plugins_dir else None})
        else:
            start = distributed.broadcast_object(None)
            if start is None:  # rank 0 could not start the run (it says why)
                return None, None
            ctx = join_run(start, registry)
        with live if live is not None and ctx.world.is_main else contextlib.nullcontext():
            return ctx, execute(ctx)
    except (RankLost, RunInterrupted):  # the CLI says these once (under --nproc, the launcher does)
        raise
    except WorkbenchError as exc:
        if distributed.is_main_process():
            raise
        named = WorkbenchError(f"rank {distributed.rank()}: {exc}")
        named.exit_code = exc.exit_code
        raise named from None
    except (DistError, RuntimeError) as exc:
        if not collective_failed(exc):
            raise
        raise rank_lost(exc, ctx.run_dir if ctx else options.run_dir) from None
    finally:
        distributed.shutdown()


class RankLost(WorkbenchError):
    """A collective failed because another rank went away (killed, out of memory). Under `--nproc` the
    ranks exit quietly with `exit_code` and the launcher's one line names the rank that died."""

    exit_code = 75


def rank_lost(exc: BaseException, run_dir: Path | None) -> RankLost:
    """The one line for a collective that failed because another rank went away: which one when it can
    only be one (two ranks), and on rank 0 how to resume."""
    n, me = distributed.world_size(), distributed.rank()
    if me == 0:
        return RankLost(f"{'rank 1' if n == 2 else 'another rank'} of {n} stopped during training "
                        f"({first_line(exc)}); the run directory is resumable: workbench run {run_dir} --resume "
                        f"--nproc {n}")
    return RankLost(f"rank {me}: lost contact with {'rank 0' if n == 2 else 'the other ranks'} ({first_line(exc)})")


def collective_failed(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another rank went away (not a bug of ours)."""
    from torch.distributed import DistError

    text = str(exc)
    return isinstance(exc, DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "nccl", "Connection closed", "Connection reset", "ProcessGroup"))


def first_line(exc: BaseException) -> str:
    """The gist of a collective's error: its first line, without gloo's `[source.cc:123]` prefix nor
    its advice after the first sentence ("This is typically caused by a remote worker crashing...")."""
    text = str(exc).strip().splitlines()
    first = re.sub(r"^\[[^\]]*\]\s*", "", text[0]) if text else ""
    first = first.split(". This is typically", 1)[0]
    return f"{type(exc).__name__}: {first.replace('[', '(').replace(']', ')')}"

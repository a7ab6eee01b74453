"""Jobs: picklable descriptions of work, and the one function that runs a job in any process.

An executor (kind `executor`) only has to call `execute_outcome(job)` somewhere: in this
process, a spawned worker, a Slurm task, a Ray worker. A job's output is files (the run
directory, the stage cache); its return value is small (E's figures, a run's results path).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from workbench.components.protocols import Job, Outcome
from workbench.errors import WorkbenchError

JOB_KINDS = ("run", "variant", "shared-stage", "attack-shard")
"""`run`: a whole run directory (a sweep's point); `variant`: train and evaluate one variant;
`shared-stage`: train E or an attack's prior into the stage cache; `attack-shard`: one shard of an
attack's per-class search on a trained target (`workbench.running.attack_shards`), options `variant`,
`attack`, `shard` (0-based) and `shards`."""


def execute(job: Job) -> Any:
    """Run `job` in this process and return its value; errors propagate.

    A `run` job started as one of several ranks (torch.distributed's WORLD_SIZE > 1, with RANK,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT: an executor's multi-task job sets them) trains
    data-parallel, as under torchrun: every rank runs the same program (`run_on_every_rank`);
    rank 0 returns the run directory, the others None."""
    from workbench.running import distributed, runner, stages
    from workbench.running.context import SharedStages
    from workbench.running.pool import WorkerPool

    if job.threads:
        torch.set_num_threads(job.threads)
    plugins_dir = Path(job.plugins_dir) if job.plugins_dir else None
    cache_dir = Path(job.cache_dir) if job.cache_dir else None
    if job.kind == "run":
        options = runner.RunOptions(recipe=Path(job.options["recipe"]), run_dir=Path(job.run_dir),
                                    overrides=list(job.options.get("overrides", [])),
                                    resume=bool(job.options.get("resume")), force=bool(job.options.get("force")),
                                    cache_dir=cache_dir, plugins_dir=plugins_dir, workers=job.options.get("workers", 1),
                                    sinks=list(job.options.get("sinks", [])))
        if distributed.launched_world_size() > 1:
            distributed.setup()
            ctx, _ = runner.run_on_every_rank(options)
            return str(ctx.run_dir) if ctx is not None and ctx.world.is_main else None
        run_dir, _ = runner.run_recipe(options)
        return str(run_dir)
    if job.kind not in JOB_KINDS:
        raise WorkbenchError(f"job kind {job.kind!r} is unknown; known: {', '.join(JOB_KINDS)}")
    ctx = runner.worker_context(Path(job.run_dir), cache_dir, plugins_dir, job.resumed)
    try:
        loaded = stages.with_data(stages.quiet(ctx)).replace(events=ctx.events)
        if job.kind == "variant":
            shared = stages.prepare_shared_stages(stages.quiet(loaded))
            stages.run_variant(loaded, shared, loaded.recipe.variant(job.item), WorkerPool(loaded))
            return None
        if job.kind == "attack-shard":
            options = job.options
            return str(stages.shard_job(loaded, options["variant"], options["attack"], options["shard"], options["shards"]))
        return stages.shared_stage(loaded, SharedStages(), job.item).evaluation_figures
    finally:
        ctx.events.close()


def execute_outcome(job: Job) -> Outcome:
    """`execute(job)` as an `Outcome`: never raises, so one failed job cannot take others down,
    and the result always pickles back to the parent (whatever exception type a plugin raised)."""
    try:
        return Outcome(ok=True, value=execute(job))
    except KeyboardInterrupt:
        return Outcome(ok=False, error="interrupted")
    except WorkbenchError as exc:
        return Outcome(ok=False, error=str(exc))
    except Exception as exc:
        return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")


def die_with_parent(parent_pid: int | None = None, interval: float = 0.5) -> None:
    """In a worker process: exit as soon as the parent is gone (kill -9 included), so no orphan keeps
    training and writing. Linux's parent-death signal where available, and a watcher thread."""
    parent = parent_pid or os.getppid()
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()

"""Jobs: picklable descriptions of work, and the one function that runs a job in any process.

An executor (kind `executor`) only has to call `execute_outcome(job)` somewhere: in this
process, a spawned worker, a Slurm task, a Ray worker. A job's output is files (the run
directory, the stage cache); its return value is small (E's figures, a run's results path).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
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
    data-parallel, as under torchrun: see `_execute_rank`."""
    from workbench.running.distributed import launched_world_size
    from workbench.running.runner import Runner, RunOptions, run_recipe

    if job.threads:
        torch.set_num_threads(job.threads)
    plugins_dir = Path(job.plugins_dir) if job.plugins_dir else None
    cache_dir = Path(job.cache_dir) if job.cache_dir else None
    if job.kind == "run":
        options = RunOptions(recipe=Path(job.options["recipe"]), run_dir=Path(job.run_dir),
                             overrides=list(job.options.get("overrides", [])), resume=bool(job.options.get("resume")),
                             force=bool(job.options.get("force")), cache_dir=cache_dir, plugins_dir=plugins_dir,
                             workers=job.options.get("workers", 1))
        if launched_world_size() > 1:
            return _execute_rank(options)
        run_dir, _ = run_recipe(options)
        return str(run_dir)
    if job.kind not in JOB_KINDS:
        raise WorkbenchError(f"job kind {job.kind!r} is unknown; known: {', '.join(JOB_KINDS)}")
    runner = Runner.for_worker(Path(job.run_dir), cache_dir, plugins_dir, job.resumed)
    try:
        if job.kind == "variant":
            runner.prepare_shared_stages(quiet=True)
            runner.run_variant(runner.recipe.variant(job.item))
            return None
        if job.kind == "attack-shard":
            from workbench.running.attack_shards import run_shard

            options = job.options
            return str(run_shard(runner, options["variant"], options["attack"], options["shard"], options["shards"]))
        return runner.train_shared_stage(job.item)
    finally:
        runner.events.close()


def _execute_rank(options) -> str | None:
    """One rank of a data-parallel `run` job: join the process group; rank 0 leads the run
    (`workbench.running.leader.lead_run`, as `workbench run` under torchrun) and returns the run directory,
    every other rank follows it, writes nothing and returns None."""
    from workbench.running import distributed
    from workbench.running.leader import follow_run, lead_run

    distributed.setup()
    if not distributed.is_main_process():
        follow_run()
        return None
    runner, _ = lead_run(options)
    return str(runner.run_dir)


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


# ------------------------------------------------------------------ CPU budget of parallel work


def resolve_workers(requested: int | None, variants: int, device: torch.device) -> int:
    """Parallel variant workers: on the CPU up to one per core, never more than variants; on CUDA
    one (a single process keeps one GPU busy; training one target across several GPUs
    is not supported yet)."""
    if requested is not None:
        return max(1, requested)
    if device.type == "cuda":
        return 1
    return max(1, min(variants, os.cpu_count() or 1))


def threads_per_job(jobs: int) -> int:
    """CPU threads for one of `jobs` pieces of work that could run at once (variants, or the shared
    stages): the cores shared out among them. It depends on the machine and the recipe but not on
    `--workers`, so a run gives the same figures whether its work runs in parallel or one piece
    after another (the thread count changes float reductions). Small nets also train faster on
    one thread each than on several threads that wait for each other."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, min(jobs, cores)))


@contextlib.contextmanager
def threads_for(count: int | None) -> Iterator[None]:
    """`with threads_for(n):` torch uses n CPU threads inside the block (None: unchanged)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

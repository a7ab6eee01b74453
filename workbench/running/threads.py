"""The CPU budget of parallel work: how many workers, and how many threads each piece gets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (`taskset`, Slurm's
    `--cpus-per-task`, a container's cpuset, a pytest-xdist worker pinned to its cores), else every
    core of the machine. Thread and worker counts follow it, so two jobs pinned to one core each
    do not start two threads apiece that spin against each other."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_workers(requested: int | None, variants: int, device: torch.device) -> int:
    """Parallel variant workers: on the CPU up to one per core, never more than variants; on CUDA
    one (a single process keeps one GPU busy; training one target across several GPUs
    is not supported yet)."""
    if requested is not None:
        return max(1, requested)
    if device.type == "cuda":
        return 1
    return max(1, min(variants, usable_cores()))


def threads_per_job(jobs: int) -> int:
    """CPU threads for one of `jobs` pieces of work that could run at once (variants, or the shared
    stages): the cores shared out among them. It depends on the machine and the recipe but not on
    `--workers`, so a run gives the same figures whether its work runs in parallel or one piece
    after another (the thread count changes float reductions). Small nets also train faster on
    one thread each than on several threads that wait for each other."""
    cores = usable_cores()
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

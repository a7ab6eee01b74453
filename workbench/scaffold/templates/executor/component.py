"""Jobs on a concurrent.futures process pool.

A workbench executor component, registered as `__NAME__` (package __DIST__).

An executor only has to call `execute_outcome(job)` somewhere (a worker process here; a Slurm
task, a Ray worker, a Kubernetes pod elsewhere) and hand back the outcomes in the jobs' order.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Sequence

from pydantic import Field
from workbench.api import Job, Outcome, StrictModel, die_with_parent, execute_outcome, hookimpl


class ExampleParams(StrictModel):
    workers: int = Field(2, ge=1)
    """Worker processes."""
    poll_seconds: float = Field(0.2, gt=0)
    """How often `poll()` is called while jobs run (the runner relays worker events then)."""


class ExampleExecutor:
    """A pool of spawned worker processes, made on first use and kept until `close`."""

    def __init__(self, params: ExampleParams):
        self.params = params
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def run(self, jobs: Sequence[Job], poll: Callable[[], None]) -> list[Outcome]:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.params.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent, initargs=(os.getpid(),),  # no orphans if this process dies
            )
        futures = [self._pool.submit(execute_outcome, job) for job in jobs]
        while concurrent.futures.wait(futures, timeout=self.params.poll_seconds).not_done:
            poll()
        poll()
        # execute_outcome never raises; a worker that died (killed, out of memory) is one failed job.
        return [Outcome(ok=False, error=f"worker died: {f.exception()}") if f.exception() else f.result()
                for f in futures]

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None


@hookimpl
def register_executors(register):
    register("__NAME__", ExampleExecutor, params=ExampleParams,
             summary="Example executor: a process pool.")

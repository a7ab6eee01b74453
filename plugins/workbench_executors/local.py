"""Executors on this machine: `inline` (this process) and `processes` (a spawned worker pool)."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence

from pydantic import Field

from workbench.api import (
    ExecutorCapabilities,
    Job,
    NoParams,
    Outcome,
    StrictModel,
    die_with_parent,
    execute_outcome,
)


class InlineExecutor:
    """Runs each job in this process, in order."""

    capabilities = ExecutorCapabilities(shares_machine=True, workers=1)

    def __init__(self, params: NoParams | None = None):
        self.params = params

    def run(self, jobs: Sequence[Job], poll: Callable[[], None]) -> list[Outcome]:
        outcomes = []
        for job in jobs:
            outcomes.append(execute_outcome(job))
            poll()
        return outcomes

    def close(self, cancel: bool = False) -> None:
        """Nothing to release."""


class ProcessesParams(StrictModel):
    workers: int | None = Field(None, ge=1)
    """Worker processes; unset = one per CPU core."""
    poll_seconds: float = Field(0.2, gt=0)
    """How often the parent relays worker events while it waits."""


class ProcessesExecutor:
    """A pool of spawned worker processes, made on first use and reused until `close` (so a run's
    shared stages and its variants share the workers). Workers exit when the parent dies."""

    capabilities = ExecutorCapabilities(shares_machine=True)

    def __init__(self, params: ProcessesParams):
        self.params = params
        self.capabilities = ExecutorCapabilities(shares_machine=True, workers=params.workers or os.cpu_count() or 1)
        self._pool = None

    def _ensure_pool(self):
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.params.workers or os.cpu_count() or 1, initializer=die_with_parent,
                                      initargs=(os.getpid(),))
        return self._pool

    def run(self, jobs: Sequence[Job], poll: Callable[[], None]) -> list[Outcome]:
        pool = self._ensure_pool()
        pending = [pool.apply_async(execute_outcome, (job,)) for job in jobs]
        while not all(result.ready() for result in pending):
            poll()
            time.sleep(self.params.poll_seconds)
        poll()
        return [result.get() for result in pending]

    def close(self, cancel: bool = False) -> None:
        """Shut the workers down; `cancel` stops them mid-job (Ctrl-C, a failure elsewhere)."""
        if self._pool is None:
            return
        if cancel:
            self._pool.terminate()
        else:
            self._pool.close()
        self._pool.join()
        self._pool = None

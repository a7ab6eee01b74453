"""Executors on this machine: `inline` (this process) and `processes` (a spawned worker pool)."""

from __future__ import annotations

import multiprocessing
import os
import threading
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
    usable_cores,
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


_STARTED = None
"""In a worker: the queue on which it announces (job index, its pid) as it starts a job."""


def _start_worker(parent_pid: int, started) -> None:
    global _STARTED
    _STARTED = started
    die_with_parent(parent_pid)


def _execute_announced(index: int, job: Job) -> Outcome:
    _STARTED.put((index, os.getpid()))
    return execute_outcome(job)


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (a killed worker not yet reaped is a zombie: not running)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except OSError:  # no /proc (macOS): the signal check alone
        return True


class ProcessesExecutor:
    """A pool of spawned worker processes, made on first use and reused until `close` (so a run's
    shared stages and its variants share the workers). Workers exit when the parent dies.

    A worker that dies mid-job (SIGKILL, the OOM killer) fails that job, one line naming the worker,
    and the others go on: the pool replaces the worker (multiprocessing's Pool alone would wait for
    the lost job forever)."""

    capabilities = ExecutorCapabilities(shares_machine=True)

    def __init__(self, params: ProcessesParams):
        self.params = params
        self.capabilities = ExecutorCapabilities(shares_machine=True, workers=params.workers or usable_cores())
        self._pool = None
        self._started = None
        self._lost_jobs = False

    def _ensure_pool(self):
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._started = context.SimpleQueue()
            self._pool = context.Pool(self.capabilities.workers, initializer=_start_worker,
                                      initargs=(os.getpid(), self._started))
        return self._pool

    def run(self, jobs: Sequence[Job], poll: Callable[[], None]) -> list[Outcome]:
        pool = self._ensure_pool()
        pending = [pool.apply_async(_execute_announced, (i, job)) for i, job in enumerate(jobs)]
        worker_of: dict[int, int] = {}
        lost: dict[int, Outcome] = {}
        while True:
            while not self._started.empty():
                index, pid = self._started.get()
                worker_of[index] = pid
            for index, result in enumerate(pending):
                pid = worker_of.get(index)
                if index not in lost and pid is not None and not result.ready() and not _running(pid):
                    lost[index] = Outcome(ok=False, error=f"its worker process (pid {pid}) died while running it "
                                                          "(killed, or out of memory)")
                    self._lost_jobs = True
            if all(result.ready() or index in lost for index, result in enumerate(pending)):
                break
            poll()
            time.sleep(self.params.poll_seconds)
        poll()
        return [lost[index] if index in lost else result.get() for index, result in enumerate(pending)]

    def close(self, cancel: bool = False) -> None:
        """Shut the workers down; `cancel` stops them mid-job (Ctrl-C, a failure elsewhere)."""
        if self._pool is None:
            return
        if self._lost_jobs:  # a lost job stays in the pool's books (close() would wait for it forever), and
            # a worker killed holding the pool's queue lock can hang terminate(): kill the workers, end the
            # pool on a thread, and wait for it a bounded time
            pool, self._pool, self._lost_jobs = self._pool, None, False
            for process in list(getattr(pool, "_pool", [])):
                process.kill()
            closer = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True)
            closer.start()
            closer.join(timeout=30)
            return
        if cancel:
            self._pool.terminate()
        else:
            self._pool.close()
        self._pool.join()
        self._pool = None

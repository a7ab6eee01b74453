"""The workers of one run: its shared stages, variants and attack shards as jobs on an executor.

With several workers the executor is the run's (`processes` unless told otherwise: one that
declares `shares_machine`), spawned once and reused from the shared stages to the variants and
the attack shards; with one, `inline`. The workers' events are relayed to this process's
listeners as they arrive.
"""

from __future__ import annotations

from typing import Any

from workbench.components.capabilities import capabilities_of
from workbench.components.protocols import Job
from workbench.errors import RunError
from workbench.running.context import RunContext
from workbench.storage.events import relay_events


class WorkerPool:
    """Made per run by the process that owns the run directory; `close` at the end."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._executor = None

    def run_jobs(self, kind: str, items: list[str], threads: int, message: str,
                 options: list[dict[str, Any]] | None = None) -> list[Any]:
        """One job per item (with its `options`); values in the order of `items`. The first failure
        ends the run (`RunError` naming the item); an interrupted worker is a KeyboardInterrupt here."""
        ctx = self.ctx
        executor = self._ensure_executor()
        ctx.emit("log", level="info", message=message)
        offset = ctx.events.path.stat().st_size
        jobs = [Job(kind=kind, run_dir=str(ctx.run_dir), cache_dir=str(ctx.cache.root) if ctx.cache.root else None,
                    item=item, plugins_dir=str(ctx.plugins_dir) if ctx.plugins_dir else None, threads=threads,
                    resumed=ctx.resumed, options=(options or [{}] * len(items))[i]) for i, item in enumerate(items)]

        def relay() -> None:
            nonlocal offset
            offset = relay_events(ctx.events, offset)

        outcomes = executor.run(jobs, relay)
        for item, outcome in zip(items, outcomes, strict=True):
            if not outcome.ok:
                if outcome.error == "interrupted":
                    raise KeyboardInterrupt
                raise RunError(f"{kind} {item}: {outcome.error}")
        return [outcome.value for outcome in outcomes]

    def _ensure_executor(self):
        if self._executor is None:
            ctx = self.ctx
            if ctx.workers > 1:
                executor = ctx.registry.create("executor", ctx.executor, workers=ctx.workers)
            else:
                executor = ctx.registry.create("executor", "inline")
            if not capabilities_of(executor, "executor").shares_machine:
                raise RunError(f"executor {ctx.executor!r} cannot run a run's pieces: its jobs do not share this "
                               "machine's run directory (it declares no `shares_machine`); use `processes`")
            self._executor = executor
        return self._executor

    def close(self, cancel: bool = False) -> None:
        """Shut the workers down; `cancel` stops them mid-job (Ctrl-C, a failure)."""
        if self._executor is not None:
            self._executor.close(cancel=cancel)
            self._executor = None

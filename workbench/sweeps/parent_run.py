"""A run of a sweep whose variants run as the executor's jobs: this process opens its directory
and writes its end (the run lifecycle of `workbench.running.runner`), the workers train it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.running.context import RunContext
from workbench.storage.events import relay_events
from workbench.storage.runs import read_variant_results

if TYPE_CHECKING:
    from workbench.components.registry import Registry
    from workbench.running.runner import RunOptions


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"


class ParentRun:
    """A run whose directory this (sweep) process owns while executor workers run its variants:
    the beginning and the end of a run (`workbench.running.runner`'s lifecycle) here, the variant
    jobs elsewhere."""

    def __init__(self, ctx: RunContext, started: float):
        self.ctx = ctx
        self.started = started
        self.offset = 0
        self.evaluation_figures: dict[str, Any] | None = None

    @classmethod
    def open(cls, options: RunOptions, registry: Registry) -> ParentRun:
        """Claim the run `options` describe, announce it and load its shared stages from the cache."""
        from workbench.running import runner, stages

        ctx = runner.start_run(options, registry=registry)
        parent = cls(ctx, runner.announce_start(ctx))
        try:  # data, E, priors: loaded from the cache the sweep filled
            shared = stages.prepare_shared_stages(stages.with_data(ctx))
        except KeyboardInterrupt:
            parent.interrupted()
            raise
        except Exception as exc:
            parent.fail(describe(exc))
            raise
        # Only E's figures are needed here again (results.json); the workers load their own copies.
        parent.evaluation_figures = shared.evaluation_figures
        parent.offset = ctx.events.path.stat().st_size
        return parent

    def relay(self) -> None:
        """The workers' events of this run to its listeners (event sinks), as a single run relays them."""
        self.offset = relay_events(self.ctx.events, self.offset)

    def complete(self) -> bool:
        return all(read_variant_results(self.ctx.variant_dir(v)) is not None for v in self.ctx.recipe.variants)

    def finish(self) -> str | None:
        """results.json, report.md and run_finished, as a run ends; the error when that fails."""
        from workbench.running import runner, stages
        from workbench.running.context import SharedStages

        try:
            results = stages.collect_results(self.ctx, SharedStages(evaluation_figures=self.evaluation_figures))
            stages.write_report(self.ctx, results)
        except Exception as exc:
            return self.fail(describe(exc))
        runner.announce_finish(self.ctx, self.started)
        return None

    def fail(self, error: str) -> str:
        from workbench.running.runner import announce_failure

        return announce_failure(self.ctx, error)

    def interrupted(self) -> None:
        from workbench.running.runner import announce_interrupt

        announce_interrupt(self.ctx)

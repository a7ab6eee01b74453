"""Running a sweep: its directory, its event stream, its jobs on an executor, resume and retry.

```
SWEEP_DIR/
  sweep.toml      the sweep as it ran (resolved)
  sweep.json      identity (hash of every run's recipe hash), pid, host, start time
  events.jsonl    sweep_started, sweep_run_queued/_skipped/_started/_finished/_failed, sweep_finished
  shared/<point>/ where the seed-independent stages train once (E, public-data GAN priors)
  runs/<point>-s<seed>/   ordinary run directories
  aggregate.json, report.md, pareto.png
```

Rerunning (`--resume`) finishes only what is missing: finished runs are skipped, interrupted
and failed ones resumed from their checkpoints. One failed run does not stop the others.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.components.capabilities import capabilities_of
from workbench.components.protocols import Job
from workbench.errors import RunError, WorkbenchError
from workbench.recipe.write import to_toml
from workbench.running.runner import RunOptions
from workbench.running.threads import usable_cores
from workbench.storage.cache import default_cache_dir
from workbench.storage.checkpoint import atomic_write_text
from workbench.storage.events import EVENTS_FILE, EventWriter
from workbench.storage.runs import (
    RESULTS_FILE,
    RUN_FILE,
    SWEEP_INFO_FILE,
    process_start,
    read_run_file,
    read_variant_results,
    run_status,
)
from workbench.sweeps.aggregate import aggregate, write_aggregate, write_pareto, write_report
from workbench.sweeps.directory import (
    default_sweep_dir,
    last_error,
    prepare_sweep_dir,
    run_state,
    tail_types,
)
from workbench.sweeps.parent_run import ParentRun, describe
from workbench.sweeps.spec import SWEEP_FILE, PlannedRun, Sweep, load_sweep
from workbench.version import __version__

if TYPE_CHECKING:
    pass

RUNS_FOLDER = "runs"
SHARED_FOLDER = "shared"


class SweepInterrupted(WorkbenchError):
    """Ctrl-C: the sweep stopped cleanly; `--resume` finishes what is missing."""

    exit_code = 130


@dataclass
class SweepOptions:
    """What `workbench sweep` (or `workbench run --seeds`) was asked to do."""

    sweep: Path
    """A sweep file, or a sweep directory (its sweep.toml)."""
    sweep_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    executor: str | None = None
    resume: bool = False
    force: bool = False
    cache_dir: Path | None = None
    plugins_dir: Path | None = None
    sinks: list[str] = field(default_factory=list)
    """Event sinks by name (`--sink`) for every run of the sweep, wherever its executor runs it."""


@dataclass
class SweepResult:
    sweep_dir: Path
    aggregate: dict[str, Any]
    finished: list[str]
    failed: dict[str, str]
    skipped: list[str]


class SweepRunner:
    """Runs one sweep into one sweep directory. Create with `SweepRunner.start(options)`."""

    def __init__(self, sweep: Sweep, registry, sweep_dir: Path, events: EventWriter, options: SweepOptions,
                 resumed: bool):
        self.sweep = sweep
        self.registry = registry
        self.sweep_dir = sweep_dir
        self.events = events
        self.options = options
        self.resumed = resumed
        self.executor = None

    @classmethod
    def start(cls, options: SweepOptions, listeners: list | None = None, sweep: Sweep | None = None) -> SweepRunner:
        from workbench.components.registry import load_registry

        registry = load_registry(plugins_dir=str(options.plugins_dir) if options.plugins_dir else None)
        source = Path(options.sweep)
        if sweep is None:
            if source.is_dir():  # `workbench sweep SWEEP_DIR --resume`
                options.sweep_dir = options.sweep_dir or source
            sweep = load_sweep(source, options.overrides, registry, options.executor)
        sweep_dir = Path(options.sweep_dir) if options.sweep_dir else default_sweep_dir(sweep.source)
        resumed = prepare_sweep_dir(sweep_dir, sweep.identity, resume=options.resume, force=options.force)
        atomic_write_text(sweep_dir / SWEEP_FILE, sweep.to_toml(registry))
        atomic_write_text(sweep_dir / SWEEP_INFO_FILE, json.dumps({
            "identity": sweep.identity, "source": str(sweep.source), "recipe": str(sweep.recipe_path),
            "runs": len(sweep.runs), "pid": os.getpid(), "pid_started": process_start(os.getpid()),
            "host": socket.gethostname(), "started": time.time(), "version": __version__,
        }, indent=2))
        events = EventWriter(sweep_dir)
        events.listeners.extend(listeners or [])
        return cls(sweep, registry, sweep_dir, events, options, resumed)

    def emit(self, type: str, **fields: Any) -> None:
        self.events.emit(type, **fields)

    def run_dir(self, run: PlannedRun) -> Path:
        return self.sweep_dir / RUNS_FOLDER / run.id

    # -------------------------------------------------------------- the sweep

    def run(self) -> SweepResult:
        started = time.perf_counter()
        sweep = self.sweep
        self.emit("sweep_started", sweep=str(sweep.source), sweep_dir=str(self.sweep_dir),
                  recipe=str(sweep.recipe_path), runs=[r.id for r in sweep.runs], points=[p.id for p in sweep.points],
                  seeds=list(sweep.spec.seeds), executor=sweep.spec.executor.use, resumed=self.resumed,
                  identity=sweep.identity, version=__version__)
        try:
            pending, skipped = self._plan()
            failed: dict[str, str] = {}
            if pending:
                self.executor = self.registry.create_from("executor", sweep.spec.executor)
                failed.update(self._shared_stages(pending))
                failed.update(self._run_all(pending))
                self.executor.close()
                self.executor = None
            result = self._aggregate(failed, skipped)
        except KeyboardInterrupt:
            self._close(cancel=True)
            self.emit("sweep_interrupted", message="stopped by the user; --resume finishes what is missing")
            self.events.close()
            raise SweepInterrupted(f"interrupted; finish with: workbench sweep {self.sweep_dir} --resume") from None
        except Exception as exc:
            self._close(cancel=True)
            self.emit("sweep_failed", error=str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}")
            self.events.close()
            raise
        self.emit("sweep_finished", finished=len(result.finished), failed=len(result.failed),
                  skipped=len(result.skipped), seconds=round(time.perf_counter() - started, 3))
        self.events.close()
        return result

    def _close(self, cancel: bool) -> None:
        if self.executor is not None:
            try:
                self.executor.close(cancel=cancel)
            finally:
                self.executor = None

    def _plan(self) -> tuple[list[tuple[PlannedRun, bool]], list[str]]:
        """(runs to execute with whether each resumes, runs already complete); conflicts are errors."""
        pending, skipped, problems = [], [], []
        for run in self.sweep.runs:
            state = run_state(self.run_dir(run), run.digest)
            if state == "complete":
                skipped.append(run.id)
                self.emit("sweep_run_skipped", run=run.id, reason="complete")
            elif state == "conflict":
                problems.append(f"{self.run_dir(run)}: holds a run of a different recipe")
            elif state == "live":
                problems.append(f"{self.run_dir(run)}: a run is live there")
            else:
                resume = state == "resumable"
                previous = run_status(self.run_dir(run)) if resume else None
                pending.append((run, resume))
                self.emit("sweep_run_queued", run=run.id, point=run.point.id, seed=run.seed, resume=resume,
                          previous=previous)
        if problems:
            raise RunError("; ".join(problems) + "; pass --force to start the sweep over")
        if self.resumed:
            resumed = sum(1 for _, r in pending if r)
            self.emit("log", level="info", message=(
                f"{len(skipped)} of {len(self.sweep.runs)} runs complete (skipped), {resumed} to resume or retry, "
                f"{len(pending) - resumed} new"))
        return pending, skipped

    def _executor_capabilities(self):
        """The sweep executor's declaration, from its params (made here if the sweep has not made it yet)."""
        executor = self.executor or self.registry.create_from("executor", self.sweep.spec.executor)
        return capabilities_of(executor, "executor")

    def _threads(self) -> int | None:
        """CPU threads per job: the executor's own figure, or the cores shared among its workers.
        Fixed per machine and executor, so a resumed sweep computes exactly what a straight one does."""
        declared = self._executor_capabilities()
        if declared.job_threads:
            return int(declared.job_threads)
        if declared.shares_machine:
            return max(1, usable_cores() // (declared.workers or 1))
        return None

    def _job(self, kind: str, run_dir: Path, threads: int | None | str = "executor", **fields: Any) -> Job:
        """A job of the sweep; `threads` the executor's share of the cores unless given."""
        cache = self.options.cache_dir or default_cache_dir()
        return Job(kind=kind, run_dir=str(run_dir), cache_dir=str(Path(cache).resolve()),
                   plugins_dir=str(self.options.plugins_dir) if self.options.plugins_dir else None,
                   threads=self._threads() if threads == "executor" else threads, **fields)

    def _shared_stages(self, pending: list[tuple[PlannedRun, bool]]) -> dict[str, str]:
        """Train the seed-independent stages once, before the runs (which then load them): one job per
        distinct stage, in `shared/<point>/`. Runs whose stage failed to train fail with it."""
        if not self.sweep.spec.share_stages:
            return {}
        jobs, owners, seen = [], [], {}
        for run, _ in pending:
            for name in self._seed_free_stages(run):
                key = self._stage_identity(run, name)
                if key in seen:
                    seen[key][1].append(run.id)
                    continue
                folder = self.sweep_dir / SHARED_FOLDER / run.point.id
                if not (folder / "recipe.toml").exists():
                    atomic_write_text(folder / "recipe.toml", to_toml(run.resolved, "Recipe the sweep's shared "
                                                                      "stages train from"))
                seen[key] = (len(jobs), [run.id])
                jobs.append(self._job("shared-stage", folder, item=name))
                owners.append(key)
        if not jobs:
            return {}
        self.emit("log", level="info", message=f"training {len(jobs)} shared stage(s) once for the sweep")
        outcomes = self.executor.run(jobs, lambda: None)
        failed = {}
        for key, outcome in zip(owners, outcomes, strict=True):
            if not outcome.ok:
                if outcome.error == "interrupted":
                    raise KeyboardInterrupt
                self.emit("log", level="error", message=f"shared stage {key[0]} failed: {outcome.error}")
                for run_id in seen[key][1]:
                    failed[run_id] = f"shared stage {key[0]}: {outcome.error}"
        if failed:
            for run_id, error in failed.items():
                self.emit("sweep_run_failed", run=run_id, error=error)
            pending[:] = [(r, resume) for r, resume in pending if r.id not in failed]
        return failed

    def _seed_free_stages(self, run: PlannedRun) -> list[str]:
        recipe = run.recipe
        if not recipe.attacks:
            return []
        names = []
        if recipe.evaluation is not None and getattr(recipe.evaluation, "seed", None) is not None:
            names.append("evaluation-model")
        for name, table in recipe.attacks.items():
            if table.params.get("prior_seed") is not None:
                names.append(f"prior:{name}")
        return names

    def _stage_identity(self, run: PlannedRun, name: str) -> tuple[str, str]:
        resolved = run.resolved
        part = [resolved.get("evaluation"), resolved.get("evaluators")] if name == "evaluation-model" else \
            resolved["attacks"][name.removeprefix("prior:")]
        return name, json.dumps([resolved["data"], part, resolved.get("device")], sort_keys=True)

    def _run_all(self, pending: list[tuple[PlannedRun, bool]]) -> dict[str, str]:
        for run, _ in pending:
            self.run_dir(run).parent.mkdir(parents=True, exist_ok=True)
        reported: dict[str, str] = {}  # run id -> "started" / "finished" / "failed"
        t0 = time.time()
        last = [0.0]

        def poll() -> None:
            now = time.monotonic()
            if now - last[0] < 0.5:
                return
            last[0] = now
            for run, _ in pending:
                self._observe(run, reported, t0)

        if self._jobs_per_variant(pending):
            errors = self._run_variants(pending, poll)
        else:
            jobs = [self._job("run", self.run_dir(run), options={
                "recipe": str(self.sweep.recipe_path), "overrides": run.overrides, "resume": resume, "force": False,
                "workers": 1, "sinks": list(self.options.sinks)}) for run, resume in pending]
            outcomes = self.executor.run(jobs, poll)
            errors = {run.id: None if outcome.ok else outcome.error or ""
                      for (run, _), outcome in zip(pending, outcomes, strict=True)}
        failed = {}
        for run, _ in pending:
            self._observe(run, reported, t0)
            error = errors.get(run.id)
            if error is None and reported.get(run.id) != "failed":
                if reported.get(run.id) != "finished":
                    self.emit("sweep_run_finished", run=run.id, point=run.point.id, seed=run.seed)
                    reported[run.id] = "finished"
                continue
            if error == "interrupted":
                raise KeyboardInterrupt
            error = error or last_error(self.run_dir(run)) or "failed"
            failed[run.id] = error
            if reported.get(run.id) != "failed":
                self.emit("sweep_run_failed", run=run.id, point=run.point.id, seed=run.seed, error=error)
                reported[run.id] = "failed"
        return failed

    def _jobs_per_variant(self, pending: list[tuple[PlannedRun, bool]]) -> bool:
        """Whether the runs' variants go to the executor as separate jobs (`_run_variants`): on an executor
        whose jobs share this machine several at once, once the sweep trained every stage the runs share
        (E, the priors). Elsewhere one job per run (a run that trains its own E keeps it in one process)."""
        declared = self._executor_capabilities()
        if not (declared.shares_machine and (declared.workers or 1) > 1) or not self.sweep.spec.share_stages:
            return False
        for run, _ in pending:
            trained = set(self._seed_free_stages(run))
            if run.recipe.attacks and "evaluation-model" not in trained:
                return False
            for name, table in run.recipe.attacks.items():
                prepares = self.registry.get("attack", table.use).capabilities().prepares
                if prepares and f"prior:{name}" not in trained:
                    return False
        return True

    def _run_variants(self, pending: list[tuple[PlannedRun, bool]], poll) -> dict[str, str | None]:
        """Every run's variants as jobs on one queue; each run error or None.

        A run's variants are independent jobs (its target, OOD and attacks), so the executor's
        workers stay busy to the end: 5 runs of 6 variants on 2 workers take 15 variant-slots, not
        the 18 of three rounds of whole runs. This process opens each run directory (recipe,
        events, the shared stages loaded from the cache, as `workbench run` does), the workers
        train and evaluate its variants exactly as a single run's variant workers do (same job,
        same threads), and this process writes results.json and report.md once all are in."""
        errors: dict[str, str | None] = {}
        opened: dict[str, ParentRun] = {}
        jobs, owners = [], []
        try:
            for run, resume in pending:
                try:
                    options = self.options
                    parent = ParentRun.open(RunOptions(
                        recipe=self.sweep.recipe_path, run_dir=self.run_dir(run), overrides=list(run.overrides),
                        resume=resume, cache_dir=options.cache_dir, plugins_dir=options.plugins_dir, workers=1,
                        sinks=list(options.sinks)),
                        self.registry)
                except Exception as exc:  # one broken run does not stop the others
                    errors[run.id] = describe(exc)
                    continue
                opened[run.id] = parent
                run_ctx = parent.ctx
                for variant in run_ctx.recipe.variants:
                    if read_variant_results(run_ctx.variant_dir(variant)) is None:
                        jobs.append(self._job("variant", run_ctx.run_dir, run_ctx.cpu_threads, item=variant.name,
                                              resumed=run_ctx.resumed))
                        owners.append(run.id)

            def finish_complete_runs() -> None:
                for run_id, parent in list(opened.items()):
                    parent.relay()
                    if parent.complete():
                        errors[run_id] = parent.finish()
                        del opened[run_id]
                poll()

            outcomes = self.executor.run(jobs, finish_complete_runs) if jobs else []
            for job, run_id, outcome in zip(jobs, owners, outcomes, strict=True):
                if outcome.ok:
                    continue
                if outcome.error == "interrupted":
                    raise KeyboardInterrupt
                if run_id in opened:  # the run's first failed variant names the run's error
                    errors[run_id] = opened.pop(run_id).fail(f"variant {job.item}: {outcome.error}")
            for run_id, parent in opened.items():
                parent.relay()
                errors[run_id] = parent.finish()
            opened.clear()
        except KeyboardInterrupt:
            for parent in opened.values():
                parent.interrupted()
            raise
        return errors

    def _observe(self, run: PlannedRun, reported: dict[str, str], t0: float) -> None:
        """Emit started / finished / failed for a run whose directory says so (live progress)."""
        state = reported.get(run.id)
        if state in ("finished", "failed"):
            return
        run_dir = self.run_dir(run)
        if state is None:
            if not (run_dir / RUN_FILE).exists() or read_run_file(run_dir).get("started", 0) < t0 - 1:
                return
            self.emit("sweep_run_started", run=run.id, point=run.point.id, seed=run.seed)
            reported[run.id] = state = "started"
        types = tail_types(run_dir / EVENTS_FILE)
        if "run_finished" in types:
            self.emit("sweep_run_finished", run=run.id, point=run.point.id, seed=run.seed)
            reported[run.id] = "finished"
        elif "run_failed" in types:
            error = last_error(run_dir) or "failed"
            self.emit("sweep_run_failed", run=run.id, point=run.point.id, seed=run.seed, error=error)
            reported[run.id] = "failed"

    # -------------------------------------------------------------- outputs

    def _aggregate(self, failed: dict[str, str], skipped: list[str]) -> SweepResult:
        points, finished = [], []
        for point in self.sweep.points:
            results = {}
            for run in self.sweep.runs:
                if run.point is not point:
                    continue
                path = self.run_dir(run) / RESULTS_FILE
                try:
                    results[run.seed] = json.loads(path.read_text()) if run.id not in failed else None
                except (OSError, ValueError):
                    results[run.seed] = None
                if results[run.seed] is not None:
                    finished.append(run.id)
            points.append({"id": point.id, "values": point.values, "seeds": list(self.sweep.spec.seeds),
                           "results": results})
        data = aggregate(points)
        write_aggregate(self.sweep_dir, data)
        spec = self.sweep.spec
        header = {"recipe": str(self.sweep.recipe_path), "title": self.sweep.runs[0].recipe.title,
                  "seeds": spec.seeds, "grid": spec.grid, "executor": spec.executor.use,
                  "finished": len(finished), "total": len(self.sweep.runs)}
        write_report(self.sweep_dir, data, header, failed)
        write_pareto(self.sweep_dir, data, spec.pareto.x, spec.pareto.y)
        return SweepResult(self.sweep_dir, data, finished, failed, skipped)


def run_sweep(options: SweepOptions, listeners: list | None = None) -> SweepResult:
    """Start and run a sweep; returns what it finished, what failed, and the aggregate."""
    return SweepRunner.start(options, listeners).run()

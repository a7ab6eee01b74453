"""`submitit`: jobs as Slurm tasks through submitit (`cluster = "local"`: submitit's local executor,
subprocesses on this machine, for laptops and tests). Needs the `[slurm]` extra."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from workbench.api import Job, Outcome, StrictModel, WorkbenchError, execute_outcome

MISSING = "executor 'submitit' needs submitit: pip install 'workbench-mi[slurm]'"


class SubmititParams(StrictModel):
    cluster: Literal["slurm", "local", "debug"] | None = None
    """`slurm`, `local` (subprocesses here, for laptops and tests), `debug` (in this process);
    unset = Slurm when `sbatch` is found, else local."""
    folder: str | None = None
    """Where submitit keeps job scripts and logs; unset = `.submitit/` beside the run directories."""
    partition: str | None = None
    """Slurm partition."""
    gpus_per_node: int = Field(0, ge=0)
    """GPUs for each job."""
    cpus_per_task: int = Field(2, ge=1)
    """CPU cores for each job (torch uses this many threads)."""
    mem_gb: float | None = Field(None, gt=0)
    """Memory for each job in GB; unset = the cluster's default."""
    timeout_min: int = Field(240, ge=1)
    """Wall-clock limit of each job in minutes (runs resume from their checkpoints when rerun)."""
    max_running: int | None = Field(None, ge=1)
    """Jobs in flight at once (submitted as earlier ones finish); unset = all at once."""
    additional_parameters: dict[str, Any] = {}
    """Further `#SBATCH` options, e.g. {account = "lab", qos = "high"}."""
    poll_seconds: float = Field(1.0, gt=0)
    """How often job states are checked."""


class SubmititExecutor:
    """Each job a submitit job (a Slurm task, or a local subprocess)."""

    def __init__(self, params: SubmititParams):
        self.params = params
        self.job_threads = params.cpus_per_task
        self._pending: list[Any] = []
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise WorkbenchError(MISSING) from None

    def _executor(self, jobs: Sequence[Job]):
        import submitit

        p = self.params
        folder = Path(p.folder) if p.folder else Path(jobs[0].run_dir).parent / ".submitit"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=p.cluster)
        update: dict[str, Any] = {"timeout_min": p.timeout_min, "cpus_per_task": p.cpus_per_task,
                                  "gpus_per_node": p.gpus_per_node, "name": "workbench"}
        if p.mem_gb is not None:
            update["mem_gb"] = p.mem_gb
        if executor.cluster == "slurm":
            if p.partition:
                update["slurm_partition"] = p.partition
            if p.additional_parameters:
                update["slurm_additional_parameters"] = dict(p.additional_parameters)
        executor.update_parameters(**update)
        return executor

    def run(self, jobs: Sequence[Job], poll: Callable[[], None]) -> list[Outcome]:
        if not jobs:
            return []
        executor = self._executor(jobs)
        limit = self.params.max_running or len(jobs)
        handles: list[Any] = [None] * len(jobs)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        queue = list(range(len(jobs)))
        while queue or any(h is not None and outcomes[i] is None for i, h in enumerate(handles)):
            running = sum(1 for i, h in enumerate(handles) if h is not None and outcomes[i] is None)
            while queue and running < limit:
                index = queue.pop(0)
                handles[index] = executor.submit(execute_outcome, jobs[index])
                self._pending.append(handles[index])
                running += 1
            for i, handle in enumerate(handles):
                if handle is not None and outcomes[i] is None and handle.done():
                    outcomes[i] = self._outcome(handle)
            poll()
            if queue or any(h is not None and outcomes[i] is None for i, h in enumerate(handles)):
                time.sleep(self.params.poll_seconds)
        self._pending = []
        return [o if o is not None else Outcome(ok=False, error="not run") for o in outcomes]

    @staticmethod
    def _outcome(handle) -> Outcome:
        try:
            value = handle.result()
        except Exception as exc:  # the task itself died: timeout, preemption, out of memory
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            return Outcome(ok=False, error=f"submitit job {handle.job_id}: {lines[-1] if lines else type(exc).__name__}")
        return value if isinstance(value, Outcome) else Outcome(ok=True, value=value)

    def close(self, cancel: bool = False) -> None:
        """`cancel`: stop the jobs still queued or running (scancel, or a signal to the subprocess)."""
        if cancel:
            for handle in self._pending:
                try:
                    if not handle.done():
                        handle.cancel(check=False)
                except Exception:  # already gone
                    pass
        self._pending = []

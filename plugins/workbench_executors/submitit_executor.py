"""`submitit`: jobs as Slurm tasks through submitit (`cluster = "local"`: submitit's local executor,
subprocesses on this machine, for laptops and tests). Needs the `[slurm]` extra."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from workbench.api import ExecutorCapabilities, Job, Outcome, StrictModel, WorkbenchError, execute_outcome

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
    """GPUs for each job (on each of its nodes)."""
    cpus_per_task: int = Field(2, ge=1)
    """CPU cores for each task of a job (torch uses this many threads)."""
    tasks_per_node: int = Field(1, ge=1)
    """Tasks of each `run` job on each node. More than one (or `nodes` > 1): the run trains
    data-parallel (DDP), one process per task joined into one torch.distributed process group
    (nccl on CUDA, gloo on the CPU), as under `torchrun --nproc-per-node`; rank 0 leads the run and
    writes its files, the others train their slices of each global batch. With `gpus_per_node`,
    normally equal to it (one GPU per task). The other jobs of a sweep (shared stages: E, an
    attack's prior) are parts of a run and are submitted as one task on one node, with one task's
    share of the GPUs. `debug` runs every job in this process, as one task."""
    nodes: int = Field(1, ge=1)
    """Nodes for each `run` job (Slurm only; `local` runs on one): `nodes` × `tasks_per_node`
    processes train the run data-parallel. Other jobs take one node."""
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
        self.capabilities = ExecutorCapabilities(job_threads=params.cpus_per_task)
        self._pending: list[Any] = []
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise WorkbenchError(MISSING) from None

    def layout(self, job: Job) -> tuple[int, int, int]:
        """`(nodes, tasks_per_node, gpus_per_node)` of `job`: as configured for a whole run; one task
        on one node with one task's share of the GPUs (rounded up) for the other kinds."""
        p = self.params
        if job.kind == "run":
            return p.nodes, p.tasks_per_node, p.gpus_per_node
        return 1, 1, -(-p.gpus_per_node // p.tasks_per_node)

    def _executor(self, jobs: Sequence[Job], layout: tuple[int, int, int] | None = None):
        import submitit

        p = self.params
        nodes, tasks, gpus = layout or self.layout(jobs[0])
        folder = Path(p.folder) if p.folder else Path(jobs[0].run_dir).parent / ".submitit"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=p.cluster)
        if nodes > 1 and executor.cluster != "slurm":
            raise WorkbenchError(f"executor 'submitit': nodes = {nodes} needs Slurm; cluster "
                                 f"{executor.cluster!r} runs on this machine alone (nodes = 1)")
        update: dict[str, Any] = {"timeout_min": p.timeout_min, "cpus_per_task": p.cpus_per_task,
                                  "gpus_per_node": gpus, "nodes": nodes, "tasks_per_node": tasks,
                                  "name": "workbench"}
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
        executors: dict[tuple[int, int, int], Any] = {}
        for job in jobs:
            layout = self.layout(job)
            if layout not in executors:
                executors[layout] = self._executor(jobs, layout)
        limit = self.params.max_running or len(jobs)
        handles: list[Any] = [None] * len(jobs)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        queue = list(range(len(jobs)))
        while queue or any(h is not None and outcomes[i] is None for i, h in enumerate(handles)):
            running = sum(1 for i, h in enumerate(handles) if h is not None and outcomes[i] is None)
            while queue and running < limit:
                index = queue.pop(0)
                handles[index] = executors[self.layout(jobs[index])].submit(run_task, jobs[index])
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
        """The job's outcome: rank 0's (task 0's) value; a failed task's error line, rank 0's first."""
        tasks = max(1, int(getattr(handle, "num_tasks", 1)))
        outcomes = [_task_outcome(handle, None if tasks == 1 else k) for k in range(tasks)]
        failed = [o for o in outcomes if not o.ok]
        if not failed:
            return outcomes[0]
        # A rank that only lost contact when another one stopped adds nothing to that one's line.
        errors = [o.error or "failed" for o in failed]
        telling = [e for e in errors[1:] if "lost contact with " not in e]
        return Outcome(ok=False, error="; ".join(dict.fromkeys([errors[0], *telling])))

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


def run_task(job: Job) -> Outcome:
    """What each task of a submitit job runs: `execute_outcome(job)`, after exporting
    torch.distributed's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR = the job's first
    node, MASTER_PORT from the job id) when the job has several tasks, so that a `run` job trains
    data-parallel with one rank per task. CUDA_VISIBLE_DEVICES stays as the cluster set it: each
    rank takes the GPU of its LOCAL_RANK."""
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return execute_outcome(job)


def _task_outcome(handle, task: int | None) -> Outcome:
    """One task's `Outcome` (`task` None: the job's only one); a task that died is an error line."""
    try:
        value = handle.result() if task is None else handle.task(task).result()
    except Exception as exc:  # the task itself died: killed, timeout, preemption, out of memory
        where = f"submitit job {handle.job_id}" + ("" if task is None else f" task {task}")
        return Outcome(ok=False, error=f"{where}: {_death(exc)}")
    return value if isinstance(value, Outcome) else Outcome(ok=True, value=value)


_SUBMITIT_LOG = re.compile(r"^(submitit (DEBUG|INFO|WARNING|ERROR) \(|-{4,}$)")


def _death(exc: Exception) -> str:
    """Why a task gave no result, in one line. A task whose process died (SIGKILL, the out-of-memory
    killer, a node lost) is submitit's "has not produced any output (state: X)" followed by its error
    stream (the state is not always telling: a killed local job may read FINISHED): the state, then the stream's last line that is not submitit's own log (`Killed`,
    `slurmstepd: error: ... oom-kill`), if any. Otherwise the error's last line."""
    text = str(exc).strip()
    head, marker, stream = text.partition("Error stream produced:")
    state = re.search(r"has not produced any output \(state: ([A-Z_]+)\)", head)
    told = [line.strip() for line in (stream if marker else text).splitlines()
            if line.strip() and not _SUBMITIT_LOG.match(line.strip())]
    if state is None:
        return told[-1] if told else type(exc).__name__
    died = f"its process ended without a result (killed, out of memory or lost; submitit state {state.group(1)})"
    return f"{died}; its last error line: {told[-1]}" if marker and told else died

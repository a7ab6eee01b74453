"""`ray`: jobs as Ray tasks on a Ray cluster (`address = "local"` starts one on this machine).
Needs the `[ray]` extra."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from workbench.api import ExecutorCapabilities, Job, Outcome, StrictModel, WorkbenchError, execute_outcome

MISSING = "executor 'ray' needs ray: pip install 'workbench-mi[ray]'"


class RayParams(StrictModel):
    address: str = "local"
    """`local` starts a Ray instance on this machine; `auto` joins the cluster this machine belongs to;
    or `ray://host:10001`."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of the local Ray instance (`address = "local"` only); unset = all cores."""
    cpus_per_job: float = Field(1.0, gt=0)
    """CPU cores Ray reserves for each job (torch uses this many threads, at least one)."""
    gpus_per_job: float = Field(0.0, ge=0)
    """GPUs Ray reserves for each job (fractions share a GPU)."""
    resources: dict[str, float] = {}
    """Custom Ray resources each job needs, e.g. {"a100" = 1}."""
    poll_seconds: float = Field(0.2, gt=0)
    """How often finished jobs are collected."""


class RayExecutor:
    """Each job a Ray task; the Ray instance is started (local) or joined on first use."""

    def __init__(self, params: RayParams):
        self.params = params
        self.capabilities = ExecutorCapabilities(job_threads=max(1, int(params.cpus_per_job)))
        self._refs: list[Any] = []
        self._started = False
        try:
            import ray  # noqa: F401
        except ImportError:
            raise WorkbenchError(MISSING) from None

    def _ray(self):
        import ray

        if not ray.is_initialized():
            p = self.params
            if p.address == "local":
                ray.init(num_cpus=p.num_cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=p.address, log_to_driver=False, configure_logging=False)
            self._started = True
        return ray

    def run(self, jobs: Sequence[Job], poll: Callable[[], None]) -> list[Outcome]:
        if not jobs:
            return []
        ray = self._ray()
        p = self.params
        task = ray.remote(execute_outcome).options(num_cpus=p.cpus_per_job, num_gpus=p.gpus_per_job,
                                                   resources=dict(p.resources) or None, max_retries=0)
        refs = [task.remote(job) for job in jobs]
        self._refs = refs
        outcomes: dict[int, Outcome] = {}
        index = {ref: i for i, ref in enumerate(refs)}
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=p.poll_seconds)
            for ref in done:
                try:
                    value = ray.get(ref)
                    outcomes[index[ref]] = value if isinstance(value, Outcome) else Outcome(ok=True, value=value)
                except Exception as exc:  # the worker died (out of memory, node lost)
                    outcomes[index[ref]] = Outcome(ok=False, error=f"ray task: {type(exc).__name__}: "
                                                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
            poll()
        self._refs = []
        return [outcomes[i] for i in range(len(jobs))]

    def close(self, cancel: bool = False) -> None:
        """`cancel`: stop the tasks still running; a Ray instance this executor started is shut down."""
        try:
            import ray
        except ImportError:
            return
        if cancel:
            for ref in self._refs:
                with contextlib.suppress(Exception):  # finished already
                    ray.cancel(ref, force=True)
        self._refs = []
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False

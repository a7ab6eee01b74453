"""Built-in executors: where a run's or a sweep's jobs execute.

`inline` runs jobs one after another in this process; `processes` in a pool of spawned worker
processes on this machine (the runner's parallel variants); `submitit` on Slurm (or submitit's
local executor) and `ray` on a Ray cluster, each an optional extra. All call
`workbench.api.execute_outcome(job)`, as any executor plugin does.
"""

from __future__ import annotations

from workbench.api import hookimpl
from workbench_executors.local import InlineExecutor, ProcessesExecutor, ProcessesParams
from workbench_executors.ray_executor import RayExecutor, RayParams
from workbench_executors.submitit_executor import SubmititExecutor, SubmititParams


@hookimpl
def register_executors(register):
    register("inline", InlineExecutor, summary="Jobs one after another in this process (no parallelism).")
    register("processes", ProcessesExecutor, params=ProcessesParams,
             summary="Jobs in a pool of spawned worker processes on this machine.")
    # submitit and ray are imported when one of these is created, not here (optional extras).
    register("submitit", SubmititExecutor, params=SubmititParams,
             summary="Jobs as Slurm tasks through submitit; cluster = \"local\" runs them as subprocesses here.")
    register("ray", RayExecutor, params=RayParams,
             summary="Jobs as Ray tasks on a Ray cluster; address = \"local\" starts one on this machine.")

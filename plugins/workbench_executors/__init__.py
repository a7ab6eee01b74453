"""Built-in executors: where a run's or a sweep's jobs execute.

`inline` runs jobs one after another in this process; `processes` in a pool of spawned worker
processes on this machine (the runner's parallel variants). Both call
`workbench.api.execute_outcome(job)`, as any executor plugin does.
"""

from __future__ import annotations

from workbench.api import hookimpl
from workbench_executors.local import InlineExecutor, ProcessesExecutor, ProcessesParams


@hookimpl
def register_executors(register):
    register("inline", InlineExecutor, summary="Jobs one after another in this process (no parallelism).")
    register("processes", ProcessesExecutor, params=ProcessesParams,
             summary="Jobs in a pool of spawned worker processes on this machine.")

"""A data-parallel run's two roles, whoever started its ranks: `workbench run` under torchrun
(`workbench.cli.main`) or the tasks of one submitit job (`workbench.running.jobs`).

Rank 0 leads (`lead_run`): the ordinary run, which writes the run directory and brings the
other ranks in for each target. Every other rank follows (`follow_run`): it trains its slice of
each global batch and writes nothing. Both leave the process group when they are done.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from workbench.errors import WorkbenchError
from workbench.running import distributed


def lead_run(options, listeners: Sequence[Any] = (), registry=None,
             live: AbstractContextManager | None = None) -> tuple[Any, dict[str, Any]]:
    """Rank 0 of a started process group: start the run, send the others its recipe, run it, tell
    them to stop; returns `(runner, results)`. `live`: a context held while the run trains (the
    console reporter). Leaves the process group, also on error.

    A run that cannot start (a bad recipe, a global batch that does not divide over the ranks)
    fails before anything trains, and the others are told to stop. A collective that fails because
    another rank went away becomes one line that says how to resume."""
    from torch.distributed import DistError

    from workbench.running.follower import announce
    from workbench.running.runner import Runner
    from workbench.running.trainer import global_batch_problem

    try:
        runner = Runner.start(options, listeners=list(listeners), registry=registry)
        problem = global_batch_problem(runner.recipe.target.train, distributed.world_size())
        if problem:  # before anything trains, so no rank starts what cannot finish
            raise WorkbenchError(problem)
    except BaseException:
        distributed.send_task("stop")  # the others end quietly; this rank says what went wrong
        distributed.shutdown()
        raise
    announce(runner)
    # Once the others follow, an error mid-run sends no "stop": they may be inside a training
    # collective, not on the task channel, and the send would wait on them. Leaving the process
    # group (and this process ending) breaks their collectives instead, and they stop.
    try:
        with live if live is not None else contextlib.nullcontext():
            results = runner.run()
        distributed.send_task("stop")
    except (DistError, RuntimeError) as exc:
        if not collective_failed(exc):
            raise
        raise WorkbenchError(f"another rank stopped during training ({first_line(exc)}); the run directory is "
                             f"resumable: workbench run {runner.run_dir} --resume --nproc "
                             f"{distributed.world_size()}") from None
    finally:
        distributed.shutdown()
    return runner, results


def follow_run() -> None:
    """A rank other than 0 of a started process group: train each target's slices with rank 0
    until it says stop; write nothing. Errors are one line that names this rank (rank 0 often
    says the same); leaves the process group, also on error."""
    from torch.distributed import DistError

    from workbench.running.follower import follow

    try:
        follow()
    except WorkbenchError as exc:
        named = WorkbenchError(f"rank {distributed.rank()}: {exc}")
        named.exit_code = exc.exit_code
        raise named from None
    except (DistError, RuntimeError) as exc:
        if not collective_failed(exc):
            raise
        raise WorkbenchError(f"rank {distributed.rank()}: lost contact with the other ranks "
                             f"({first_line(exc)})") from None
    finally:
        distributed.shutdown()


def collective_failed(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another rank went away (not a bug of ours)."""
    from torch.distributed import DistError

    text = str(exc)
    return isinstance(exc, DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "nccl", "Connection closed", "Connection reset", "ProcessGroup"))


def first_line(exc: BaseException) -> str:
    """The gist of a collective's error: its first line, without gloo's `[source.cc:123]` prefix."""
    text = str(exc).strip().splitlines()
    first = re.sub(r"^\[[^\]]*\]\s*", "", text[0]) if text else ""
    return f"{type(exc).__name__}: {first.replace('[', '(').replace(']', ')')}"

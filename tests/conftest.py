import os

import pytest
import torch

pytest_plugins = ["workbench.testing"]

# The CLI hands --plugins-dir and sweep sinks to the runs it starts through the environment, and a
# submitit task exports torch.distributed's variables (a WORLD_SIZE left behind makes every later
# in-process run job wait for ranks that never come); a test must not leave them to the tests after it.
_CLI_ENV = ("WORKBENCH_PLUGINS_DIR", "WORKBENCH_SINKS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
            "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """In-process jobs set torch's thread count for their work (workbench.running.jobs.execute); a test
    that runs one must not leave later tests computing with another count (float reductions, and
    so the last bits of every figure, depend on it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_cli_environment():
    saved = {name: os.environ.get(name) for name in _CLI_ENV}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

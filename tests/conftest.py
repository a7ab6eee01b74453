import os

import pytest
import torch

pytest_plugins = ["workbench.testing"]

# The CLI hands --plugins-dir and sweep sinks to the runs it starts through the environment; a test
# that invokes the CLI in-process must not leave them to the tests after it.
_CLI_ENV = ("WORKBENCH_PLUGINS_DIR", "WORKBENCH_SINKS")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """In-process jobs set torch's thread count for their work (workbench.jobs.execute); a test
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

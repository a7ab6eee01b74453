import os
import shutil
from pathlib import Path

import pytest
import torch

from workbench.running.threads import usable_cores

pytest_plugins = ["workbench.testing"]


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one pytest worker per CPU this process may use."""
    return usable_cores()


def _pin_xdist_worker() -> None:
    """Give each pytest-xdist worker its own share of the cores, every thread of it included, before
    a test starts one: torch, and the runs and subprocesses a test starts (they inherit the mask),
    then size their thread pools to that share (`usable_cores`). Two workers on two cores with two
    OpenMP threads each spin against each other: measured on a 2-core machine, 98 s for a sample of
    the suite against 72 s pinned (80 s without pytest-xdist)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores, workers = sorted(os.sched_getaffinity(0)), int(count)
    if workers > len(cores):
        return
    share = set(cores[int(worker.removeprefix("gw"))::workers])
    for thread in Path("/proc/self/task").iterdir():
        os.sched_setaffinity(int(thread.name), share)
    torch.set_num_threads(len(share))


_pin_xdist_worker()

# The TUI hands --plugins-dir to the runs it starts through the environment, and a
# submitit task exports torch.distributed's variables (a WORLD_SIZE left behind makes every later
# in-process run job wait for ranks that never come); a test must not leave them to the tests after it.
_CLI_ENV = ("WORKBENCH_PLUGINS_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
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


# Stages that several slow end-to-end tests train identically (the digits recipe's target and E, and
# the GAN priors built on them): a test that asks for `shared_trained_stages` starts with the entries
# earlier such tests trained and hands its own on. An entry is found only under its full key (config,
# seed, code, thread count, ...), so a test gets exactly what it would have trained; the stages it
# asserts on as trained (an attack's own per-target GAN, its reconstructions) are not in this list.
_SHARED_STAGE_FOLDERS = ("target", "evaluation-model", "gmi-gan")


@pytest.fixture(scope="session")
def _trained_stage_pool(tmp_path_factory):
    """One pool per session; with pytest-xdist, one for all workers (their temp directories' common
    parent), so a stage one worker trained is found by the others."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pool = tmp_path_factory.getbasetemp().parent / "trained-stages"
        pool.mkdir(exist_ok=True)
        return pool
    return tmp_path_factory.mktemp("trained-stages")


def _copy_entries(source, destination) -> None:
    for folder in _SHARED_STAGE_FOLDERS:
        for entry in sorted((source / folder).glob("*.safetensors")):
            target = destination / folder / entry.name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{entry.name}.{os.getpid()}.tmp")  # the cache's temp pattern
                shutil.copyfile(entry, partial)
                os.replace(partial, target)  # whole or absent, also with several pytest workers


@pytest.fixture
def shared_trained_stages(isolated_cache, _trained_stage_pool):
    """The test's isolated stage cache, seeded with the shared stages earlier tests trained."""
    _copy_entries(_trained_stage_pool, isolated_cache)
    yield isolated_cache
    _copy_entries(isolated_cache, _trained_stage_pool)

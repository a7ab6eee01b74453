import os
import shutil

import pytest
import torch

pytest_plugins = ["workbench.testing"]

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

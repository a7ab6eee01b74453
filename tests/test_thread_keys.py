"""CPU thread counts and the stage cache: a stage trained at another thread count is another
stage (float reductions change), so its cache key holds the count; and the runner trains every
piece of a run at one count (`RunContext.cpu_threads`), so a prior trained as a shared stage is found
again by the attack that needs it, in this process, a worker, or a sweep's job."""

from __future__ import annotations

import torch
from torch import nn

from workbench.api import AttackContext, StageCache
from workbench.attack_toolkit import load_or_train
from workbench.running.threads import threads_for, threads_per_job


def _run(tmp_path, extra: str = ""):
    """The context of a run of the tiny recipe (one variant, `none`) plus `extra` TOML, its data not loaded."""
    from workbench.components.registry import load_registry
    from workbench.recipe.load import load_recipe, resolve
    from workbench.running.context import NoEvents, RunContext, World
    from workbench.testing import TINY_RECIPE

    source = tmp_path / "r.toml"
    source.write_text(TINY_RECIPE + extra)
    registry = load_registry()
    recipe = load_recipe(source, registry=registry)
    return RunContext(recipe=recipe, resolved=resolve(recipe, registry), digest="", registry=registry,
                      run_dir=tmp_path / "run", source=source, cache=StageCache(tmp_path / "cache"),
                      events=NoEvents(), device=torch.device("cpu"), world=World.current(), resumed=False)


def _ctx(cache: StageCache) -> AttackContext:
    return AttackContext(target=None, data=None, evaluation_model=None, device=torch.device("cpu"), seed=0,
                         cache=cache)


def test_a_prior_trained_at_another_thread_count_is_not_taken_from_the_cache(tmp_path):
    cache = StageCache(tmp_path)
    trained_at: list[int] = []

    def train() -> dict:
        trained_at.append(torch.get_num_threads())
        with torch.no_grad():
            net.weight.fill_(float(torch.get_num_threads()))
        return {}

    for threads, expect_hit in ((1, False), (2, False), (1, True), (2, True)):
        net = nn.Linear(2, 2)
        with threads_for(threads):
            hit = load_or_train(_ctx(cache), "test", "prior", {"k": 0}, {"net": net}, train)
        assert hit == expect_hit
        assert float(net.weight[0, 0]) == threads  # the entry of this count, never the other's
    assert trained_at == [1, 2]  # each count trained once, then found


def test_every_stage_of_a_run_uses_the_runs_thread_count(monkeypatch, tmp_path):
    """E and a prior trained as shared stages, and the variants, all at `cpu_threads`, whatever
    count the process had when the stage started (a sweep's shared-stage job has its own)."""
    from types import SimpleNamespace

    from workbench.running import stages
    from workbench.running.context import SharedStages
    from workbench_attacks.gmi import GMI

    run = _run(tmp_path, """
[[variants]]
name = "b"
defense = { use = "none" }
[[variants]]
name = "c"
defense = { use = "none" }
[attacks.gmi]
use = "gmi"
[evaluation.backbone]
use = "scnn"
""")
    seen: dict[str, int] = {}
    def evaluators(*args, **kwargs):
        seen.setdefault("evaluation-model", torch.get_num_threads())
        return SimpleNamespace(primary=None, figures={}, models={})

    monkeypatch.setattr(stages, "build_evaluators", evaluators)
    monkeypatch.setattr(GMI, "prepare", lambda self, ctx: seen.setdefault("prior:gmi", torch.get_num_threads()))
    assert run.cpu_threads == threads_per_job(3)
    with threads_for(threads_per_job(3) + 1):  # a job started with another count
        for name in stages.shared_stage_names(run):
            stages.shared_stage(run, SharedStages(), name)
        assert torch.get_num_threads() == threads_per_job(3) + 1  # restored afterwards
    assert seen == {"evaluation-model": threads_per_job(3), "prior:gmi": threads_per_job(3)}


def test_ranks_on_one_machine_share_its_cores(monkeypatch, tmp_path):
    from workbench.running.context import World

    run = _run(tmp_path)
    assert run.cpu_threads == threads_per_job(1)  # one variant: every core
    # torchrun --nproc-per-node 2: the two ranks of this machine share its cores
    assert run.replace(world=World(rank=0, size=2, ranks_here=2)).cpu_threads == threads_per_job(2)


def test_thread_and_worker_counts_follow_the_cpus_this_process_may_run_on(monkeypatch):
    """A process allowed 2 of 8 cores (taskset, Slurm, a pinned pytest worker) shares out those 2;
    where the OS has no affinity mask, every core of the machine."""
    import os

    from workbench.running.threads import resolve_workers, usable_cores

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5}, raising=False)
    assert usable_cores() == 2
    assert [threads_per_job(jobs) for jobs in (1, 2, 4)] == [2, 1, 1]
    assert resolve_workers(None, 6, torch.device("cpu")) == 2
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cores() == 8
    assert [threads_per_job(jobs) for jobs in (1, 2, 4)] == [8, 4, 2]
    assert resolve_workers(None, 6, torch.device("cpu")) == 6

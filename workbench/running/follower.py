"""`workbench run` under torchrun: rank 0 leads the run, every other rank follows.

Rank 0 is an ordinary run (run directory, events, stage cache, GAN priors, attacks, report)
that, whenever it trains a target or the evaluation model E (a stage-cache miss), first tells
the other ranks to join (`distributed.send_task("target" | "evaluation-model", ...)`). A follower holds the same recipe (sent by rank 0,
so it needs no shared file system), loads the same data, and for each task builds the same
target and trains its slice of every global batch. It never writes a file: no run directory,
no events, no stage cache, no checkpoint (it resumes from the checkpoint state rank 0 sends).

The attacks' priors (GAN priors, LOMMA's surrogates) train the same way: rank 0 sends
`attack-prepare` (a target-independent prior) or `attack-priors` (the per-target stages, before
the search) and every rank runs that code path in `distributed.lockstep()`: rank 0 decides each
stage-cache hit or miss, a miss trains on every rank together (`distributed.training_together`),
a hit hands rank 0's weights over. Then each rank searches its shard of the classes and rank 0
merges the shards (`attack_on_every_rank`). A follower works at the run's thread count
(`Runner.cpu_threads`), as rank 0 does, so the merged search is the one-process search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.components.capabilities import capabilities_of
from workbench.components.protocols import AttackContext, AttackResult, AttackShard
from workbench.errors import RunError
from workbench.recipe.schema import validate_raw
from workbench.running import distributed
from workbench.running.evaluation import evaluation_model
from workbench.running.jobs import threads_for
from workbench.running.trainer import train_classifier
from workbench.storage.cache import StageCache


class NoEvents:
    """The event writer of a follower: events go nowhere (rank 0 writes the run's)."""

    path = None

    def __init__(self) -> None:
        self.listeners: list = []

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, **fields}

    def close(self) -> None:
        pass


def announce(runner) -> None:
    """Rank 0, once its run directory is ready: send the followers the resolved recipe."""
    distributed.send_task("start", resolved=runner.resolved, run_dir=str(runner.run_dir), resumed=runner.resumed,
                          plugins_dir=str(runner.plugins_dir) if runner.plugins_dir else None)


def follow() -> None:
    """A rank other than 0: wait for rank 0's recipe, then join each training rank 0 announces
    (a target, E) until told to stop. With no cache, E's stage always trains here: it is only
    reached when rank 0 announced it."""
    from workbench.components.registry import load_registry
    from workbench.running.runner import Runner

    start = distributed.receive_task()
    if start["kind"] != "start":  # rank 0 could not start the run (it says why)
        return
    registry = load_registry(plugins_dir=start["plugins_dir"])
    run_dir = Path(start["run_dir"])
    recipe = validate_raw(start["resolved"], f"{run_dir / 'recipe.toml'} (sent by rank 0)", registry)
    runner = Runner(recipe, registry, run_dir, "", start["resolved"], NoEvents(), StageCache(None),
                    start["resumed"], run_dir / "recipe.toml")
    runner.data = runner._load_data(lambda *a, **k: None)
    with threads_for(runner.cpu_threads()):
        _follow_tasks(runner)


def _follow_tasks(runner) -> None:
    """Each task rank 0 sends, until it says stop."""
    recipe, registry = runner.recipe, runner.registry
    built: dict[str, tuple[Any, Any]] = {}  # the last target built with rank 0: (model, defense) by variant
    while True:
        task = distributed.receive_task()
        if task["kind"] == "stop":
            return
        if task["kind"] == "evaluation-model":  # rank 0 missed E in its cache: train it together
            evaluation_model(recipe, runner.resolved, registry, runner.data, StageCache(None), runner.device,
                             lambda *a, **k: None)
            continue
        if task["kind"] in ("attack-prepare", "attack-priors"):
            _attack_priors(runner, task, built)
            continue
        if task["kind"] == "build-target":  # with rank 0, in lockstep: a defense's pretraining trains together
            variant = recipe.variant(task["variant"])
            built.clear()
            with distributed.lockstep():
                built[variant.name] = runner.build_target(variant)
            continue
        if task["kind"] != "target":
            raise RunError(f"rank {distributed.rank()}: unknown task {task['kind']!r} from rank 0 "
                           "(are all ranks running the same workbench version?)")
        variant = recipe.variant(task["variant"])
        model, defense = built.get(variant.name) or runner.build_target(variant)
        train_classifier(model, defense, runner.data.train, recipe.target.train, device=runner.device,
                         seed=recipe.seed, resume=runner.resumed,
                         ood=runner._ood_feed(variant) if variant.ood_training else None, data_parallel=True)


def _attack_priors(runner, task: dict[str, Any], built: dict[str, tuple[Any, Any]]) -> None:
    """A follower's part of an attack: the calls rank 0 makes, in lockstep with it."""
    attack = runner.registry.create_from("attack", runner.recipe.attacks[task["attack"]])
    ctx = AttackContext(target=None, data=runner.data, evaluation_model=None, device=runner.device,
                        seed=runner.recipe.seed, cache=StageCache(None))
    if task["kind"] == "attack-prepare":
        with distributed.lockstep():
            attack.prepare(ctx)
        return
    variant = runner.recipe.variant(task["variant"])
    # The target built with rank 0 (and trained with it, or loaded by it): its weights follow.
    target, _ = built.get(variant.name) or runner.build_target(variant)
    target.to(runner.device).eval().requires_grad_(False)
    attack_on_every_rank(attack, dataclasses.replace(ctx, target=target), search=task["search"])


PRIORS_ONLY = AttackShard(0, 1, search=False)
"""The pass that trains or loads what an attack's search needs, and searches nothing."""


def attack_on_every_rank(attack: Any, ctx: AttackContext, search: bool) -> AttackResult | None:
    """Every rank, in lockstep: the attack's priors (trained together, or rank 0's cached ones
    handed over), then with `search` this rank's contiguous shard of the per-class search. Rank 0
    returns the shards merged: the unsharded result bit for bit, as `[attacks.X] shards` gives
    (same device and thread count on every rank); without `search`, its priors pass. Followers
    return None."""
    with distributed.lockstep():
        distributed.broadcast_module(ctx.target)
        prepared = attack.run(dataclasses.replace(ctx, shard=PRIORS_ONLY))
        if not search:
            return prepared if distributed.is_main_process() else None
        # Its priors again: cache hits on rank 0, handed over to the others, then the search.
        shard = AttackShard(distributed.rank(), distributed.world_size(), may_be_empty=True)
        part = attack.run(dataclasses.replace(ctx, shard=shard))
    parts = distributed.gather_objects(_on_cpu(part))
    return attack.merge_shards(prepared, parts) if parts is not None else None


def _on_cpu(result: AttackResult) -> AttackResult:
    """A result whose tensors can travel between ranks (pickled over the gloo task channel)."""
    def cpu(t):
        return t.cpu() if t is not None else None

    return dataclasses.replace(result, images=cpu(result.images), targets=cpu(result.targets),
                               restarts=cpu(result.restarts), confidences=cpu(result.confidences))


def trains_priors_together(attack: Any) -> bool:
    """Whether the other ranks can join `attack`: it runs a search-free pass and its searches
    split into shards that merge exactly (`merge_shards`)."""
    return distributed.is_distributed() and capabilities_of(attack, "attack").shards


def prepare_together(attack: Any, name: str, ctx: AttackContext) -> None:
    """Rank 0: `attack.prepare(ctx)` (a target-independent prior) with every rank taking part."""
    if distributed.is_distributed():
        distributed.send_task("attack-prepare", attack=name)
    with distributed.lockstep():
        attack.prepare(ctx)


def attack_together(attack: Any, name: str, variant: str,
                    compute: Callable[[AttackContext], AttackResult] | None
                    ) -> Callable[[AttackContext], AttackResult] | None:
    """Rank 0: the `compute` for `run_attack` under torchrun. Every rank trains (or loads) the
    attack's per-target priors together, then each searches its shard of the classes and rank 0
    merges them (`attack_on_every_rank`). With `[attacks.X] shards` set (`compute`, the run's
    executor shards) the ranks train the priors together and the shards run as the recipe says.
    `compute` unchanged without torchrun or for an attack that cannot split (PPA, MI-Face)."""
    if not trains_priors_together(attack):
        return compute

    def run(ctx: AttackContext) -> AttackResult:
        split = compute is None
        distributed.send_task("attack-priors", attack=name, variant=variant, search=split)
        merged = attack_on_every_rank(attack, ctx, search=split)
        return merged if split else compute(ctx)

    return run

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
a hit hands rank 0's weights over. The latent searches run on rank 0 alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench import distributed
from workbench.cache import StageCache
from workbench.components import AttackContext, AttackResult, AttackShard
from workbench.errors import RunError
from workbench.evaluation import evaluation_model
from workbench.recipe import validate_raw
from workbench.trainer import train_classifier


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
    from workbench.registry import load_registry
    from workbench.runner import Runner

    start = distributed.receive_task()
    if start["kind"] != "start":  # rank 0 could not start the run (it says why)
        return
    registry = load_registry(plugins_dir=start["plugins_dir"])
    run_dir = Path(start["run_dir"])
    recipe = validate_raw(start["resolved"], f"{run_dir / 'recipe.toml'} (sent by rank 0)", registry)
    runner = Runner(recipe, registry, run_dir, "", start["resolved"], NoEvents(), StageCache(None),
                    start["resumed"], run_dir / "recipe.toml")
    runner.data = runner._load_data(lambda *a, **k: None)
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
    """A follower's part of an attack's priors: the calls rank 0 makes, in lockstep with it."""
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
    with distributed.lockstep():
        distributed.broadcast_module(target)
        attack.run(dataclasses.replace(ctx, target=target, shard=PRIORS_ONLY))


PRIORS_ONLY = AttackShard(0, 1, search=False)
"""The pass that trains or loads what an attack's search needs, and searches nothing."""


def trains_priors_together(attack: Any) -> bool:
    """Whether the other ranks can join `attack`'s priors: it runs a search-free pass
    (`AttackShard(search=False)`, the attacks that can merge shards)."""
    return distributed.is_distributed() and callable(getattr(attack, "merge_shards", None))


def prepare_together(attack: Any, name: str, ctx: AttackContext) -> None:
    """Rank 0: `attack.prepare(ctx)` (a target-independent prior) with every rank taking part."""
    if distributed.is_distributed():
        distributed.send_task("attack-prepare", attack=name)
    with distributed.lockstep():
        attack.prepare(ctx)


def priors_together(attack: Any, name: str, variant: str,
                    compute: Callable[[AttackContext], AttackResult] | None
                    ) -> Callable[[AttackContext], AttackResult] | None:
    """Rank 0: the `compute` for `run_attack`, with the attack's per-target priors first trained
    (or loaded) by every rank together; the search then runs here alone and finds them in the
    stage cache. `compute` unchanged without torchrun or for an attack without a search-free pass."""
    if not trains_priors_together(attack):
        return compute
    search = compute or attack.run

    def run(ctx: AttackContext) -> AttackResult:
        distributed.send_task("attack-priors", attack=name, variant=variant)
        with distributed.lockstep():
            distributed.broadcast_module(ctx.target)
            attack.run(dataclasses.replace(ctx, shard=PRIORS_ONLY))
        return search(ctx)

    return run

"""`workbench run` under torchrun: rank 0 leads the run, every other rank follows.

Rank 0 is an ordinary run (run directory, events, stage cache, GAN priors, attacks, report)
that, whenever it trains a target or the evaluation model E (a stage-cache miss), first tells
the other ranks to join (`distributed.send_task("target" | "evaluation-model", ...)`). A follower holds the same recipe (sent by rank 0,
so it needs no shared file system), loads the same data, and for each task builds the same
target and trains its slice of every global batch. It never writes a file: no run directory,
no events, no stage cache, no checkpoint (it resumes from the checkpoint state rank 0 sends).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench import distributed
from workbench.cache import StageCache
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
    while True:
        task = distributed.receive_task()
        if task["kind"] == "stop":
            return
        if task["kind"] == "evaluation-model":  # rank 0 missed E in its cache: train it together
            evaluation_model(recipe, runner.resolved, registry, runner.data, StageCache(None), runner.device,
                             lambda *a, **k: None)
            continue
        if task["kind"] != "target":
            raise RunError(f"rank {distributed.rank()}: unknown task {task['kind']!r} from rank 0 "
                           "(are all ranks running the same workbench version?)")
        variant = recipe.variant(task["variant"])
        model, defense = runner.build_target(variant)
        train_classifier(model, defense, runner.data.train, recipe.target.train, device=runner.device,
                         seed=recipe.seed, resume=runner.resumed,
                         ood=runner._ood_feed(variant) if variant.ood_training else None, data_parallel=True)

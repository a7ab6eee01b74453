"""What one run is, as data: the recipe, its data, cache, events, device and world.

A `RunContext` is made once per process (`workbench.running.runner.start_run` on rank 0 or
alone, `join_run` on the other ranks of a data-parallel run, `worker_context` in a job) and
handed to the plain functions of `workbench.running.stages`. It never changes; what the stages
make (E, the OOD test sets) travels in `SharedStages`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.components.protocols import DataSplits
from workbench.components.registry import Registry
from workbench.recipe.schema import Recipe, VariantConfig
from workbench.running import distributed
from workbench.running.threads import threads_per_job
from workbench.storage.cache import StageCache


@dataclass(frozen=True)
class World:
    """The ranks of this run: one process, or the ranks torchrun (or a multi-task job) started."""

    rank: int = 0
    size: int = 1
    ranks_here: int = 1
    """Ranks on this machine: they share its cores."""

    @classmethod
    def current(cls) -> World:
        if not distributed.is_distributed():
            return cls()
        return cls(distributed.rank(), distributed.world_size(), distributed.local_world_size())

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory, its events and the stage cache."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


class NoEvents:
    """The events of a rank other than 0: nowhere (rank 0 writes the run's)."""

    path = None

    def __init__(self) -> None:
        self.listeners: list = []

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, **fields}

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class RunContext:
    """One run, as every stage function sees it."""

    recipe: Recipe
    resolved: dict[str, Any]
    """The recipe with every default filled in (what the stage-cache keys are made of)."""
    digest: str
    registry: Registry
    run_dir: Path
    source: Path
    """The recipe file the run came from."""
    cache: StageCache
    events: Any
    """An `EventWriter` on rank 0 (or alone), `NoEvents` elsewhere."""
    device: torch.device
    world: World
    resumed: bool
    plugins_dir: Path | None = None
    workers: int = 1
    """Parallel worker processes for the run's pieces (1: all in this process)."""
    executor: str = "processes"
    """The executor those workers belong to (one that declares `shares_machine`)."""
    data: DataSplits | None = None
    """Set once the data stage has loaded it (`stages.with_data`)."""

    def emit(self, type: str, **fields: Any) -> None:
        self.events.emit(type, **fields)

    def replace(self, **changes: Any) -> RunContext:
        return dataclasses.replace(self, **changes)

    def variant_dir(self, variant: VariantConfig) -> Path:
        return self.run_dir / variant.name

    def writes(self, path: Path) -> Path | None:
        """`path` on the rank that writes the run directory; None on the others."""
        return path if self.world.is_main else None

    @property
    def cpu_threads(self) -> int | None:
        """CPU threads for every piece of this run's work (E, the priors, each variant and its
        attacks), whoever runs it: this process, a worker, a sweep's job, an attack shard. The count
        changes float reductions, so the stage cache keys on it; one count per machine and recipe
        lets a prior trained as a shared stage be found again by the attack that needs it. Ranks of
        one machine share its cores. None on CUDA."""
        if self.device.type != "cpu":
            return None
        if self.world.ranks_here > 1:
            return threads_per_job(self.world.ranks_here)
        return threads_per_job(len(self.recipe.variants))


@dataclass(frozen=True)
class SharedStages:
    """What every variant needs and no defense changes, once made."""

    evaluation_model: Any = None
    """E, the evaluation model the attacks are handed."""
    evaluation_figures: dict[str, Any] | None = None
    """E's figures (and the other evaluators', under `evaluators`) for results.json."""
    evaluators: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Every evaluation model by name, E first: each judges every attack."""
    ood_evaluator: Any = None

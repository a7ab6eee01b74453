"""What a component can do beyond its kind's contract, declared by the component.

A component class (or, where it depends on its params, the instance) sets `capabilities` to its
kind's dataclass below; a component that declares nothing gets the kind's defaults (the plain
contract). The core asks `capabilities_of(component)` and never probes for methods or names;
the registry checks at creation that a declared capability comes with the methods it promises
(one line naming the component otherwise), and `workbench plugins list --json` shows each
component's declaration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Access = Literal["white-box", "black-box", "label-only"]
ACCESS_LEVELS: tuple[str, ...] = ("white-box", "black-box", "label-only")


@dataclass(frozen=True)
class AttackCapabilities:
    """An attack's declaration (`capabilities = AttackCapabilities(...)` on the class)."""

    access: Access = "white-box"
    """What it may see of the target: the module (`white-box`), probability vectors (`black-box`)
    or the top-1 label (`label-only`)."""
    prepares: bool = False
    """It has a target-independent prior: `prepare(ctx)` runs once per run with `ctx.target = None`
    before any variant (a shared stage), and `run` finds the prior in the stage cache."""
    shards: bool = False
    """Its per-class search honours `ctx.shard` and its parts merge exactly with
    `merge_shards(prepared, parts)`: it can run as several jobs (`shards` param) and under
    torchrun each rank searches a part."""
    seeded_prior: bool = False
    """Its params have `prior_seed`: a sweep pins it so every seed shares one trained prior."""


@dataclass(frozen=True)
class OODLossCapabilities:
    """An OOD loss's declaration."""

    prepares: bool = False
    """`prepare(model, id_data, ood_data, device) -> dict` once when the OOD phase starts (statistics
    of the warmed-up model), kept in the training checkpoint and handed to `restore(state)` on resume."""
    observes: bool = False
    """`observe(id_logits, ood_logits, epoch)` during warm-up: it sees the global batch's logits."""


@dataclass(frozen=True)
class DefenseCapabilities:
    """A defense's declaration (an instance that holds another defense may take the held one's)."""

    post_hoc: bool = False
    """It leaves training alone: the target trains as `none` would (plain cross-entropy) and the defense
    wraps the trained target in `finish_training` (Gaussian noise on its features, a purifier of its
    logits). The variant's record in results.json says so (`defense.post_hoc`), and report.md,
    report.html, the TUI and the sweep tables mark the variant `post-hoc`."""


@dataclass(frozen=True)
class ExecutorCapabilities:
    """An executor's declaration (an instance may refine it from its params)."""

    shares_machine: bool = False
    """Its jobs run as parallel processes on this machine and see its run directory and cache: a run
    can hand it its shared stages, variants and attack shards (`workers` jobs at once)."""
    workers: int | None = None
    """Jobs at once on this machine (with `shares_machine`); None: one."""
    job_threads: int | None = None
    """CPU threads each job gets on its host (a Slurm task's `cpus_per_task`); None: this machine's
    cores shared among `workers`."""


@dataclass(frozen=True)
class NoCapabilities:
    """Kinds with nothing beyond their contract."""


BY_KIND: dict[str, type] = {
    "attack": AttackCapabilities,
    "ood_loss": OODLossCapabilities,
    "executor": ExecutorCapabilities,
    "defense": DefenseCapabilities,
}

REQUIRED_METHODS: dict[tuple[str, str], tuple[str, ...]] = {
    ("attack", "prepares"): ("prepare",),
    ("attack", "shards"): ("merge_shards",),
    ("ood_loss", "prepares"): ("prepare", "restore"),
    ("ood_loss", "observes"): ("observe",),
    ("defense", "post_hoc"): ("finish_training",),
}
"""The methods a declared capability promises (checked when a component is created)."""


def capabilities_of(component: Any, kind: str) -> Any:
    """`component`'s declared capabilities (a class or an instance), or its kind's defaults."""
    expected = BY_KIND.get(kind, NoCapabilities)
    declared = getattr(component, "capabilities", None)
    if declared is None:
        return expected()
    if not isinstance(declared, expected):
        raise TypeError(f"capabilities must be a {expected.__name__}, not {type(declared).__name__}")
    return declared


def missing_methods(component: Any, kind: str) -> list[str]:
    """Methods a component's declared capabilities promise and it lacks."""
    declared = capabilities_of(component, kind)
    missing = []
    for (of_kind, flag), methods in REQUIRED_METHODS.items():
        if of_kind == kind and getattr(declared, flag, False):
            missing += [m for m in methods if not callable(getattr(component, m, None))]
    return missing


def as_json(capabilities: Any) -> dict[str, Any]:
    """A declaration as JSON for `plugins list --json` and the docs."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(capabilities).items()}

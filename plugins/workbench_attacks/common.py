"""Plumbing the attacks share: public-data access, fingerprints, seeding, progress, batching.

Kept apart from the attacks so each attack file reads as its recipe: train the prior, search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.api import (
    AttackContext,
    StageCache,
    WorkbenchError,
    in_data_parallel,
    world_size,
)

# Public sets up to this size are held in memory as one tensor: sampling a GAN batch is then
# one index operation instead of batch_size Python calls into the dataset.
IN_MEMORY_LIMIT_BYTES = 1 << 30

# Streaming more than this many progress events per class would flood events.jsonl and the TUI.
MAX_EVENTS_PER_CLASS = 20


class ImagePool:
    """The attacker's public images, sampled in random batches from an explicit generator."""

    def __init__(self, dataset: Dataset, name: str):
        try:
            self.length = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise WorkbenchError(
                f"attack {name!r}: the public dataset has no length; it must be a map-style Dataset"
            ) from None
        if self.length == 0:
            raise WorkbenchError(
                f"attack {name!r}: the dataset's public split is empty; the attack needs public images"
            )
        self.dataset = dataset
        first = self._image(0)
        self.shape = tuple(first.shape)
        self.images: Tensor | None = None
        if self.length * first.numel() * 4 <= IN_MEMORY_LIMIT_BYTES:
            self.images = torch.stack([self._image(i) for i in range(self.length)])

    def _image(self, index: int) -> Tensor:
        item = self.dataset[index]
        image = item[0] if isinstance(item, (tuple, list)) else item
        return torch.as_tensor(image, dtype=torch.float32)

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """`n` images drawn uniformly with replacement, on `device` in the GANs' memory format."""
        index = torch.randint(self.length, (n,), generator=generator)
        if self.images is not None:
            batch = self.images[index]
        else:
            batch = torch.stack([self._image(int(i)) for i in index])
        return batch.to(device, memory_format=GAN_MEMORY_FORMAT)

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the public data for cache keys: length, shape and a hash of 16 images."""
        picks = sorted({round(i * (self.length - 1) / 15) for i in range(16)})
        digest = hashlib.sha256()
        for i in picks:
            image = self.images[i] if self.images is not None else self._image(i)
            digest.update(image.contiguous().numpy().tobytes())
        return {"length": self.length, "shape": list(self.shape), "sha256": digest.hexdigest()[:16]}


def public_pool(ctx: AttackContext, name: str) -> ImagePool:
    """The public split as an ImagePool, with a clear error when the dataset has none."""
    if ctx.data.public is None:
        raise WorkbenchError(
            f"attack {name!r} needs the attacker's public data, but the dataset has no public split; "
            "choose a dataset with public classes or the 'mi-face' attack, which needs none"
        )
    pool = ImagePool(ctx.data.public, name)
    expected = (ctx.data.in_channels, ctx.data.image_size, ctx.data.image_size)
    if pool.shape != expected:
        raise WorkbenchError(
            f"attack {name!r}: public images are shaped {list(pool.shape)}, expected {list(expected)} "
            "like the private data"
        )
    return pool


def resolve_classes(
    classes: Sequence[int] | None, num_classes: int, name: str, first: int | None = None
) -> list[int]:
    """The private classes to attack: the listed ones, else the first `first`, else all; checked."""
    if classes is None:
        return list(range(min(first, num_classes) if first else num_classes))
    if not classes:
        raise WorkbenchError(
            f"attack {name!r}: classes = [] attacks nothing; leave it out to attack every class"
        )
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise WorkbenchError(
            f"attack {name!r}: classes {bad} are outside the private classes 0..{num_classes - 1}"
        )
    return list(dict.fromkeys(int(c) for c in classes))


def stage_cache(ctx: AttackContext) -> StageCache:
    """The context's cache, or one that never hits when the runner gives none."""
    return ctx.cache if ctx.cache is not None else StageCache(None)


@dataclass(frozen=True)
class Group:
    """One (class, restart) pair: `samples` latents optimised together toward `target_class`."""

    target_class: int
    restart: int


def make_groups(classes: Sequence[int], restarts: int) -> list[Group]:
    return [Group(c, r) for c in classes for r in range(restarts)]


def report_steps(iterations: int, chunks: int) -> set[int]:
    """Steps (1-based) at which to emit progress: evenly spaced, always the last one."""
    count = max(1, MAX_EVENTS_PER_CLASS // max(1, chunks))
    count = min(count, iterations)
    return {round(iterations * (k + 1) / count) for k in range(count)}


def emit_progress(
    ctx: AttackContext,
    stage: str,
    *,
    step: int,
    total: int,
    chunk: Sequence[Group],
    group_loss: Tensor,
    group_confidence: Tensor,
) -> None:
    """One event per class in the chunk: loss and target confidence averaged over its restarts."""
    by_class: dict[int, list[int]] = {}
    for index, group in enumerate(chunk):
        by_class.setdefault(group.target_class, []).append(index)
    for target_class, rows in by_class.items():
        ctx.emit(
            "progress",
            stage=stage,
            step=step,
            total=total,
            target_class=target_class,
            loss=float(group_loss[rows].mean()),
            confidence=float(group_confidence[rows].mean()),
        )


GAN_MEMORY_FORMAT = torch.channels_last
"""The GAN priors' layout: channels-last convolutions train their small 16-64 px networks
12-16 % faster on the CPU (one thread, measured) and suit CUDA's bf16 kernels too."""

GAN_FIELDS = ("z_dim", "gan_width", "gan_steps", "gan_batch_size", "gan_lr", "critic_iters")
"""The params every GAN prior shares (`core.GANBudget`); each attack adds its own to its key."""


NETWORKS_REVISION = 2
"""Bumped whenever `networks` changes a prior's layers, so no cache entry of the old layers is
ever loaded into the new ones (2: the references' own networks, 5x5 kernels and their widths)."""


def gan_config(params: Any, *extra: str) -> dict[str, Any]:
    """The GAN part of an attack's cache key: the shared GAN params plus the attack's `extra`."""
    return {"networks": NETWORKS_REVISION, **{k: getattr(params, k) for k in (*GAN_FIELDS, *extra)}}


def freeze(*modules: nn.Module) -> None:
    """Eval mode and no parameter gradients: a trained prior is only searched through."""
    for module in modules:
        module.eval()
        module.requires_grad_(False)


def load_or_train(
    ctx: AttackContext,
    name: str,
    stage: str,
    key: dict[str, Any],
    networks: dict[str, nn.Module],
    train: Callable[[], dict[str, float]],
) -> bool:
    """Fill `networks` from the stage cache, or run `train()` and store them; frozen either
    way; True on a cache hit. `StageCache.load_or_compute` does the work (bad or non-finite
    entries never loaded, a NaN prior never cached, rank 0's decision under torchrun); this adds
    the attack's log lines.

    `train()` trains `networks` in place and returns figures kept in the entry's metadata.
    """
    cache = stage_cache(ctx)
    # The cache adds the device, thread count and world size to the key (`StageCache.environment`).
    together = False

    def compute() -> dict[str, Any]:
        nonlocal together
        together = in_data_parallel()
        return {"figures": train()}

    _meta, hit = cache.load_or_compute(stage, key, networks, compute, what=f"attack {name!r}, stage {stage}")
    freeze(*networks.values())
    path = cache.path(stage, key)
    if hit:
        ctx.emit("log", level="info", message=f"{name}: loaded {stage} from the stage cache")
    elif path is not None:
        ranks = f" by {world_size()} ranks together" if together else ""
        ctx.emit("log", level="info", message=f"{name}: trained {stage}{ranks}, cached at {path}")
    return hit

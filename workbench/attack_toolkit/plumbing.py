"""Plumbing the attacks share: public-data access, class groups, progress, non-finite checks.

Kept apart from the attacks so each attack file reads as its recipe: train the prior, search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.api import (
    AttackContext,
    StageCache,
    TargetOracle,
    WorkbenchError,
)

# Public sets up to this size are held in memory as one tensor: sampling a GAN batch is then
# one index operation instead of batch_size Python calls into the dataset.
IN_MEMORY_LIMIT_BYTES = 1 << 30

# Streaming more than this many progress events per class would flood events.jsonl and the TUI.
MAX_EVENTS_PER_CLASS = 20


GAN_MEMORY_FORMAT = torch.channels_last
"""The GAN priors' layout: channels-last convolutions train their small 16-64 px networks
12-16 % faster on the CPU (one thread, measured) and suit CUDA's bf16 kernels too."""


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


def require_oracle(ctx: AttackContext, attack: Any) -> TargetOracle:
    """The run's oracle for an attack that sees T only through it (its declared `capabilities.access`,
    black-box or label-only); one clear error where a hand-built context has none."""
    if ctx.oracle is None:
        raise WorkbenchError(
            f"attack {attack.name!r} is {attack.capabilities.access} and needs the run's target oracle"
        )
    return ctx.oracle


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


# ---------------------------------------------------------------- non-finite values


def check_finite(value: Tensor, *, attack: str, stage: str, what: str, hint: str = "") -> None:
    """A one-line WorkbenchError naming the attack and stage when `value` holds NaN or inf."""
    if not bool(torch.isfinite(value).all()):
        raise WorkbenchError(
            f"attack {attack!r}, stage {stage}: {what} is not finite (NaN or inf); "
            + (hint or "the figures would be meaningless, so the attack stops here")
        )


def check_module_finite(module: nn.Module, *, attack: str, stage: str, what: str) -> None:
    """Stop when any parameter or buffer of `module` is not finite (a diverged prior)."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WorkbenchError(
                f"attack {attack!r}, stage {stage}: the {what}'s {name} is not finite (NaN or inf): "
                "the prior diverged and is not cached; lower gan_lr or change the seed"
            )

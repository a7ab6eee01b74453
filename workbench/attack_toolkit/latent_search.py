"""The latent search every optimisation attack shares: budgets, the loop, results, shards.

- `SearchBudget`: the param fields every per-class latent search has.
- `search`: one latent-search loop over (class, restart) groups: chunking by `max_batch`, one
  random stream per group, progress events, projection (clamp) after every step and a stop on
  non-finite losses or reconstructions. An attack supplies only its `SearchProblem`: how a
  group starts, the optimiser, the loss, the projection and the final images.
- `result`, `merge_shards`, `ShardableSearch`: the attack's result, and exact merging of a
  search split into shards.

Every random draw comes from `workbench.api.seeds`, keyed by the run seed, the attack and the
(class, restart) pair, so a class's result does not depend on which other classes are attacked
or how they are batched (except where a method couples a batch on purpose: KED-MI's
minibatch discrimination sees one block of classes, by design).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor, nn

from workbench.api import (
    AttackCapabilities,
    AttackContext,
    AttackResult,
    AttackShard,
    StrictModel,
    WorkbenchError,
    seeds,
)
from workbench.attack_toolkit.plumbing import Group, check_finite, emit_progress, report_steps

# ---------------------------------------------------------------- shared params


class SearchBudget(StrictModel):
    """The fields every per-class search shares (the targets, the identity weight, batching)."""

    lambda_id: float = Field(100.0, ge=0)
    """Weight λ of the identity loss CE(T(G(z)), y) against the prior (reference 100: GMI
    `Celeba/attack.py:11`, DefendMI `GMI/attack.py:18`, KEDMI `attack.py`, `lamda=100`)."""
    classes: list[int] | None = None
    """Private classes to attack (default: all of them)."""
    first_classes: int | None = Field(None, ge=1)
    """Attack only the first N private classes (BiDO and LOMMA attack identities 0-299 of
    CelebA's 1000: DefendMI `GMI/attack.py:197-206`); ignored when `classes` is set."""
    max_batch: int = Field(256, ge=1)
    """Latents per forward pass. Results do not depend on it, only speed and memory do: losses
    are sums over latents divided by a constant (or over a fixed block), never a mean over
    whatever shares the forward pass."""
    shards: int = Field(1, ge=1)
    """Jobs the per-class search is split into (a workbench addition, not in the authors' code):
    its forward batches of `max_batch` latents, in order (classes in order; KED-MI: fits, then
    class blocks), go in `shards` contiguous runs to the run's executor, and merge into exactly
    the figures of one job. GANs and surrogates train once, before the shards. Needs at least
    `shards` batches: lower `max_batch` if the run says so. See docs/attacks.md."""


# ---------------------------------------------------------------- latent search


@dataclass
class Chunk:
    """The groups searched in one forward pass, each with its own random stream."""

    groups: list[Group]
    streams: list[torch.Generator]
    blocks: list[int]
    """Sizes of the units the chunk is made of, in groups (a unit is never split)."""


class SearchProblem(abc.ABC):
    """What one attack's per-class search is; `search` runs it.

    The tensors `start` returns are the optimised leaves; `samples` of them per group (the
    first dimension is `len(chunk.groups) * samples`, group after group).
    """

    samples: int = 1
    """Rows per group in the optimised tensors."""

    @abc.abstractmethod
    def start(self, chunk: Chunk, device: torch.device) -> list[Tensor]:
        """The leaves to optimise (requires_grad set), drawn from the chunk's streams."""

    @abc.abstractmethod
    def optimizer(self, leaves: list[Tensor]) -> torch.optim.Optimizer: ...

    @abc.abstractmethod
    def loss(self, leaves: list[Tensor], chunk: Chunk, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(total loss to differentiate, per-row loss, per-row target confidence); `y` holds
        each row's class."""

    def project(self, leaves: list[Tensor]) -> None:
        """In-place projection after every step (a clamp); none by default."""
        return None

    @abc.abstractmethod
    def finish(
        self, leaves: list[Tensor], chunk: Chunk, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(images, their classes, their restart indices) for the chunk, images on any device."""


def dtype_of(module: nn.Module) -> torch.dtype:
    """The floating dtype of a module's parameters (float32 unless a test runs in float64)."""
    return next((t.dtype for t in module.parameters() if t.is_floating_point()), torch.float32)


def group_stream(seed: int, attack: str, group: Group) -> torch.Generator:
    """The random stream of one (class, restart) group: the same draws however it is batched."""
    return seeds.generator(seed, "attack", attack, "search", group.target_class, group.restart)


def pack_units(
    units: Sequence[Sequence[Group]], rows_per_group: int, max_batch: int
) -> list[list[list[Group]]]:
    """Pack whole units into chunks of at most `max_batch` rows (a unit alone may exceed it)."""
    chunks: list[list[list[Group]]] = []
    rows = 0
    for unit in units:
        size = len(unit) * rows_per_group
        if chunks and rows + size <= max_batch:
            chunks[-1].append(list(unit))
            rows += size
        else:
            chunks.append([list(unit)])
            rows = size
    return chunks


def shard_batches(
    shard: AttackShard, units: Sequence[Sequence[Group]], rows_per_group: int, max_batch: int, attack: str
) -> range:
    """The forward batches (indices into `pack_units`) that `shard` runs; a one-line error when
    the search has fewer batches than shards (it could not be split exactly)."""
    batches = len(pack_units(units, rows_per_group, max_batch))
    if shard.count > batches and not shard.may_be_empty:
        rows = sum(len(unit) for unit in units) * rows_per_group

        def splits(size: int) -> bool:
            return len(pack_units(units, rows_per_group, size)) >= shard.count

        fits = max(1, min(max_batch - 1, rows // shard.count))  # then the largest max_batch that splits
        while fits > 1 and not splits(fits):
            fits -= 1
        while fits + 1 < max_batch and splits(fits + 1):
            fits += 1
        enough = splits(fits)
        advice = (
            f"set max_batch = {fits} or lower, or shards = {batches}"
            if enough
            else f"it has only {len(units)} independent units, so at most shards = {len(units)}"
        )
        raise WorkbenchError(
            f"attack {attack!r}: shards = {shard.count} cannot split its search exactly: its {rows} latents "
            f"make {batches} forward batch{'es' if batches != 1 else ''} of max_batch = {max_batch}; {advice}"
        )
    return shard.part(batches)


def search(
    ctx: AttackContext,
    problem: SearchProblem,
    units: Sequence[Sequence[Group]],
    *,
    attack: str,
    iterations: int,
    max_batch: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run `problem` over all `units` (lists of groups searched together, usually one group
    each); returns (images on CPU in [0, 1], targets, restarts, each image's final target
    confidence).

    Progress events go out under stage `attack:<name>`, at most 20 per class; a non-finite
    loss (at a reported step) or reconstruction ends the attack with a one-line error. With
    `ctx.shard` set, only that shard's forward batches run (each exactly as in the whole search).
    """
    device = torch.device(ctx.device)
    stage = f"attack:{attack}"
    packed = pack_units(units, problem.samples, max_batch)
    selected = range(len(packed))
    shard = getattr(ctx, "shard", None)
    if shard is not None:
        selected = shard_batches(shard, units, problem.samples, max_batch, attack)
    reports = report_steps(iterations, len(packed))
    total = iterations * len(packed)
    images, targets, restarts, confidences = [], [], [], []
    for index, unit_list in enumerate(packed):
        if index not in selected:
            continue
        groups = [g for unit in unit_list for g in unit]
        chunk = Chunk(
            groups, [group_stream(ctx.seed, attack, g) for g in groups], [len(u) for u in unit_list]
        )
        leaves = problem.start(chunk, device)
        y = torch.tensor([g.target_class for g in groups for _ in range(problem.samples)], device=device)
        optimizer = problem.optimizer(leaves)
        for step in range(1, iterations + 1):
            total_loss, row_loss, row_confidence = problem.loss(leaves, chunk, y)
            grads = torch.autograd.grad(total_loss, leaves)
            for leaf, grad in zip(leaves, grads, strict=True):
                leaf.grad = grad
            optimizer.step()
            problem.project(leaves)
            if step in reports:
                check_finite(
                    total_loss.detach(),
                    attack=attack,
                    stage=stage,
                    what=f"the search loss at step {step}",
                    hint="the latent search diverged; lower lr or lambda_id",
                )
                n = len(groups)
                emit_progress(
                    ctx,
                    stage,
                    step=index * iterations + step,
                    total=total,
                    chunk=groups,
                    group_loss=row_loss.detach().view(n, -1).mean(dim=1),
                    group_confidence=row_confidence.detach().view(n, -1).mean(dim=1),
                )
        with torch.no_grad():
            final, final_targets, final_restarts = problem.finish(leaves, chunk, device)
            check_finite(
                final,
                attack=attack,
                stage=stage,
                what="a reconstruction",
                hint="the latent search or its prior diverged",
            )
            logits = ctx.target(final)
            confidences.append(
                logits.float().softmax(1).gather(1, final_targets.to(device)[:, None])[:, 0].cpu()
            )
        images.append(final.detach().cpu())
        targets.append(final_targets.cpu())
        restarts.append(final_restarts.cpu())
    if not images:  # the pass before the shards, which searches nothing
        return (
            torch.empty(0),
            torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long),
            torch.empty(0),
        )
    return (
        torch.cat(images).clamp(0, 1),
        torch.cat(targets).long(),
        torch.cat(restarts).long(),
        torch.cat(confidences),
    )


def result(
    images: Tensor, targets: Tensor, restarts: Tensor, confidences: Tensor, **figures: float
) -> AttackResult:
    """The attack's result; `target_confidence` is the mean of the per-image `confidences`."""
    return AttackResult(
        images=images,
        targets=targets,
        restarts=restarts,
        figures={"target_confidence": float(confidences.mean()), **figures},
        confidences=confidences,
    )


# ---------------------------------------------------------------- shards


def merge_shards(prepared: AttackResult, parts: Sequence[AttackResult]) -> AttackResult:
    """The whole search's result from its shards' (in shard order) and the figures of the pass
    before them (which trained or loaded the priors: `gan_cached`...): the rows concatenate into
    the unsharded rows, so the mean target confidence is recomputed over the same tensor."""
    missing = [i for i, part in enumerate(parts) if part.confidences is None or part.restarts is None]
    if missing:
        raise WorkbenchError(f"shards {missing} hold no per-image confidences or restarts; run them again")
    figures = {k: v for k, v in prepared.figures.items() if k != "target_confidence"}
    return result(
        torch.cat([part.images for part in parts]),
        torch.cat([part.targets for part in parts]),
        torch.cat([part.restarts for part in parts]),  # type: ignore[misc]
        torch.cat([part.confidences for part in parts]),  # type: ignore[misc]
        **figures,
    )


class ShardableSearch:
    """Mixin for an attack whose `run` trains its priors, then calls `search` once and returns
    `result(...)`: it honours `ctx.shard`, and its shards merge exactly (`merge_shards`)."""

    capabilities = AttackCapabilities(shards=True)

    def merge_shards(self, prepared: AttackResult, parts: Sequence[AttackResult]) -> AttackResult:
        return merge_shards(prepared, parts)

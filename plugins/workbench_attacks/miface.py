"""MI-Face (Fredrikson et al., CCS 2015): gradient steps on the input itself, no generator.

Start from a flat image (zeros, grey or uniform noise, plus a little Gaussian noise so restarts
differ), and push the target's prediction toward class y under an optional total-variation and
L2 prior, clamping pixels to [0, 1] after every step. It needs no public data, which makes it
the baseline that shows how much a GAN prior adds.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from workbench.api import AttackContext, AttackResult, Count, Steps
from workbench.attack_toolkit import (
    Chunk,
    Group,
    SearchBudget,
    SearchProblem,
    ShardableSearch,
    dtype_of,
    make_groups,
    resolve_classes,
    result,
    search,
)


class MIFaceParams(SearchBudget):
    """MI-Face's budget (the paper runs plain gradient descent for up to 5000 steps)."""

    iterations: Steps = 300
    """Gradient steps per restart (paper: up to 5000, stopping early when the loss stalls)."""
    lr: float = Field(0.05, gt=0)
    """Adam step size in pixel units. Adam, not the paper's plain descent, so the step size does
    not depend on the target's logit scale."""
    restarts: Count = 2
    """Independent restarts per class (different start noise)."""
    samples_per_class: Count = 8
    """Images optimised together per class and restart."""
    loss: Literal["ce", "one-minus-prob"] = "ce"
    """`ce`: -log softmax_y (keeps a gradient when the class is far off); `one-minus-prob`:
    Fredrikson's 1 - softmax_y."""
    init: Literal["zeros", "grey", "uniform"] = "grey"
    """Starting image: all zeros (the paper), mid-grey 0.5, or uniform noise."""
    init_noise: float = Field(0.1, ge=0)
    """Std of Gaussian noise added to the start so restarts and samples differ (0: all identical)."""
    tv_weight: float = Field(0.0, ge=0)
    """Weight of the total-variation prior (mean absolute difference of neighbouring pixels)."""
    l2_weight: float = Field(0.0, ge=0)
    """Weight of the L2 prior (mean squared pixel value)."""
    lambda_id: float = Field(1.0, ge=0)
    """Weight of the class loss against the TV and L2 priors (1: the priors' weights are
    relative to it)."""


def total_variation(x: Tensor) -> Tensor:
    """Per-image mean absolute difference between vertically and horizontally adjacent pixels."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(dim=1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(dim=1)
    return dh + dw


class MIFace(ShardableSearch):
    """MI-Face: optimise the pixels directly toward the target class."""

    name = "mi-face"

    def __init__(self, params: MIFaceParams):
        self.params = params

    def start(self, n: int, shape: tuple[int, ...], stream: torch.Generator) -> Tensor:
        p = self.params
        if p.init == "uniform":
            x = torch.rand(n, *shape, generator=stream)
        else:
            x = torch.full((n, *shape), 0.0 if p.init == "zeros" else 0.5)
        if p.init_noise > 0:
            x = x + p.init_noise * torch.randn(n, *shape, generator=stream)
        return x.clamp(0, 1)

    def class_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.params.loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return 1 - logits.softmax(dim=1).gather(1, y[:, None])[:, 0]

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        units: list[list[Group]] = [[g] for g in make_groups(classes, p.restarts)]
        problem = MIFaceSearch(self, ctx)
        images, targets, restarts, confidence = search(
            ctx, problem, units, attack=self.name, iterations=p.iterations, max_batch=p.max_batch
        )
        return result(images, targets, restarts, confidence)


class MIFaceSearch(SearchProblem):
    """Adam on the pixels of each (class, restart) group, clamped to [0, 1] after every step."""

    def __init__(self, attack: MIFace, ctx: AttackContext):
        self.attack, self.p, self.target = attack, attack.params, ctx.target
        self.samples = self.p.samples_per_class
        self.shape = (ctx.data.in_channels, ctx.data.image_size, ctx.data.image_size)

    def start(self, chunk: Chunk, device: torch.device) -> list[Tensor]:
        x = torch.cat([self.attack.start(self.samples, self.shape, s) for s in chunk.streams])
        return [x.to(device, dtype_of(self.target)).requires_grad_(True)]

    def optimizer(self, leaves: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(leaves, lr=self.p.lr)

    def loss(self, leaves: list[Tensor], chunk: Chunk, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = leaves[0]
        logits = self.target(x)
        per_sample = self.p.lambda_id * self.attack.class_loss(logits, y)
        if self.p.tv_weight:
            per_sample = per_sample + self.p.tv_weight * total_variation(x)
        if self.p.l2_weight:
            per_sample = per_sample + self.p.l2_weight * x.pow(2).flatten(1).mean(dim=1)
        confidence = logits.detach().softmax(dim=1).gather(1, y[:, None])[:, 0]
        # Each group's loss is its mean (Adam makes the scale irrelevant), summed over groups.
        return per_sample.sum() / self.samples, per_sample, confidence

    def project(self, leaves: list[Tensor]) -> None:
        with torch.no_grad():
            leaves[0].clamp_(0, 1)

    def finish(
        self, leaves: list[Tensor], chunk: Chunk, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        targets = torch.tensor([g.target_class for g in chunk.groups for _ in range(self.samples)])
        restarts = torch.tensor([g.restart for g in chunk.groups for _ in range(self.samples)])
        return leaves[0].detach(), targets, restarts

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

from workbench.api import AttackContext, AttackResult, StrictModel
from workbench_attacks.common import (
    chunk_groups,
    cpu_generator,
    emit_progress,
    flatten_result_order,
    input_gradient,
    make_groups,
    per_group_mean,
    report_steps,
    resolve_classes,
    target_confidence,
)


class MIFaceParams(StrictModel):
    """MI-Face's budget (the paper runs plain gradient descent for up to 5000 steps)."""

    iterations: int = Field(300, ge=1)
    """Gradient steps per restart (paper: up to 5000, stopping early when the loss stalls)."""
    lr: float = Field(0.05, gt=0)
    """Adam step size in pixel units. Adam, not the paper's plain descent, so the step size does
    not depend on the target's logit scale."""
    restarts: int = Field(2, ge=1)
    """Independent restarts per class (different start noise)."""
    samples_per_class: int = Field(8, ge=1)
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
    classes: list[int] | None = None
    """Private classes to attack (default: all of them)."""
    first_classes: int | None = Field(None, ge=1)
    """Attack only the first N private classes (the papers attack identities 0-299 of CelebA's
    1000); ignored when `classes` is set."""
    max_batch: int = Field(256, ge=1)
    """Images per forward pass; results do not depend on it, only speed and memory do."""


def total_variation(x: Tensor) -> Tensor:
    """Per-image mean absolute difference between vertically and horizontally adjacent pixels."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(dim=1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(dim=1)
    return dh + dw


class MIFace:
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
        device = torch.device(ctx.device)
        shape = (ctx.data.in_channels, ctx.data.image_size, ctx.data.image_size)
        spc = p.samples_per_class
        groups = make_groups(classes, p.restarts)
        chunks = chunk_groups(groups, spc, p.max_batch)
        reports = report_steps(p.iterations, len(chunks))
        total = p.iterations * len(chunks)
        images, confidences = [], []
        for chunk_index, chunk in enumerate(chunks):
            x = (
                torch.cat(
                    [
                        self.start(spc, shape, cpu_generator(ctx.seed, self.name, g.restart, g.target_class))
                        for g in chunk
                    ]
                )
                .to(device)
                .requires_grad_(True)
            )
            y = torch.tensor([g.target_class for g in chunk for _ in range(spc)], device=device)
            optimizer = torch.optim.Adam([x], lr=p.lr)
            for step in range(1, p.iterations + 1):
                logits = ctx.target(x)
                per_sample = self.class_loss(logits, y)
                if p.tv_weight:
                    per_sample = per_sample + p.tv_weight * total_variation(x)
                if p.l2_weight:
                    per_sample = per_sample + p.l2_weight * x.pow(2).flatten(1).mean(dim=1)
                group_loss = per_group_mean(per_sample, len(chunk), spc)
                x.grad = input_gradient(group_loss.sum(), x)
                optimizer.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
                if step in reports:
                    emit_progress(
                        ctx,
                        "attack:mi-face",
                        step=chunk_index * p.iterations + step,
                        total=total,
                        chunk=chunk,
                        group_loss=group_loss.detach(),
                        group_confidence=per_group_mean(target_confidence(logits, y), len(chunk), spc),
                    )
            final = x.detach()
            with torch.no_grad():
                confidences.append(target_confidence(ctx.target(final), y).cpu())
            images.append(final.cpu())
        targets, restarts = flatten_result_order(groups, spc)
        return AttackResult(
            images=torch.cat(images),
            targets=targets,
            restarts=restarts,
            figures={"target_confidence": float(torch.cat(confidences).mean())},
        )

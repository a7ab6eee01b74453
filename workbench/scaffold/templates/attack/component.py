"""Gradient descent on the pixels.

A workbench attack component, registered as `__NAME__` (package __DIST__).

Like MI-Face without priors: each image starts as seeded noise and moves, by Adam steps, toward
a higher target probability of its class, clamped to [0, 1]. An attack with a target-independent
prior (a GAN on the public data) would also have `prepare(ctx)`, called once per run with
`ctx.target = None`, and keep the prior in `ctx.cache`.

Every attack declares what it may see of the target (`AttackCapabilities(access=...)`). This one is
`white-box`: it reads `ctx.target` and back-propagates through it. A `black-box` attack gets
`ctx.target = None` and only `ctx.oracle.probabilities(x)`; a `label-only` one only
`ctx.oracle.labels(x)`. The oracle counts every image sent (`queries` in the results) and enforces
the optional `query_budget` its params get from the `QueryBudget` mixin (docs/plugins.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from workbench.api import (
    AttackCapabilities,
    AttackContext,
    AttackResult,
    StrictModel,
    hookimpl,
)


class ExampleParams(StrictModel):
    steps: int = Field(100, ge=1)
    """Adam steps per image."""
    lr: float = Field(0.05, gt=0)
    """Adam step size, in pixel units."""
    per_class: int = Field(4, ge=1)
    """Reconstructions per private class."""


class ExampleAttack:
    """Reconstructions of every private class, `per_class` each."""

    capabilities = AttackCapabilities(access="white-box")  # it back-propagates through ctx.target

    def __init__(self, params: ExampleParams):
        self.params = params

    def run(self, ctx: AttackContext) -> AttackResult:
        p, data = self.params, ctx.data
        targets = torch.arange(data.num_classes).repeat_interleave(p.per_class)
        generator = torch.Generator().manual_seed(ctx.seed)
        shape = (len(targets), data.in_channels, data.image_size, data.image_size)
        x = torch.rand(shape, generator=generator).to(ctx.device).requires_grad_(True)
        y = targets.to(ctx.device)
        optimizer = torch.optim.Adam([x], lr=p.lr)
        for step in range(1, p.steps + 1):
            loss = F.cross_entropy(ctx.target(x).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            if step % 25 == 0 or step == p.steps:
                ctx.emit("progress", stage="attack:__NAME__", step=step, total=p.steps,
                         loss=float(loss.detach()))
        with torch.no_grad():
            confidence = ctx.target(x).float().softmax(1).gather(1, y[:, None]).mean()
        figures = {"confidence": float(confidence)}  # mean target probability of the reconstructions
        return AttackResult(images=x.detach().cpu(), targets=targets, figures=figures)


@hookimpl
def register_attacks(register):
    register("__NAME__", ExampleAttack, params=ExampleParams,
             summary="Example attack: gradient descent on pixels.")

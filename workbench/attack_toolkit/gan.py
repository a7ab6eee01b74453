"""GAN priors: the budget fields, one training skeleton, and their cached training.

- `GANBudget`: the param fields every GAN prior shares (GMI's WGAN-GP, KED-MI's K+1 GAN).
- `train_gan`: Adam for both players, `critic_iters` discriminator steps per generator step,
  progress, a stop on non-finite losses; data parallel under torchrun.
- `load_or_train`: a prior from the stage cache, or trained and stored (`gan_config` is the
  shared part of its key, with `NETWORKS_REVISION`); `freeze` for a prior only searched through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from workbench.api import AttackContext, StrictModel, average_gradients, in_data_parallel, world_size
from workbench.attack_toolkit.plumbing import check_finite, report_steps, stage_cache


class GANBudget(StrictModel):
    """The fields every GAN prior shares (GMI's WGAN-GP, KED-MI's K+1 GAN)."""

    z_dim: int = Field(100, ge=1)
    """Latent size of the generator (reference 100: GMI `Celeba/attack.py:34`, DefendMI
    `GMI/generator.py`, KEDMI `attack.py:50`)."""
    gan_width: int = Field(16, ge=4)
    """Generator/discriminator channels at full resolution, doubling per halving up to 8x
    (reference 64: DefendMI `GMI/generator.py:5-59`, `DMI/discri.py`). Digits: 16 (a CPU
    deviation)."""
    gan_steps: int = Field(150, ge=1)
    """Generator updates. Reference: epochs over the public data with a generator step every
    5th batch: WGAN-GP 300 epochs (DefendMI `GMI/config/*.json`), K+1 GAN 100 epochs (DefendMI
    `DMI/config/{celeba,mnist}.json`; KED-MI authors 120), i.e. tens of thousands of steps on
    CelebA. Digits: 100-150 (a CPU deviation)."""
    gan_batch_size: int = Field(64, ge=2)
    """Public images per GAN step (reference 64, every config)."""
    gan_lr: float = Field(1e-3, gt=0)
    """Adam learning rate of both players, betas (0.5, 0.999). Reference 2e-4 on CelebA
    (DefendMI `GMI/config/celeba.json`, `DMI/config/celeba.json`), 4e-3 for the MNIST WGAN-GP
    (`GMI/config/mnist.json`). Digits: 1e-3 (a deviation: short budgets need a larger step)."""
    critic_iters: int = Field(5, ge=1)
    """Discriminator updates per generator update (reference 5: `n_critic`, DefendMI
    `GMI/train_gan.py:80-116`, KEDMI `k+1_gan.py:159`)."""


# ---------------------------------------------------------------- GAN training


def train_gan(
    generator: nn.Module,
    discriminator: nn.Module,
    budget: GANBudget,
    *,
    d_loss: Callable[[], Tensor],
    g_loss: Callable[[], Tensor],
    attack: str,
    stage: str,
    on_progress: Callable[..., None] | None = None,
    betas: tuple[float, float] = (0.5, 0.999),
) -> dict[str, float]:
    """Train both players in place: per generator step, `critic_iters` discriminator steps.

    `d_loss()` / `g_loss()` draw their own batches (from the caller's generator) and return the
    loss to minimise for that player. Adam with betas (0.5, 0.999) for both (every reference).
    A non-finite loss stops training with a one-line error (the prior is then never cached).
    `betas`: Adam's for both players ((0.0, 0.9) for PLG-MI's hinge cGAN).

    Data parallel (every rank in `training_together`): the losses draw the same global batch on
    every rank and run their networks through `split_forward`; gradients are averaged here.
    """
    g_opt = torch.optim.Adam(generator.parameters(), lr=budget.gan_lr, betas=betas)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=budget.gan_lr, betas=betas)
    generator.train()
    discriminator.train()
    reports = report_steps(budget.gan_steps, 1)
    loss_d = loss_g = torch.zeros(())
    for step in range(1, budget.gan_steps + 1):
        for _ in range(budget.critic_iters):
            loss_d = d_loss()
            d_opt.zero_grad(set_to_none=True)
            loss_d.backward()
            average_gradients(discriminator)  # under torchrun: the mean over the ranks
            d_opt.step()
        loss_g = g_loss()
        g_opt.zero_grad(set_to_none=True)
        loss_g.backward()
        average_gradients(generator)
        g_opt.step()
        if step in reports:
            both = torch.stack([loss_d.detach(), loss_g.detach()])
            check_finite(
                both,
                attack=attack,
                stage=stage,
                what=f"the GAN loss at step {step}",
                hint="the prior diverged and is not cached; lower gan_lr or change the seed",
            )
            if on_progress is not None:
                on_progress(step=step, total=budget.gan_steps, loss_d=float(both[0]), loss_g=float(both[1]))
    generator.eval()
    discriminator.eval()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


GAN_FIELDS = ("z_dim", "gan_width", "gan_steps", "gan_batch_size", "gan_lr", "critic_iters")
"""The params every GAN prior shares (`GANBudget`); each attack adds its own to its key."""


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

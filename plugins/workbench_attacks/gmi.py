"""GMI, the generative model-inversion attack (Zhang et al., CVPR 2020).

1. Train a WGAN-GP on the attacker's public data. It does not depend on the target, so it is
   cached by its config and a fingerprint of the public data: every variant of a run (and
   every later run) reuses it.
2. Per private class y, search the latent space: minimise `-D(G(z)) + λ·CE(T(G(z)), y)` with
   Nesterov-momentum SGD (the authors' update, lr 0.02, momentum 0.9), clamping z to [-1, 1]
   after each step; several random restarts, each optimising `samples_per_class` latents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import AttackContext, AttackResult, StrictModel
from workbench_attacks.common import (
    GAN_MEMORY_FORMAT,
    ImagePool,
    chunk_groups,
    cpu_generator,
    emit_progress,
    flatten_result_order,
    gan_config,
    input_gradient,
    load_or_train,
    make_groups,
    per_group_mean,
    public_pool,
    report_steps,
    resolve_classes,
    seeded,
    target_confidence,
)
from workbench_attacks.networks import Critic, Generator


class GMIParams(StrictModel):
    """GMI's budget. Defaults fit the embedded digits (16 px) on a 2-core CPU; the field docs
    give the paper's budget."""

    z_dim: int = Field(100, ge=1)
    """Latent size of the generator (paper: 100)."""
    gan_width: int = Field(16, ge=4)
    """Generator/critic channels at full resolution, doubling per halving up to 8x (paper: 64)."""
    gan_steps: int = Field(150, ge=1)
    """Generator updates of the WGAN-GP (paper budget: GMI trains hundreds of epochs, tens of
    thousands of generator steps; the digits prototype used 3000)."""
    gan_batch_size: int = Field(64, ge=2)
    """Public images per GAN step (paper: 64)."""
    gan_lr: float = Field(1e-3, gt=0)
    """Adam learning rate of generator and critic, betas (0.5, 0.999) (paper code: 4e-3 on
    MNIST; 2e-4 is the safer choice for long runs)."""
    critic_iters: int = Field(5, ge=1)
    """Critic updates per generator update (paper: 5)."""
    gp_weight: float = Field(10.0, ge=0)
    """Weight of the WGAN-GP gradient penalty (paper: 10)."""
    iterations: int = Field(200, ge=1)
    """Latent-search steps per restart (paper: 2000-3000)."""
    restarts: int = Field(2, ge=1)
    """Random restarts per class; attack accuracy is reported as mean ± std over them (paper: 5)."""
    samples_per_class: int = Field(8, ge=1)
    """Latents optimised together per class and restart (paper: 1 per identity per restart;
    more samples make the accuracy estimate less noisy)."""
    lambda_id: float = Field(100.0, ge=0)
    """Weight λ of the identity loss CE(T(G(z)), y) against the prior -D(G(z)) (paper: 100)."""
    lr: float = Field(0.02, gt=0)
    """Latent-search learning rate (paper: 0.02)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """Nesterov momentum of the latent search (paper: 0.9)."""
    z_clip: float = Field(1.0, gt=0)
    """Latents are clamped to [-z_clip, z_clip] after every step (paper: 1)."""
    classes: list[int] | None = None
    """Private classes to attack (default: all of them)."""
    first_classes: int | None = Field(None, ge=1)
    """Attack only the first N private classes (the papers attack identities 0-299 of CelebA's
    1000); ignored when `classes` is set."""
    max_batch: int = Field(256, ge=1)
    """Latents per forward pass; classes and restarts are grouped up to this many. Results do
    not depend on it (each group's loss is its own mean), only speed and memory do."""


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """WGAN-GP: mean of (‖∇D(x̂)‖₂ − 1)² on points x̂ between real and fake images."""
    mixed = (real + alpha.view(-1, 1, 1, 1) * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def train_wgan_gp(
    generator: Generator,
    critic: Critic,
    pool: ImagePool,
    params: GMIParams,
    *,
    device: torch.device,
    rng: torch.Generator,
    on_progress=None,
) -> dict[str, float]:
    """Train G and D in place on the public images; returns the final losses."""
    g_opt = torch.optim.Adam(generator.parameters(), lr=params.gan_lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(critic.parameters(), lr=params.gan_lr, betas=(0.5, 0.999))
    generator.train()
    critic.train()
    n = params.gan_batch_size
    reports = report_steps(params.gan_steps, 1)
    d_loss = g_loss = torch.zeros(())
    for step in range(1, params.gan_steps + 1):
        for _ in range(params.critic_iters):
            real = pool.sample(n, rng, device)
            z = torch.randn(n, params.z_dim, generator=rng).to(device)
            alpha = torch.rand(n, generator=rng).to(device)
            with torch.no_grad():
                fake = generator(z)
            wasserstein = critic(fake).mean() - critic(real).mean()
            d_loss = wasserstein + params.gp_weight * gradient_penalty(critic, real, fake, alpha)
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
        z = torch.randn(n, params.z_dim, generator=rng).to(device)
        g_loss = -critic(generator(z)).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        if on_progress is not None and step in reports:
            on_progress(step=step, total=params.gan_steps, loss_d=d_loss.item(), loss_g=g_loss.item())
    generator.eval()
    critic.eval()
    return {"loss_d": d_loss.item(), "loss_g": g_loss.item()}


class GMI:
    """GMI: WGAN-GP prior on public data, then a per-class latent search against the target."""

    name = "gmi"

    def __init__(self, params: GMIParams):
        self.params = params

    def gan_key(self, pool: ImagePool, seed: int) -> dict:
        return {"gan": gan_config(self.params, "gp_weight"), "public": pool.fingerprint(), "seed": seed}

    def prior(self, ctx: AttackContext, pool: ImagePool) -> tuple[Generator, Critic, bool]:
        """The trained (or cached) generator and critic, frozen; and whether the cache hit."""
        p = self.params
        device = torch.device(ctx.device)
        with seeded(ctx.seed, device):
            generator = Generator(p.z_dim, ctx.data.in_channels, ctx.data.image_size, p.gan_width)
            critic = Critic(ctx.data.in_channels, ctx.data.image_size, p.gan_width)
        for network in (generator, critic):
            network.to(device, memory_format=GAN_MEMORY_FORMAT)

        def train() -> dict[str, float]:
            return train_wgan_gp(
                generator,
                critic,
                pool,
                p,
                device=device,
                rng=cpu_generator(ctx.seed, "gmi-gan"),
                on_progress=lambda **f: ctx.emit("progress", stage="attack:gmi:gan", **f),
            )

        networks = {"generator": generator, "critic": critic}
        hit = load_or_train(ctx, self.name, "gmi-gan", self.gan_key(pool, ctx.seed), networks, train)
        return generator, critic, hit

    def prepare(self, ctx: AttackContext) -> None:
        """Train (or load) the target-independent prior once, before any variant is attacked.

        The runner calls this before the variants start (beside the evaluation model, in a worker
        process when it has several), so every variant finds the GAN in the stage cache instead
        of each training it.
        """
        self.prior(ctx, public_pool(ctx, self.name))

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        pool = public_pool(ctx, self.name)
        generator, critic, hit = self.prior(ctx, pool)
        device = torch.device(ctx.device)
        spc = p.samples_per_class
        groups = make_groups(classes, p.restarts)
        chunks = chunk_groups(groups, spc, p.max_batch)
        reports = report_steps(p.iterations, len(chunks))
        total = p.iterations * len(chunks)
        images, confidences = [], []
        for chunk_index, chunk in enumerate(chunks):
            # Each (class, restart) draws its start from its own stream: a class's result does
            # not depend on which other classes are attacked or how they are batched.
            z = (
                torch.cat(
                    [
                        torch.randn(
                            spc,
                            p.z_dim,
                            generator=cpu_generator(ctx.seed, self.name, g.restart, g.target_class),
                        )
                        for g in chunk
                    ]
                )
                .to(device)
                .requires_grad_(True)
            )
            y = torch.tensor([g.target_class for g in chunk for _ in range(spc)], device=device)
            optimizer = torch.optim.SGD([z], lr=p.lr, momentum=p.momentum, nesterov=True)
            for step in range(1, p.iterations + 1):
                fake = generator(z)
                logits = ctx.target(fake)
                per_sample = -critic(fake) + p.lambda_id * F.cross_entropy(logits, y, reduction="none")
                group_loss = per_group_mean(per_sample, len(chunk), spc)
                z.grad = input_gradient(group_loss.sum(), z)
                optimizer.step()
                with torch.no_grad():
                    z.clamp_(-p.z_clip, p.z_clip)
                if step in reports:
                    emit_progress(
                        ctx,
                        "attack:gmi",
                        step=chunk_index * p.iterations + step,
                        total=total,
                        chunk=chunk,
                        group_loss=group_loss.detach(),
                        group_confidence=per_group_mean(target_confidence(logits, y), len(chunk), spc),
                    )
            with torch.no_grad():
                final = generator(z)
                confidences.append(target_confidence(ctx.target(final), y).cpu())
            images.append(final.cpu())
        targets, restarts = flatten_result_order(groups, spc)
        return AttackResult(
            images=torch.cat(images).clamp(0, 1),
            targets=targets,
            restarts=restarts,
            figures={"target_confidence": float(torch.cat(confidences).mean()), "gan_cached": float(hit)},
        )

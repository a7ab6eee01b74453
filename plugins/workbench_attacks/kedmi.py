"""KED-MI, the knowledge-enriched distributional attack (Chen et al., ICCV 2021).

1. Train a GAN *per target* on public data: the discriminator has K class outputs trained on
   the target's soft labels, and its realness is the "+1" class through logsumexp
   (`D(x) = σ(logsumexp(logits))`); the generator learns by feature matching. The GAN depends
   on the target, so its cache key holds a hash of the target's weights as well.
2. Per private class y, fit a Gaussian over the latent space (μ, log σ²), starting at N(0, I)
   as the authors do, with Adam (lr 0.02) on `prior + λ·CE(T(G(μ + σ·ε)), y)`, where the prior is
   `-log D(G(z))`; at the end draw `samples_per_class` latents from it per restart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from workbench.api import AttackContext, AttackResult, StrictModel, weights_fingerprint
from workbench_attacks.common import (
    GAN_MEMORY_FORMAT,
    ImagePool,
    chunk_groups,
    cpu_generator,
    emit_progress,
    flatten_result_order,
    gan_config,
    load_or_train,
    make_groups,
    public_pool,
    report_steps,
    resolve_classes,
    seeded,
    target_confidence,
)
from workbench_attacks.networks import ClassDiscriminator, Generator


class KEDMIParams(StrictModel):
    """KED-MI's budget. Defaults fit the embedded digits (16 px) on a 2-core CPU; the field docs
    give the paper's budget."""

    z_dim: int = Field(100, ge=1)
    """Latent size of the generator (paper: 100)."""
    gan_width: int = Field(16, ge=4)
    """Generator/discriminator channels at full resolution, doubling per halving up to 8x (paper: 64)."""
    gan_steps: int = Field(150, ge=1)
    """Generator updates (paper budget: 100 epochs over the public data with 5 discriminator
    steps per generator step, tens of thousands of steps)."""
    gan_batch_size: int = Field(64, ge=2)
    """Public images per GAN step (paper: 64)."""
    gan_lr: float = Field(1e-3, gt=0)
    """Adam learning rate of generator and discriminator, betas (0.5, 0.999) (paper: 2e-4)."""
    critic_iters: int = Field(5, ge=1)
    """Discriminator updates per generator update (paper: 5)."""
    entropy_weight: float = Field(1e-4, ge=0)
    """Weight of the entropy of D's class prediction on generated images in G's loss (paper: 1e-4)."""
    iterations: int = Field(300, ge=1)
    """Steps of the distributional latent search per restart (paper: 1500-5000)."""
    restarts: int = Field(2, ge=1)
    """Independent searches per class; attack accuracy is reported as mean ± std over them (paper: 5)."""
    samples_per_class: int = Field(8, ge=1)
    """Latents drawn from each class's fitted distribution per restart (paper: 5 on CelebA, 100 on MNIST)."""
    lambda_id: float = Field(100.0, ge=0)
    """Weight λ of the identity loss CE(T(G(z)), y) against the prior (paper: 100)."""
    lr: float = Field(0.02, gt=0)
    """Adam learning rate of μ and log σ² (paper: 0.02)."""
    classes: list[int] | None = None
    """Private classes to attack (default: all of them)."""
    first_classes: int | None = Field(None, ge=1)
    """Attack only the first N private classes (the papers attack identities 0-299 of CelebA's
    1000); ignored when `classes` is set."""
    max_batch: int = Field(256, ge=1)
    """Searches per forward pass; classes and restarts are grouped up to this many. Results do
    not depend on it, only speed and memory do."""


def realness_logit(class_logits: Tensor) -> Tensor:
    """The "+1" construction: D(x) = σ(logsumexp(logits)), so this is D's logit of 'real'."""
    return torch.logsumexp(class_logits, dim=1)


def train_kplus1_gan(
    generator: Generator,
    discriminator: ClassDiscriminator,
    target: torch.nn.Module,
    pool: ImagePool,
    params: KEDMIParams,
    *,
    device: torch.device,
    rng: torch.Generator,
    on_progress=None,
) -> dict[str, float]:
    """Train G and D in place with the target's soft labels on public data; final losses out."""
    g_opt = torch.optim.Adam(generator.parameters(), lr=params.gan_lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=params.gan_lr, betas=(0.5, 0.999))
    generator.train()
    discriminator.train()
    n = params.gan_batch_size
    reports = report_steps(params.gan_steps, 1)
    d_loss = g_loss = torch.zeros(())
    for step in range(1, params.gan_steps + 1):
        for _ in range(params.critic_iters):
            labelled = pool.sample(n, rng, device)
            unlabelled = pool.sample(n, rng, device)
            z = torch.randn(n, params.z_dim, generator=rng).to(device)
            with torch.no_grad():
                soft_labels = target(labelled).softmax(dim=1)
                fake = generator(z)
            _, logits_labelled = discriminator(labelled)
            _, logits_unlabelled = discriminator(unlabelled)
            _, logits_fake = discriminator(fake)
            # Distil the target into D's K classes ...
            loss_soft = -(soft_labels * logits_labelled.log_softmax(dim=1)).sum(dim=1).mean()
            # ... and tell real from fake through the "+1" class: -log D(real) - log(1 - D(fake)).
            real_logit, fake_logit = realness_logit(logits_unlabelled), realness_logit(logits_fake)
            loss_gan = 0.5 * (F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean())
            d_loss = loss_soft + loss_gan
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
        z = torch.randn(n, params.z_dim, generator=rng).to(device)
        features_fake, logits_fake = discriminator(generator(z))
        with torch.no_grad():
            features_real, _ = discriminator(pool.sample(n, rng, device))
        matching = (features_fake.mean(dim=0) - features_real.mean(dim=0)).abs().mean()
        probs = logits_fake.softmax(dim=1)
        entropy = -(probs * logits_fake.log_softmax(dim=1)).sum(dim=1).mean()
        g_loss = matching + params.entropy_weight * entropy
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        if on_progress is not None and step in reports:
            on_progress(step=step, total=params.gan_steps, loss_d=d_loss.item(), loss_g=g_loss.item())
    generator.eval()
    discriminator.eval()
    return {"loss_d": d_loss.item(), "loss_g": g_loss.item()}


class KEDMI:
    """KED-MI: a target-aware "K+1" GAN, then a per-class Gaussian search in its latent space."""

    name = "kedmi"

    def __init__(self, params: KEDMIParams):
        self.params = params

    def gan_key(self, pool: ImagePool, ctx: AttackContext) -> dict:
        return {
            "gan": gan_config(self.params, "entropy_weight"),
            "public": pool.fingerprint(),
            "target": weights_fingerprint(ctx.target),
            "num_classes": ctx.data.num_classes,
            "seed": ctx.seed,
        }

    def prior(self, ctx: AttackContext, pool: ImagePool) -> tuple[Generator, ClassDiscriminator, bool]:
        p = self.params
        device = torch.device(ctx.device)
        with seeded(ctx.seed, device):
            generator = Generator(p.z_dim, ctx.data.in_channels, ctx.data.image_size, p.gan_width)
            discriminator = ClassDiscriminator(
                ctx.data.in_channels, ctx.data.image_size, p.gan_width, ctx.data.num_classes
            )
        for network in (generator, discriminator):
            network.to(device, memory_format=GAN_MEMORY_FORMAT)

        def train() -> dict[str, float]:
            return train_kplus1_gan(
                generator,
                discriminator,
                ctx.target,
                pool,
                p,
                device=device,
                rng=cpu_generator(ctx.seed, "kedmi-gan"),
                on_progress=lambda **f: ctx.emit("progress", stage="attack:kedmi:gan", **f),
            )

        networks = {"generator": generator, "discriminator": discriminator}
        hit = load_or_train(ctx, self.name, "kedmi-gan", self.gan_key(pool, ctx), networks, train)
        return generator, discriminator, hit

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        pool = public_pool(ctx, self.name)
        generator, discriminator, hit = self.prior(ctx, pool)
        device = torch.device(ctx.device)
        groups = make_groups(classes, p.restarts)
        # One distribution (one latent per step) per group during the search.
        chunks = chunk_groups(groups, 1, p.max_batch)
        reports = report_steps(p.iterations, len(chunks))
        total = p.iterations * len(chunks)
        images, confidences = [], []
        for chunk_index, chunk in enumerate(chunks):
            # Each (class, restart) has its own noise stream, so results do not depend on batching.
            streams = [cpu_generator(ctx.seed, self.name, g.restart, g.target_class) for g in chunk]
            mu = torch.zeros(len(chunk), p.z_dim, device=device, requires_grad=True)
            log_var = torch.zeros(len(chunk), p.z_dim, device=device, requires_grad=True)
            y = torch.tensor([g.target_class for g in chunk], device=device)
            optimizer = torch.optim.Adam([mu, log_var], lr=p.lr)
            for step in range(1, p.iterations + 1):
                eps = torch.cat([torch.randn(1, p.z_dim, generator=s) for s in streams]).to(device)
                z = mu + (0.5 * log_var).exp() * eps
                fake = generator(z)
                _, class_logits = discriminator(fake)
                logits = ctx.target(fake)
                prior = F.softplus(-realness_logit(class_logits))  # -log D(G(z))
                group_loss = prior + p.lambda_id * F.cross_entropy(logits, y, reduction="none")
                mu.grad, log_var.grad = torch.autograd.grad(group_loss.sum(), [mu, log_var])
                optimizer.step()
                if step in reports:
                    emit_progress(
                        ctx,
                        "attack:kedmi",
                        step=chunk_index * p.iterations + step,
                        total=total,
                        chunk=chunk,
                        group_loss=group_loss.detach(),
                        group_confidence=target_confidence(logits, y),
                    )
            with torch.no_grad():
                eps = torch.cat([torch.randn(p.samples_per_class, p.z_dim, generator=s) for s in streams]).to(
                    device
                )
                z = (
                    mu.repeat_interleave(p.samples_per_class, 0)
                    + (0.5 * log_var.repeat_interleave(p.samples_per_class, 0)).exp() * eps
                )
                final = generator(z)
                labels = y.repeat_interleave(p.samples_per_class)
                confidences.append(target_confidence(ctx.target(final), labels).cpu())
            images.append(final.cpu())
        targets, restarts = flatten_result_order(groups, p.samples_per_class)
        return AttackResult(
            images=torch.cat(images).clamp(0, 1),
            targets=targets,
            restarts=restarts,
            figures={"target_confidence": float(torch.cat(confidences).mean()), "gan_cached": float(hit)},
        )

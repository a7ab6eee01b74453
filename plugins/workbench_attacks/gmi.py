"""GMI, the generative model-inversion attack (Zhang et al., CVPR 2020), as BiDO evaluates it.

1. Train a WGAN-GP on the attacker's public data. It does not depend on the target, so it is
   cached by its config and a fingerprint of the public data: every variant of a run (and
   every later run) reuses it.
2. Per private class y, search the latent space: minimise
   `Σ_latents (−D(G(z)) + λ·CE(T(G(z)), y)) / loss_batch` with Nesterov-momentum SGD (the
   authors' update, lr 0.02, momentum 0.9), clamping z to [−1, 1] after each step; several
   independent restarts, all of them evaluated (no best-of selection, as BiDO reports).

The reference loss is a mean over one forward batch of one latent per identity (B = 60 in
BiDO's CelebA protocol, 5 on MNIST: DefendMI `GMI/attack.py:53-55,197-206,319-321`), so each
latent moves with lr/B. `loss_batch` is that B as a constant: the step of a latent never
depends on how many latents share a forward pass (`max_batch`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import (
    AttackCapabilities,
    AttackContext,
    AttackResult,
    BatchSize,
    Count,
    Steps,
    seeds,
    split_forward,
)
from workbench.attack_toolkit import (
    GAN_FIELDS,
    GAN_MEMORY_FORMAT,
    Chunk,
    Critic,
    GANBudget,
    Generator,
    Group,
    ImagePool,
    SearchBudget,
    SearchProblem,
    ShardableSearch,
    dtype_of,
    gan_config,
    load_or_train,
    make_groups,
    public_pool,
    require_oracle,
    resolve_classes,
    result,
    search,
    train_gan,
)


class GMIParams(GANBudget, SearchBudget):
    """GMI's budget. Defaults fit the embedded digits (16 px) on a 2-core CPU; each field doc
    gives the reference value and where it is set (BiDO's copy: `AlanPeng0897/Defend_MI`,
    GMI's authors: `AI-secure/GMI-Attack`); see docs/attacks.md."""

    prior_seed: int | None = None
    """Seed of the GAN prior (its initialisation, training draws and cache key); unset = the run's
    seed. The prior sees only public data, so a sweep sets it once and all its runs share one prior."""
    gp_weight: float = Field(10.0, ge=0)
    """Weight of the WGAN-GP gradient penalty (reference 10: DefendMI `GMI/train_gan.py:80-116`)."""
    iterations: Steps = 200
    """Latent-search steps per restart. Reference: GMI authors 1500 (`iter_times`, both
    datasets); BiDO CelebA 2000 (DefendMI `GMI/attack.py:204`), MNIST 3000 (`--iter`,
    `GMI/attack.py:136,321`); LOMMA 2400. Digits: 200 (a CPU deviation)."""
    restarts: Count = 5
    """Independent restarts per class (fresh z and momentum), every one evaluated: top-1/top-5
    are mean ± sample std over them, no best-of selection. Reference (BiDO): 5 on CelebA
    (DefendMI `GMI/attack.py:197-213`), 100 on MNIST (`GMI/attack.py:320-321`). Digits: 5."""
    samples_per_class: Count = 8
    """Latents per class and restart. Reference: 1 per identity per restart (DefendMI
    `GMI/attack.py:197-206`). Digits: 8, which makes the accuracy estimate less noisy; with
    `loss_batch` a latent's step does not depend on it."""
    loss_batch: BatchSize = 5
    """The reference batch B the summed per-latent losses are divided by (each latent moves
    with lr/B). Reference: one latent per identity in a batch, B = 60 in BiDO's CelebA protocol
    (300 ids in blocks of 60, DefendMI `GMI/attack.py:197-206`; LOMMA the same; 100 in the GMI
    authors' CelebA script), 5 on MNIST (digits 0-4, DefendMI `GMI/attack.py:319-321`).
    Digits: 5 (the five private classes)."""
    lr: float = Field(0.02, gt=0)
    """Latent-search learning rate. Reference: 0.02 on CelebA (every script), 0.01 on MNIST
    (GMI `MNIST/attack.py:11`, DefendMI `GMI/attack.py:320`). Digits: 0.02 (a deviation for
    the 200-step budget)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """Nesterov momentum of the latent search (reference 0.9: DefendMI `GMI/attack.py:59-64`,
    written by hand; identical to torch's SGD with nesterov=True)."""
    z_clip: float = Field(1.0, gt=0)
    """Latents are clamped to [−z_clip, z_clip] after every step, not before the first
    (reference 1: GMI `Celeba/attack.py:56`, `clip_range`)."""


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """WGAN-GP per image: (‖∇D(x̂)‖₂ − 1)² at a point x̂ between its real and fake image (the
    loss takes the mean). Rows are independent, so the ranks can each take a slice."""
    mixed = (real + alpha.view(-1, 1, 1, 1) * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1) ** 2


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
    """Train G and D in place on the public images (WGAN-GP, DefendMI `GMI/train_gan.py`).

    Every rank draws the same global batch; the networks run through `split_forward`, so under
    torchrun each rank computes its slice and the losses are the global batch's."""
    n = params.gan_batch_size

    def critic_terms(real: Tensor, z: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            fake = generator(z)
        return critic(fake), critic(real), gradient_penalty(critic, real, fake, alpha)

    def d_loss() -> Tensor:
        real = pool.sample(n, rng, device)
        z = torch.randn(n, params.z_dim, generator=rng).to(device)
        alpha = torch.rand(n, generator=rng).to(device)
        on_fake, on_real, penalty = split_forward(critic_terms, real, z, alpha)
        wasserstein = on_fake.mean() - on_real.mean()
        return wasserstein + params.gp_weight * penalty.mean()

    def g_loss() -> Tensor:
        z = torch.randn(n, params.z_dim, generator=rng).to(device)
        return -split_forward(lambda z: critic(generator(z)), z).mean()

    return train_gan(
        generator,
        critic,
        params,
        d_loss=d_loss,
        g_loss=g_loss,
        attack="gmi",
        stage="attack:gmi:gan",
        on_progress=on_progress,
    )


class GMISearch(SearchProblem):
    """SGD-Nesterov on the latents of each (class, restart) group, clamped after every step."""

    def __init__(self, params: GMIParams, generator: nn.Module, critic: nn.Module, target: nn.Module):
        self.p, self.generator, self.critic, self.target = params, generator, critic, target
        self.samples = params.samples_per_class

    def start(self, chunk: Chunk, device: torch.device) -> list[Tensor]:
        z = torch.cat([torch.randn(self.samples, self.p.z_dim, generator=s) for s in chunk.streams])
        return [z.to(device, dtype_of(self.generator)).requires_grad_(True)]

    def optimizer(self, leaves: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(leaves, lr=self.p.lr, momentum=self.p.momentum, nesterov=True)

    def loss(self, leaves: list[Tensor], chunk: Chunk, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fake = self.generator(leaves[0])
        logits = self.target(fake)
        per_latent = -self.critic(fake) + self.p.lambda_id * F.cross_entropy(logits, y, reduction="none")
        confidence = logits.detach().softmax(dim=1).gather(1, y[:, None])[:, 0]
        return per_latent.sum() / self.p.loss_batch, per_latent, confidence

    def project(self, leaves: list[Tensor]) -> None:
        with torch.no_grad():
            leaves[0].clamp_(-self.p.z_clip, self.p.z_clip)

    def finish(
        self, leaves: list[Tensor], chunk: Chunk, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        targets = torch.tensor([g.target_class for g in chunk.groups for _ in range(self.samples)])
        restarts = torch.tensor([g.restart for g in chunk.groups for _ in range(self.samples)])
        return self.generator(leaves[0]), targets, restarts


class GMI(ShardableSearch):
    """GMI: WGAN-GP prior on public data, then a per-class latent search against the target."""

    name = "gmi"
    capabilities = AttackCapabilities(prepares=True, shards=True, seeded_prior=True)

    def __init__(self, params: GMIParams):
        self.params = params

    def gan_key(self, pool: ImagePool, seed: int) -> dict:
        return {"gan": gan_config(self.params, "gp_weight"), "public": pool.fingerprint(), "seed": seed}

    def prior(self, ctx: AttackContext, pool: ImagePool) -> tuple[Generator, Critic, bool]:
        """The trained (or cached) generator and critic, frozen; and whether the cache hit."""
        p = self.params
        device = torch.device(ctx.device)
        seed = ctx.seed if p.prior_seed is None else p.prior_seed
        with seeds.seeded(seed, "attack", "gmi", "init", device=device):
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
                rng=seeds.generator(seed, "attack", "gmi", "gan"),
                on_progress=lambda **f: ctx.emit("progress", stage="attack:gmi:gan", **f),
            )

        networks = {"generator": generator, "critic": critic}
        hit = load_or_train(ctx, self.name, "gmi-gan", self.gan_key(pool, seed), networks, train)
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
        generator, critic, hit = self.prior(ctx, public_pool(ctx, self.name))
        units: list[list[Group]] = [[g] for g in make_groups(classes, p.restarts)]
        problem = GMISearch(p, generator, critic, ctx.target)
        images, targets, restarts, confidence = search(
            ctx, problem, units, attack=self.name, iterations=p.iterations, max_batch=p.max_batch
        )
        return result(images, targets, restarts, confidence, gan_cached=float(hit))


class OnGMIPrior:
    """For an attack that searches GMI's prior (its params carry GMI's GAN fields, `gp_weight` and
    `prior_seed`): the prior, shared through the stage cache with `gmi` and every other such attack."""

    name: str
    params: Any

    def gmi(self) -> GMI:
        p = self.params
        fields = {k: getattr(p, k) for k in GAN_FIELDS}
        return GMI(GMIParams(**fields, gp_weight=p.gp_weight, prior_seed=p.prior_seed))

    def prior(self, ctx: AttackContext):
        """(generator, critic, whether it came from the stage cache): GMI's prior on the public data."""
        return self.gmi().prior(ctx, public_pool(ctx, self.name))

    def prepare(self, ctx: AttackContext) -> None:
        """Train (or load) GMI's prior once before the variants."""
        self.prior(ctx)

    def oracle_start(self, ctx: AttackContext) -> tuple[list[int], Generator, bool]:
        """How a black-box or label-only attack on this prior begins: (the attacked classes, GMI's
        generator, whether the prior came from the stage cache), once the run's oracle is there."""
        require_oracle(ctx, self)
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        generator, _critic, hit = self.prior(ctx)
        return classes, generator, hit

    def latent_probabilities(self, ctx: AttackContext, generator, z: Tensor,
                             batch: int | None = None) -> Tensor:
        """T's probability vectors `[n, K]` (float64, CPU) for the images of latents `z`, through the run's
        oracle (a black-box attack's only view of T), `batch` latents per query at most."""
        device, dtype = torch.device(ctx.device), dtype_of(generator)
        with torch.no_grad():
            return torch.cat([ctx.oracle.probabilities(generator(part.to(device, dtype))).double().cpu()
                              for part in (z.split(batch) if batch else [z])])


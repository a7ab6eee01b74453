"""PLG-MI, the pseudo-label-guided model-inversion attack (Yuan et al., AAAI 2023), spec/attacks.md B2.

1. Top-n pseudo-labelling (PLG `top_n_selection.py:120-183`): T's softmax over every public
   image; for each private class c, the `top_n` public images with the largest p[:, c] become
   labelled examples of c (an image may serve several classes).
2. A conditional GAN on those pairs (PLG `train_cgan.py`): a generator with class-conditional
   BatchNorm and a spectral-norm projection discriminator, hinge loss, and in G's loss
   `alpha · margin(T(aug(G(z, ỹ))), ỹ)`. It depends on T, so it is cached per target.
3. Per class, the max-margin inversion (PLG `reconstruct.py:46-160`): z ~ N(0, I), Adam on z,
   `margin(T(aug₁(G(z, y))), y) + margin(T(aug₂(G(z, y))), y)` with two independent
   augmentations, no prior term, no clipping.

Augmentation (`augment`): `digits` (default): RandomResizedCrop (ratio 1) and a small rotation
as one `affine_grid` warp per image; no flips and no colour jitter (digits are not
mirror-symmetric; the spec's digits tier). `reference`: the reference's set (PLG
`reconstruct.py:66-71`, `train_cgan.py:250-255`): also ColorJitter(brightness 0.2, contrast 0.2)
(always in the inversion, with p 0.5 in the GAN), a horizontal flip with p 0.5 and the rotation
with p 0.5 (kornia's defaults). The inversion loss (`inv_loss`): `margin` (reference default),
`ce` or `poincare` (PLG `losses.py:7-40`, `--inv_loss_type`), in the GAN and the inversion alike.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from workbench.api import (
    AttackContext,
    AttackResult,
    Count,
    Steps,
    Width,
    bounded_int,
    seeds,
    split_forward,
    weights_fingerprint,
)
from workbench.attack_toolkit import (
    Chunk,
    GANBudget,
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
    resolve_classes,
    result,
    search,
    train_gan,
    working_size,
)

# ---------------------------------------------------------------- params


class PLGMIParams(GANBudget, SearchBudget):
    """PLG-MI's budget. Defaults fit the embedded digits (16 px) on a 2-core CPU; each field doc
    gives the reference value and its file (`LetheSec/PLG-MI-Attack`); see docs/attacks.md."""

    top_n: Count = 30
    """Public images pseudo-labelled per private class (reference 30: README `--top_n=30`,
    PLG `top_n_selection.py:120-183`)."""
    z_dim: Width = 64
    """Latent size of the conditional generator. Reference 128 (PLG `train_cgan.py`, `gen_dim_z`).
    Digits: 64 (a CPU deviation)."""
    gan_width: bounded_int(4, 65_536, "a width") = 16
    """Channels at full resolution, doubling per halving (reference 64: `gen_num_features`,
    PLG `models/generators/resnet64.py`). Digits: 16 (a CPU deviation)."""
    gan_steps: Steps = 400
    """Generator updates. Reference 30 000 (README `--max_iteration=30000`). Digits: 400 (spec §D:
    400 / 1000 / 2000 steps gave top-1 0.95 / 0.95 / 0.84)."""
    gan_lr: float = Field(2e-4, gt=0)
    """Adam learning rate of both players, betas `gan_betas` (reference 2e-4: PLG
    `train_cgan.py:55-128`)."""
    gan_betas: tuple[float, float] = (0.0, 0.9)
    """Adam betas of both players (reference (0.0, 0.9): PLG `train_cgan.py:55-128`)."""
    critic_iters: Steps = 5
    """Discriminator updates per generator update (reference 5: `n_dis`, PLG `train_cgan.py:258-311`)."""
    alpha: float = Field(0.2, ge=0)
    """Weight of the margin loss on augmented fakes in G's loss (reference 0.2: `--alpha`, PLG
    `train_cgan.py:125,288`)."""
    iterations: Steps = 200
    """Adam steps of the inversion per restart. Reference 600 (PLG `reconstruct.py:46-160`).
    Digits: 200 (spec §D)."""
    lr: float = Field(0.1, gt=0)
    """Adam learning rate of the inversion (reference 0.1: PLG `reconstruct.py:46-160`)."""
    restarts: Count = 5
    """Independent restarts (seeds) per class, every one evaluated (reference 5 seeds: PLG
    `reconstruct.py:166-241`)."""
    samples_per_class: Count = 8
    """Latents per class and restart. Reference 1 per identity per seed (PLG
    `reconstruct.py:166-241`). Digits: 8."""
    crop_scale: tuple[float, float] = (0.8, 1.0)
    """RandomResizedCrop scale range, ratio 1 (reference (0.8, 1.0): PLG `train_cgan.py:250-255`,
    `reconstruct.py:66-71`)."""
    rotation: float = Field(5.0, ge=0)
    """Largest rotation in degrees (reference 5: `RandomRotation(5)`, PLG `train_cgan.py:250-255`)."""
    augment: Literal["digits", "reference"] = "digits"
    """The augmentation of the fakes, in G's loss and in the inversion. `reference`: the
    reference's set (crop, ColorJitter(0.2, 0.2), horizontal flip, rotation; PLG
    `reconstruct.py:66-71`, `train_cgan.py:250-255`). `digits`: crop and rotation only, the
    rotation always applied (digits are not mirror-symmetric; a deviation for the digits tier)."""
    inv_loss: Literal["margin", "ce", "poincare"] = "margin"
    """The identity loss on T's logits, in G's loss and in the inversion (reference default
    `margin`: `--inv_loss_type`, PLG `train_cgan.py:126`, `reconstruct.py:100-105`; the
    functions in PLG `losses.py:7-40`)."""


# ---------------------------------------------------------------- objective pieces


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per row −o[b, y_b] + max_{j ≠ y_b} o[b, j] (PLG `losses.py:7-13`, on raw logits)."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return -true + others.max(dim=1).values


def cross_entropy_rows(logits: Tensor, y: Tensor) -> Tensor:
    """Per row CE(o_b, y_b) (PLG `losses.py:16-17` is its batch mean)."""
    return F.cross_entropy(logits, y, reduction="none")


def poincare_rows(logits: Tensor, y: Tensor, xi: float = 1e-4) -> Tensor:
    """Per row the Poincaré distance between the L1-normalised logits u and the one-hot target
    shrunk by ξ, v = clip(e_y − ξ, 0, 1): arccosh(1 + 2‖u − v‖² / ((1 − ‖u‖²)(1 − ‖v‖²)))
    (PLG `losses.py:20-37`, ξ = 1e-4; its batch mean is the reference's)."""
    u = logits / logits.norm(p=1, dim=-1, keepdim=True)
    v = (F.one_hot(y, logits.shape[-1]).to(u) - xi).clamp(0, 1)
    delta = 2 * (u - v).norm(dim=1) ** 2 / ((1 - u.norm(dim=1) ** 2) * (1 - v.norm(dim=1) ** 2))
    return torch.arccosh(1 + delta)


IDENTITY_LOSSES = {"margin": margin_loss, "ce": cross_entropy_rows, "poincare": poincare_rows}
"""`inv_loss` -> per-row loss on T's logits."""


def hinge_d_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """mean relu(1 − D(x, y)) + mean relu(1 + D(G(z, ỹ), ỹ)) (PLG `losses.py`, hinge)."""
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def hinge_g_loss(fake_scores: Tensor) -> Tensor:
    """−mean D(G(z, ỹ), ỹ) (PLG `losses.py`, hinge)."""
    return -fake_scores.mean()


def generator_loss(fake_scores: Tensor, augmented_logits: Tensor, y: Tensor, alpha: float, inv_loss: str) -> Tensor:
    """G's loss: hinge −mean D(G(z, ỹ), ỹ) + α · batch mean of `inv_loss`(T(aug(G(z, ỹ))), ỹ)
    (PLG `train_cgan.py:270-288`: `loss_all = loss_gen + inv_loss * args.alpha`)."""
    return hinge_g_loss(fake_scores) + alpha * IDENTITY_LOSSES[inv_loss](augmented_logits, y).mean()


def augment(
    images: Tensor,
    rng: torch.Generator,
    crop_scale: tuple[float, float],
    rotation: float,
    *,
    reference: bool = False,
    jitter_p: float = 1.0,
) -> Tensor:
    """RandomResizedCrop (area in `crop_scale`, ratio 1) and a rotation in ±`rotation` degrees,
    one `affine_grid` warp per image; draws from `rng` (on the CPU).

    `reference`: the reference's set instead (PLG `reconstruct.py:66-71`): the rotation with p
    0.5, a horizontal flip with p 0.5 (both folded into the warp), then with p `jitter_p`
    ColorJitter(brightness 0.2, contrast 0.2) in a random order (torchvision's definition:
    brightness x·b, contrast c·x + (1 − c)·mean(grey(x)), b, c ~ U[0.8, 1.2], clamped to [0, 1]).
    """
    n = images.shape[0]
    lo, hi = crop_scale
    side = (lo + (hi - lo) * torch.rand(n, generator=rng)).sqrt()  # fraction of the side kept
    cx = (torch.rand(n, generator=rng) * 2 - 1) * (1 - side)
    cy = (torch.rand(n, generator=rng) * 2 - 1) * (1 - side)
    angle = (torch.rand(n, generator=rng) * 2 - 1) * math.radians(rotation)
    flip = torch.ones(n)
    if reference:
        angle = angle * (torch.rand(n, generator=rng) < 0.5)
        flip = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos() * side, angle.sin() * side
    # Output x' samples the input at theta · (x', y', 1); a flip mirrors x' first.
    theta = torch.stack([torch.stack([cos * flip, -sin, cx], 1), torch.stack([sin * flip, cos, cy], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if reference:
        out = color_jitter(out, rng, jitter_p)
    return out


def color_jitter(images: Tensor, rng: torch.Generator, p: float, strength: float = 0.2) -> Tensor:
    """ColorJitter(brightness, contrast) per image with probability `p`, in a random order."""
    n = images.shape[0]
    apply = (torch.rand(n, generator=rng) < p).to(images)[:, None, None, None]
    brightness = (1 - strength + 2 * strength * torch.rand(n, generator=rng)).to(images)[:, None, None, None]
    contrast = (1 - strength + 2 * strength * torch.rand(n, generator=rng)).to(images)[:, None, None, None]
    contrast_first = (torch.rand(n, generator=rng) < 0.5).to(images)[:, None, None, None]

    def bright(x: Tensor) -> Tensor:
        return (x * brightness).clamp(0, 1)

    def contr(x: Tensor) -> Tensor:
        grey = x if x.shape[1] == 1 else (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
        return (contrast * x + (1 - contrast) * grey.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)

    jittered = contrast_first * bright(contr(images)) + (1 - contrast_first) * contr(bright(images))
    return apply * jittered + (1 - apply) * images


def top_n_selection(probabilities: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(public indices, pseudo-labels): for each class c the `n` images with the largest
    p[:, c] (PLG `top_n_selection.py:120-183`); an image may appear under several classes."""
    n = min(n, probabilities.shape[0])
    indices = probabilities.topk(n, dim=0).indices  # [n, classes]
    labels = torch.arange(probabilities.shape[1]).expand(n, -1)
    return indices.T.reshape(-1), labels.T.reshape(-1)


# ---------------------------------------------------------------- networks


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine, then a per-class scale (init 1) and shift (init 0)
    (PLG `links/conditional_batchnorm.py`)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.gamma(y)[:, :, None, None] * self.norm(x) + self.beta(y)[:, :, None, None]


def _levels(image_size: int) -> int:
    return int(math.log2(working_size(image_size) // 4))


class ConditionalGenerator(nn.Module):
    """(z, y) -> images in [0, 1]: Linear to 4×4, then per level CondBN → ReLU → ×2 → Conv3×3,
    then CondBN → ReLU → Conv3×3 → sigmoid (spec B2.5). It follows the design of the reference's
    `ResNetGenerator` (PLG `models/generators/resnet64.py`: class-conditional BatchNorm, bilinear
    ×2 up-sampling per level, `resblocks.py:9-11`) but not its layers: no residual blocks, no
    tanh, so no layer-for-layer check exists for it (a deviation, docs/attacks.md)."""

    def __init__(self, z_dim: int, num_classes: int, in_channels: int, image_size: int, width: int):
        super().__init__()
        self.image_size, levels = image_size, _levels(image_size)
        channels = [width * min(8, 2 ** (levels - level)) for level in range(levels + 1)]
        self.first = channels[0]
        self.project = nn.Linear(z_dim, channels[0] * 16)
        self.norms = nn.ModuleList(ConditionalBatchNorm(c, num_classes) for c in channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], 3, padding=1) for i in range(levels)
        )
        self.to_image = nn.Conv2d(channels[-1], in_channels, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], self.first, 4, 4)
        for norm, conv in zip(self.norms[:-1], self.convs, strict=True):
            h = conv(F.interpolate(F.relu(norm(h, y)), scale_factor=2, mode="bilinear", align_corners=False))
        x = self.to_image(F.relu(self.norms[-1](h, y)))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return x.sigmoid()


class ProjectionDiscriminator(nn.Module):
    """Spectral-norm convs (3×3, then 4×4 stride 2 per level doubling the channels, then 3×3),
    ReLU after each, global sum pooling, `out = l(h) + Σ_j emb(y)_j · h_j` (the projection of
    PLG `models/discriminators/snresnet64.py`; SN on every layer)."""

    def __init__(self, in_channels: int, image_size: int, width: int, num_classes: int):
        super().__init__()
        self.size, levels = working_size(image_size), _levels(image_size)
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(in_channels, width, 3, padding=1)), nn.ReLU()]
        c = width
        for level in range(levels):
            c_out = width * min(8, 2 ** (level + 1))
            layers += [spectral_norm(nn.Conv2d(c, c_out, 4, stride=2, padding=1)), nn.ReLU()]
            c = c_out
        layers += [spectral_norm(nn.Conv2d(c, c, 3, padding=1)), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        linear, embed = nn.Linear(c, 1), nn.Embedding(num_classes, c)
        nn.init.xavier_uniform_(linear.weight)  # before SN, whose power iteration starts from them
        nn.init.xavier_uniform_(embed.weight)
        self.linear, self.embed = spectral_norm(linear), spectral_norm(embed)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.trunk(x).sum(dim=(2, 3))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.features(x)
        return self.linear(h)[:, 0] + (self.embed(y) * h).sum(dim=1)


# ---------------------------------------------------------------- stages


def pseudo_labelled(
    target: nn.Module, pool: ImagePool, n: int, num_classes: int, device
) -> tuple[Tensor, Tensor]:
    """Images and pseudo-labels of the top-n public images per class (on the CPU)."""
    images = (
        pool.images if pool.images is not None else torch.stack([pool._image(i) for i in range(pool.length)])
    )
    dtype = dtype_of(target)
    with torch.no_grad():
        probs = torch.cat(
            [
                target(images[s : s + 256].to(device, dtype)).float().softmax(1).cpu()
                for s in range(0, len(images), 256)
            ]
        )
    index, labels = top_n_selection(probs[:, :num_classes], n)
    return images[index], labels


def train_cgan(
    generator: ConditionalGenerator,
    discriminator: ProjectionDiscriminator,
    target: nn.Module,
    images: Tensor,
    labels: Tensor,
    params: PLGMIParams,
    num_classes: int,
    *,
    device: torch.device,
    rng: torch.Generator,
    on_progress=None,
) -> dict[str, float]:
    """Hinge cGAN on the pseudo-labelled pairs; G also minimises α · inv_loss(T(aug(G(z, ỹ))), ỹ)
    (the batch mean, PLG `train_cgan.py:270-288`)."""
    n = params.gan_batch_size

    def latents() -> tuple[Tensor, Tensor]:
        z = torch.randn(n, params.z_dim, generator=rng).to(device)
        y = torch.randint(num_classes, (n,), generator=rng).to(device)
        return z, y

    def d_outputs(real: Tensor, y_real: Tensor, z: Tensor, y_fake: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            fake = generator(z, y_fake)
        return discriminator(real, y_real), discriminator(fake, y_fake)

    def d_loss() -> Tensor:
        pick = torch.randint(len(images), (n,), generator=rng)
        real = images[pick] + torch.rand(images[pick].shape, generator=rng) / 256  # dequantisation
        real, y_real = real.to(device), labels[pick].to(device)
        return hinge_d_loss(*split_forward(d_outputs, real, y_real, *latents()))

    def g_outputs(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        fake = generator(z, y)
        return fake, discriminator(fake, y)

    def g_loss() -> Tensor:
        z, y = latents()
        # The fakes come back whole: the augmentation draws from the one stream for the global batch.
        fake, on_fake = split_forward(g_outputs, z, y)
        if params.alpha == 0:
            return hinge_g_loss(on_fake)
        # The reference's GAN jitters colours with p 0.5 (PLG `train_cgan.py:252`).
        warped = augment(fake, rng, params.crop_scale, params.rotation,
                         reference=params.augment == "reference", jitter_p=0.5)
        return generator_loss(on_fake, split_forward(target, warped), y, params.alpha, params.inv_loss)

    # T only passes gradients to the fakes: its own parameters collect none (flags restored after).
    flags = [q.requires_grad for q in target.parameters()]
    target.requires_grad_(False)
    try:
        return train_gan(
            generator,
            discriminator,
            params,
            d_loss=d_loss,
            g_loss=g_loss,
            attack="plg-mi",
            stage="attack:plg-mi:gan",
            on_progress=on_progress,
            betas=params.gan_betas,
        )
    finally:
        for q, flag in zip(target.parameters(), flags, strict=True):
            q.requires_grad_(flag)


class PLGMISearch(SearchProblem):
    """Adam on z ~ N(0, I) per (class, restart) group; two augmented views per step, the
    `inv_loss` of each summed (PLG `reconstruct.py:93-105`)."""

    def __init__(self, params: PLGMIParams, generator: ConditionalGenerator, target: nn.Module):
        self.p, self.generator, self.target = params, generator, target
        self.samples = params.samples_per_class

    def start(self, chunk: Chunk, device: torch.device) -> list[Tensor]:
        z = torch.cat([torch.randn(self.samples, self.p.z_dim, generator=s) for s in chunk.streams])
        return [z.to(device, dtype_of(self.generator)).requires_grad_(True)]

    def optimizer(self, leaves: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(leaves, lr=self.p.lr)

    def views(self, images: Tensor, chunk: Chunk) -> Tensor:
        """One augmentation of each image, drawn from its group's stream."""
        parts = images.split(self.samples)
        return torch.cat(
            [
                augment(part, s, self.p.crop_scale, self.p.rotation, reference=self.p.augment == "reference")
                for part, s in zip(parts, chunk.streams, strict=True)
            ]
        )

    def loss(self, leaves: list[Tensor], chunk: Chunk, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fake = self.generator(leaves[0], y)
        first, second = self.target(self.views(fake, chunk)), self.target(self.views(fake, chunk))
        identity = IDENTITY_LOSSES[self.p.inv_loss]
        per_latent = identity(first, y) + identity(second, y)
        confidence = first.detach().softmax(dim=1).gather(1, y[:, None])[:, 0]
        # Adam: the scale of the summed loss does not change the step (the reference's batch mean).
        return per_latent.sum(), per_latent, confidence

    def finish(
        self, leaves: list[Tensor], chunk: Chunk, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        targets = torch.tensor([g.target_class for g in chunk.groups for _ in range(self.samples)])
        restarts = torch.tensor([g.restart for g in chunk.groups for _ in range(self.samples)])
        return self.generator(leaves[0], targets.to(device)), targets, restarts


class PLGMI(ShardableSearch):
    """PLG-MI: top-n pseudo-labels, a conditional GAN per target, then max-margin inversion."""

    name = "plg-mi"

    def __init__(self, params: PLGMIParams):
        self.params = params

    def gan_key(self, pool: ImagePool, ctx: AttackContext) -> dict:
        return {
            "gan": gan_config(self.params, "top_n", "gan_betas", "alpha", "crop_scale", "rotation", "augment",
                              "inv_loss"),
            "public": pool.fingerprint(),
            "target": weights_fingerprint(ctx.target),
            "num_classes": ctx.data.num_classes,
            "seed": ctx.seed,
        }

    def prior(self, ctx: AttackContext, pool: ImagePool) -> tuple[ConditionalGenerator, bool]:
        p = self.params
        device = torch.device(ctx.device)
        k = ctx.data.num_classes
        with seeds.seeded(ctx.seed, "attack", "plg-mi", "init", device=device):
            generator = ConditionalGenerator(
                p.z_dim, k, ctx.data.in_channels, ctx.data.image_size, p.gan_width
            )
            discriminator = ProjectionDiscriminator(ctx.data.in_channels, ctx.data.image_size, p.gan_width, k)
        dtype = dtype_of(ctx.target)
        generator.to(device, dtype)
        discriminator.to(device, dtype)

        def train() -> dict[str, float]:
            images, labels = pseudo_labelled(ctx.target, pool, p.top_n, k, device)
            return train_cgan(
                generator,
                discriminator,
                ctx.target,
                images.to(dtype),
                labels,
                p,
                k,
                device=device,
                rng=seeds.generator(ctx.seed, "attack", "plg-mi", "gan"),
                on_progress=lambda **f: ctx.emit("progress", stage="attack:plg-mi:gan", **f),
            )

        networks = {"generator": generator, "discriminator": discriminator}
        hit = load_or_train(ctx, self.name, "plg-mi-gan", self.gan_key(pool, ctx), networks, train)
        return generator, hit

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        generator, hit = self.prior(ctx, public_pool(ctx, self.name))
        units: list[list[Group]] = [[g] for g in make_groups(classes, p.restarts)]
        images, targets, restarts, confidence = search(
            ctx,
            PLGMISearch(p, generator, ctx.target),
            units,
            attack=self.name,
            iterations=p.iterations,
            max_batch=p.max_batch,
        )
        return result(images, targets, restarts, confidence, gan_cached=float(hit))

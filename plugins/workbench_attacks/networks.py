"""DCGAN-style generator and discriminators sized to the data's image size.

Every network works at the smallest `4 * 2**k >= image_size` (k >= 1) and resizes at the
boundary, so 16, 32 and 64 px run natively and odd sizes such as 28 px still work.
Widths double per halving of resolution, capped at 8x, as in GMI's generator (64 px:
512-256-128-64 channels for width 64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.api import gather_with_grad, in_data_parallel


def working_size(image_size: int) -> int:
    """The power-of-two resolution (>= 8) the networks compute at."""
    if image_size < 4:
        raise ValueError(f"image_size {image_size} is too small for a GAN (need at least 4)")
    return max(8, 4 * 2 ** math.ceil(math.log2(image_size / 4)))


def _levels(image_size: int) -> int:
    """Number of 2x up/down-sampling steps between 4x4 and the working size."""
    return int(math.log2(working_size(image_size) // 4))


def _width_at(level: int, levels: int, width: int) -> int:
    """Channels at `level` steps above 4x4: `width` at full resolution, doubling per halving."""
    return width * min(8, 2 ** (levels - level))


class Generator(nn.Module):
    """z `[n, z_dim]` -> images `[n, C, H, W]` in [0, 1] (sigmoid output, like GMI's)."""

    def __init__(self, z_dim: int, in_channels: int, image_size: int, width: int):
        super().__init__()
        self.z_dim = z_dim
        self.image_size = image_size
        levels = _levels(image_size)
        first = _width_at(0, levels, width)
        self.project = nn.Sequential(
            nn.Linear(z_dim, first * 16, bias=False), nn.BatchNorm1d(first * 16), nn.ReLU(inplace=True)
        )
        self.first = first
        blocks: list[nn.Module] = []
        for level in range(levels):
            c_in, c_out = _width_at(level, levels, width), _width_at(level + 1, levels, width)
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(_width_at(levels, levels, width), in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], self.first, 4, 4)
        x = self.to_image(self.blocks(h))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return x.sigmoid()


class DownTrunk(nn.Module):
    """Strided convolutions from the working size down to 4x4; flattened features out.

    Instance norm, not batch norm: WGAN-GP's gradient penalty is defined per sample, and the
    latent searches score each image on its own. `norm_first`: instance norm on the first
    convolution too (KED-MI's discriminator, KEDMI `discri.py:34-60`); GMI's critic has none
    there (DefendMI `GMI/discri.py:32-54`). Kernels are 4x4 (stride 2, padding 1) where the
    references use 5x5 (padding 2): the same halving per layer, sized for any working size.
    """

    def __init__(self, in_channels: int, image_size: int, width: int, norm_first: bool = False):
        super().__init__()
        self.image_size = image_size
        self.size = working_size(image_size)
        levels = _levels(image_size)
        layers: list[nn.Module] = []
        c_in = in_channels
        for step in range(levels):
            c_out = _width_at(levels - step - 1, levels, width)
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            if step > 0 or norm_first:
                layers.append(nn.InstanceNorm2d(c_out, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in
        self.feature_dim = c_in * 16

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.layers(x).flatten(1)


class Critic(nn.Module):
    """WGAN-GP critic: one unbounded realness score per image (higher = more real)."""

    def __init__(self, in_channels: int, image_size: int, width: int):
        super().__init__()
        self.trunk = DownTrunk(in_channels, image_size, width)
        self.score = nn.Linear(self.trunk.feature_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.score(self.trunk(x))[:, 0]


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016), as KED-MI's discriminator has it.

    A learnt tensor `T [in_features, kernels, kernel_dim]` (initialised N(0, 1)) maps each
    feature row to `M_i = x_i T` (`[kernels, kernel_dim]`); kernel b scores how close image i
    is to the other images of the batch, `o_b(i) = Σ_j exp(−‖M_{i,b} − M_{j,b}‖₁) − 1` (the
    self term removed, no division by N − 1), and the layer outputs `[x, o]`
    (KEDMI `discri.py:7-32`). D's output for one image therefore depends on the other images
    in its batch: a generator that collapses onto one mode is easy to spot.
    """

    def __init__(self, in_features: int, kernels: int, kernel_dim: int):
        super().__init__()
        self.kernels = kernels
        self.kernel_dim = kernel_dim
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dim))

    def forward(self, x: Tensor) -> Tensor:
        m = (x @ self.T).view(-1, self.kernels, self.kernel_dim)
        # Trained data-parallel, x is this rank's slice of the batch: its images are compared with
        # every rank's (gathered with autograd), as one process compares the whole batch.
        batch = gather_with_grad(m) if in_data_parallel() else m
        l1 = (m[:, None] - batch[None, :]).abs().sum(dim=3)  # [N, N, kernels]
        closeness = torch.exp(-l1).sum(dim=1) - 1
        return torch.cat([x, closeness], dim=1)


class ClassDiscriminator(nn.Module):
    """KED-MI's discriminator: K class logits; realness is logsumexp over them (the "+1" class).

    Trunk: strided convolutions with instance norm on every one (the first included) and
    LeakyReLU(0.2); then minibatch discrimination with `(kernels, kernel_dim)` (reference
    (64, 50); 0 kernels switches it off); then one linear layer to the K classes. No dropout
    (the reference has none: KEDMI `discri.py:34-70`, DefendMI `DMI/discri.py:8-95`).

    `forward(x, blocks=None)` returns `(features, logits)`; the features (before minibatch
    discrimination) feed the generator's feature-matching loss. Minibatch discrimination
    couples the images of one batch; `blocks` (sizes summing to `len(x)`) splits the batch
    into independent blocks that each see only themselves, so several reference batches can
    share one forward pass.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        width: int,
        num_classes: int,
        mbd_kernels: int = 64,
        mbd_kernel_dim: int = 50,
    ):
        super().__init__()
        self.trunk = DownTrunk(in_channels, image_size, width, norm_first=True)
        features = self.trunk.feature_dim
        self.mbd = MinibatchDiscrimination(features, mbd_kernels, mbd_kernel_dim) if mbd_kernels > 0 else None
        self.head = nn.Linear(features + (mbd_kernels if self.mbd is not None else 0), num_classes)

    def forward(self, x: Tensor, blocks: list[int] | None = None) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        if self.mbd is None:
            return features, self.head(features)
        if blocks is None:
            mixed = self.mbd(features)
        else:
            mixed = torch.cat([self.mbd(part) for part in features.split(blocks)])
        return features, self.head(mixed)

"""DCGAN-style generator and discriminators sized to the data's image size.

Every network works at the smallest `4 * 2**k >= image_size` (k >= 1) and resizes at the
boundary, so 16, 32 and 64 px run natively and odd sizes such as 28 px still work.
Widths double per halving of resolution, capped at 8x, as in GMI's generator (64 px:
512-256-128-64 channels for width 64).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


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
    latent searches score each image on its own.
    """

    def __init__(self, in_channels: int, image_size: int, width: int):
        super().__init__()
        self.image_size = image_size
        self.size = working_size(image_size)
        levels = _levels(image_size)
        layers: list[nn.Module] = []
        c_in = in_channels
        for step in range(levels):
            c_out = _width_at(levels - step - 1, levels, width)
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            if step > 0:
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


class ClassDiscriminator(nn.Module):
    """KED-MI's discriminator: K class logits; realness is logsumexp over them (the "+1" class).

    Returns `(features, logits)`: the features feed the generator's feature-matching loss.
    Dropout regularises it, as in semi-supervised GANs; the attack runs it in eval mode.
    """

    def __init__(self, in_channels: int, image_size: int, width: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.trunk = DownTrunk(in_channels, image_size, width)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.trunk.feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        return features, self.head(self.dropout(features))

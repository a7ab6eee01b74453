"""The GAN priors' networks: the references' own at their settings, generalised to other sizes.

At 64 px RGB with `width` 64 they are, layer for layer, DefendMI's (BiDO's copies of the
authors' code): `Generator` is GMI's `Generator` (`GMI/generator.py:5-31`, 5,142,083 parameters
at `z_dim` 100), `Critic` is `DGWGAN` (`GMI/discri.py:32-54`, 4,316,545) and
`ClassDiscriminator` is KED-MI's `MinibatchDiscriminator` (`DMI/discri.py:36-66`, 18,888,936 at
1000 classes). At 32 px grey they are the MNIST variants `GeneratorMNIST`
(`GMI/generator.py:34-59`), `DGWGAN32` (`GMI/discri.py:6-29`) and
`MinibatchDiscriminator_MNIST` (`DMI/discri.py:69-95`). `tests/test_attack_reference_networks.py`
checks both against independent transcriptions, weight for weight.

Other sizes (the 16 px digits tier, 28 px, 128 px) follow the same rule, which is the
generalisation the references' two sizes share: the networks compute at the smallest
`4 * 2**L >= image_size` (L >= 1) and resize at the boundary (bilinear), with L up/down-sampling
steps between 4x4 and that size. Where they depart from the references (documented in
docs/attacks.md, "Deviations"):

- 16 px: L = 2, so the generator starts at `2 * width` channels (the references start at 8x
  for 64 px, 4x for 32 px: always `2**(L-1)`), the critic has two strided convolutions and KED-MI's
  discriminator two (features `2 * width * 16`); the references have no 16 px network.
- Sizes that are not a power of two (28 px) are computed at the next one and resized.
- Widths are capped at 8x (generator, critic) and 4x (KED-MI's discriminator), as at 64 px;
  beyond 64 px the extra levels keep the cap.
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


def resize(x: Tensor, size: int) -> Tensor:
    """`x` at `size` x `size` (bilinear), unchanged when it is already: the networks' boundary."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Generator(nn.Module):
    """z `[n, z_dim]` -> images `[n, C, H, W]` in [0, 1]: GMI's generator.

    Linear(z_dim -> w0·4·4, no bias) + BatchNorm1d + ReLU; then L - 1 blocks of
    ConvTranspose(5x5, stride 2, padding 2, output_padding 1, no bias) + BatchNorm2d + ReLU, each
    halving the channels down to `width`; then ConvTranspose(width -> C, same geometry, with bias)
    and a sigmoid (DefendMI `GMI/generator.py:5-31`). w0 = `width * 2**(L-1)` (capped at 8x):
    512 at 64 px, 256 at 32 px (`GeneratorMNIST`), for width 64.
    """

    def __init__(self, z_dim: int, in_channels: int, image_size: int, width: int):
        super().__init__()
        self.z_dim = z_dim
        self.image_size = image_size
        levels = _levels(image_size)
        widths = [width * min(8, 2 ** (levels - 1 - i)) for i in range(levels)]
        self.first = widths[0]
        self.project = nn.Sequential(
            nn.Linear(z_dim, widths[0] * 16, bias=False),
            nn.BatchNorm1d(widths[0] * 16),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.ConvTranspose2d(widths[-1], in_channels, 5, stride=2, padding=2, output_padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], self.first, 4, 4)
        return resize(self.to_image(self.blocks(h)), self.image_size).sigmoid()


class DownTrunk(nn.Module):
    """Strided convolutions from the working size down to 4x4; flattened features out.

    Layer s (s = 0 .. L-1) has `width * min(cap, 2**s)` channels, 5x5 kernels (stride 2,
    padding 2) while the width grows and 3x3 (stride 2, padding 1) once it is capped, instance
    norm (affine) and LeakyReLU(0.2). `norm_first`: instance norm on the first convolution too.
    GMI's critic: cap 8, no norm first (DefendMI `GMI/discri.py:32-54`); KED-MI's discriminator:
    cap 4, norm first, so its fourth 64 px layer is Conv(256 -> 256, 3, 2, 1)
    (`DMI/discri.py:36-52`). Instance norm, not batch norm: WGAN-GP's gradient penalty is
    defined per sample (the references' comment: "InstanceNorm2d instead of LayerNorm").
    """

    def __init__(
        self, in_channels: int, image_size: int, width: int, *, cap: int = 8, norm_first: bool = False
    ):
        super().__init__()
        self.size = working_size(image_size)
        layers: list[nn.Module] = []
        c_in = in_channels
        for step in range(_levels(image_size)):
            c_out = width * min(cap, 2**step)
            widening = step == 0 or c_out != c_in
            kernel, padding = (5, 2) if widening else (3, 1)
            layers.append(nn.Conv2d(c_in, c_out, kernel, stride=2, padding=padding))
            if step > 0 or norm_first:
                layers.append(nn.InstanceNorm2d(c_out, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in
        self.feature_dim = c_in * 16

    def maps(self, x: Tensor) -> Tensor:
        """The last 4x4 feature maps `[n, out_channels, 4, 4]`."""
        return self.layers(resize(x, self.size))

    def forward(self, x: Tensor) -> Tensor:
        return self.maps(x).flatten(1)


class Critic(nn.Module):
    """WGAN-GP critic `DGWGAN`: one unbounded realness score per image (higher = more real).

    The trunk, then Conv(4x4, no padding) from the 4x4 maps to one score (`GMI/discri.py:50`).
    """

    def __init__(self, in_channels: int, image_size: int, width: int):
        super().__init__()
        self.trunk = DownTrunk(in_channels, image_size, width)
        self.score = nn.Conv2d(self.trunk.out_channels, 1, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.score(self.trunk.maps(x)).view(-1)


FAR_L1 = 50.0
"""Minibatch discrimination's L1 distance beyond which a pair counts as exp(-50) = 2e-22 (see
`MinibatchDiscrimination.forward`): 63 such terms are a millionth of the float32 step at the self
term's 1, so no sum holds them, and every product with them in the backward pass stays a normal
float32 (2e-22 times a gradient above 1e-16)."""


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
        self.T = nn.Parameter(torch.randn(in_features, kernels, kernel_dim))

    def forward(self, x: Tensor) -> Tensor:
        m = (x @ self.T.flatten(1)).view(-1, self.kernels, self.kernel_dim)
        # Trained data-parallel, x is this rank's slice of the batch: its images are compared with
        # every rank's (gathered with autograd), as one process compares the whole batch.
        batch = gather_with_grad(m) if in_data_parallel() else m
        l1 = (m[:, None] - batch[None, :]).abs().sum(dim=3)  # [N, N, kernels]
        # With T ~ N(0, 1) most pairs are ~100 apart and exp(-l1) is a float32 subnormal or 0, which a CPU
        # computes (and every product with it in the backward pass) tens of times slower: capped at FAR_L1,
        # KED-MI's D step took 19 ms instead of 53. The figures are the same (CHANGELOG).
        closeness = torch.exp(-l1.clamp(max=FAR_L1)).sum(dim=1) - 1
        return torch.cat([x, closeness], dim=1)


class ClassDiscriminator(nn.Module):
    """KED-MI's discriminator: K class logits; realness is logsumexp over them (the "+1" class).

    Trunk: strided convolutions with instance norm on every one (the first included) and
    LeakyReLU(0.2), widths capped at 4x (`DownTrunk`); then minibatch discrimination with
    `(kernels, kernel_dim)` (reference (64, 50); 0 kernels switches it off); then one linear
    layer to the K classes. No dropout
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
        self.trunk = DownTrunk(in_channels, image_size, width, cap=4, norm_first=True)
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

"""Golden tests: the GAN priors' networks are the references' own at the references' settings.

The reference classes are transcribed here independently of `workbench.attack_toolkit`, from
DefendMI (`AlanPeng0897/Defend_MI@2a3f25f`): `GMI/generator.py:5-59` (`Generator`,
`GeneratorMNIST`), `GMI/discri.py:6-54` (`DGWGAN32`, `DGWGAN`) and `DMI/discri.py:8-95`
(`MinibatchDiscrimination`, `MinibatchDiscriminator`, `MinibatchDiscriminator_MNIST`). Each
check compares every parameter's shape in order (names free), copies the weights across and
runs one float64 forward pass, equal to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.init as init
from torch import nn

from workbench.attack_toolkit import ClassDiscriminator, Critic, Generator

# ---------------------------------------------------------------- the reference classes, transcribed


def _dconv_bn_relu(in_dim, out_dim):
    return nn.Sequential(
        nn.ConvTranspose2d(in_dim, out_dim, 5, 2, padding=2, output_padding=1, bias=False),
        nn.BatchNorm2d(out_dim),
        nn.ReLU(),
    )


class RefGenerator(nn.Module):
    def __init__(self, in_dim=100, dim=64):
        super().__init__()
        self.l1 = nn.Sequential(nn.Linear(in_dim, dim * 8 * 4 * 4, bias=False), nn.BatchNorm1d(dim * 8 * 4 * 4), nn.ReLU())
        self.l2_5 = nn.Sequential(
            _dconv_bn_relu(dim * 8, dim * 4),
            _dconv_bn_relu(dim * 4, dim * 2),
            _dconv_bn_relu(dim * 2, dim),
            nn.ConvTranspose2d(dim, 3, 5, 2, padding=2, output_padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        y = self.l1(x)
        return self.l2_5(y.view(y.size(0), -1, 4, 4))


class RefGeneratorMNIST(nn.Module):
    def __init__(self, in_dim=100, dim=64):
        super().__init__()
        self.l1 = nn.Sequential(nn.Linear(in_dim, dim * 4 * 4 * 4, bias=False), nn.BatchNorm1d(dim * 4 * 4 * 4), nn.ReLU())
        self.l2_5 = nn.Sequential(
            _dconv_bn_relu(dim * 4, dim * 2),
            _dconv_bn_relu(dim * 2, dim),
            nn.ConvTranspose2d(dim, 1, 5, 2, padding=2, output_padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        y = self.l1(x)
        return self.l2_5(y.view(y.size(0), -1, 4, 4))


def _conv_ln_lrelu(in_dim, out_dim, k=5, s=2, p=2):
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, k, s, p), nn.InstanceNorm2d(out_dim, affine=True), nn.LeakyReLU(0.2))


class RefDGWGAN(nn.Module):
    def __init__(self, in_dim=3, dim=64):
        super().__init__()
        self.ls = nn.Sequential(
            nn.Conv2d(in_dim, dim, 5, 2, 2),
            nn.LeakyReLU(0.2),
            _conv_ln_lrelu(dim, dim * 2),
            _conv_ln_lrelu(dim * 2, dim * 4),
            _conv_ln_lrelu(dim * 4, dim * 8),
            nn.Conv2d(dim * 8, 1, 4),
        )

    def forward(self, x):
        return self.ls(x).view(-1)


class RefDGWGAN32(nn.Module):
    def __init__(self, in_dim=1, dim=64):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(in_dim, dim, 5, 2, 2), nn.LeakyReLU(0.2))
        self.layer2 = _conv_ln_lrelu(dim, dim * 2)
        self.layer3 = _conv_ln_lrelu(dim * 2, dim * 4)
        self.layer4 = nn.Conv2d(dim * 4, 1, 4)

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(x)))).view(-1)


class RefMinibatchDiscrimination(nn.Module):
    def __init__(self, in_features, out_features, kernel_dims):
        super().__init__()
        self.in_features, self.out_features, self.kernel_dims = in_features, out_features, kernel_dims
        self.T = nn.Parameter(torch.Tensor(in_features, out_features, kernel_dims))
        init.normal_(self.T, 0, 1)

    def forward(self, x):
        matrices = x.mm(self.T.view(self.in_features, -1)).view(-1, self.out_features, self.kernel_dims)
        M = matrices.unsqueeze(0)
        M_T = M.permute(1, 0, 2, 3)
        norm = torch.abs(M - M_T).sum(3)
        o_b = torch.exp(-norm).sum(0) - 1
        return torch.cat([x, o_b], 1)


class RefMinibatchDiscriminator(nn.Module):
    def __init__(self, in_dim=3, dim=64, n_classes=1000):
        super().__init__()
        self.layer1 = _conv_ln_lrelu(in_dim, dim, 5, 2, 2)
        self.layer2 = _conv_ln_lrelu(dim, dim * 2, 5, 2, 2)
        self.layer3 = _conv_ln_lrelu(dim * 2, dim * 4, 5, 2, 2)
        self.layer4 = _conv_ln_lrelu(dim * 4, dim * 4, 3, 2, 1)
        self.mbd1 = RefMinibatchDiscrimination(dim * 4 * 4 * 4, 64, 50)
        self.fc_layer = nn.Linear(dim * 4 * 4 * 4 + 64, n_classes)

    def forward(self, x):
        feat = self.layer4(self.layer3(self.layer2(self.layer1(x)))).view(x.shape[0], -1)
        return feat, self.fc_layer(self.mbd1(feat))


class RefMinibatchDiscriminatorMNIST(nn.Module):
    def __init__(self, in_dim=1, dim=64, n_classes=5):
        super().__init__()
        self.layer1 = _conv_ln_lrelu(in_dim, dim, 5, 2, 2)
        self.layer2 = _conv_ln_lrelu(dim, dim * 2, 5, 2, 2)
        self.layer3 = _conv_ln_lrelu(dim * 2, dim * 4, 5, 2, 2)
        self.mbd1 = RefMinibatchDiscrimination(4096, 64, 50)
        self.fc_layer = nn.Linear(4096 + 64, n_classes)

    def forward(self, x):
        feat = self.layer3(self.layer2(self.layer1(x))).view(x.shape[0], -1)
        return feat, self.fc_layer(self.mbd1(feat))


# ---------------------------------------------------------------- checks


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Parameters and buffers, in order, names free; every shape must match."""
    for kind in ("parameters", "buffers"):
        src = list(getattr(source, kind)())
        dst = list(getattr(target, kind)())
        assert [tuple(t.shape) for t in dst] == [tuple(t.shape) for t in src], kind
        with torch.no_grad():
            for s, d in zip(src, dst, strict=True):
                d.copy_(s)


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Float64, random weights and non-trivial BatchNorm statistics (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64))
    return module.eval()


def assert_same(reference: nn.Module, ours: nn.Module, inputs: torch.Tensor, seed: int) -> None:
    randomise(reference, seed)
    ours.double().eval()
    copy_weights(reference, ours)
    with torch.no_grad():
        want, got = reference(inputs), ours(inputs)
    for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,), strict=True):
        assert w.shape == g.shape
        assert torch.allclose(g, w, atol=1e-10, rtol=0), float((g - w).abs().max())


def test_parameter_counts_at_the_reference_setting_are_the_references():
    assert count(Generator(100, 3, 64, 64)) == count(RefGenerator()) == 5_142_083
    assert count(Critic(3, 64, 64)) == count(RefDGWGAN()) == 4_316_545
    assert count(ClassDiscriminator(3, 64, 64, 1000)) == count(RefMinibatchDiscriminator()) == 18_888_936
    assert count(Generator(100, 1, 32, 64)) == count(RefGeneratorMNIST())
    assert count(Critic(1, 32, 64)) == count(RefDGWGAN32())
    assert count(ClassDiscriminator(1, 32, 64, 5)) == count(RefMinibatchDiscriminatorMNIST())


@pytest.mark.parametrize("image_size", [64, 32])
def test_generator_is_gmis_layer_for_layer(image_size):
    reference = RefGenerator() if image_size == 64 else RefGeneratorMNIST()
    channels = 3 if image_size == 64 else 1
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_same(reference, Generator(100, channels, image_size, 64), z, seed=10)


@pytest.mark.parametrize("image_size", [64, 32])
def test_critic_is_dgwgan_layer_for_layer(image_size):
    reference = RefDGWGAN() if image_size == 64 else RefDGWGAN32()
    channels = 3 if image_size == 64 else 1
    x = torch.rand(3, channels, image_size, image_size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_same(reference, Critic(channels, image_size, 64), x, seed=11)


@pytest.mark.parametrize("image_size", [64, 32])
def test_class_discriminator_is_kedmis_layer_for_layer(image_size):
    reference = RefMinibatchDiscriminator(n_classes=7) if image_size == 64 else RefMinibatchDiscriminatorMNIST()
    channels, classes = (3, 7) if image_size == 64 else (1, 5)
    # Two near-copies among the batch, so minibatch discrimination's closeness is not all zero.
    x = torch.rand(4, channels, image_size, image_size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[1] = x[0] + 1e-6 * x[2]
    ours = ClassDiscriminator(channels, image_size, 64, classes)
    assert_same(reference, ours, x, seed=12)
    # The MBD layer is live: the closeness of the near-copies is positive, the rest is the features.
    randomise(ours, 12)
    with torch.no_grad():
        ours.mbd.T.mul_(1e-4)
        feat = ours.trunk(x)
        assert float(ours.mbd(feat)[:2, feat.shape[1]:].min()) > 0


def test_digits_tier_keeps_the_design_at_16_px():
    """The 16 px generalisation: two levels, the same kernels and norms (docs/attacks.md)."""
    g = Generator(100, 1, 16, 16)
    shapes = [tuple(p.shape) for p in g.parameters()]
    assert shapes == [(32 * 16, 100), (512,), (512,), (32, 16, 5, 5), (16,), (16,), (16, 1, 5, 5), (1,)]
    assert g(torch.randn(2, 100)).shape == (2, 1, 16, 16)
    c = Critic(1, 16, 16)
    assert [tuple(p.shape) for p in c.parameters()] == [(16, 1, 5, 5), (16,), (32, 16, 5, 5), (32,), (32,), (32,),
                                                         (1, 32, 4, 4), (1,)]
    d = ClassDiscriminator(1, 16, 16, 5, mbd_kernels=16, mbd_kernel_dim=5)
    assert d.trunk.feature_dim == 32 * 16
    assert d(torch.rand(3, 1, 16, 16))[1].shape == (3, 5)

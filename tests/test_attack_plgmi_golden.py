"""Golden tests for PLG-MI: its identity losses, generator loss, inversion step and reference
augmentation against independent float64 transcriptions of the authors' code
(`LetheSec/PLG-MI-Attack@3cf8735`: `losses.py:7-40`, `train_cgan.py:270-288`,
`reconstruct.py:66-105`)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn
from torch.utils.data import TensorDataset

from workbench.api import AttackContext, DataSplits, seeds
from workbench.attack_toolkit import Group, search
from workbench_attacks.plgmi import (
    IDENTITY_LOSSES,
    PLGMIParams,
    PLGMISearch,
    augment,
    color_jitter,
    generator_loss,
)

Z, K = 3, 4


# ---------------------------------------------------------------- the reference's losses, transcribed


def ref_max_margin_loss(out, iden):
    real = out.gather(1, iden.unsqueeze(1)).squeeze(1)
    tmp1 = torch.argsort(out, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == iden, tmp1[:, -2], tmp1[:, -1])
    margin = out.gather(1, new_y.unsqueeze(1)).squeeze(1)
    return (-1 * real).mean() + margin.mean()


def ref_cross_entropy_loss(out, iden):
    return torch.nn.CrossEntropyLoss()(out, iden)


def ref_poincare_loss(outputs, targets, xi=1e-4):
    u = outputs / torch.norm(outputs, p=1, dim=-1).unsqueeze(1)
    v = torch.clip(torch.eye(outputs.shape[-1], dtype=outputs.dtype)[targets] - xi, 0, 1)
    u_norm_squared = torch.norm(u, p=2, dim=1) ** 2
    v_norm_squared = torch.norm(v, p=2, dim=1) ** 2
    diff_norm_squared = torch.norm(u - v, p=2, dim=1) ** 2
    delta = 2 * diff_norm_squared / ((1 - u_norm_squared) * (1 - v_norm_squared))
    return torch.arccosh(1 + delta).mean()


REFERENCE = {"margin": ref_max_margin_loss, "ce": ref_cross_entropy_loss, "poincare": ref_poincare_loss}


def logits_and_labels(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(7, K, generator=gen, dtype=torch.float64), torch.randint(K, (7,), generator=gen)


@pytest.mark.parametrize("name", ["margin", "ce", "poincare"])
def test_identity_losses_are_the_references(name):
    logits, y = logits_and_labels()
    got = IDENTITY_LOSSES[name](logits, y)
    assert got.shape == (7,)
    assert abs(float(got.mean()) - float(REFERENCE[name](logits, y))) < 1e-12


@pytest.mark.parametrize("name", ["margin", "ce", "poincare"])
def test_generator_loss_is_hinge_plus_alpha_times_the_identity_loss(name):
    logits, y = logits_and_labels(1)
    scores = torch.randn(7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    scores.requires_grad_(True)
    logits.requires_grad_(True)
    got = generator_loss(scores, logits, y, 0.2, name)
    # PLG train_cgan.py:283-288: gen_hinge = −mean(dis_fake); loss_all = loss_gen + inv_loss · α.
    want = -torch.mean(scores) + REFERENCE[name](logits, y) * 0.2
    assert abs(float(got.detach()) - float(want.detach())) < 1e-12
    g_got = torch.autograd.grad(got, [scores, logits])
    g_want = torch.autograd.grad(want, [scores, logits])
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(g_got, g_want, strict=True))


# ---------------------------------------------------------------- the inversion step


class TinyConditionalG(nn.Module):
    """(z, y) -> images [n, 1, 2, 2] in (0, 1)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(Z, 4)
        self.embed = nn.Embedding(K, 4)

    def forward(self, z, y):
        return (self.fc(z) + self.embed(y)).sigmoid().view(-1, 1, 2, 2)


def fixed(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module.double().eval().requires_grad_(False)


def context(target: nn.Module) -> AttackContext:
    data = DataSplits(train=TensorDataset(torch.zeros(1, 1, 2, 2), torch.zeros(1)),
                      test=TensorDataset(torch.zeros(1, 1, 2, 2), torch.zeros(1)),
                      public=None, num_classes=K, in_channels=1, image_size=2)
    return AttackContext(target=target, data=data, evaluation_model=None, device=torch.device("cpu"), seed=4)


@pytest.mark.parametrize("inv_loss", ["margin", "poincare"])
def test_inversion_two_steps_equal_hand_written_adam_on_the_summed_views(inv_loss):
    """With the identity augmentation (crop scale 1, no rotation), each step is Adam (lr 0.1,
    default betas) on Σ_latents [L(T(G(z, y)), y) + L(T(G(z, y)), y)] (PLG `reconstruct.py:93-105`:
    two views, the losses summed; the batch mean there, the sum here: Adam does not see the scale
    up to its ε)."""
    G, T = fixed(TinyConditionalG(), 0), fixed(nn.Sequential(nn.Flatten(), nn.Linear(4, K)), 1)
    params = PLGMIParams(z_dim=Z, samples_per_class=2, crop_scale=(1.0, 1.0), rotation=0.0, lr=0.1,
                         inv_loss=inv_loss)
    groups = [Group(0, 0), Group(3, 1)]
    ctx = context(T)
    images, targets, _, _ = search(ctx, PLGMISearch(params, G, T), [[g] for g in groups], attack="plg-mi",
                                   iterations=2, max_batch=256)

    z = torch.cat([torch.randn(2, Z, generator=seeds.generator(ctx.seed, "attack", "plg-mi", "search",
                                                               g.target_class, g.restart)) for g in groups]).double()
    y = torch.tensor([0, 0, 3, 3])
    m, v = torch.zeros_like(z), torch.zeros_like(z)
    for t in (1, 2):
        zz = z.clone().requires_grad_(True)
        out = T(G(zz, y))
        per_row = REFERENCE[inv_loss]
        # The reference's batch mean of each view, times the rows: the summed per-row loss.
        total = (per_row(out, y) + per_row(out, y)) * len(y)
        (g,) = torch.autograd.grad(total, zz)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        z = z - 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    with torch.no_grad():
        expected = G(z, y)
    assert torch.allclose(images.double(), expected, atol=1e-10, rtol=0)
    assert targets.tolist() == y.tolist()


# ---------------------------------------------------------------- the reference augmentation


def test_reference_augmentation_flips_half_and_keeps_the_rest_without_jitter():
    x = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = augment(x, torch.Generator().manual_seed(1), (1.0, 1.0), 0.0, reference=True, jitter_p=0.0)
    same = (out - x).abs().flatten(1).max(1).values < 1e-9
    flipped = (out - x.flip(-1)).abs().flatten(1).max(1).values < 1e-9
    assert bool((same | flipped).all()) and 16 < int(flipped.sum()) < 48


def test_color_jitter_is_torchvisions_brightness_and_contrast_in_a_random_order():
    x = torch.rand(12, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = color_jitter(x, torch.Generator().manual_seed(3), p=0.5)
    draws = torch.Generator().manual_seed(3)  # the same draws, in color_jitter's order
    apply = torch.rand(12, generator=draws) < 0.5
    brightness = 0.8 + 0.4 * torch.rand(12, generator=draws)
    contrast = 0.8 + 0.4 * torch.rand(12, generator=draws)
    contrast_first = torch.rand(12, generator=draws) < 0.5
    for i in range(12):
        image = x[i]
        if apply[i]:
            b, c = float(brightness[i]), float(contrast[i])
            if contrast_first[i]:
                image = TF.adjust_brightness(TF.adjust_contrast(image, c), b)
            else:
                image = TF.adjust_contrast(TF.adjust_brightness(image, b), c)
        assert torch.allclose(out[i], image, atol=1e-6), i
    assert bool(apply.any()) and not bool(apply.all())

"""Golden test for PPA's optimisation step: Adam (betas (0.1, 0.1), no weight decay) on the batch
mean of the Poincaré loss, against a float64 transcription of the authors' code
(`LukasStruppek/Plug-and-Play-Attacks@3087a4f`: `losses/poincare.py`, `attacks/optimize.py:21-51`)
and a hand-written Adam."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from workbench.api import AttackContext, DataSplits
from workbench.attack_toolkit import Group, search
from workbench_attacks.ppa import PPAParams, PPASearch

Z, K = 3, 4


def ref_poincare_loss(outputs, targets, xi=1e-4):
    u = outputs / torch.norm(outputs, p=1, dim=-1).unsqueeze(1)
    v = torch.clip(torch.eye(outputs.shape[-1], dtype=outputs.dtype)[targets] - xi, 0, 1)
    u_norm_squared = torch.norm(u, p=2, dim=1) ** 2
    v_norm_squared = torch.norm(v, p=2, dim=1) ** 2
    diff_norm_squared = torch.norm(u - v, p=2, dim=1) ** 2
    delta = 2 * diff_norm_squared / ((1 - u_norm_squared) * (1 - v_norm_squared))
    return torch.arccosh(1 + delta)


def fixed(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module.double().eval().requires_grad_(False)


def test_two_steps_equal_hand_written_adam_on_the_mean_poincare_loss():
    G = fixed(nn.Sequential(nn.Linear(Z, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))), 0)
    T = fixed(nn.Sequential(nn.Flatten(), nn.Linear(16, K)), 1)
    # Crop scale 1: the per-step RandomResizedCrop is the identity, so the views are the images.
    params = PPAParams(z_dim=Z, num_candidates=3, samples_per_target=1, search_space=3, lr=0.05,
                       betas=(0.1, 0.1), loss_batch=6, train_crop_scale=(1.0, 1.0))
    gen = torch.Generator().manual_seed(2)
    initial = {c: torch.randn(3, Z, generator=gen, dtype=torch.float64) for c in (1, 2)}
    data = DataSplits(train=TensorDataset(torch.zeros(1, 1, 4, 4), torch.zeros(1)),
                      test=TensorDataset(torch.zeros(1, 1, 4, 4), torch.zeros(1)),
                      public=None, num_classes=K, in_channels=1, image_size=4)
    ctx = AttackContext(target=T, data=data, evaluation_model=None, device=torch.device("cpu"), seed=0)
    images, targets, _, _ = search(ctx, PPASearch(params, G, T, initial), [[Group(1, 0)], [Group(2, 0)]],
                                   attack="ppa", iterations=2, max_batch=256)

    # The reference: loss = poincare_loss(T(G(w)), y).mean() over its batch of 6 (attack.batch_size);
    # torch's Adam written out, betas (0.1, 0.1), eps 1e-8, no weight decay.
    w = torch.cat([initial[1], initial[2]])
    y = torch.tensor([1, 1, 1, 2, 2, 2])
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in (1, 2):
        ww = w.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ref_poincare_loss(T(G(ww)), y).mean(), ww)
        m = 0.1 * m + 0.9 * g
        v = 0.1 * v + 0.9 * g * g
        w = w - 0.05 * (m / (1 - 0.1**t)) / ((v / (1 - 0.1**t)).sqrt() + 1e-8)
    with torch.no_grad():
        expected = G(w)
    assert torch.allclose(images.double(), expected, atol=1e-10, rtol=0)
    assert targets.tolist() == y.tolist()
    # The step really moved the latents (the identity would pass trivially otherwise).
    with torch.no_grad():
        assert not torch.allclose(expected, G(torch.cat([initial[1], initial[2]])), atol=1e-4)

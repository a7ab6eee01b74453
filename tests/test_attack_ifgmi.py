"""IF-GMI (`if-gmi`): the L1-ball projection against an independent float64 bisection, the
generator cut into layers against the whole generator, the staged search (fresh Adam per stage,
projection after every step, the pre-update image recorded, the hand-over) against a float64
transcription of `final-solution/IF-GMI@e792ef1` `attacks/optimize.py:24-122` with a hand-written
Adam, the parameter checks, and (slow) the attack end to end on the embedded digits."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from digits_recipes import digits_attack_recipe
from workbench.api import WorkbenchError
from workbench.attack_toolkit import Generator
from workbench_attacks.ifgmi import IFGMIParams, generator_layers, project_l1, staged_search
from workbench_attacks.ppa import poincare_loss


def bisection_l1_projection(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection onto {‖x‖₁ <= r}, per row, by solving Σ max(|x| − θ, 0) = r for θ by
    bisection (the KKT condition), not by sorting."""
    out = delta.clone()
    for b in range(delta.shape[0]):
        row = delta[b].flatten()
        if float(row.abs().sum()) < radius:
            continue
        lo, hi = 0.0, float(row.abs().max())
        for _ in range(200):
            mid = (lo + hi) / 2
            if float((row.abs() - mid).clamp(min=0).sum()) > radius:
                lo = mid
            else:
                hi = mid
        out[b] = (row.sign() * (row.abs() - (lo + hi) / 2).clamp(min=0)).view_as(delta[b])
    return out


def test_l1_projection_matches_bisection_and_keeps_rows_inside_the_ball():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    delta[2] *= 0.01  # inside the ball: unchanged
    radius = 3.0
    projected, changed = project_l1(delta, radius)
    assert changed.tolist() == [True, True, False, True]
    assert torch.allclose(projected, bisection_l1_projection(delta, radius), atol=1e-12, rtol=0)
    assert torch.equal(projected[2], delta[2])
    norms = projected.flatten(1).abs().sum(dim=1)
    assert torch.allclose(norms[[0, 1, 3]], torch.full((3,), radius, dtype=torch.float64), atol=1e-12)


def fixed_generator(seed: int) -> Generator:
    g = Generator(3, 1, 16, 4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        for m in g.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return g.double().eval().requires_grad_(False)


def test_the_layers_compose_to_the_generator():
    g = fixed_generator(1)
    layers = generator_layers(g)
    assert len(layers) == 3  # z -> 8x4x4, ConvT block -> 4x8x8, to_image -> 16x16 at 16 px, width 4
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = z
    for layer in layers:
        h = layer(h)
    assert torch.allclose(h, g(z), atol=1e-14, rtol=0)


def test_the_staged_search_equals_a_transcription_with_hand_written_adam():
    K = 4
    g = fixed_generator(3)
    T = nn.Sequential(nn.Flatten(), nn.Linear(256, K)).double().eval().requires_grad_(False)
    with torch.no_grad():
        T[1].weight.copy_(torch.randn(K, 256, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    p = IFGMIParams(z_dim=3, iterations=3, feature_steps=[2, 2], lr=0.05, feature_lr=0.2, radii=[None, 0.01],
                    loss_batch=4, train_crop_scale=(1.0, 1.0))  # crop scale 1: the crop is the identity
    z0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = torch.full((4,), 2)
    recorded, binding = staged_search(p, generator_layers(g), T, z0, y, [torch.Generator().manual_seed(0)])

    # The reference, stage by stage: x = the stage's variable, a fresh Adam (betas (0.1, 0.1), eps
    # 1e-8), loss = mean Poincaré over the batch, the L1 ball around the stage's start after every step,
    # the image of the last iteration recorded before its update, then x <- layer_k(x).
    project = g.project
    convt = nn.Sequential(*list(g.blocks))

    def synth(stage, x):
        if stage == 0:
            x = project(x).view(x.shape[0], g.first, 4, 4)
        if stage <= 1:
            x = convt(x)
        return torch.sigmoid(g.to_image(x))

    x = z0.clone()
    expected = []
    for stage, (n, lr, radius) in enumerate([(3, 0.05, None), (2, 0.2, None), (2, 0.2, 0.01 * 4 * 8 * 8)]):
        centre = x.clone()
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        for t in range(1, n + 1):
            xx = x.clone().requires_grad_(True)
            image = synth(stage, xx)
            (grad,) = torch.autograd.grad(ref_poincare(T(image), y).mean(), xx)
            m = 0.1 * m + 0.9 * grad
            v = 0.1 * v + 0.9 * grad * grad
            x = x - lr * (m / (1 - 0.1**t)) / ((v / (1 - 0.1**t)).sqrt() + 1e-8)
            if radius is not None:
                x = centre + bisection_l1_projection(x - centre, radius)
        expected.append(image.detach())
        with torch.no_grad():
            if stage == 0:
                x = project(x).view(x.shape[0], g.first, 4, 4)
            elif stage == 1:
                x = convt(x)
    for got, want in zip(recorded, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    assert binding[0] == 0.0 and binding[1] > 0  # the stage-2 ball is tight enough to bind
    assert not torch.allclose(expected[2], expected[0], atol=1e-4)  # the stages really moved the image


def ref_poincare(outputs, targets, xi=1e-4):
    """IF-GMI `losses/poincare.py:4-21` (the same as PPA's), transcribed."""
    u = outputs / torch.norm(outputs, p=1, dim=-1).unsqueeze(1)
    v = torch.clip(torch.eye(outputs.shape[-1], dtype=outputs.dtype)[targets] - xi, 0, 1)
    delta = 2 * torch.norm(u - v, dim=1) ** 2 / ((1 - torch.norm(u, dim=1) ** 2) * (1 - torch.norm(v, dim=1) ** 2))
    return torch.arccosh(1 + delta)


def test_the_workbench_poincare_is_the_references():
    o = torch.randn(3, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y = torch.tensor([0, 4, 2])
    assert torch.allclose(poincare_loss(o, y), ref_poincare(o, y), atol=1e-13, rtol=0)


def test_params_need_one_radius_per_feature_stage():
    with pytest.raises(ValidationError, match="one radius"):
        IFGMIParams(feature_steps=[10, 10, 10], radii=[0.25, 0.1])
    with pytest.raises(ValidationError, match="positive"):
        IFGMIParams(radii=[0.25, 0.0])


def test_a_generator_other_than_the_dcgan_is_one_clear_error():
    with pytest.raises(WorkbenchError, match="if-gmi"):
        generator_layers(nn.Linear(3, 3))


# ---------------------------------------------------------------- end to end (slow)

DIGITS_RECIPE = digits_attack_recipe("IF-GMI on digits", """
[attacks.if-gmi]
use = "if-gmi"
""")


@pytest.mark.slow
def test_ifgmi_recovers_the_private_digits(run_tiny_recipe, shared_trained_stages):
    _, results = run_tiny_recipe(DIGITS_RECIPE, workers=1)
    figures = results["variants"][0]["attacks"]["if-gmi"]
    # Measured on the cached seed-0 target, E and prior with these defaults: 0.775, 0.825, 0.90 for
    # attack seeds 0-2 (docs/attacks/ifgmi.md); the latent stage alone 0.40-0.54.
    assert figures["top1"] >= 0.45, figures  # chance is 0.2
    assert figures["top1"] == figures["top1_stage2"]  # the result is the last stage's images
    assert 0.0 <= figures["ball_binding_stage2"] <= 1.0

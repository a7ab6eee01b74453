"""Golden tests: GMI and KED-MI against direct transcriptions of the reference formulas.

Tiny fixed networks in float64; every expected value is computed here from the formulas of
spec/attacks.md (A1.1-A1.3, A2.1-A2.4), written out with explicit loops or plain tensor
algebra, not by calling the attack code under test. Fast: no GAN is trained.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from workbench.api import AttackContext, DataSplits, seeds
from workbench.attack_toolkit import Chunk, ClassDiscriminator, Group, MinibatchDiscrimination, search
from workbench.attack_toolkit.networks import FAR_L1
from workbench_attacks.gmi import GMIParams, GMISearch
from workbench_attacks.kedmi import (
    KEDMI,
    KEDMIParams,
    KEDMISearch,
    discriminator_loss,
    generator_loss,
)

Z, K, SIZE = 3, 4, 8


def fixed(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic float64 weights, eval mode, frozen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return module.double().eval().requires_grad_(False)


class TinyG(nn.Module):
    """z [n, Z] -> images [n, 1, 2, 2] in (0, 1)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(Z, 4)

    def forward(self, z):
        return self.fc(z).sigmoid().view(-1, 1, 2, 2)


class TinyHead(nn.Module):
    """images -> [n, out] (a critic score when out = 1, logits otherwise)."""

    def __init__(self, out: int, squeeze: bool = False):
        super().__init__()
        self.fc = nn.Linear(4, out)
        self.squeeze = squeeze

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y[:, 0] if self.squeeze else y


def context(target: nn.Module, seed: int = 3) -> AttackContext:
    data = DataSplits(
        train=TensorDataset(torch.zeros(1, 1, 2, 2), torch.zeros(1)),
        test=TensorDataset(torch.zeros(1, 1, 2, 2), torch.zeros(1)),
        public=None,
        num_classes=K,
        in_channels=1,
        image_size=2,
    )
    return AttackContext(
        target=target, data=data, evaluation_model=None, device=torch.device("cpu"), seed=seed
    )


def start_latents(seed: int, attack: str, group: Group, rows: int) -> torch.Tensor:
    stream = seeds.generator(seed, "attack", attack, "search", group.target_class, group.restart)
    return torch.randn(rows, Z, generator=stream).double()


def log_softmax_row(logits: torch.Tensor, k: int) -> torch.Tensor:
    return logits[k] - torch.log(torch.exp(logits).sum())


# ---------------------------------------------------------------- GMI


def gmi_reference_total(z, y, G, D, T, lam, B):
    """Total = (1/B) Σ_b [−D(G(z_b)) + λ·CE(T(G(z_b)), y_b)] (A1.1 with A1.2's constant B)."""
    total = z.new_zeros(())
    for b in range(len(z)):
        x = G(z[b : b + 1])
        total = total - D(x)[0] - lam * log_softmax_row(T(x)[0], int(y[b]))
    return total / B


def test_gmi_two_steps_equal_the_reference_nesterov_update_with_clamp():
    G, D, T = fixed(TinyG(), 0), fixed(TinyHead(1, squeeze=True), 1), fixed(TinyHead(K), 2)
    params = GMIParams(z_dim=Z, samples_per_class=2, loss_batch=5, lr=0.4, momentum=0.9, iterations=2)
    groups = [Group(0, 0), Group(2, 0), Group(3, 1)]
    ctx = context(T)
    images, targets, restarts, _ = search(
        ctx, GMISearch(params, G, D, T), [[g] for g in groups], attack="gmi", iterations=2, max_batch=256
    )

    # The authors' hand-written update (GMI Celeba/attack.py:52-57), m = 0.9, v_0 = 0.
    z = torch.cat([start_latents(ctx.seed, "gmi", g, 2) for g in groups])
    y = torch.tensor([g.target_class for g in groups for _ in range(2)])
    v = torch.zeros_like(z)
    for _ in range(2):
        zz = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(gmi_reference_total(zz, y, G, D, T, 100.0, 5), zz)
        v_prev = v
        v = 0.9 * v - 0.4 * g
        z = (z - 0.9 * v_prev + 1.9 * v).clamp(-1, 1)
    assert (z.abs() == 1).any()  # the clamp took part
    with torch.no_grad():
        expected = G(z)
    assert torch.allclose(images.double(), expected, atol=1e-12, rtol=0)
    assert targets.tolist() == y.tolist() and restarts.tolist() == [0, 0, 0, 0, 1, 1]


def test_gmi_loss_is_the_sum_over_latents_over_loss_batch():
    G, D, T = fixed(TinyG(), 0), fixed(TinyHead(1, squeeze=True), 1), fixed(TinyHead(K), 2)
    params = GMIParams(z_dim=Z, samples_per_class=3, loss_batch=60)
    problem = GMISearch(params, G, D, T)
    z = torch.randn(6, Z, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = torch.tensor([1, 1, 1, 2, 2, 2])
    total, per_latent, _ = problem.loss([z], Chunk([Group(1, 0), Group(2, 0)], [], [1, 1]), y)
    assert torch.allclose(total, gmi_reference_total(z, y, G, D, T, 100.0, 60), atol=1e-12, rtol=0)
    assert per_latent.shape == (6,)


def test_gmi_result_does_not_depend_on_max_batch():
    G, D, T = fixed(TinyG(), 0), fixed(TinyHead(1, squeeze=True), 1), fixed(TinyHead(K), 2)
    params = GMIParams(z_dim=Z, samples_per_class=2, iterations=5)
    units = [[Group(c, r)] for c in range(K) for r in range(2)]
    runs = [
        search(context(T), GMISearch(params, G, D, T), units, attack="gmi", iterations=5, max_batch=m)[0]
        for m in (1, 4, 256)
    ]
    assert torch.allclose(runs[0], runs[1], atol=1e-12) and torch.allclose(runs[0], runs[2], atol=1e-12)


# ---------------------------------------------------------------- KED-MI


def mbd_reference(x: torch.Tensor, T: torch.Tensor, kernels: int, dim: int) -> torch.Tensor:
    """o_b(i) = Σ_j exp(−Σ_c |M_ibc − M_jbc|) − 1, M = x·T (KEDMI discri.py:7-32), with loops."""
    n = len(x)
    M = (x @ T.reshape(T.shape[0], -1)).view(n, kernels, dim)
    out = torch.zeros(n, kernels, dtype=x.dtype)
    for i in range(n):
        for b in range(kernels):
            total = 0.0
            for j in range(n):
                total = total + torch.exp(-(M[i, b] - M[j, b]).abs().sum())
            out[i, b] = total - 1
    return torch.cat([x, out], dim=1)


def test_minibatch_discrimination_on_a_hand_made_batch():
    layer = MinibatchDiscrimination(2, kernels=2, kernel_dim=1).double()
    with torch.no_grad():
        layer.T.copy_(torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]]))  # M_i = x_i, one dim per kernel
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 2.0]], dtype=torch.float64)
    out = layer(x)
    # Kernel 0 sees 0, 1, 3: o(0) = e^-1 + e^-3; kernel 1 sees 0, 2, 2: o(1) = e^-2 + e^0.
    e = math.exp
    expected_o = torch.tensor(
        [[e(-1) + e(-3), e(-2) + e(-2)], [e(-1) + e(-2), e(-2) + 1], [e(-3) + e(-2), e(-2) + 1]],
        dtype=torch.float64,
    )
    assert torch.allclose(out[:, :2], x) and torch.allclose(out[:, 2:], expected_o, atol=1e-15)
    T = torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        layer3 = MinibatchDiscrimination(2, kernels=3, kernel_dim=2).double()
        layer3.T.copy_(T.view(2, 3, 2))  # the reference T [in, kernels, dims], flattened row-major
    assert torch.allclose(layer3(x), mbd_reference(x, T, 3, 2), atol=1e-12)


def test_minibatch_discrimination_caps_far_pairs_without_changing_a_figure():
    """Pairs beyond FAR_L1 count as exp(-50) (a speed-up: subnormals are slow on a CPU): in float32 the
    output has the same bits as the uncapped formula, and in float64 the gradients agree to 1e-15."""
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(32, kernels=4, kernel_dim=5)  # T ~ N(0, 1), as the reference initialises it
    gen = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(16, 32, generator=gen)).requires_grad_()  # most pairs ~60 apart, some ~15

    def uncapped(x, T):
        m = (x @ T.flatten(1)).view(len(x), 4, 5)
        l1 = (m[:, None] - m[None, :]).abs().sum(dim=3)
        return torch.cat([x, torch.exp(-l1).sum(dim=1) - 1], dim=1), l1

    expected, l1 = uncapped(x, layer.T)
    off_diagonal = l1[~torch.eye(16, dtype=torch.bool)]
    assert (off_diagonal > FAR_L1).any() and (off_diagonal < FAR_L1).any()  # both kinds of pair
    assert torch.equal(layer(x), expected)
    weights = torch.randn(16, 36, generator=gen, dtype=torch.float64)
    layer64, x64 = layer.double(), x.detach().double().requires_grad_()
    got = torch.autograd.grad((layer64(x64) * weights).sum(), [x64, layer64.T])
    want = torch.autograd.grad((uncapped(x64, layer64.T)[0] * weights).sum(), [x64, layer64.T])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-15)


def test_kedmi_discriminator_has_instance_norm_on_every_conv_and_no_dropout():
    D = ClassDiscriminator(1, 16, 4, num_classes=5, mbd_kernels=3, mbd_kernel_dim=2)
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in D.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(convs) == len(norms) >= 2
    assert not [m for m in D.modules() if isinstance(m, nn.Dropout)]
    assert D.head.in_features == D.trunk.feature_dim + 3
    # MBD couples a batch: an image's logits change with its batch-mates, unless split in blocks.
    # The batch-mates are near-copies, so exp(-L1) is close to 1 whatever the random init: with
    # independent images the coupling can fall below float tolerance (a flaky 1-in-12 before).
    torch.manual_seed(0)
    D = ClassDiscriminator(1, 16, 4, num_classes=5, mbd_kernels=3, mbd_kernel_dim=2).double().eval()
    gen = torch.Generator().manual_seed(0)
    first = torch.rand(2, 1, 16, 16, generator=gen, dtype=torch.float64)
    x = torch.cat([first, first + 1e-3 * torch.rand(2, 1, 16, 16, generator=gen, dtype=torch.float64)])
    with torch.no_grad():
        alone = D(x[:2])[1]
        together = D(x)[1][:2]
        blocked = D(x, blocks=[2, 2])[1][:2]
    assert (alone - together).abs().max() > 1e-3
    assert torch.allclose(alone, blocked, atol=1e-12)


def test_kedmi_gan_losses_equal_the_reference_formulas():
    gen = torch.Generator().manual_seed(2)
    lab, t_logits, unl, fake = (torch.randn(5, K, generator=gen, dtype=torch.float64) for _ in range(4))
    # L_D = softXEnt(D(x_lab), T(x_lab)) + ½[mean softplus(lse_u) − mean lse_u + mean softplus(lse_f)]
    soft = (
        -sum(
            (torch.softmax(t_logits[b], 0)[k] * torch.log_softmax(lab[b], 0)[k])
            for b in range(5)
            for k in range(K)
        )
        / 5
    )
    lse_u, lse_f = torch.logsumexp(unl, 1), torch.logsumexp(fake, 1)
    softplus = torch.nn.functional.softplus
    expected_d = soft + 0.5 * (softplus(lse_u).mean() - lse_u.mean() + softplus(lse_f).mean())
    assert torch.allclose(discriminator_loss(lab, t_logits, unl, fake), expected_d, atol=1e-12)

    # L_G = mean_d |mean_b f_fake − mean_b f_real| + 1e-4 · (−Σ_b Σ_k p log p)  (entropy SUMMED)
    f_fake, f_real = (
        torch.randn(5, 7, generator=gen, dtype=torch.float64),
        torch.randn(5, 7, generator=gen, dtype=torch.float64),
    )
    entropy_sum = 0.0
    for b in range(5):
        p = torch.softmax(fake[b], 0)
        entropy_sum = entropy_sum - (p * torch.log(p)).sum()
    expected_g = (f_fake.mean(0) - f_real.mean(0)).abs().mean() + 1e-4 * entropy_sum
    assert torch.allclose(generator_loss(f_fake, f_real, fake, 1e-4), expected_g, atol=1e-12)


def kedmi_networks():
    from workbench.attack_toolkit import Generator

    G = fixed(Generator(Z, 1, SIZE, 4), 0)
    D = fixed(ClassDiscriminator(1, SIZE, 4, num_classes=K, mbd_kernels=3, mbd_kernel_dim=2), 1)
    T = fixed(nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, K)), 2)
    return G, D, T


@pytest.mark.parametrize("init_log_var, clip_z", [(0.0, False), (1.0, True)])
def test_kedmi_step_equals_the_reference_update(init_log_var, clip_z):
    G, D, T = kedmi_networks()
    params = KEDMIParams(z_dim=Z, lr=0.02, init_log_var=init_log_var, clip_z=clip_z, class_block=3, fits=1)
    classes = [0, 1, 2, 3]
    units = KEDMI(params).units(classes)  # one fit; blocks [0, 1, 2] and [3]
    assert [[g.target_class for g in u] for u in units] == [[0, 1, 2], [3]]
    groups = [g for u in units for g in u]
    problem = KEDMISearch(params, G, D, T)
    chunk = Chunk(groups, [seeds.generator(0, "x", g.target_class) for g in groups], [3, 1])
    mu, log_var = problem.start(chunk, torch.device("cpu"))
    assert torch.equal(log_var, torch.full((4, Z), init_log_var, dtype=torch.float64))
    y = torch.tensor(classes)
    total, _, _ = problem.loss([mu, log_var], chunk, y)

    # Reference (A2.4): per block, mean_i softplus(−lse D(G(z_i))) + 100·mean_i CE, z = μ + e^{s/2} ε,
    # one ε per identity (the same stream draws), D's MBD seeing the block only; blocks summed.
    eps = torch.cat([torch.randn(1, Z, generator=seeds.generator(0, "x", c)) for c in classes]).double()
    mu_r = torch.zeros(4, Z, dtype=torch.float64, requires_grad=True)
    s_r = torch.full((4, Z), init_log_var, dtype=torch.float64, requires_grad=True)
    z = mu_r + torch.exp(s_r / 2) * eps
    if clip_z:
        z = z.clamp(-1, 1)
    x = G(z)
    feats = D.trunk(x)
    mixed = torch.cat([mbd_reference(feats[:3], D.mbd.T, 3, 2), mbd_reference(feats[3:], D.mbd.T, 3, 2)])
    lse = torch.logsumexp(D.head(mixed), 1)
    logits = T(x)
    ce = torch.stack([-log_softmax_row(logits[i], i) for i in range(4)])
    per = torch.nn.functional.softplus(-lse) + 100 * ce
    expected = per[:3].mean() + per[3:].mean()
    assert torch.allclose(total, expected, atol=1e-10)

    g_mu, g_s = torch.autograd.grad(expected, [mu_r, s_r])
    got_mu, got_s = torch.autograd.grad(total, [mu, log_var])
    assert torch.allclose(got_mu, g_mu, atol=1e-10) and torch.allclose(got_s, g_s, atol=1e-10)
    # Adam's first step (default betas, eps 1e-8): θ − lr · g / (|g| + eps).
    mu.grad, log_var.grad = got_mu, got_s
    opt = problem.optimizer([mu, log_var])
    opt.step()
    assert torch.allclose(mu.detach(), -0.02 * g_mu / (g_mu.abs() + 1e-8), atol=1e-12)


def test_kedmi_with_one_latent_per_class_blocks_is_deterministic_and_batching_free():
    G, D, T = kedmi_networks()
    params = KEDMIParams(z_dim=Z, iterations=4, fits=2, samples_per_class=3, class_block=K)
    attack = KEDMI(params)
    units = attack.units(list(range(K)))
    assert len(units) == 2 and all(len(u) == K for u in units)  # one block of all classes per fit
    runs = [
        search(context(T), KEDMISearch(params, G, D, T), units, attack="kedmi", iterations=4, max_batch=m)
        for m in (1, K, 256)
    ]
    again = search(
        context(T), KEDMISearch(params, G, D, T), units, attack="kedmi", iterations=4, max_batch=256
    )
    assert torch.equal(runs[2][0], again[0])
    for other in runs[:2]:
        assert torch.allclose(other[0], runs[2][0], atol=1e-12)
    images, targets, restarts, _ = runs[2]
    assert len(images) == 2 * K * 3
    # One index per (fit, draw): fit * samples_per_class + draw.
    assert restarts.tolist() == [f * 3 + d for f in range(2) for _ in range(K) for d in range(3)]
    assert targets.tolist() == [c for _ in range(2) for c in range(K) for _ in range(3)]


# ---------------------------------------------------------------- the spread across fits


def test_kedmi_spread_is_the_mean_over_fits_of_the_std_over_draws():
    """DefendMI `DMI/recovery.py:166-185`: per fit, `dist_inversion` returns the mean and
    `statistics.stdev` over its draws of the per-draw accuracy (`recover_vib.py:146-149`);
    `np.array(res_all).mean(0)` averages both over the fits."""
    import statistics

    from workbench_attacks.privacy import accuracy_over_restarts

    fits, draws, classes = 4, 6, 5
    gen = torch.Generator().manual_seed(0)
    # Fits of different quality, so pooling the fits under a draw index would shrink the std.
    quality = torch.tensor([0.2, 0.5, 0.7, 0.9])
    hits = torch.rand(fits, classes, draws, generator=gen) < quality[:, None, None]
    restarts = torch.tensor([f * draws + d for f in range(fits) for _ in range(classes) for d in range(draws)])
    flat = hits.reshape(-1)
    means, stds = [], []
    for f in range(fits):
        per_draw = [sum(bool(hits[f, c, d]) for c in range(classes)) / classes for d in range(draws)]
        means.append(statistics.mean(per_draw))
        stds.append(statistics.stdev(per_draw))
    mean, std = accuracy_over_restarts(flat, restarts, draws_per_fit=draws)
    assert abs(mean - sum(means) / fits) < 1e-12
    assert abs(std - sum(stds) / fits) < 1e-12
    # Pooling the fits under each draw index, as before, is a different (smaller) figure here.
    pooled = accuracy_over_restarts(flat, restarts % draws)[1]
    assert abs(pooled - std) > 0.05

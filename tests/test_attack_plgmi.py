"""PLG-MI (`plg-mi`): golden tests of the objective against direct transcriptions of
spec/attacks.md B2 on tiny float64 networks (margin loss, hinge losses, projection
discriminator output, top-n selection), the augmentation and the cached per-target cGAN stage.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from digits_recipes import digits_attack_recipe
from workbench.api import AttackContext, DataSplits, StageCache
from workbench.attack_toolkit import ImagePool
from workbench_attacks.plgmi import (
    ProjectionDiscriminator,
    augment,
    hinge_d_loss,
    hinge_g_loss,
    margin_loss,
    top_n_selection,
)


@pytest.fixture(scope="module")
def registry():
    import workbench

    return workbench.load_registry()


def test_margin_loss_matches_the_reference():
    """B2.2: L_inv = mean_b(−o[b, y_b] + max_{j ≠ y_b} o[b, j])."""
    o = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    rows = margin_loss(o, y)
    for b in range(6):
        best_other = max(float(o[b, j]) for j in range(4) if j != int(y[b]))
        assert float(rows[b]) == pytest.approx(-float(o[b, y[b]]) + best_other, rel=1e-14)


def test_hinge_losses_match_the_reference():
    """B2.2: L_D = mean relu(1 − D(x, y)) + mean relu(1 + D(G(z), ỹ)); L_G = −mean D(G(z), ỹ)."""
    real = torch.tensor([2.0, 0.5, -0.3], dtype=torch.float64)
    fake = torch.tensor([-2.0, 0.1, 1.5, -0.7], dtype=torch.float64)
    expected_d = sum(max(0.0, 1 - float(r)) for r in real) / 3 + sum(max(0.0, 1 + float(f)) for f in fake) / 4
    assert float(hinge_d_loss(real, fake)) == pytest.approx(expected_d, rel=1e-14)
    assert float(hinge_g_loss(fake)) == pytest.approx(-sum(float(f) for f in fake) / 4, rel=1e-14)


def test_projection_discriminator_output_is_linear_plus_class_projection():
    """B2.2: out = l(h) + Σ_j emb(y)_j · h_j with h the sum-pooled features (SN weights in eval)."""
    torch.manual_seed(0)
    d = ProjectionDiscriminator(1, 8, 4, num_classes=3).double().eval()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    with torch.no_grad():
        out = d(x, y)
        h = d.trunk(x)
        w, b = d.linear.weight, d.linear.bias  # the spectrally normalised weight
        emb = d.embed.weight
        for i in range(5):
            pooled = [float(h[i, c].sum()) for c in range(h.shape[1])]
            linear = sum(float(w[0, c]) * pooled[c] for c in range(len(pooled))) + float(b[0])
            projection = sum(float(emb[y[i], c]) * pooled[c] for c in range(len(pooled)))
            assert float(out[i]) == pytest.approx(linear + projection, rel=1e-10)
    # Spectral norm: the normalised linear weight has largest singular value 1.
    with torch.no_grad():
        assert float(torch.linalg.matrix_norm(d.linear.weight, ord=2)) == pytest.approx(1.0, rel=1e-6)


def test_top_n_selection_keeps_the_most_confident_public_images_per_class():
    """B2.1: for each class c the n images with the largest p[:, c]; overlaps allowed."""
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5], [0.05, 0.95]])
    index, labels = top_n_selection(p, 2)
    pairs = sorted(zip(index.tolist(), labels.tolist(), strict=True))
    assert pairs == [(0, 0), (1, 0), (2, 1), (4, 1)]
    index, labels = top_n_selection(p, 4)
    assert 3 in index[labels == 0].tolist() and 3 in index[labels == 1].tolist()  # both classes


def test_augment_is_identity_without_crop_or_rotation_and_seeded():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    same = augment(x, torch.Generator().manual_seed(0), (1.0, 1.0), 0.0)
    assert torch.allclose(same, x, atol=1e-5)
    a = augment(x, torch.Generator().manual_seed(5), (0.8, 1.0), 5.0)
    b = augment(x, torch.Generator().manual_seed(5), (0.8, 1.0), 5.0)
    assert torch.equal(a, b) and not torch.allclose(a, x)


def test_cgan_stage_is_cached_per_target_and_the_attack_runs(registry, tmp_path):
    gen = torch.Generator().manual_seed(0)
    public = TensorDataset(torch.rand(40, 1, 8, 8, generator=gen), torch.zeros(40))
    private = TensorDataset(torch.rand(4, 1, 8, 8, generator=gen), torch.zeros(4))
    data = DataSplits(train=private, test=private, public=public, num_classes=3, in_channels=1, image_size=8)
    target = registry.create("backbone", "mcnn", width=4).build(3, 1, 8).eval()
    ctx = AttackContext(
        target=target,
        data=data,
        evaluation_model=None,
        device=torch.device("cpu"),
        seed=0,
        cache=StageCache(tmp_path / "cache"),
    )
    attack = registry.create(
        "attack",
        "plg-mi",
        top_n=5,
        gan_steps=2,
        critic_iters=1,
        gan_width=4,
        gan_batch_size=8,
        iterations=3,
        restarts=2,
        samples_per_class=2,
    )
    before = {k: v.clone() for k, v in target.state_dict().items()}
    result = attack.run(ctx)
    assert result.images.shape == (3 * 2 * 2, 1, 8, 8)
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    assert result.figures["gan_cached"] == 0.0
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in target.parameters())
    again = attack.run(ctx)
    assert again.figures["gan_cached"] == 1.0 and torch.equal(again.images, result.images)
    _, hit = attack.prior(ctx, ImagePool(public, "plg-mi"))
    assert hit


def test_params_document_every_field_with_a_reference(registry):
    schema = registry.get("attack", "plg-mi").params_schema()
    assert not [k for k, v in schema["properties"].items() if not v.get("description")]
    fields = registry.get("attack", "plg-mi").params.model_fields
    for field in ("top_n", "alpha", "gan_betas", "iterations", "lr", "gan_steps"):
        assert "Reference" in fields[field].description or "reference" in fields[field].description, field


# ---------------------------------------------------------------- end to end on digits

DIGITS_RECIPE = digits_attack_recipe("PLG-MI on digits", """
[attacks.plg-mi]
use = "plg-mi"
gan_steps = 120
iterations = 100
restarts = 2
""")
"""A smaller budget than the plugin's digits defaults (400 cGAN steps, 200 inversion steps, 5 restarts),
which take about 130 s here; this one takes about 50 s on the shared seed-0 target and E."""


@pytest.mark.slow
def test_plgmi_recovers_the_private_digits(run_tiny_recipe, shared_trained_stages):
    # Measured with this recipe on a quiet 2-core machine (two torch threads, the recipe's seed set
    # to 0, 1, 2): top-1 0.91, 0.81, 0.91 (chance 0.2); with the plugin defaults, 0.98 on seed 0.
    _, results = run_tiny_recipe(DIGITS_RECIPE, workers=1)
    figures = results["variants"][0]["attacks"]["plg-mi"]
    assert figures["top1"] >= 0.4, figures
    assert figures["gan_cached"] == 0.0  # the per-target cGAN was trained in this run

"""Defenses and the shared trainer: loss formulas against hand computations, schedules, sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench import load_registry
from workbench.recipe.schema import OODTrainingConfig, TrainConfig
from workbench.running.batches import balanced_batches
from workbench.running.trainer import OODFeed, lr_at, train_classifier


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def _batch(seed=0, m=32, classes=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(m, 1, 16, 16, generator=g)
    y = torch.arange(m) % classes
    return x, y


def test_bido_loss_is_ce_plus_lambda_x_minus_lambda_y(registry):
    """L = CE + λx Σ_j d(X, Z_j) − λy Σ_j d(Z_j, Y), each d from plain measure calls."""
    x, y = _batch()
    torch.manual_seed(0)
    model = registry.create("backbone", "mcnn", width=8).build(5, 1, 16)
    defense = registry.create("defense", "bido", lambda_x=0.3, lambda_y=2.0, measure={"use": "hsic"})
    logits, hiddens = model.forward_hidden(x)
    out = defense.loss(x=x, y=y, logits=logits, hiddens=hiddens, model=model)

    measure = registry.create("dependency", "hsic")
    gaussian_label = registry.create("dependency", "hsic", kernel_a="gaussian", kernel_b="linear")
    one_hot = F.one_hot(y, 5).float()
    dep_x = [measure(x.flatten(1), h.flatten(1)) for h in hiddens]
    dep_y = [gaussian_label(h.flatten(1), one_hot) for h in hiddens]
    expected = F.cross_entropy(logits, y) + 0.3 * sum(dep_x) - 2.0 * sum(dep_y)
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    for j in range(len(hiddens)):
        assert out.logs[f"dep_x/{j}"] == pytest.approx(float(dep_x[j].detach()), rel=1e-5)
        assert out.logs[f"dep_y/{j}"] == pytest.approx(float(dep_y[j].detach()), rel=1e-5)
    out.loss.backward()
    first = next(model.parameters())
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0


def test_bido_layer_choice_and_zero_lambdas(registry):
    x, y = _batch(1)
    model = registry.create("backbone", "mcnn", width=8).build(5, 1, 16)
    logits, hiddens = model.forward_hidden(x)
    only_last = registry.create("defense", "bido", layers=[-1], measure={"use": "coco"})
    out = only_last.loss(x=x, y=y, logits=logits, hiddens=hiddens, model=model)
    assert set(out.logs) == {"ce", "dep_x/0", "dep_y/0"}
    plain = registry.create("defense", "bido", lambda_x=0.0, lambda_y=0.0)
    out = plain.loss(x=x, y=y, logits=logits, hiddens=hiddens, model=model)
    assert torch.allclose(out.loss, F.cross_entropy(logits, y))


def test_mid_kl_matches_the_gaussian_formula(registry):
    x, y = _batch(2)
    defense = registry.create("defense", "mid", beta=0.5, bottleneck_dim=4)
    model = defense.prepare_model(registry.create("backbone", "mcnn", width=8).build(5, 1, 16), 5)
    model.eval()  # the code is its mean: logits are deterministic
    logits, hiddens = model.forward_hidden(x)
    out = defense.loss(x=x, y=y, logits=logits, hiddens=hiddens, model=model)
    stats = model.encode(model.backbone.forward_hidden(x)[1][-1]).double()
    mu, log_var = stats.chunk(2, dim=1)
    kl = (0.5 * (mu**2 + log_var.exp() - log_var - 1).sum(1)).mean()
    assert out.logs["kl"] == pytest.approx(float(kl.detach()), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(F.cross_entropy(logits, y).detach()) + 0.5 * float(kl.detach()), rel=1e-5)
    assert model.feature_dim == 4 and hiddens[-1].shape == (32, 4)


def test_multistep_schedule_is_a_function_of_the_epoch():
    config = TrainConfig(epochs=10, optimizer={"name": "sgd", "lr": 0.1, "nesterov": True},
                         schedule={"name": "multistep", "milestones": [3, 6], "gamma": 0.5})
    assert [lr_at(config, e) for e in range(8)] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])
    assert lr_at(TrainConfig(), 99) == 1e-3


def test_balanced_batches_hold_k_classes_times_n_images():
    labels = torch.arange(200) % 20
    g = torch.Generator().manual_seed(0)
    batches = list(balanced_batches(labels, classes=4, per_class=3, generator=g))
    assert len(batches) == 200 // 12
    for index in batches:
        counts = torch.bincount(labels[index], minlength=20)
        assert sorted(counts[counts > 0].tolist()) == [3, 3, 3, 3]


@pytest.mark.slow
def test_trainer_with_balanced_batches_and_sgd_learns(registry):
    data = registry.create("dataset", "digits").load(0)
    model = registry.create("backbone", "mcnn", width=8).build(5, 1, 16)
    config = TrainConfig(epochs=3, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                         balanced_batches={"classes": 5, "per_class": 8})
    result = train_classifier(model, registry.create("defense", "none"), data.train, config,
                              device=torch.device("cpu"), seed=0, test_data=data.test)
    assert result.history[-1]["train_accuracy"] > 0.8


@pytest.mark.slow
def test_ood_phase_starts_after_warmup_and_logs_its_loss(registry):
    data = registry.create("dataset", "digits").load(0)
    aux = registry.create("ood_dataset", "letters", role="auxiliary", size=200).load(16, 1, 0)
    events = []
    model = registry.create("backbone", "mcnn", width=8).build(5, 1, 16)
    config = OODTrainingConfig(dataset={"use": "letters"}, warmup_epochs=2, loss={"use": "entropy", "gamma": 0.01})
    loss = registry.create("ood_loss", "entropy", gamma=0.01)
    train_classifier(model, registry.create("defense", "none"), data.train, TrainConfig(epochs=3),
                     device=torch.device("cpu"), seed=0, ood=OODFeed(aux, config, loss),
                     emit=lambda type, **f: events.append((type, f)))
    epochs = [f["metrics"] for t, f in events if t == "epoch"]
    assert "ood_loss" not in epochs[0] and "ood_loss" not in epochs[1]
    # Entropy term: −γ Σ H over a batch of 32 (half of 64), each H in [0, log 5].
    assert -0.01 * 32 * math.log(5) - 1e-6 <= epochs[2]["ood_loss"] < 0
    assert epochs[2]["ood_share"] > 0

"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


def trained_target(registry, data):
    """A small CNN trained on the private digits for a few epochs (seconds on a CPU)."""
    torch.manual_seed(0)
    backbone = registry.create("backbone", "mcnn", width=16)
    model = backbone.build(data.num_classes, data.in_channels, data.image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.train.tensors
    for _ in range(3):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # as the runner hands the target to an attack
    return model.eval()


def test_reconstructions_raise_the_targets_confidence(make_registry, make_attack_context):
    registry = make_registry()
    data = registry.create("dataset", "digits", image_size=16).load(seed=0)
    target = trained_target(registry, data)
    attack = registry.create("attack", "__NAME__", steps=50, per_class=3)
    events = []
    # The context the harness builds from the attack's declared access (a white-box attack gets the module).
    ctx = make_attack_context(attack, target, data, emit=lambda kind, **fields: events.append(kind))
    result = attack.run(ctx)

    assert result.images.shape == (5 * 3, 1, 16, 16)  # 3 per private digit, shaped like the data
    assert torch.equal(result.targets, torch.arange(5).repeat_interleave(3))
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    with torch.no_grad():
        def confidence(images):
            return float(target(images).softmax(1).gather(1, result.targets[:, None]).mean())

        assert confidence(result.images) > max(0.8, confidence(torch.rand_like(result.images)) + 0.3)
    assert "progress" in events

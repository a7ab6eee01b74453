"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import pytest
import torch

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


RECIPE = """
seed = 0
device = "cpu"
data = { use = "digits", image_size = 16 }
target.backbone = { use = "__NAME__", hidden = 32 }
target.train = { epochs = 5, batch_size = 64 }

[[variants]]
name = "none"
defense = { use = "none" }
"""


def test_forward_hidden_matches_forward(make_registry):
    model = make_registry().create("backbone", "__NAME__", hidden=16).build(5, 1, 16)
    x = torch.rand(4, 1, 16, 16)
    logits, hiddens = model.forward_hidden(x)
    assert logits.shape == (4, 5)
    assert torch.allclose(logits, model(x)) and hiddens[-1].shape == (4, model.feature_dim)


def test_trains_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(RECIPE)
    assert results["variants"][0]["utility"]["test_accuracy"] > 0.5  # 5 classes: chance is 0.2

"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from workbench.testing import TINY_RECIPE

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


def test_loss_is_smoothed_cross_entropy(make_registry):
    defense = make_registry().create("defense", "__NAME__", smoothing=0.0)
    logits, y = torch.randn(8, 5), torch.arange(8) % 5
    out = defense.loss(x=None, y=y, logits=logits, hiddens=[], model=None)
    assert torch.allclose(out.loss, F.cross_entropy(logits, y))


def test_trains_a_variant_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(TINY_RECIPE.replace('use = "none"', 'use = "__NAME__", smoothing = 0.2'))
    assert results["variants"][0]["utility"]["test_accuracy"] > 0.5  # 5 classes: chance is 0.2

"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from workbench.testing import TINY_RECIPE

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


def test_a_confident_prediction_scores_higher(make_registry):
    score = make_registry().create("ood_score", "__NAME__")
    model = nn.Identity()  # the "images" are the logits themselves
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0]])
    assert torch.allclose(score(model, logits), torch.tensor([5.0, 0.1]))


def test_scores_the_ood_sets_of_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(TINY_RECIPE + '''
[ood]
score = { use = "__NAME__" }
test_sets = { noise = { use = "noise", size = 200 } }
''', overrides=["target.train.epochs=2"])  # two epochs are enough to check this
    ood = results["variants"][0]["ood"]
    assert ood["score"] == "__NAME__" and 0.0 <= ood["sets"]["noise"]["auroc"] <= 1.0

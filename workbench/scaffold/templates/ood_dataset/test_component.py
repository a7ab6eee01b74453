"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import pytest
import torch
from workbench.testing import TINY_RECIPE

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


def test_images_are_shaped_like_the_in_distribution_data(make_registry):
    ood = make_registry().create("ood_dataset", "__NAME__", size=20)
    images, labels = ood.load(image_size=32, in_channels=3, seed=0).tensors
    assert images.shape == (20, 3, 32, 32) and labels.shape == (20,)
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_same_seed_same_images(make_registry):
    ood = make_registry().create("ood_dataset", "__NAME__", size=8)
    assert torch.equal(ood.load(16, 1, seed=3).tensors[0], ood.load(16, 1, seed=3).tensors[0])
    assert not torch.equal(ood.load(16, 1, seed=3).tensors[0], ood.load(16, 1, seed=4).tensors[0])


def test_measured_as_an_ood_test_set_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(TINY_RECIPE + '''
[ood]
score = { use = "msp" }
test_sets = { rings = { use = "__NAME__", size = 200 } }
''', overrides=["target.train.epochs=2"])  # two epochs are enough to check this
    figures = results["variants"][0]["ood"]["sets"]["rings"]
    assert 0.0 <= figures["auroc"] <= 1.0 and 0.0 <= figures["fpr95"] <= 1.0

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
data = { use = "__NAME__", image_size = 16 }
target.backbone = { use = "mcnn", width = 16 }
target.train = { epochs = 5, batch_size = 64 }

[[variants]]
name = "none"
defense = { use = "none" }
"""


def test_splits_are_shaped_and_labelled_as_workbench_expects(make_registry):
    data = make_registry().create("dataset", "__NAME__", private_classes=3, per_class=10).load(seed=0)
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 1, 16)
    x, y = data.train[0]
    assert x.shape == (1, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert (len(data.train), len(data.test), len(data.public)) == (24, 6, 30)
    assert set(data.test.tensors[1].tolist()) == {0, 1, 2}
    assert set(data.public.tensors[1].tolist()).isdisjoint(range(3))


def test_same_seed_same_images(make_registry):
    dataset = make_registry().create("dataset", "__NAME__", per_class=10)
    assert torch.equal(dataset.load(1).train.tensors[0], dataset.load(1).train.tensors[0])
    assert not torch.equal(dataset.load(1).train.tensors[0], dataset.load(2).train.tensors[0])


def test_a_target_learns_it_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(RECIPE)
    assert results["variants"][0]["utility"]["test_accuracy"] > 0.5  # 4 classes: chance is 0.25

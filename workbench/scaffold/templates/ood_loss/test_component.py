"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import json

import pytest
import torch
from workbench.testing import TINY_RECIPE

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


def test_smallest_when_the_ood_prediction_is_flat(make_registry):
    loss = make_registry().create("ood_loss", "__NAME__", weight=2.0)
    id_logits = torch.randn(8, 4)
    assert float(loss(id_logits, torch.zeros(6, 4))) == pytest.approx(2.0 / 4)
    confident = torch.tensor([[9.0, 0.0, 0.0, 0.0]]).repeat(6, 1).requires_grad_(True)
    value = loss(id_logits, confident)
    assert float(value.detach()) > 1.9
    value.backward()
    assert confident.grad[:, 0].gt(0).all()  # descending the loss lowers the confident logit


def test_joins_training_after_the_warm_up_in_a_tiny_recipe(run_tiny_recipe):
    run_dir, _ = run_tiny_recipe(TINY_RECIPE + '''
[variants.ood_training]
dataset = { use = "shapes", role = "auxiliary", size = 200 }
loss = { use = "__NAME__", weight = 0.5 }
warmup_epochs = 1
''', overrides=["target.train.epochs=2"])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["type"] == "epoch" and e.get("variant") == "none"]
    assert ["ood_loss" in e["metrics"] for e in epochs] == [False, True]

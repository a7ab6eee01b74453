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


def test_measure_of_a_variable_with_itself_is_one(make_registry):
    measure = make_registry().create("dependency", "__NAME__")
    a = torch.randn(64, 8)
    assert float(measure(a, a)) == pytest.approx(1.0, rel=1e-4)
    assert float(measure(a, torch.randn(64, 8))) < 0.5


def test_measure_is_differentiable(make_registry):
    measure = make_registry().create("dependency", "__NAME__")
    a = torch.randn(32, 4, requires_grad=True)
    measure(a, a.detach() + 0.1 * torch.randn(32, 4)).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()

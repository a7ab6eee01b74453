"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import pytest
from workbench.testing import TINY_RECIPE

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


def test_metric_runs_in_a_tiny_recipe(run_tiny_recipe):
    _, results = run_tiny_recipe(TINY_RECIPE + '''
[[metrics]]
use = "accuracy"

[[metrics]]
use = "__NAME__"
''', overrides=["target.train.epochs=2"])  # two epochs are enough to check this
    value = results["variants"][0]["utility"]["__KEY__"]
    assert 0.2 <= value <= 1.0  # 5 classes: a confidence is at least 1/5

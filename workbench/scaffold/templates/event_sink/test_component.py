"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import csv
import json

import pytest
from workbench.testing import TINY_RECIPE

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


def test_gets_the_figures_of_a_tiny_run_in_order(run_tiny_recipe):
    run_dir, _ = run_tiny_recipe(TINY_RECIPE + '''
[[sinks]]
use = "__NAME__"
file = "figures.csv"
''', overrides=["target.train.epochs=2"])  # two epochs are enough to check this
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    expected = []
    for e in events:
        if e["type"] == "epoch":
            where, figures = [e["variant"], e["stage"], str(e["epoch"])], e["metrics"]
        elif e["type"] == "result":
            where, figures = [e["variant"], e["section"], ""], e["figures"]
        else:
            continue
        expected += [[*where, name, str(value)] for name, value in figures.items()]
    with (run_dir / "figures.csv").open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == __MODULE__.COLUMNS
    assert rows[1:] == expected and len(expected) > 5

"""Tests of the __KIND__ `__NAME__`, with workbench's pytest fixtures (`workbench.testing`)."""

from __future__ import annotations

import json

import pytest
from workbench.api import Job
from workbench.testing import TINY_RECIPE

import __MODULE__


@pytest.fixture(autouse=True)
def registered(register_plugin):
    """This package registered inline, as its entry point registers it once installed: `make_registry()`
    and `run_tiny_recipe` see it without `pip install`."""
    register_plugin(__MODULE__, "__NAME__")


def test_runs_the_jobs_and_returns_their_outcomes_in_order(make_registry, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)

    def run_job(name, recipe_path, seed):
        """A job that runs a whole (one-epoch) recipe into the run directory `name`."""
        options = {"recipe": str(recipe_path), "overrides": [f"seed={seed}", "target.train.epochs=1"]}
        return Job(kind="run", run_dir=str(tmp_path / name), cache_dir=str(tmp_path / "cache"),
                   options=options)

    broken = run_job("broken", tmp_path / "missing.toml", 0)
    jobs = [run_job("seed0", recipe, 0), broken, run_job("seed1", recipe, 1)]
    executor = make_registry().create("executor", "__NAME__", workers=2)
    polls = []
    try:
        outcomes = executor.run(jobs, poll=lambda: polls.append(1))
    finally:
        executor.close()

    assert [o.ok for o in outcomes] == [True, False, True]  # a failed job does not stop the others
    assert "missing.toml" in outcomes[1].error and polls
    for outcome, seed in ((outcomes[0], 0), (outcomes[2], 1)):
        results = json.loads((tmp_path / f"seed{seed}" / "results.json").read_text())
        assert outcome.value == str(tmp_path / f"seed{seed}") and results["seed"] == seed

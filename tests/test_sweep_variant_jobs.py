"""Sweeps on `processes` queue every run's variants as separate jobs (so workers stay busy to the
end), and a run's figures are exactly those of a single run with the same shared stages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from workbench.components.registry import load_registry
from workbench.running.runner import RunOptions, run_recipe
from workbench.storage.events import read_events
from workbench.sweeps import SweepOptions, load_sweep, run_sweep
from workbench.sweeps.run import SweepRunner
from workbench.testing import TINY_RECIPE

ATTACKED = TINY_RECIPE.replace("epochs = 5", "epochs = 2") + '''
[[variants]]
name = "mid"
defense = { use = "mid", beta = 0.01 }

[[metrics]]
use = "attack-accuracy"

[evaluation.backbone]
use = "scnn"
width = 8

[evaluation.train]
epochs = 2

[attacks.gmi]
use = "gmi"
gan_steps = 3
critic_iters = 1
iterations = 5
samples_per_class = 2

[attacks.kedmi]
use = "kedmi"
gan_steps = 3
critic_iters = 1
iterations = 5
samples_per_class = 2
'''


def write(tmp_path: Path, sweep: str, recipe: str = ATTACKED) -> Path:
    (tmp_path / "recipe.toml").write_text(recipe)
    path = tmp_path / "sweep.toml"
    path.write_text(sweep)
    return path


@pytest.mark.parametrize(("executor", "extra", "expected"), [
    ('use = "processes"\nworkers = 2', "", True),
    ('use = "inline"', "", False),  # nothing to balance in one process: one job per run
    ('use = "processes"\nworkers = 2', "share_stages = false\n", False),  # each run trains its own E
])
def test_variant_jobs_only_where_every_shared_stage_is_trained_by_the_sweep(tmp_path, executor, extra, expected):
    path = write(tmp_path, f'recipe = "recipe.toml"\nseeds = "0-1"\n{extra}[executor]\n{executor}\n')
    registry = load_registry()
    sweep = load_sweep(path, registry=registry)
    runner = SweepRunner(sweep, registry, tmp_path / "sweep", None, SweepOptions(sweep=path), resumed=False)
    assert runner._jobs_per_variant([(run, False) for run in sweep.runs]) is expected


@pytest.mark.slow
def test_processes_sweep_runs_variants_as_jobs_with_single_run_figures(tmp_path, isolated_cache):
    path = write(tmp_path, 'recipe = "recipe.toml"\nseeds = [0, 1]\n[executor]\nuse = "processes"\nworkers = 2\n')
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(SweepOptions(sweep=path, sweep_dir=sweep_dir, cache_dir=isolated_cache))
    assert result.finished == ["base-s0", "base-s1"] and not result.failed
    run_dir = sweep_dir / "runs" / "base-s1"
    # This process owned the run directory (its variants ran in the workers) and ended it as a run ends.
    assert json.loads((run_dir / "run.json").read_text())["pid"] == os.getpid()
    events = list(read_events(run_dir))
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished" and types.count("run_finished") == 1
    assert types.count("epoch") == 4  # two variants, two epochs each, each trained once
    loaded = [e["stage"] for e in events if e["type"] == "stage_finished" and e["variant"] is None]
    assert {"evaluation-model", "prior:gmi"} <= set(loaded)
    assert (run_dir / "report.md").exists()
    swept = json.loads((run_dir / "results.json").read_text())
    assert swept["evaluation_model"]["cached"] is True  # trained once by the sweep, loaded here

    # A single run of seed 1 with the sweep's shared-stage seeds, in its own cache, computes the same.
    overrides = next(r.overrides for r in result_runs(path) if r.id == "base-s1")
    _, single = run_recipe(RunOptions(recipe=tmp_path / "recipe.toml", run_dir=tmp_path / "single",
                                      overrides=overrides, cache_dir=tmp_path / "cache-single", workers=2))
    assert single["variants"] == swept["variants"]
    assert single["evaluation_model"]["test_accuracy"] == swept["evaluation_model"]["test_accuracy"]
    sweep_types = [e["type"] for e in read_events(sweep_dir)]
    assert sweep_types.count("sweep_run_started") == 2 and sweep_types.count("sweep_run_finished") == 2


def result_runs(path: Path):
    return load_sweep(path).runs


def test_defenses_sweep_shares_e_prior_and_common_targets_with_the_main_sweep():
    """The README's table joins both sweeps: same E and GMI prior, and the variants the two recipes
    have in common configured alike (so they are the same targets, from the stage cache)."""
    root = Path(__file__).parents[1] / "recipes" / "sweeps"
    main, defenses = load_sweep(root / "bido_plus_seeds.toml"), load_sweep(root / "defenses_digits_seeds.toml")
    assert [r.seed for r in main.runs] == [0, 1, 2, 3, 4]
    assert [r.seed for r in defenses.runs] == list(range(len(defenses.runs))) and len(defenses.runs) >= 3
    a, b = main.runs[1].resolved, defenses.runs[1].resolved
    for section in ("data", "evaluation", "target", "seed", "device"):
        assert a[section] == b[section], section
    assert a["attacks"]["gmi"] == b["attacks"]["gmi"] and a["attacks"]["kedmi"] == b["attacks"]["kedmi"]
    common = {"none", "bido-hsic", "bido-hsic+", "mid"}
    assert ({v["name"]: v for v in a["variants"] if v["name"] in common}
            == {v["name"]: v for v in b["variants"] if v["name"] in common})

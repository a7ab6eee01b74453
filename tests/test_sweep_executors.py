"""Sweeps on the optional executors: submitit's local executor and a local Ray each run a tiny
sweep end to end; a missing extra is one line that names it; neither is imported until used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.sweeps import SweepOptions, run_sweep
from workbench.testing import TINY_RECIPE

FAST = TINY_RECIPE.replace("epochs = 5", "epochs = 1")


def test_executors_are_registered_without_importing_their_engines():
    code = ("import sys, workbench; r = workbench.load_registry(); names = r.names('executor'); "
            "assert {'inline', 'processes', 'submitit', 'ray'} <= set(names), names; "
            "import workbench.sweeps; r.create('executor', 'inline'); "
            "assert 'submitit' not in sys.modules and 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(("name", "module", "extra"), [("submitit", "submitit", "slurm"), ("ray", "ray", "ray")])
def test_a_missing_extra_is_one_line_naming_it(monkeypatch, name, module, extra):
    import workbench

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(WorkbenchError) as info:
        workbench.load_registry().create("executor", name)
    assert str(info.value) == f"executor {name!r} needs {module}: pip install 'workbench-mi[{extra}]'"


def sweep_on(tmp_path: Path, executor: str) -> Path:
    (tmp_path / "recipe.toml").write_text(FAST)
    path = tmp_path / "sweep.toml"
    path.write_text(f'recipe = "recipe.toml"\nseeds = [0, 1]\n[executor]\n{executor}\n')
    return path


def check_finished(result, sweep_dir: Path) -> None:
    assert result.finished == ["base-s0", "base-s1"] and not result.failed
    data = json.loads((sweep_dir / "aggregate.json").read_text())
    accuracy = data["points"][0]["variants"][0]["figures"]["utility.test_accuracy"]
    assert accuracy["n"] == 2 and accuracy["ci95"][0] <= accuracy["mean"] <= accuracy["ci95"][1]


@pytest.mark.slow
def test_tiny_sweep_on_submitit_local_executor(tmp_path, isolated_cache):
    pytest.importorskip("submitit")
    path = sweep_on(tmp_path, 'use = "submitit"\ncluster = "local"\ncpus_per_task = 1\npoll_seconds = 0.3')
    result = run_sweep(SweepOptions(sweep=path, sweep_dir=tmp_path / "sweep", cache_dir=isolated_cache))
    check_finished(result, tmp_path / "sweep")
    assert list((tmp_path / "sweep" / "runs" / ".submitit").iterdir())  # job logs beside the runs


@pytest.mark.slow
def test_tiny_sweep_on_a_local_ray(tmp_path, isolated_cache):
    pytest.importorskip("ray")
    path = sweep_on(tmp_path, 'use = "ray"\naddress = "local"\nnum_cpus = 2')
    result = run_sweep(SweepOptions(sweep=path, sweep_dir=tmp_path / "sweep", cache_dir=isolated_cache))
    check_finished(result, tmp_path / "sweep")
    import ray

    assert not ray.is_initialized()  # the Ray it started is shut down with the sweep

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


@pytest.mark.slow  # a subprocess or a fresh interpreter: seconds, kept out of the fast lane
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


# ------------------------------------------------------------------ a worker that dies mid-job

THREE_EPOCHS = TINY_RECIPE.replace("epochs = 5", "epochs = 3")


@pytest.mark.slow
@pytest.mark.parametrize(("executor", "error", "cause"), [
    ('use = "submitit"\ncluster = "local"\ncpus_per_task = 1\npoll_seconds = 0.3', "submitit job ",
     "its process ended without a result (killed, out of memory or lost; submitit state "),
    ('use = "ray"\naddress = "local"\nnum_cpus = 2', "ray task: ",
     "WorkerCrashedError: The worker died unexpectedly while executing this task."),
], ids=["submitit-local", "ray-local"])
def test_a_worker_killed_mid_job_fails_that_run_the_other_finishes_and_resume_completes(tmp_path, executor, error,
                                                                                       cause):
    """The process running seed 0's job (a submitit local job, a Ray worker) is killed with SIGKILL after
    its first epoch: as documented (docs/sweeps.md, "Resume, retry, failures"), that run is reported
    failed, not retried (the events, report.md's "Failed runs", exit code 1), seed 1 finishes, and
    `--resume` retries the failed run and completes the aggregate."""
    import os
    import signal
    import time

    from workbench.storage.events import read_events
    from workbench.storage.runs import read_run_file

    pytest.importorskip(executor.split('"')[1])
    (tmp_path / "recipe.toml").write_text(THREE_EPOCHS)
    path = tmp_path / "sweep.toml"
    path.write_text(f'recipe = "recipe.toml"\nseeds = [0, 1]\n[executor]\n{executor}\n')
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "WORKBENCH_CACHE_DIR": str(tmp_path / "cache")}

    def sweep(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "workbench", "sweep", str(path), "--sweep-dir", str(sweep_dir),
                                 "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)

    proc = sweep()
    run0 = sweep_dir / "runs" / "base-s0"
    deadline, worker = time.monotonic() + 600, None
    while time.monotonic() < deadline and proc.poll() is None and worker is None:
        pid = read_run_file(run0).get("pid")
        if isinstance(pid, int) and pid != proc.pid and any(e["type"] == "epoch" for e in read_events(run0)):
            worker = pid
        time.sleep(0.05)
    assert worker is not None, "seed 0's job never started training"
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    events = list(read_events(sweep_dir))
    failed = {e["run"]: e["error"] for e in events if e["type"] == "sweep_run_failed"}
    finished = {e["run"] for e in events if e["type"] == "sweep_run_finished"}
    assert list(failed) == ["base-s0"] and finished == {"base-s1"}, (failed, finished)
    assert failed["base-s0"].startswith(error) and cause in failed["base-s0"] and "\n" not in failed["base-s0"], failed
    report = (sweep_dir / "report.md").read_text()
    assert f"- `base-s0`: {failed['base-s0']}" in report.split("## Failed runs")[1]
    assert (sweep_dir / "runs" / "base-s1" / "results.json").is_file()
    assert not (run0 / "results.json").exists()

    resumed = sweep("--resume")
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    data = json.loads((sweep_dir / "aggregate.json").read_text())
    assert data["points"][0]["variants"][0]["figures"]["utility.test_accuracy"]["n"] == 2
    assert "## Failed runs" not in (sweep_dir / "report.md").read_text()

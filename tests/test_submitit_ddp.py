"""The submitit executor's multi-task option: a `run` job of `tasks_per_node` × `nodes` tasks trains
data-parallel, one rank per task, as under torchrun (rank 0 leads and writes, the others follow).
submitit's local executor starts the tasks as subprocesses here, so the end-to-end test is a real
2-rank gloo run; the executor's parameters and error lines are checked against a fake submitit."""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path
from typing import Any

import pytest

from workbench import load_registry
from workbench.components.protocols import Job, Outcome
from workbench.errors import WorkbenchError
from workbench.testing import TINY_RECIPE

submitit = pytest.importorskip("submitit")

from workbench_executors import submitit_executor  # noqa: E402  (after the importorskip)
from workbench_executors.submitit_executor import SubmititExecutor, SubmititParams  # noqa: E402

RECIPE = TINY_RECIPE.replace("width = 16", "width = 8").replace("epochs = 5", "epochs = 1")


def run_job(cache: Path, recipe: Path, run_dir: Path) -> Job:
    return Job(kind="run", run_dir=str(run_dir), cache_dir=str(cache), threads=1,
               options={"recipe": str(recipe), "overrides": [], "resume": False, "force": False, "workers": 1})


@pytest.mark.slow
def test_a_run_job_of_two_local_tasks_trains_data_parallel_and_only_rank_zero_writes(tmp_path, isolated_cache):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    run_dir = tmp_path / "run"
    before = set(tmp_path.iterdir())
    executor = load_registry().create("executor", "submitit", cluster="local", tasks_per_node=2, cpus_per_task=1,
                                      poll_seconds=0.2, timeout_min=10)
    [outcome] = executor.run([run_job(isolated_cache, recipe, run_dir)], lambda: None)
    logs = tmp_path / ".submitit"
    assert outcome.ok, (outcome.error, [p.read_text()[-2000:] for p in logs.rglob("*.err")])
    assert outcome.value == str(run_dir)  # rank 0's value

    # Two tasks ran, each with its own result (the follower's: nothing); rank 0 wrote the run, the
    # follower nothing.
    [job_folder] = [p for p in logs.iterdir() if p.name.isdigit()]  # beside submitit's empty "%j"
    results = {p.name.split("_")[-2]: pickle.loads(p.read_bytes()) for p in job_folder.glob("*_result.pkl")}
    assert results == {"0": ("success", Outcome(ok=True, value=str(run_dir))), "1": ("success", Outcome(ok=True))}
    assert set(tmp_path.iterdir()) - before == {run_dir, isolated_cache, logs}
    names = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    assert [n for n in names if not n.startswith("figures/")] == [
        "events.jsonl", "none/last.safetensors", "none/results.json", "none/target.safetensors",
        "recipe.toml", "report.html", "report.md", "results.json", "run.json"]
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    [started] = [e for e in events if e["type"] == "run_started"]  # one writer: each event once
    assert started["world_size"] == 2
    assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1]
    assert len(list(isolated_cache.rglob("*.safetensors"))) == 1  # the target's cache entry, written once


@pytest.mark.slow  # a subprocess or a fresh interpreter: seconds, kept out of the fast lane
def test_a_run_that_cannot_start_on_the_ranks_is_rank_zeros_one_line_and_the_follower_ends_quietly(
        tmp_path, isolated_cache):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    executor = load_registry().create("executor", "submitit", cluster="local", tasks_per_node=2, cpus_per_task=1,
                                      poll_seconds=0.2, timeout_min=10)
    job = run_job(isolated_cache, recipe, tmp_path / "run")
    job.options["overrides"] = ["target.train.batch_size=63"]
    [outcome] = executor.run([job], lambda: None)
    assert not outcome.ok
    assert outcome.error.startswith("target.train.batch_size = 63: the global batch must divide evenly over 2")
    [job_folder] = [p for p in (tmp_path / ".submitit").iterdir() if p.name.isdigit()]
    follower = pickle.loads(next(job_folder.glob("*_1_result.pkl")).read_bytes())
    assert follower == ("success", Outcome(ok=True))  # told to stop before anything trained


# ------------------------------------------------------------------ against a fake submitit


class FakeHandle:
    def __init__(self, job_id: str, values: list[Any]):
        self.job_id = job_id
        self.num_tasks = len(values)
        self.values = values

    def done(self) -> bool:
        return True

    def result(self):
        assert self.num_tasks == 1, "submitit: use results() for a job of several tasks"
        return self.task(0).result()

    def task(self, k: int):
        value = self.values[k]

        class Task:
            @staticmethod
            def result():
                if isinstance(value, Exception):
                    raise value
                return value

        return Task()


class FakeAutoExecutor:
    made: list[FakeAutoExecutor] = []

    def __init__(self, folder, cluster=None):
        self.cluster = cluster or "slurm"
        self.parameters: dict[str, Any] = {}
        self.submitted: list[tuple[Any, Job]] = []
        FakeAutoExecutor.made.append(self)

    def update_parameters(self, **kwargs: Any) -> None:
        self.parameters.update(kwargs)

    def submit(self, fn, job: Job) -> FakeHandle:
        self.submitted.append((fn, job))
        tasks = self.parameters["nodes"] * self.parameters["tasks_per_node"]
        return FakeHandle("42", [Outcome(ok=True, value=job.kind)] + [Outcome(ok=True)] * (tasks - 1))


@pytest.fixture
def fake_submitit(monkeypatch):
    FakeAutoExecutor.made = []
    monkeypatch.setattr(submitit, "AutoExecutor", FakeAutoExecutor)
    return FakeAutoExecutor


def test_run_jobs_get_the_tasks_and_nodes_and_other_jobs_one_task(tmp_path, fake_submitit):
    executor = SubmititExecutor(SubmititParams(cluster="slurm", nodes=2, tasks_per_node=4, gpus_per_node=4,
                                               poll_seconds=0.01))
    jobs = [Job(kind="shared-stage", run_dir=str(tmp_path / "shared"), item="evaluation-model"),
            Job(kind="run", run_dir=str(tmp_path / "runs" / "a")), Job(kind="run", run_dir=str(tmp_path / "runs" / "b"))]
    outcomes = executor.run(jobs, lambda: None)
    assert [o.value for o in outcomes] == ["shared-stage", "run", "run"]  # task 0's value each
    by_kind = {job.kind: made for made in fake_submitit.made for _, job in made.submitted}
    assert len(fake_submitit.made) == 2  # one submitit executor per layout
    run = by_kind["run"].parameters
    assert (run["nodes"], run["tasks_per_node"], run["gpus_per_node"]) == (2, 4, 4)
    stage = by_kind["shared-stage"].parameters
    assert (stage["nodes"], stage["tasks_per_node"], stage["gpus_per_node"]) == (1, 1, 1)  # one task's GPU
    assert all(fn is submitit_executor.run_task for made in fake_submitit.made for fn, _ in made.submitted)


def test_one_task_by_default(tmp_path, fake_submitit):
    executor = SubmititExecutor(SubmititParams(cluster="slurm", gpus_per_node=2, poll_seconds=0.01))
    executor.run([Job(kind="run", run_dir=str(tmp_path / "a")), Job(kind="variant", run_dir=str(tmp_path / "a"),
                                                                     item="none")], lambda: None)
    [made] = fake_submitit.made
    assert (made.parameters["nodes"], made.parameters["tasks_per_node"], made.parameters["gpus_per_node"]) == (1, 1, 2)


def test_several_nodes_on_the_local_cluster_is_one_line(tmp_path):
    executor = SubmititExecutor(SubmititParams(cluster="local", nodes=2, folder=str(tmp_path / "logs")))
    with pytest.raises(WorkbenchError, match=r"^executor 'submitit': nodes = 2 needs Slurm; cluster 'local' runs "
                                             r"on this machine alone \(nodes = 1\)$"):
        executor.run([Job(kind="run", run_dir=str(tmp_path / "a"))], lambda: None)


@pytest.mark.parametrize(("values", "error"), [
    ([Outcome(ok=True, value="run"), Outcome(ok=False, error="rank 1: out of memory")], "rank 1: out of memory"),
    ([Outcome(ok=False, error="another rank stopped during training (x)"),
      Outcome(ok=False, error="rank 1: lost contact with the other ranks (y)")], "another rank stopped during training (x)"),
    ([Outcome(ok=False, error="another rank stopped during training (x)"), RuntimeError("Traceback\n  ...\nKilled")],
     "another rank stopped during training (x); submitit job 42 task 1: Killed"),
    ([Outcome(ok=True, value="run"), Outcome(ok=True)], None),
    # A task whose process was killed: submitit's UncompletedJobError, its error stream only its own log.
    ([RuntimeError("Job 42 (task: 0) with path /x/42_0_result.pkl\nhas not produced any output (state: INTERRUPTED)\n"
                   "Error stream produced:\n----------------------------------------\nsubmitit INFO (2026-12-07 "
                   "06:19:01,761) - Loading pickle: /x/42_submitted.pkl\n")],
     "submitit job 42: its process ended without a result (killed, out of memory or lost; submitit state INTERRUPTED)"),
    ([RuntimeError("Job 42 (task: 0) with path /x\nhas not produced any output (state: OUT_OF_MEMORY)\nError stream "
                   "produced:\n----\nsubmitit INFO (x) - Starting\nslurmstepd: error: Detected 1 oom-kill event(s)\n")],
     "submitit job 42: its process ended without a result (killed, out of memory or lost; submitit state "
     "OUT_OF_MEMORY); "
     "its last error line: slurmstepd: error: Detected 1 oom-kill event(s)"),
])
def test_a_job_of_several_tasks_is_rank_zeros_value_or_one_error_line(values, error):
    outcome = SubmititExecutor._outcome(FakeHandle("42", values))
    assert outcome.error == error and outcome.ok is (error is None)
    if outcome.ok:
        assert outcome.value == "run"


@pytest.mark.parametrize("tasks", [1, 2])
def test_each_task_of_several_exports_torch_distributed_variables_from_submitit(monkeypatch, tasks):
    for name, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4321",
                        "SUBMITIT_LOCAL_NTASKS": str(tasks),
                        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                        "SUBMITIT_LOCAL_GLOBALID": str(tasks - 1), "SUBMITIT_LOCAL_LOCALID": str(tasks - 1),
                        "CUDA_VISIBLE_DEVICES": "0,1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever the task sets
    seen: dict[str, str] = {}

    def execute_outcome(job: Job) -> Outcome:
        import os

        seen.update(os.environ)
        return Outcome(ok=True)

    monkeypatch.setattr(submitit_executor, "execute_outcome", execute_outcome)
    assert submitit_executor.run_task(Job(kind="run", run_dir="r")).ok
    if tasks == 1:  # one process: nothing to join
        assert "WORLD_SIZE" not in seen and "MASTER_ADDR" not in seen
        return
    assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"]) == ("1", "2", "1")
    assert seen["MASTER_ADDR"] == socket.gethostname() and 20000 <= int(seen["MASTER_PORT"]) <= 60000
    assert seen["CUDA_VISIBLE_DEVICES"] == "0,1"  # each rank picks its GPU by LOCAL_RANK

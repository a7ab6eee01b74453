"""Run directories without training: the lifecycle rules of `workbench.storage.runs` on hand-made folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workbench.errors import RunError
from workbench.storage.runs import (
    live_pid,
    prepare_run_dir,
    process_start,
    read_run_file,
    run_status,
    status_of,
    write_run_file,
)


def make_run(folder, digest="abc", events=("run_started", "run_finished"), pid=None, pid_started=None):
    folder.mkdir(parents=True)
    write_run_file(folder, digest, folder / "recipe.toml", "0")
    if pid is not None:
        info = read_run_file(folder)
        info.update(pid=pid, pid_started=pid_started)
        (folder / "run.json").write_text(json.dumps(info))
    (folder / "events.jsonl").write_text("".join(json.dumps({"t": 0, "type": t}) + "\n" for t in events))
    (folder / "results.json").write_text("{}")
    return folder


@pytest.fixture
def other_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_a_new_or_empty_folder_starts_a_run(tmp_path):
    assert prepare_run_dir(tmp_path / "new", "abc", resume=False, force=False) is False
    assert (tmp_path / "new").is_dir()
    assert prepare_run_dir(tmp_path / "new", "abc", resume=False, force=False) is False  # still empty


def test_a_file_or_a_folder_that_is_not_a_run_is_refused_even_with_force(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="is a file"):
        prepare_run_dir(tmp_path / "file", "abc", resume=False, force=True)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.png").write_bytes(b"x")
    with pytest.raises(RunError, match="not a workbench run directory"):
        prepare_run_dir(tmp_path / "photos", "abc", resume=False, force=True)
    assert (tmp_path / "photos" / "holiday.png").exists() and len(list(tmp_path.iterdir())) == 2


def test_another_recipes_run_is_refused_and_force_moves_it_aside_intact(tmp_path):
    run = make_run(tmp_path / "run", digest="old")
    with pytest.raises(RunError, match="different recipe"):
        prepare_run_dir(run, "new", resume=True, force=False)
    assert prepare_run_dir(run, "new", resume=False, force=True) is False
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "results.json").read_text() == "{}"
    assert list(run.iterdir()) == []


def test_the_same_recipe_needs_resume_and_then_continues(tmp_path):
    run = make_run(tmp_path / "run", events=("run_started", "run_interrupted"))
    with pytest.raises(RunError, match="interrupted run of this recipe; pass --resume"):
        prepare_run_dir(run, "abc", resume=False, force=False)
    assert prepare_run_dir(run, "abc", resume=True, force=False) is True


def test_a_live_run_is_never_resumed_or_replaced(tmp_path, other_process):
    run = make_run(tmp_path / "run", events=("run_started",), pid=other_process.pid,
                   pid_started=process_start(other_process.pid))
    assert live_pid(run) == other_process.pid and run_status(run) == "running"
    for resume, force in ((True, False), (False, True)):
        with pytest.raises(RunError, match=f"live there \\(pid {other_process.pid}\\)"):
            prepare_run_dir(run, "abc", resume=resume, force=force)


def test_a_recycled_pid_is_not_the_run(tmp_path, other_process):
    run = make_run(tmp_path / "run", events=("run_started",), pid=other_process.pid, pid_started="1")
    assert live_pid(run) is None and run_status(run) == "interrupted"
    assert prepare_run_dir(run, "abc", resume=True, force=False) is True


def test_status_rule():
    assert status_of("run_started", live=True) == "running"
    assert status_of("run_started", live=False) == "interrupted"
    assert [status_of(t, live=True) for t in ("run_finished", "run_failed", "run_interrupted", None)] == [
        "finished", "failed", "interrupted", "unknown"]

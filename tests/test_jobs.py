"""Jobs and workers: worker processes die with their parent; figures that are not numbers stay valid JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import pytest

from workbench.storage.events import json_safe

PARENT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from workbench.running.jobs import die_with_parent

    def worker_pid(_):
        time.sleep(0.2)  # long enough that both workers take a share
        return os.getpid()

    def busy(_):
        end = time.monotonic() + 60  # a training step that never looks at its parent
        while time.monotonic() < end:
            sum(range(1000))

    if __name__ == "__main__":
        pool = multiprocessing.get_context("spawn").Pool(2, initializer=die_with_parent, initargs=(os.getpid(),))
        pids = set()
        while len(pids) < 2:
            pids |= set(pool.map(worker_pid, range(8)))
        pool.map_async(busy, range(2))
        time.sleep(0.5)
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for a reaper is gone for our purpose
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # a subprocess or a fresh interpreter: seconds, kept out of the fast lane
def test_workers_exit_within_seconds_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    # Workers busy with a job, as in a run: they would keep training for a minute without die_with_parent.
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        parent.kill()  # SIGKILL: no cleanup runs in the parent
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers), "orphan workers outlived their parent"
    finally:
        parent.kill()


def test_non_finite_figures_become_null_in_json():
    results = {"variants": [{"attacks": {"gmi": {"fid": float("nan"), "top1": 0.5, "knn": [math.inf, 1.0]}}}]}
    text = json.dumps(json_safe(results), allow_nan=False)
    assert json.loads(text) == {"variants": [{"attacks": {"gmi": {"fid": None, "top1": 0.5, "knn": [None, 1.0]}}}]}


"""Faults on the storage and process side: damaged run directories, a full disk, read-only folders,
processes killed with SIGKILL. Each test asserts the outcome (the line, the files left, the figures
after `--resume`), not only that nothing crashed.

How each fault is made:
- damaged files, read-only folders (as a user other than root), kills: for real (a folder in place of
  a file, `mkfifo`, dangling links, `chmod`, SIGKILL of a subprocess);
- a full disk (ENOSPC): simulated, because filling a real file system needs a mount this test
  cannot make: the write path (`os.write` of the event stream, `Path.write_bytes` of an atomic
  write, safetensors' `save_file`) is monkeypatched to write part of its bytes and then raise
  `OSError(errno.ENOSPC)`, as a full disk does;
- read-only folders when the tests run as root (who may write anywhere): simulated by making
  `os.access` and file creation under the folder fail with EACCES, as they do for any other user.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.testing import TINY_RECIPE

SHORT = TINY_RECIPE.replace("epochs = 5", "epochs = 2")


def invoke(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A finished two-epoch tiny run (made once): (run directory, cache, its results)."""
    from workbench.running.runner import RunOptions, run_recipe

    root = tmp_path_factory.mktemp("finished")
    recipe = root / "tiny.toml"
    recipe.write_text(SHORT)
    run_dir, results = run_recipe(RunOptions(recipe=recipe, run_dir=root / "run", cache_dir=root / "cache",
                                             workers=1))
    return run_dir, root / "cache", results


@pytest.fixture
def run_copy(finished_run, tmp_path, monkeypatch) -> Path:
    """A private copy of the finished run (links kept as links), the cache env pointing at a copy too."""
    run_dir, cache, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    shutil.copytree(cache, tmp_path / "cache", symlinks=True)
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return copy


def figures(results: dict) -> list:
    return [(v["name"], v["utility"]) for v in results["variants"]]


# ------------------------------------------------------------------ damaged run directories on --resume


def _folder_instead(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _fifo_instead(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _dangling_link_instead(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "gone-long-ago")


def _device_instead(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


FOLDER, FIFO = "is a folder where the run keeps a file", "is a FIFO (named pipe), not a file a run writes"
DANGLING, DEVICE = "a link to", "is a device, not a file a run writes"


@pytest.mark.parametrize(("name", "damage", "expected"), [
    ("events.jsonl", _folder_instead, FOLDER),
    ("events.jsonl", _fifo_instead, FIFO),
    ("events.jsonl", _dangling_link_instead, DANGLING),
    ("events.jsonl", _device_instead, DEVICE),
    ("run.json", _folder_instead, FOLDER),
    ("results.json", _fifo_instead, FIFO),
    ("none/results.json", _dangling_link_instead, DANGLING),
    ("none/target.safetensors", _device_instead, DEVICE),
    ("none/last.safetensors", _folder_instead, FOLDER),
], ids=lambda v: v if isinstance(v, str) and "/" not in v and " " not in v else None)
def test_damaged_entry_of_a_run_directory_is_one_line_on_resume(run_copy, monkeypatch, capsys, name, damage,
                                                                 expected):
    """`events.jsonl` replaced by a folder used to end `run DIR --resume` in an IsADirectoryError traceback;
    every file of a run directory that is not a file is now one line naming it (a FIFO never blocks)."""
    damage(run_copy / name)
    code, _, err = invoke(monkeypatch, capsys, "run", str(run_copy), "--resume", "--quiet")
    line = one_line(err)
    assert code != 0
    assert f"{run_copy / name}: " in line and expected in line, line
    assert "--force" in line


def test_unreadable_run_json_is_its_own_line(run_copy, monkeypatch, capsys):
    (run_copy / "run.json").write_text("{not json")
    code, _, err = invoke(monkeypatch, capsys, "run", str(run_copy), "--resume", "--quiet")
    assert code != 0 and "run.json: missing or unreadable" in one_line(err)


def test_runs_show_and_list_never_hang_on_fifos(run_copy, monkeypatch, capsys):
    _fifo_instead(run_copy / "events.jsonl")
    _fifo_instead(run_copy / "results.json")
    code, out, err = invoke(monkeypatch, capsys, "runs", "show", str(run_copy))
    assert code == 0 and "Traceback" not in err and run_copy.name in out
    code, out, _ = invoke(monkeypatch, capsys, "runs", "list", "--runs-dir", str(run_copy.parent), "--json")
    assert code == 0 and json.loads(out)[0]["name"] == run_copy.name


@pytest.mark.parametrize("target", ["file", "missing", "plain-folder"])
def test_runs_show_on_something_not_a_run_directory_is_one_line(tmp_path, monkeypatch, capsys, target):
    """`runs show FILE` used to exit 0."""
    path = tmp_path / "thing"
    if target == "file":
        path.write_text("hello")
    elif target == "plain-folder":
        (path / "sub").mkdir(parents=True)
    code, _, err = invoke(monkeypatch, capsys, "runs", "show", str(path))
    assert code == 2
    line = one_line(err)
    assert str(path) in line and ("run or sweep directory" in line)


# ------------------------------------------------------------------ read-only folders


@contextlib.contextmanager
def read_only(folder: Path, monkeypatch):
    """`folder` read-only: for real (chmod) as any user but root; for root, who may write anywhere,
    `os.access` and the creation of files and folders under it fail with EACCES, as for anyone else."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir() and not p.is_symlink()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(stat.S_IMODE(mode))
        return
    folder = folder.resolve()

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(folder)

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    real_access, real_mkstemp, real_open, real_mkdir = os.access, tempfile.mkstemp, os.open, Path.mkdir

    def access(path, mode, *args, **kwargs):
        return False if mode & os.W_OK and inside(path) else real_access(path, mode, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            raise denied(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise denied(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(self, *args, **kwargs):
        if inside(self) and not self.is_dir():
            raise denied(self)
        return real_mkdir(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "access", access)
        patch.setattr(tempfile, "mkstemp", mkstemp)
        patch.setattr(os, "open", open_)
        patch.setattr(Path, "mkdir", mkdir)
        yield


def test_read_only_run_directory_is_one_line_on_resume(run_copy, monkeypatch, capsys):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    with read_only(run_copy, monkeypatch):
        code, _, err = invoke(monkeypatch, capsys, "run", str(run_copy), "--resume", "--quiet")
    line = one_line(err)
    assert code != 0 and f"{run_copy}: the run directory is read-only" in line
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


def test_read_only_cache_falls_back_to_not_caching_with_one_warning(finished_run, tmp_path, monkeypatch, capsys):
    """Documented fallback: a read-only (or full) cache is read from; what cannot be stored is not
    cached, one warning says so per stage, and the run finishes with the same figures."""
    _, _, expected = finished_run
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(SHORT)
    with read_only(cache, monkeypatch):
        code, _, err = invoke(monkeypatch, capsys, "run", "tiny.toml", "--run-dir", "run", "--quiet", "--workers", "1")
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert figures(results) == figures(expected)
    warnings = [e for e in map(json.loads, (tmp_path / "run" / "events.jsonl").read_text().splitlines())
                if e["type"] == "log" and e.get("level") == "warning"]
    assert len(warnings) == 1 and "not cached, the run goes on" in warnings[0]["message"]
    assert str(cache) in warnings[0]["message"]
    assert not any(p.suffix == ".safetensors" for p in cache.rglob("*"))


# ------------------------------------------------------------------ the disk full (ENOSPC, simulated)


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_while_a_checkpoint_is_written_keeps_the_old_one(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    from workbench.storage import checkpoint
    from workbench.storage.checkpoint import load_checkpoint, save_checkpoint
    from workbench.storage.files import StorageError

    path = tmp_path / "variant" / "last.safetensors"
    save_checkpoint(path, {"w": torch.ones(64)}, {"epoch": 1})

    def half_then_full(tensors, filename, metadata=None):
        safetensors.torch.save_file(tensors, filename, metadata=metadata)
        size = Path(filename).stat().st_size
        with open(filename, "r+b") as handle:  # what reached the disk before it filled up
            handle.truncate(size // 2)
        raise _enospc(filename)

    monkeypatch.setattr(checkpoint, "save_file", half_then_full)
    with pytest.raises(StorageError) as caught:
        save_checkpoint(path, {"w": torch.full((64,), 2.0)}, {"epoch": 2})
    assert str(caught.value).startswith(f"{path}: cannot write (No space left on device); free some space")
    tensors, meta = load_checkpoint(path)  # the old checkpoint, whole and verified
    assert meta == {"epoch": 1} and torch.equal(tensors["w"], torch.ones(64))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.safetensors"]  # no temp file left


def test_disk_full_while_results_json_is_written_leaves_no_truncated_file(tmp_path, monkeypatch):
    from workbench.storage.files import StorageError, atomic_write_text
    from workbench.storage.runs import read_variant_results

    folder = tmp_path / "none"
    real = Path.write_bytes

    def partial(self, data):
        real(self, data[: len(data) // 2])
        raise _enospc(self)

    monkeypatch.setattr(Path, "write_bytes", partial)
    with pytest.raises(StorageError, match=r"results\.json: cannot write \(No space left on device\)"):
        atomic_write_text(folder / "results.json", json.dumps({"name": "none", "utility": {"acc": 0.5}}))
    assert not (folder / "results.json").exists() and list(folder.iterdir()) == []
    assert read_variant_results(folder) is None  # so the variant is evaluated again on --resume


def test_disk_full_while_an_event_is_written_leaves_no_half_line(tmp_path, monkeypatch):
    from workbench.storage import events
    from workbench.storage.events import EventWriter, read_events
    from workbench.storage.files import StorageError

    writer = EventWriter(tmp_path)
    writer.emit("log", level="info", message="before")
    real = os.write

    def short(fd, data):
        return real(fd, data[: len(data) // 3])  # the disk filled up in the middle of the line

    monkeypatch.setattr(events.os, "write", short)
    with pytest.raises(StorageError, match=r"events\.jsonl: cannot write \(No space left on device\)"):
        writer.emit("log", level="info", message="lost " + "x" * 200)
    monkeypatch.setattr(events.os, "write", real)  # space freed
    writer.emit("log", level="info", message="after")
    writer.close()
    text = (tmp_path / "events.jsonl").read_text()
    assert all(json.loads(line) for line in text.splitlines())  # every line whole
    assert [e["message"] for e in read_events(tmp_path)] == ["before", "after"]


def test_a_line_cut_by_a_kill_is_ended_before_the_next_event(tmp_path):
    from workbench.storage.events import EventWriter, read_events

    (tmp_path / "events.jsonl").write_text('{"t":1,"type":"log","message":"whole"}\n{"t":2,"type":"lo')
    with EventWriter(tmp_path) as writer:
        writer.emit("log", message="next")
    assert [e.get("message") for e in read_events(tmp_path)] == ["whole", "next"]


def test_disk_full_while_a_cache_entry_is_written_warns_and_stores_nothing(tmp_path, monkeypatch):
    import torch

    from workbench.storage import checkpoint
    from workbench.storage.cache import StageCache

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise _enospc(filename)

    warnings: list[str] = []
    cache = StageCache(tmp_path / "cache", on_problem=warnings.append)
    monkeypatch.setattr(checkpoint, "save_file", full)
    model = torch.nn.Linear(3, 2)
    meta, hit = cache.load_or_compute("evaluation", {"k": 1}, {"model": model}, lambda: {"x": 1}, what="E")
    assert (meta, hit) == ({"x": 1}, False)
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    entry = cache.path("evaluation", {"k": 1})
    assert str(entry) in warnings[0] and not entry.exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".safetensors", ".tmp")]
    monkeypatch.undo()
    assert cache.load_modules("evaluation", {"k": 1}, {"model": torch.nn.Linear(3, 2)}) is None  # a miss


def test_disk_full_during_a_run_is_one_line_and_resume_gives_the_same_figures(finished_run, tmp_path,
                                                                              monkeypatch, capsys):
    """results.json of the variant cannot be written: one line naming it; once space is free, --resume
    finishes with the figures of an uninterrupted run."""
    _, _, expected = finished_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tiny.toml").write_text(SHORT)
    real = Path.write_bytes

    def full_for_results(self, data):
        if self.name.startswith(".results.json."):
            real(self, data[:10])
            raise _enospc(self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_results)
    code, _, err = invoke(monkeypatch, capsys, "run", "tiny.toml", "--run-dir", "run", "--quiet", "--workers", "1")
    line = one_line(err)
    assert code != 0 and "results.json: cannot write (No space left on device)" in line
    assert not (tmp_path / "run" / "none" / "results.json").exists()
    monkeypatch.setattr(Path, "write_bytes", real)
    code, _, err = invoke(monkeypatch, capsys, "run", "run", "--resume", "--quiet", "--workers", "1")
    assert code == 0, err
    assert figures(json.loads((tmp_path / "run" / "results.json").read_text())) == figures(expected)


# ------------------------------------------------------------------ processes killed with SIGKILL

KILL_AT = """
import os, signal, sys, tempfile
point = os.environ["WB_KILL_AT"]
if point == "writing-aggregate":  # SIGKILL with half of aggregate.json in its temp file
    import workbench.sweeps.aggregate as aggregate
    real_write = aggregate.atomic_write_text
    def write(path, text):
        if path.name == "aggregate.json":
            handle, temp = tempfile.mkstemp(prefix=".aggregate.json.", suffix=".tmp", dir=path.parent)
            os.write(handle, text[: len(text) // 2].encode())
            os.killpg(0, signal.SIGKILL)
        return real_write(path, text)
    aggregate.atomic_write_text = write
elif point == "between-runs":  # SIGKILL right after a run is recorded finished, before the next starts
    from workbench.storage import events
    real_emit = events.EventWriter.emit
    def emit(self, type, **fields):
        event = real_emit(self, type, **fields)
        if type == "sweep_run_finished":
            os.killpg(0, signal.SIGKILL)
        return event
    events.EventWriter.emit = emit
sys.argv = ["workbench", *sys.argv[1:]]
from workbench.cli import main
main()
"""

SWEEP_RECIPE = SHORT


@pytest.fixture(scope="module")
def straight_sweep(tmp_path_factory) -> tuple[Path, Path]:
    """A two-seed sweep on the `processes` executor that ran straight through: (sweep file, its dir)."""
    import subprocess

    root = tmp_path_factory.mktemp("sweep")
    (root / "recipe.toml").write_text(SWEEP_RECIPE)
    path = root / "sweep.toml"
    path.write_text('recipe = "recipe.toml"\nseeds = "0-1"\n[executor]\nuse = "processes"\nworkers = 1\n')
    env = {**os.environ, "WORKBENCH_CACHE_DIR": str(root / "cache")}
    done = subprocess.run([sys.executable, "-m", "workbench", "sweep", str(path), "--sweep-dir", str(root / "straight"),
                           "--quiet"], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    return path, root / "straight"


def _sweep(path: Path, sweep_dir: Path, cache: Path, *extra: str, kill_at: str | None = None):
    import subprocess

    env = {**os.environ, "WORKBENCH_CACHE_DIR": str(cache), "WB_KILL_AT": kill_at or "none"}
    return subprocess.Popen([sys.executable, "-c", KILL_AT, "sweep", str(path), "--sweep-dir", str(sweep_dir),
                             "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["during-a-run", "between-runs", "writing-aggregate"])
def test_sweep_killed_at_each_point_resumes_to_the_same_aggregate(straight_sweep, tmp_path, point):
    """SIGKILL of the whole sweep (its workers die with it) during a run, between two runs, and while
    `aggregate.json` is being written; `--resume` then gives `aggregate.json` byte for byte as the
    sweep that ran straight through, and never reads the half-written temp file."""
    import signal
    import time

    from workbench.storage.events import read_events

    path, straight = straight_sweep
    killed = tmp_path / "killed"
    proc = _sweep(path, killed, tmp_path / "cache", kill_at=None if point == "during-a-run" else point)
    if point == "during-a-run":
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            runs = killed / "runs"
            if runs.is_dir() and any(e["type"] == "epoch" for r in runs.iterdir() for e in read_events(r)):
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=900)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "aggregate.json").exists()
    if point == "writing-aggregate":
        assert list(killed.glob(".aggregate.json.*.tmp"))  # the half-written temp file the kill left
    resumed = _sweep(path, killed, tmp_path / "cache", "--resume")
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert (killed / "aggregate.json").read_text() == (straight / "aggregate.json").read_text()
    if point != "during-a-run":
        assert any(e["type"] == "sweep_run_skipped" for e in read_events(killed))  # the finished run is kept


@pytest.mark.slow
def test_a_worker_killed_mid_job_fails_that_run_only_and_resume_completes_it(straight_sweep, tmp_path):
    """The `processes` executor's worker running seed 0 is killed with SIGKILL mid-training: that run is
    reported failed (in the events and report.md), seed 1 still finishes, and `--resume` completes the
    sweep to the straight sweep's aggregate."""
    import signal
    import time

    from workbench.storage.events import read_events
    from workbench.storage.runs import read_run_file

    path, straight = straight_sweep
    sweep_dir = tmp_path / "sweep"
    proc = _sweep(path, sweep_dir, tmp_path / "cache")
    run0 = sweep_dir / "runs" / "base-s0"
    deadline = time.monotonic() + 600
    worker = None
    while time.monotonic() < deadline and proc.poll() is None and worker is None:
        pid = read_run_file(run0).get("pid")
        if isinstance(pid, int) and pid != proc.pid and any(e["type"] == "epoch" for e in read_events(run0)):
            worker = pid
        time.sleep(0.05)
    assert worker is not None, "the worker never started training"
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode != 0 and "Traceback" not in err
    events = list(read_events(sweep_dir))
    failed = {e["run"]: e["error"] for e in events if e["type"] == "sweep_run_failed"}
    finished = {e["run"] for e in events if e["type"] == "sweep_run_finished"}
    assert list(failed) == ["base-s0"] and finished == {"base-s1"}, (failed, finished)
    assert "base-s0" in (sweep_dir / "report.md").read_text()
    resumed = _sweep(path, sweep_dir, tmp_path / "cache", "--resume")
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert (sweep_dir / "aggregate.json").read_text() == (straight / "aggregate.json").read_text()


# ------------------------------------------------------------------ a rank of a torchrun run killed

RANKS_ATTACK = """
[attacks.gmi]
use = "gmi"
gan_steps = 40
gan_batch_size = 16
iterations = 40
restarts = 2
samples_per_class = 2
classes = [0, 1, 2, 3]
max_batch = 4
"""
"""GMI with its WGAN-GP prior trained by both ranks together, then a search of 4 forward batches of 4
latents (4 classes x 2 restarts x 2 samples) that the two ranks split 2 + 2."""


def _ranks_recipe() -> str:
    from digits_recipes import digits_attack_recipe

    return digits_attack_recipe("a rank killed", RANKS_ATTACK).replace("epochs = 20", "epochs = 1").replace(
        "epochs = 15", "epochs = 1")


def _nproc_run(cwd: Path, *args: str):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "workbench", "run", *args, "--nproc", "2", "--quiet"], cwd=cwd,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.fixture(scope="module")
def straight_ranks_run(tmp_path_factory) -> dict:
    """The 2-rank run uninterrupted: its results."""
    root = tmp_path_factory.mktemp("ranks-straight")
    (root / "tiny.toml").write_text(_ranks_recipe())
    proc = _nproc_run(root, "tiny.toml", "--run-dir", "run", "--cache-dir", "cache")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return json.loads((root / "run" / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
@pytest.mark.parametrize("stage", ["attack:gmi:gan", "attack:gmi"], ids=["gan-prior-training", "sharded-search"])
def test_a_rank_killed_is_one_line_naming_it_and_resume_gives_the_straight_figures(straight_ranks_run, tmp_path,
                                                                                    stage):
    """Rank 1 killed with SIGKILL while both ranks train GMI's GAN prior together, or while each searches
    its shard: the run ends in bounded time with one line naming rank 1 (rank 0, which lost its peer or
    was stopped by torchrun, says nothing more), the events end with that line, and `--resume` gives
    the figures of the run that was not interrupted. The kill waits for rank 0's first progress event
    of that stage (rank 0's events are the run's)."""
    import signal
    import time

    from test_distributed import _rank_pid
    from workbench.storage.events import read_events

    (tmp_path / "tiny.toml").write_text(_ranks_recipe())
    run_dir = tmp_path / "run"
    proc = _nproc_run(tmp_path, "tiny.toml", "--run-dir", "run", "--cache-dir", "cache")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if (run_dir / "events.jsonl").is_file() and any(
                e["type"] == "progress" and e.get("stage") == stage for e in read_events(run_dir)):
            break
        time.sleep(0.05)
    rank1 = _rank_pid(1, tmp_path)
    assert proc.poll() is None and rank1 is not None, proc.communicate()
    os.kill(rank1, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)  # torchrun notices within seconds; no rank waits forever
    assert proc.returncode == 1 and "Traceback" not in err
    resume = "resumable: workbench run run --resume --nproc 2"
    assert one_line(err) == f"error: rank 1 of 2 was killed by signal SIGKILL; the others were stopped. The run " \
                            f"directory is {resume}"
    last = list(read_events(run_dir))[-1]
    assert last["type"] == "run_failed" and last["error"].startswith("rank 1 of 2 ") and resume in last["error"]
    assert not (run_dir / "results.json").exists()

    resumed = _nproc_run(tmp_path, "run", "--resume", "--cache-dir", "cache")
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["variants"] == straight_ranks_run["variants"]
    assert results["variants"][0]["attacks"]["gmi"]["top5"] > 0  # the search ran: figures, not an empty table

"""Starting, cancelling and resuming runs as subprocesses, and finding recipes.

Runs start in their own session so closing the TUI (or its terminal) never stops them;
a cancel is SIGTERM, which the runner turns into a clean, resumable stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.storage.runs import read_run_file
from workbench.tui.follow import pid_alive, read_pid

WORKBENCH_PACKAGE = Path(__file__).parents[1]
"""The installed `workbench` package folder (found without importing the package's registry)."""

LAUNCH_LOG_SUFFIX = ".launch.log"


def workbench_command() -> list[str]:
    """How to call the CLI from here: `python -m workbench` (the CLI module as fallback)."""
    if (WORKBENCH_PACKAGE / "__main__.py").exists():
        return [sys.executable, "-m", "workbench"]
    return [sys.executable, "-c", "from workbench.cli import main; main()"]


def new_run_dir(runs_dir: Path, recipe: Path) -> Path:
    """A fresh run directory under runs_dir named after the recipe and the time."""
    base = Path(runs_dir) / f"{Path(recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def launch_log(run_dir: Path) -> Path:
    """Where a launched run's own output goes: beside the run directory, which must start empty."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}{LAUNCH_LOG_SUFFIX}"


@dataclass
class Launched:
    """A run this TUI started; `process` is polled so an early failure can be reported."""

    run_dir: Path
    process: subprocess.Popen
    log: Path

    def failure(self) -> str | None:
        """The last line of output when the process ended badly, else None (still running or fine)."""
        code = self.process.poll()
        if code is None or code == 0:
            return None
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else f"exited with code {code}"


def _spawn(arguments: list[str], run_dir: Path, env: dict[str, str] | None) -> Launched:
    log_path = launch_log(run_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*workbench_command(), *arguments],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the TUI and its terminal
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )
    return Launched(Path(run_dir), process, log_path)


def launch_run(recipe: Path, run_dir: Path, env: dict[str, str] | None = None) -> Launched:
    """`workbench run RECIPE --run-dir DIR` in the background."""
    return _spawn(["run", str(recipe), "--run-dir", str(run_dir)], run_dir, env)


def resume_run(run_dir: Path, env: dict[str, str] | None = None) -> Launched:
    """`workbench run DIR --resume`: continue an interrupted or failed run where it stopped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WorkbenchError(f"{run_dir}: run directory not found; nothing to resume")
    if pid_alive(read_pid(run_dir)) and not _has_ended(run_dir):
        raise WorkbenchError(f"{run_dir}: still running; cancel it before resuming")
    return _spawn(["run", str(run_dir), "--resume"], run_dir, env)


def _has_ended(run_dir: Path) -> bool:
    from workbench.tui.follow import EventFollower, RunState

    state = RunState()
    state.apply_all(EventFollower(run_dir).poll())
    return state.terminal is not None


def cancel_run(run_dir: Path) -> int:
    """SIGTERM to the run's process (from run.json); returns the pid. The runner stops cleanly.

    The pid is checked against the run before the signal: the process must have started when
    run.json says (pid reuse), or, where run.json records no start time, its command line must be
    a workbench process. The signal goes
    through a pidfd opened before the checks (Linux), so the pid cannot change hands in between.
    """
    run_dir = Path(run_dir)
    info = read_run_file(run_dir)
    recorded = info.get("pid")
    if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded <= 0:
        raise WorkbenchError(f"{run_dir / 'run.json'}: no process id recorded; is this a run directory?")
    pid = read_pid(run_dir)  # None when the recorded pid ended or now belongs to another process
    if pid is None or _has_ended(run_dir):
        raise WorkbenchError(f"{run_dir}: not running (pid {recorded} has ended); nothing to cancel")
    handle = _open_pidfd(pid)
    try:
        problem = _not_this_run(pid, info)
        if problem:
            raise WorkbenchError(f"{run_dir}: pid {pid} {problem}; not signalled (the run has ended, and "
                                 "the pid now belongs to another process)")
        try:
            if handle is not None:
                signal.pidfd_send_signal(handle, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            raise WorkbenchError(f"{run_dir}: not running (pid {pid} has ended); nothing to cancel") from None
        except PermissionError:
            raise WorkbenchError(f"{run_dir}: pid {pid} belongs to another user; cannot cancel it") from None
    finally:
        if handle is not None:
            os.close(handle)
    return pid


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for `pid` (Linux 5.3+), or None where there is none (then os.kill is used)."""
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise WorkbenchError(f"pid {pid} has ended; nothing to cancel") from None
    except OSError:
        return None


def process_command_line(pid: int) -> list[str] | None:
    """A process's argv (Linux /proc), or None where it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _not_this_run(pid: int, info: dict) -> str | None:
    """Why process `pid` is not the run that run.json describes, or None when it is."""
    from workbench.storage.runs import process_start

    recorded_start = info.get("pid_started")
    now = process_start(pid)
    if recorded_start is not None and now is not None:
        if now != recorded_start:
            return f"started at another time than the run (start {now}, run.json {recorded_start})"
        return None  # the same process: a run started from Python (a notebook) has no `workbench` in argv
    # No start time to compare (an older run.json): the command line must at least be workbench's.
    argv = process_command_line(pid)
    if argv is not None and not any("workbench" in part for part in argv):
        shown = " ".join(argv)[:80]
        return f"is not a workbench process ({shown!r})"
    return None


# ------------------------------------------------------------------ recipes


@dataclass
class RecipeEntry:
    path: Path
    origin: str  # "shipped" or "yours"
    description: str


def shipped_recipes_dir() -> Path:
    """`recipes/` beside the package in a checkout, else the copy installed as workbench/_recipes."""
    package = WORKBENCH_PACKAGE
    checkout = package.parent / "recipes"
    return checkout if checkout.is_dir() else package / "_recipes"


def describe_recipe(path: Path) -> str:
    """The first comment line of a recipe (every shipped recipe starts with what it is)."""
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                stripped = line.strip()
                if stripped.startswith("#"):
                    return stripped.lstrip("#").strip()
                if stripped:
                    break
    except OSError:
        return "(unreadable)"
    return ""


def find_recipes(user_dir: Path | None) -> list[RecipeEntry]:
    """Shipped recipes, then the user's `*.toml` files (the same folder is listed once)."""
    entries = []
    shipped = shipped_recipes_dir()
    seen: set[Path] = set()
    for origin, folder in (("shipped", shipped), ("yours", user_dir)):
        if folder is None or not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).glob("*.toml")):
            resolved = path.resolve()
            if resolved in seen or path.name == "pyproject.toml":
                continue
            seen.add(resolved)
            entries.append(RecipeEntry(path, origin, describe_recipe(path)))
    return entries

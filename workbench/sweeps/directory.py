"""A sweep's directory on disk: is it one, may this sweep use it, and what became of its runs.

No torch here: the TUI's runs side and `runs list` read sweep directories too.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from workbench.errors import RunError
from workbench.storage.events import EVENTS_FILE, read_events
from workbench.storage.runs import (
    RESULTS_FILE,
    SWEEP_INFO_FILE,
    live_pid,
    process_start,
    read_run_file,
    run_status,
)
from workbench.sweeps.spec import SWEEP_FILE


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_INFO_FILE).exists() or (Path(path) / SWEEP_FILE).exists()


def default_sweep_dir(source: Path) -> Path:
    return Path("runs") / f"{source.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_sweep_dir(sweep_dir: Path, identity: str, *, resume: bool, force: bool) -> bool:
    """Check the sweep directory against this sweep; True when continuing one. Never deletes:
    `--force` moves an existing sweep aside."""
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise RunError(f"{sweep_dir}: is a file, not a sweep directory; choose another --sweep-dir")
    if not sweep_dir.exists() or not any(sweep_dir.iterdir()):
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return False
    if not is_sweep_dir(sweep_dir):
        raise RunError(f"{sweep_dir}: exists and is not a workbench sweep directory (no {SWEEP_INFO_FILE}); "
                       "choose another --sweep-dir")
    pid = sweep_live_pid(sweep_dir)
    if pid is not None and pid != os.getpid():
        raise RunError(f"{sweep_dir}: a sweep is live there (pid {pid}); wait for it or stop it first")
    if force:
        aside = sweep_dir.with_name(f"{sweep_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        sweep_dir.rename(aside)
        sweep_dir.mkdir(parents=True)
        return False
    saved = read_sweep_info(sweep_dir).get("identity")
    if saved != identity:
        raise RunError(f"{sweep_dir}: holds a different sweep (identity {saved}, this one {identity}); choose "
                       "another --sweep-dir, or pass --force to move the old one aside")
    if not resume:
        raise RunError(f"{sweep_dir}: already holds this sweep; pass --resume to finish what is missing or "
                       "--force to start over")
    return True


def read_sweep_info(sweep_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(sweep_dir) / SWEEP_INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sweep_live_pid(sweep_dir: Path) -> int | None:
    """The pid of the process running this sweep now, or None (same checks as a run's)."""
    info = read_sweep_info(sweep_dir)
    if not info:
        return None
    # live_pid reads run.json; the sweep's file has the same fields.
    pid, recorded = info.get("pid"), info.get("pid_started")
    if info.get("host") not in (None, socket.gethostname()) or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    if recorded is not None and process_start(pid) not in (None, recorded):
        return None
    return pid


def run_state(run_dir: Path, digest: str) -> str:
    """complete / resumable / new / live / conflict, for one planned run's directory."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    saved = read_run_file(run_dir).get("recipe_hash")
    if saved is not None and saved != digest:
        return "conflict"
    if (run_dir / RESULTS_FILE).exists() and run_status(run_dir) == "finished":
        return "complete"
    if live_pid(run_dir) not in (None, os.getpid()):
        return "live"
    return "resumable"


def tail_types(path: Path, size: int = 4096) -> list[str]:
    """Event types in the last few KB of an event file (cheap to poll)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - size))
            chunk = handle.read()
    except OSError:
        return []
    types = []
    for line in chunk.splitlines()[1:] if len(chunk) >= size else chunk.splitlines():
        try:
            types.append(json.loads(line)["type"])
        except (ValueError, KeyError, TypeError):
            continue
    return types


def last_error(run_dir: Path) -> str | None:
    error = None
    for event in read_events(run_dir / EVENTS_FILE):
        if event["type"] == "run_failed":
            error = event.get("error")
    return error

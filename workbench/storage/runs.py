"""Run directories: their layout, their lifecycle (create, resume, move aside) and their status.

The runner writes run directories through this module; `runs list`, `runs show` and the TUI
read them through it. Nothing here imports torch, so reading runs is instant. Readers are
tolerant of half-written or corrupt files (a run may be writing as we read).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import RunError
from workbench.storage.events import EVENTS_FILE, TERMINAL_EVENTS, read_events
from workbench.storage.files import atomic_write_text

RECIPE_FILE = "recipe.toml"
"""The recipe as it ran, every default filled in."""
RESULTS_FILE = "results.json"
"""Figures per variant (the run's), or one variant's (in its folder)."""
RUN_FILE = "run.json"
"""Recipe hash and the process that runs it (pid, its start time, host)."""
TARGET_FILE = "target.safetensors"
"""A variant's trained target."""

RESERVED_NAMES = frozenset({RECIPE_FILE, RESULTS_FILE, RUN_FILE, EVENTS_FILE, "report.md", "figures"})
"""Names a variant folder may not take."""


def default_run_dir(recipe_path: Path) -> Path:
    return Path("runs") / f"{recipe_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def read_run_file(run_dir: Path) -> dict[str, Any]:
    """`run.json` as a dict; empty when missing, unreadable or not a JSON object."""
    data = read_json_file(Path(run_dir) / RUN_FILE)
    return data if isinstance(data, dict) else {}


def write_run_file(run_dir: Path, digest: str, source: Path, version: str, world_size: int = 1) -> None:
    """Record this process as the run's owner (pid plus its start time, so a recycled pid is not
    mistaken for the run); `world_size`: the processes training it (torchrun), 1 without."""
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps({
        "recipe_hash": digest, "source": str(source), "pid": os.getpid(), "pid_started": process_start(os.getpid()),
        "host": socket.gethostname(), "started": time.time(), "version": version, "world_size": world_size,
    }, indent=2))


def process_start(pid: int) -> str | None:
    """An opaque token for when process `pid` started (Linux: /proc start time), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return fields.rsplit(")", 1)[-1].split()[19]


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (on this host)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_pid(run_dir: Path) -> int | None:
    """The pid of the process that runs this directory now, or None. A pid that exists but started
    at another time than the one recorded is a different process (pid reuse), not the run."""
    info = read_run_file(run_dir)
    pid = info.get("pid")
    if info.get("host") not in (None, socket.gethostname()) or not pid_alive(pid):
        return None
    recorded = info.get("pid_started")
    if recorded is not None and process_start(pid) not in (None, recorded):
        return None
    return pid


def prepare_run_dir(run_dir: Path, digest: str, *, resume: bool, force: bool) -> bool:
    """Check the run directory against this recipe; returns True when continuing a run.

    Never deletes anything: `--force` moves an existing *run* aside, and refuses anything else.
    A run that is still live is never resumed, replaced or joined.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir}: is a file, not a run directory; choose another --run-dir")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        run_dir.mkdir(parents=True, exist_ok=True)
        return False
    is_run = (run_dir / RUN_FILE).exists() or (run_dir / EVENTS_FILE).exists()
    pid = live_pid(run_dir) if is_run else None
    if pid is not None and pid != os.getpid():
        raise RunError(f"{run_dir}: a run is live there (pid {pid}); wait for it, cancel it, or choose "
                       "another --run-dir")
    if not is_run:
        raise RunError(f"{run_dir}: exists and is not a workbench run directory (no {RUN_FILE} or {EVENTS_FILE}); "
                       "choose another --run-dir")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunError(f"{run_dir}: the run directory is read-only, so the run cannot continue there; make it "
                       "writable (chmod u+w) or copy it elsewhere and resume the copy")
    if force:
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        run_dir.mkdir(parents=True)
        return False
    damaged = damaged_entries(run_dir) if resume else []
    if damaged:
        raise RunError(f"{'; '.join(damaged)}; move {'it' if len(damaged) == 1 else 'them'} out of the run directory "
                       "and resume again (the run recomputes what it needs), or start over with --force")
    saved = read_run_file(run_dir).get("recipe_hash")
    if not isinstance(saved, str):
        raise RunError(f"{run_dir / RUN_FILE}: missing or unreadable, so this run cannot be checked against the "
                       "recipe; pass --force to move it aside and start over")
    if saved != digest:
        raise RunError(f"{run_dir}: holds a run of a different recipe (hash {saved}, this one {digest}); "
                       "choose another --run-dir, or pass --force to move the old run aside")
    if not resume:
        raise RunError(f"{run_dir}: already holds a {run_status(run_dir)} run of this recipe; pass --resume to "
                       "continue it or --force to start over")
    return True


KEPT_SUFFIXES = (".json", ".jsonl", ".safetensors", ".toml", ".md", ".html", ".png", ".csv")
"""What the files of a run directory end with: an entry so named must be a regular file."""


def damaged_entries(run_dir: Path, depth: int = 4) -> list[str]:
    """Every entry of a run directory that is not what a run keeps there, one line each: a file name
    (`events.jsonl`, `target.safetensors`...) that is a folder, anything that is a device, a FIFO or a
    socket (reading it would hang or never end), and a link that leads nowhere. Links are not
    followed into other folders, and the walk stops `depth` levels down."""
    problems: list[str] = []
    folders = [(Path(run_dir), 0)]
    while folders:
        folder, level = folders.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append(f"{folder}: cannot be read ({exc.strerror or exc})")
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                mode = os.stat(path).st_mode  # through a link: what a reader would open
            except FileNotFoundError:
                target = os.readlink(path) if entry.is_symlink() else "?"
                problems.append(f"{path}: a link to {target}, which does not exist")
                continue
            except OSError as exc:
                problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
                continue
            if stat.S_ISDIR(mode):
                if entry.name.endswith(KEPT_SUFFIXES) or entry.name == EVENTS_FILE:
                    problems.append(f"{path}: is a folder where the run keeps a file")
                elif not entry.is_symlink() and level + 1 < depth:
                    folders.append((path, level + 1))
            elif not stat.S_ISREG(mode):
                kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
                problems.append(f"{path}: is {kind}, not a file a run writes")
    return problems


def regular_file(path: Path) -> bool:
    """Whether `path` is a regular file (through links): what a reader may open without hanging on a
    FIFO or a device, or failing on a folder."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_json_file(path: Path) -> Any:
    """A JSON file's content, or None when it is missing, not a regular file, unreadable or not JSON."""
    if not regular_file(path):
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None


def status_of(last: str | None, live: bool) -> str:
    """A run's status from its last lifecycle event (`run_started` or a terminal one) and whether its
    process is alive: the one rule for `runs list`, `runs show` and the TUI."""
    if last == "run_started":
        return "running" if live else "interrupted"  # gone without a last word: killed
    return {"run_finished": "finished", "run_failed": "failed", "run_interrupted": "interrupted"}.get(last, "unknown")


def run_status(run_dir: Path) -> str:
    """running / finished / failed / interrupted / unknown, from the event stream and the run's process."""
    last = None
    for event in read_events(Path(run_dir) / EVENTS_FILE):
        if event["type"] == "run_started" or event["type"] in TERMINAL_EVENTS:
            last = event["type"]
    return status_of(last, last == "run_started" and live_pid(run_dir) is not None)


@dataclass
class RunInfo:
    """What a list of runs shows about one run."""

    path: Path
    name: str
    status: str
    recipe: str = ""
    started: float | None = None
    ended: float | None = None
    variants: list[str] = field(default_factory=list)
    results: dict[str, Any] | None = None
    error: str | None = None
    last_event: str | None = None
    kind: str = "run"
    """`run`, or `sweep` (a sweep directory: `done` of `total` runs finished, `failed` of them failed)."""
    done: int | None = None
    total: int | None = None
    failed: int = 0
    world_size: int = 1
    """Processes that trained the run (torchrun / `--nproc`); 1 for an ordinary run."""

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (time.time() if self.status == "running" else None)
        return None if end is None else end - self.started

    @property
    def started_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started)) if self.started else "–"

    @property
    def duration_text(self) -> str:
        seconds = self.duration
        if seconds is None:
            return "–"
        minutes, secs = divmod(int(seconds), 60)
        return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"

    @property
    def headline(self) -> str:
        """Test accuracy (and mean FPR95 when present) per variant, compactly; a sweep's progress."""
        if self.kind == "sweep":
            failed = f", {self.failed} failed" if self.failed else ""
            return f"sweep: {self.done or 0} of {self.total or 0} runs finished{failed}"
        if not self.results:
            return ""
        parts = []
        for variant in self.results.get("variants", []):
            acc = variant.get("utility", {}).get("test_accuracy")
            text = f"{variant['name']} {acc:.3f}" if isinstance(acc, (int, float)) else variant["name"]
            parts.append(text)
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["duration"] = self.duration
        return data


def _finite(value: Any) -> float | None:
    """A real number (not a bool, not NaN or inf), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def clean_results(data: Any) -> dict[str, Any] | None:
    """`results.json` (the run's) reduced to what readers can rely on, or None when it holds no
    variants: `variants` a list of dicts, each with a str `name`; sections (`utility`, `ood`,
    `attacks`) dicts; attacks dicts of dicts. A bad entry is dropped, never a crash: `runs list`,
    `runs show` and the TUI read results that a crash, a hand edit or a bug may have damaged."""
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
        return None
    variants = []
    for entry in data["variants"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        variant = {k: v for k, v in entry.items() if k not in ("utility", "ood", "attacks")}
        for section in ("utility", "ood"):
            if isinstance(entry.get(section), dict):
                variant[section] = entry[section]
        if isinstance(entry.get("attacks"), dict):
            variant["attacks"] = {k: v for k, v in entry["attacks"].items() if isinstance(v, dict)}
        variants.append(variant)
    return {**data, "variants": variants}


def read_variant_results(folder: Path) -> dict[str, Any] | None:
    """A variant's own `results.json` when it is whole (a JSON object with its str `name`), else
    None: a truncated or hand-broken file means the variant is evaluated again, not a crash."""
    data = read_json_file(Path(folder) / RESULTS_FILE)
    return data if isinstance(data, dict) and isinstance(data.get("name"), str) else None


def is_run_dir(path: Path) -> bool:
    return ((path / EVENTS_FILE).exists() or (path / RUN_FILE).exists() or (path / RECIPE_FILE).exists()
            or (path / SWEEP_INFO_FILE).exists())


SWEEP_INFO_FILE = "sweep.json"
"""Marks a sweep directory (see workbench/sweeps/run.py): its identity, pid, host, start time."""


def summarize_sweep(sweep_dir: Path) -> RunInfo:
    """A sweep directory as one RunInfo: status from its events and process, `done` of `total` runs."""
    sweep_dir = Path(sweep_dir)
    info = RunInfo(path=sweep_dir, name=sweep_dir.name, status="unknown", kind="sweep")
    owner = read_json_file(sweep_dir / SWEEP_INFO_FILE)
    owner = owner if isinstance(owner, dict) else {}
    total = owner.get("runs")
    info.total = total if isinstance(total, int) else None
    last = None
    finished: set[str] = set()
    failed: set[str] = set()
    for event in read_events(sweep_dir / EVENTS_FILE):
        kind, run = event["type"], event.get("run")
        info.last_event = kind
        if kind == "sweep_started":
            info.started = info.started or _finite(event.get("t"))
            info.recipe = event.get("sweep") if isinstance(event.get("sweep"), str) else info.recipe
            runs = event.get("runs")
            info.total = len(runs) if isinstance(runs, list) else info.total
            finished, failed, info.ended, last = set(), set(), None, kind
        elif kind in ("sweep_run_finished", "sweep_run_skipped") and isinstance(run, str):
            finished.add(run)
            failed.discard(run)
        elif kind == "sweep_run_failed" and isinstance(run, str):
            failed.add(run)
        elif kind in ("sweep_finished", "sweep_failed", "sweep_interrupted"):
            info.ended, last = _finite(event.get("t")), kind
            if kind == "sweep_failed":
                error = event.get("error")
                info.error = error if isinstance(error, str) else str(error)
    info.done, info.failed = len(finished), len(failed)
    pid, recorded = owner.get("pid"), owner.get("pid_started")
    alive = (owner.get("host") in (None, socket.gethostname()) and pid_alive(pid)
             and (recorded is None or process_start(pid) in (None, recorded)))
    if last == "sweep_started":
        info.status = "running" if alive else "interrupted"
    else:
        info.status = {"sweep_finished": "finished", "sweep_failed": "failed",
                       "sweep_interrupted": "interrupted"}.get(last, "unknown")
        if last == "sweep_finished" and failed:
            info.status = "failed"
            info.error = f"{len(failed)} of {info.total} runs failed: {', '.join(sorted(failed))}"
    return info


def summarize(run_dir: Path) -> RunInfo:
    """A RunInfo for one run directory (a missing or unreadable one gives status `missing`); a sweep
    directory gives one RunInfo for the whole sweep."""
    run_dir = Path(run_dir)
    info = RunInfo(path=run_dir, name=run_dir.name, status="missing")
    if not run_dir.is_dir():
        return info
    if (run_dir / SWEEP_INFO_FILE).exists():
        return summarize_sweep(run_dir)
    info.status = run_status(run_dir)
    for event in read_events(run_dir / EVENTS_FILE):
        kind = event["type"]
        info.last_event = kind
        # Fields are type-checked: one bad line must not break the listing of every run.
        if kind == "run_started":
            if info.started is None:
                info.started = _finite(event.get("t"))
            recipe, variants = event.get("recipe"), event.get("variants")
            info.recipe = recipe if isinstance(recipe, str) else info.recipe
            if isinstance(variants, list):
                info.variants = [v for v in variants if isinstance(v, str)]
            world = event.get("world_size")
            info.world_size = world if isinstance(world, int) and not isinstance(world, bool) and world > 0 else 1
            info.ended = None
        elif kind in ("run_finished", "run_failed", "run_interrupted"):
            info.ended = _finite(event.get("t"))
            if kind == "run_failed":
                error = event.get("error")
                info.error = error if isinstance(error, str) else str(error)
    info.results = clean_results(read_json_file(run_dir / RESULTS_FILE))
    return info


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run directory directly under `runs_dir`, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [summarize(p) for p in runs_dir.iterdir() if p.is_dir() and is_run_dir(p)]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)

"""Reading run directories: status, timing and headline figures, for `runs list` and the TUI.

Only reads; tolerant of half-written or corrupt files (a run may be writing as we read).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.events import EVENTS_FILE, read_events
from workbench.runner import RECIPE_FILE, RESULTS_FILE, RUN_FILE, run_status


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
        """Test accuracy (and mean FPR95 when present) per variant, compactly."""
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


def is_run_dir(path: Path) -> bool:
    return (path / EVENTS_FILE).exists() or (path / RUN_FILE).exists() or (path / RECIPE_FILE).exists()


def summarize(run_dir: Path) -> RunInfo:
    """A RunInfo for one run directory (a missing or unreadable one gives status `missing`)."""
    run_dir = Path(run_dir)
    info = RunInfo(path=run_dir, name=run_dir.name, status="missing")
    if not run_dir.is_dir():
        return info
    info.status = run_status(run_dir)
    for event in read_events(run_dir / EVENTS_FILE):
        kind = event["type"]
        info.last_event = kind
        if kind == "run_started":
            if info.started is None:
                info.started = event.get("t")
            info.recipe = event.get("recipe", info.recipe)
            info.variants = event.get("variants", info.variants)
            info.ended = None
        elif kind in ("run_finished", "run_failed", "run_interrupted"):
            info.ended = event.get("t")
            if kind == "run_failed":
                info.error = event.get("error")
    try:
        info.results = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        info.results = None
    return info


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run directory directly under `runs_dir`, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [summarize(p) for p in runs_dir.iterdir() if p.is_dir() and is_run_dir(p)]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)

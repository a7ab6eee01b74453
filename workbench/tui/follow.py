"""Following a run's `events.jsonl` as it grows, and folding events into what the screens show.

The runner appends one JSON object a line and flushes per line, so a reader only ever needs
the complete lines after the offset it last reached; a half-written last line waits for the
next poll. Nothing here imports Textual.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.storage.events import EVENTS_FILE, TERMINAL_EVENTS
from workbench.storage.runs import live_pid, pid_alive, status_of  # noqa: F401  (pid_alive re-exported for the TUI)

# Reading is bounded per poll so a huge backlog is consumed over several ticks, never in one freeze.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024


class EventFollower:
    """Reads the complete lines appended to an events file since the last poll."""

    def __init__(self, run_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(run_dir) / EVENTS_FILE
        self.max_bytes = max_bytes
        self.offset = 0
        self.corrupt_lines = 0
        self.missing = False
        self.restarted = False  # the file shrank (replaced): everything was read again from the start

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call; corrupt lines are counted and skipped."""
        self.restarted = False
        try:
            with self.path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over
                    self.offset = 0
                    self.restarted = True
                handle.seek(self.offset)
                chunk = handle.read(self.max_bytes)
        except FileNotFoundError:
            self.missing = True
            return []
        except OSError:
            return []
        self.missing = False
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # only a half-written line so far
        complete = chunk[: end + 1]
        self.offset += len(complete)
        events = []
        for line in complete.splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.corrupt_lines += 1
                continue
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                events.append(event)
            else:
                self.corrupt_lines += 1
        return events


@dataclass
class StageProgress:
    """One stage of one variant: how far along, and how fast."""

    stage: str
    variant: str | None
    total: float | None = None
    done: float = 0.0
    started: float | None = None
    updated: float | None = None
    finished: bool = False
    seconds: float | None = None

    @property
    def label(self) -> str:
        return f"{self.variant} · {self.stage}" if self.variant else self.stage

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return 1.0 if self.finished else None
        return min(1.0, max(0.0, self.done / self.total))

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate seen so far (None until there is a rate)."""
        if self.finished or not self.total or self.done <= 0 or self.started is None or self.updated is None:
            return None
        elapsed = self.updated - self.started
        if elapsed <= 0:
            return None
        return (self.total - self.done) * elapsed / self.done


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class RunState:
    """Everything the live view shows, folded from events one at a time."""

    variants: list[str] = field(default_factory=list)
    recipe: str = ""
    started: float | None = None
    ended: float | None = None
    terminal: str | None = None  # run_finished / run_failed / run_interrupted
    error: str | None = None
    message: str | None = None
    stages: dict[tuple[str | None, str], StageProgress] = field(default_factory=dict)
    current: StageProgress | None = None
    # variant -> metric name -> [(epoch, value)]
    curves: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: deque = field(default_factory=lambda: deque(maxlen=2000))
    events_seen: int = 0
    log_count: int = 0  # entries ever logged (the deque forgets old ones)
    last_t: float | None = None
    world_size: int = 1  # processes training the run (torchrun / --nproc)

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        t = event.get("t") if isinstance(event.get("t"), (int, float)) else None
        self.events_seen += 1
        if t is not None:
            self.last_t = t
        variant = event.get("variant")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            try:
                handler(event, t, variant)
            except (TypeError, ValueError, KeyError, AttributeError):
                self._log(t, "warning", f"unreadable {kind} event skipped")
                return
        line = describe_event(event)
        if line is not None:
            self._log(t, *line)

    def apply_all(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.apply(event)

    def _log(self, t: float | None, level: str, text: str) -> None:
        self.log.append((t, level, text))
        self.log_count += 1

    def _on_run_started(self, event: dict, t: float | None, variant: str | None) -> None:
        if self.started is None:
            self.started = t
        self.recipe = str(event.get("recipe", self.recipe))
        self.variants = [str(v) for v in event.get("variants") or self.variants]
        world = event.get("world_size")
        self.world_size = world if isinstance(world, int) and not isinstance(world, bool) and world > 0 else 1
        self.terminal = None
        self.ended = None

    def _stage(self, variant: str | None, stage: str) -> StageProgress:
        key = (variant, stage)
        if key not in self.stages:
            self.stages[key] = StageProgress(stage=stage, variant=variant)
        return self.stages[key]

    def _on_stage_started(self, event: dict, t: float | None, variant: str | None) -> None:
        progress = self._stage(variant, str(event["stage"]))
        progress.total = event.get("total")
        progress.started = t
        progress.updated = t
        progress.finished = False
        self.current = progress

    def _on_stage_finished(self, event: dict, t: float | None, variant: str | None) -> None:
        progress = self._stage(variant, str(event["stage"]))
        progress.finished = True
        progress.updated = t
        progress.seconds = event.get("seconds")
        if progress.total:
            progress.done = progress.total

    def _on_epoch(self, event: dict, t: float | None, variant: str | None) -> None:
        progress = self._stage(variant, str(event.get("stage", "train")))
        progress.total = event.get("epochs") or progress.total
        progress.done = float(event["epoch"])
        progress.updated = t
        if progress.started is None:
            progress.started = t
        if not progress.finished:
            self.current = progress
        curves = self.curves.setdefault(variant or "", {})
        for name, value in (event.get("metrics") or {}).items():
            if isinstance(value, (int, float)):
                curves.setdefault(str(name), []).append((float(event["epoch"]), float(value)))

    def _on_progress(self, event: dict, t: float | None, variant: str | None) -> None:
        progress = self._stage(variant, str(event["stage"]))
        progress.total = event.get("total") or progress.total
        progress.done = float(event["step"])
        progress.updated = t
        if progress.started is None:
            progress.started = t
        if not progress.finished:
            self.current = progress

    def _on_result(self, event: dict, t: float | None, variant: str | None) -> None:
        sections = self.results.setdefault(variant or "", {})
        figures = event.get("figures") or {}
        section = str(event["section"])
        if isinstance(figures, dict):
            sections.setdefault(section, {}).update(figures)

    def _on_run_finished(self, event: dict, t: float | None, variant: str | None) -> None:
        self.terminal, self.ended = "run_finished", t

    def _on_run_failed(self, event: dict, t: float | None, variant: str | None) -> None:
        self.terminal, self.ended, self.error = "run_failed", t, str(event.get("error", ""))

    def _on_run_interrupted(self, event: dict, t: float | None, variant: str | None) -> None:
        self.terminal, self.ended, self.message = "run_interrupted", t, str(event.get("message", ""))

    @property
    def finished_attacks(self) -> list[tuple[str, str]]:
        """(variant, attack) for every attack with results, in the order they arrived."""
        found = []
        for variant, sections in self.results.items():
            for attack in sections.get("attacks", {}):
                found.append((variant, attack))
        return found

    def status(self, run_dir: Path | None = None) -> str:
        """running / finished / failed / interrupted, like `workbench runs list`."""
        if self.terminal is not None:
            return status_of(self.terminal, live=False)
        live = run_dir is not None and read_pid(run_dir) is not None
        if self.started is None:
            return "starting" if live else "unknown"
        return status_of("run_started", live=run_dir is None or live)

    def elapsed(self, now: float | None = None) -> float | None:
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (now if now is not None else time.time())
        return end - self.started


def describe_event(event: dict[str, Any]) -> tuple[str, str] | None:
    """(level, one line) for the event log; None for events too frequent to list (epochs, steps)."""
    kind = event.get("type")
    variant = event.get("variant")
    where = f"{variant}: " if variant else ""
    if kind == "log":
        return str(event.get("level", "info")), str(event.get("message", ""))
    if kind == "run_started":
        resumed = " (resumed)" if event.get("resumed") else ""
        world = event.get("world_size")
        procs = f" on {world} processes (DDP)" if isinstance(world, int) and world > 1 else ""
        return "info", f"run started{resumed}{procs}: {event.get('recipe', '')}"
    if kind == "stage_started":
        return "info", f"{where}{event.get('stage')} started"
    if kind == "stage_finished":
        seconds = event.get("seconds")
        took = f" in {seconds:.1f}s" if isinstance(seconds, (int, float)) else ""
        return "info", f"{where}{event.get('stage')} finished{took}"
    if kind == "checkpoint":
        return "info", f"{where}checkpoint {event.get('path', '')}"
    if kind == "result":
        figures = event.get("figures") or {}
        shown = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, (int, float)) else str(k) for k, v in list(figures.items())[:6]
        )
        return "info", f"{where}{event.get('section')} {shown}"
    if kind == "run_finished":
        return "success", f"run finished in {format_seconds(event.get('seconds'))}"
    if kind == "run_failed":
        return "error", f"run failed: {event.get('error', '')}"
    if kind == "run_interrupted":
        return "warning", f"run interrupted: {event.get('message', '')}"
    return None


def read_pid(run_dir: Path) -> int | None:
    """The run's live process id, or None (ended, never started, or the pid now belongs to another process)."""
    return live_pid(run_dir)


def is_terminal(event: dict[str, Any]) -> bool:
    return event.get("type") in TERMINAL_EVENTS

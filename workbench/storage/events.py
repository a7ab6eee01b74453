"""The run's event stream: `events.jsonl`, append-only, one JSON object a line, flushed per line.

The runner writes; the CLI and the TUI only read. Every event has `t` (unix seconds) and
`type`. Types and their fields:

- `run_started`: `recipe` (path), `run_dir`, `variants` (names), `seed`, `version`, `resumed`,
  `device`, `recipe_hash`
- `stage_started`: `stage`, `variant` (or null), `total` (steps/epochs, or null); an attack shard's
  (stage `attack:<name>:shard-<k>-of-<n>`) also `shard` (0-based), `shards` and the job's `pid`
- `stage_finished`: `stage`, `variant`, `seconds`
- `epoch`: `stage`, `variant`, `epoch` (1-based), `epochs`, `metrics` (name -> float; losses,
  accuracies, per-layer dependency terms such as `dep_x/0`, `dep_y/0`, the OOD loss and its
  share), and `cached: true` when replayed from a cached target
- `checkpoint`: `variant`, `stage`, `path`, `epoch`
- `progress`: `stage`, `variant`, `step`, `total`, plus free numeric fields (attack loss...)
- `result`: `variant` (null for the evaluation model), `section` (`utility`, `ood`, `attacks`,
  `evaluation_model`, `evaluator/<name>` for each of the recipe's other evaluators), `figures`, and
  `attack` (its name) for section `attacks`
- `log`: `level` (`info`, `warning`, `error`), `message`
- `run_finished`: `seconds`; `run_failed`: `error`; `run_interrupted`: `message`

A sweep directory has its own `events.jsonl` with `sweep_*` events (see `workbench.sweeps`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.storage.files import write_problem

EVENTS_FILE = "events.jsonl"

TERMINAL_EVENTS = ("run_finished", "run_failed", "run_interrupted")


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line (and results.json) parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class EventWriter:
    """Appends events to a run directory's `events.jsonl`; listeners see each event too."""

    REMEMBERED = 10_000
    """How many of its own recent lines a writer remembers (see `wrote`)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / EVENTS_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_symlink() or (self.path.exists() and not stat.S_ISREG(self.path.stat().st_mode)):
                raise IsADirectoryError(0, "not a regular file (a folder, a link, a FIFO or a device)")
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._end_last_line()
        except OSError as exc:
            raise write_problem(self.path, exc) from None
        self.listeners: list = []
        self._own: dict[str, None] = {}  # recent lines this writer wrote, oldest first

    def _end_last_line(self) -> None:
        """A process killed mid-line left a line without its newline: end it, so the next event starts a
        line of its own (readers skip the broken one) instead of being glued to it."""
        size = os.fstat(self._fd).st_size
        if size:
            with self.path.open("rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"t": round(time.time(), 3), "type": type, **json_safe(fields)}
        line = json.dumps(event, separators=(",", ":"))
        self._append((line + "\n").encode("utf-8"))
        self._own[line] = None
        if len(self._own) > self.REMEMBERED:
            del self._own[next(iter(self._own))]
        for listener in self.listeners:
            listener(event)
        return event

    def wrote(self, line: str) -> bool:
        """Whether this writer wrote `line` (recently): a relay of lines that worker processes appended
        to the same file skips these, so no listener sees an event twice."""
        return line in self._own

    def _append(self, data: bytes) -> None:
        """One whole line with one `write` (O_APPEND: lines of worker processes never interleave); a
        write that fails (the disk full) is cut back off, so no half line stays, and is one line naming
        the file."""
        before = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # short write: the disk filled up in the middle of the line
                raise OSError(28, os.strerror(28))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise write_problem(self.path, exc) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def relay_events(writer: EventWriter, offset: int) -> int:
    """Hand the events that other processes (workers) appended to the writer's file since byte
    `offset` to its listeners, skipping the writer's own lines; returns the new offset."""
    with writer.path.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
        if writer.wrote(line):
            continue  # this process's own event: its listeners had it when it was written
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        for listener in writer.listeners:
            listener(event)
    return offset + end


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events from a file, skipping lines that are half-written or not JSON objects."""
    path = Path(path)
    if path.is_dir():
        path = path / EVENTS_FILE
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return  # a FIFO or a device would block the reader forever; a folder is no event file
        handle = path.open(encoding="utf-8", errors="replace")
    except OSError:
        return
    with handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # still being written
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "type" in event:
                yield event

"""Event sinks in a run: every event of `events.jsonl`, in order, also goes to TensorBoard, MLflow...

A run's sinks are the recipe's `[[sinks]]` tables plus the names given with `--sink`. Each sink
lives on its own thread behind a queue: the runner hands an event over and goes on, so a slow
sink (a busy tracking server, MLflow creating its database) never slows training. A sink that
raises, in `open`, `write` or `close`, is reported in one warning line naming it (a `log` event
while the run goes on, stderr after it ended) and dropped; the run goes on and `events.jsonl`,
written before any sink sees the event, stays complete. When the run ends the sinks get up to
`WORKBENCH_SINK_TIMEOUT` seconds (default 60) to finish writing.

`replay(run_dir, ...)` feeds a finished run's `events.jsonl` to sinks (`workbench export`), in
this thread; there a failing sink is an error.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tomllib

from workbench.components.params import ComponentTable
from workbench.errors import WorkbenchError
from workbench.storage.events import TERMINAL_EVENTS, read_events

"""Comma-separated sink names added to every run this process and the processes it starts run: how
`workbench sweep --sink NAME` reaches the runs of a sweep, on whatever executor runs them."""
TIMEOUT_ENV = "WORKBENCH_SINK_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
INTERRUPTED_TIMEOUT = 10.0
KIND = "event_sink"

_STOP = object()


def sink_tables(
    recipe_sinks: Sequence[ComponentTable | dict], names: Sequence[str] = ()
) -> list[ComponentTable]:
    """The recipe's sink tables, then one default table per `--sink` name the recipe lacks."""
    tables = [t if isinstance(t, ComponentTable) else ComponentTable.model_validate(t) for t in recipe_sinks]
    used = {t.use for t in tables}
    for name in names:
        if name not in used:
            tables.append(ComponentTable(use=name))
            used.add(name)
    return tables


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    if isinstance(exc, WorkbenchError):
        return detail
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


class _SinkThread(threading.Thread):
    """One sink behind a queue: opens it, writes every event in order, closes it."""

    def __init__(
        self, name: str, sink: Any, run_dir: Path, recipe: dict[str, Any], warn: Callable[[str], None]
    ):
        super().__init__(name=f"workbench-sink-{name}", daemon=True)
        self.sink_name = name
        self.sink = sink
        self.run_dir = run_dir
        self.recipe = recipe
        self.warn = warn
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.failed = False

    def fail(self, when: str, exc: BaseException) -> None:
        self.failed = True
        self.warn(f"event sink {self.sink_name!r} failed in {when} and was dropped: {_one_line(exc)}")

    def run(self) -> None:
        try:
            self.sink.open(self.run_dir, self.recipe)
        except Exception as exc:
            self.fail("open", exc)
        while True:
            event = self.queue.get()
            if event is _STOP:
                break
            if self.failed:
                continue
            try:
                self.sink.write(event)
            except Exception as exc:
                self.fail(f"write ({event.get('type')} event)", exc)
                self._close_quietly()
        if not self.failed:
            try:
                self.sink.close()
            except Exception as exc:
                self.fail("close", exc)

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.sink.close()


class EventSinks:
    """A listener for `EventWriter`: hands every event to each sink's thread, and closes the sinks
    when the run ends (a terminal event) or, failing that, when the process exits."""

    def __init__(
        self,
        sinks: Sequence[tuple[str, Any]],
        run_dir: Path,
        recipe: dict[str, Any],
        emit: Callable[..., Any] | None = None,
        timeout: float | None = None,
    ):
        self.emit = emit
        self.timeout = timeout if timeout is not None else float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        self._warnings: queue.SimpleQueue = queue.SimpleQueue()
        self._reporting = False
        self.closed = False
        self.threads = [
            _SinkThread(name, sink, Path(run_dir), recipe, self._warnings.put) for name, sink in sinks
        ]
        for thread in self.threads:
            thread.start()
        atexit.register(self.close)

    @property
    def names(self) -> list[str]:
        """The sinks still working."""
        return [t.sink_name for t in self.threads if not t.failed]

    def __call__(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        for thread in self.threads:
            if not thread.failed:
                thread.queue.put(event)
        if self._reporting:  # the warning's own log event, coming back through the writer
            return
        if event.get("type") in TERMINAL_EVENTS:
            # What is still to report goes to stderr: the terminal event stays the last. Ctrl-C asked
            # for a quick stop, so the sinks get less time then.
            self.close(INTERRUPTED_TIMEOUT if event["type"] == "run_interrupted" else None)
        else:
            self._report()  # the relay skips the parent's own lines, so a warning is seen once

    def _report(self) -> None:
        """Warnings from the sink threads, as `log` events while the run goes on (main thread only)."""
        while True:
            try:
                message = self._warnings.get_nowait()
            except queue.Empty:
                return
            if self.emit is None or self.closed:
                print(f"warning: {message}", file=sys.stderr, flush=True)
                continue
            self._reporting = True
            try:
                self.emit("log", level="warning", message=message)
            finally:
                self._reporting = False

    def close(self, timeout: float | None = None) -> None:
        """Let every sink finish (at most `timeout` seconds in all, default `self.timeout`) and close it."""
        if self.closed:
            return
        limit = self.timeout if timeout is None else min(timeout, self.timeout)
        self.closed = True
        atexit.unregister(self.close)
        for thread in self.threads:
            thread.queue.put(_STOP)
        deadline = time.monotonic() + limit
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                thread.failed = True
                self._warnings.put(
                    f"event sink {thread.sink_name!r} still writing after {limit:g} s "
                    f"(set {TIMEOUT_ENV} to wait longer); left unfinished"
                )
        self._report()


def create_sinks(
    registry, tables: Sequence[ComponentTable], warn: Callable[[str], None]
) -> list[tuple[str, Any]]:
    """Build each sink; one whose factory raises is reported through `warn` and left out."""
    sinks = []
    for table in tables:
        registry.get(KIND, table.use)  # an unknown name is the user's error, before anything runs
        try:
            sinks.append((table.use, registry.create_from(KIND, table)))
        except Exception as exc:
            warn(f"event sink {table.use!r} could not be created and was dropped: {_one_line(exc)}")
    return sinks


def attach_sinks(
    events,
    registry,
    recipe_sinks: Sequence[ComponentTable],
    names: Sequence[str],
    run_dir: Path,
    resolved: dict[str, Any],
) -> EventSinks | None:
    """Open the recipe's sinks and those named by `--sink` (a run's, or its sweep's) as listeners of
    the run's `EventWriter` (None if there are none)."""
    tables = sink_tables(recipe_sinks, list(names))
    if not tables:
        return None
    early: list[str] = []
    sinks = EventSinks(create_sinks(registry, tables, early.append), run_dir, resolved, emit=events.emit)
    for message in early:
        sinks._warnings.put(message)
    events.listeners.append(sinks)
    return sinks


# ------------------------------------------------------------------ export


def read_run_recipe(run_dir: Path) -> dict[str, Any]:
    """The resolved recipe a run saved (`recipe.toml`), as plain data."""
    path = Path(run_dir) / "recipe.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkbenchError(f"{run_dir}: not a run directory (no recipe.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkbenchError(f"{path}: not valid TOML: {exc}") from None


def replay(run_dir: Path, sinks: Sequence[tuple[str, Any]], recipe: dict[str, Any] | None = None) -> int:
    """Feed a run's `events.jsonl` to `sinks` in this thread, as a live run would; returns the
    number of events. A sink that raises is an error naming it (nothing else to do here)."""
    run_dir = Path(run_dir)
    recipe = recipe if recipe is not None else read_run_recipe(run_dir)
    count = 0
    for name, sink in sinks:
        try:
            sink.open(run_dir, recipe)
            count = 0
            for event in read_events(run_dir):
                sink.write(event)
                count += 1
            sink.close()
        except WorkbenchError as exc:
            raise WorkbenchError(f"event sink {name!r}: {_one_line(exc)}") from None
        except Exception as exc:
            raise WorkbenchError(f"event sink {name!r} failed: {_one_line(exc)}") from None
    return count


def export_run(registry, run_dir: Path, name: str, to: str | Path | None = None) -> tuple[Path | None, int]:
    """`workbench export RUN_DIR --sink NAME [--to DIR]`: replay the run into sink `name`, with the
    params the recipe gave that sink (if it named it) and `directory = DIR`. Returns where it wrote
    (for sinks with a `directory` param) and the number of events.

    Without `--to`, a sink with a `directory` param writes to its default, `<run dir>/<name>` for the
    built-ins; that folder must not hold anything yet (a live sink or an earlier export), so a run is
    never written twice into one place. For a sink with a `tracking_uri` param (mlflow), a `--to` that
    is a URI (`http://...`, `sqlite:///...`) sets that instead."""
    run_dir = Path(run_dir)
    if not (run_dir / "events.jsonl").is_file():
        raise WorkbenchError(f"{run_dir}: not a run directory (no events.jsonl)")
    component = registry.get(KIND, name)
    recipe = read_run_recipe(run_dir)
    params: dict[str, Any] = {}
    for table in recipe.get("sinks", []):
        if table.get("use") == name:
            params = {k: v for k, v in table.items() if k not in ("use", "directory", "tracking_uri")}
            break
    target: Path | None = None
    fields = component.params.model_fields
    if to is not None and "tracking_uri" in fields and ("://" in str(to) or str(to) == "databricks"):
        params["tracking_uri"] = str(to)  # a tracking server or another store
    elif "directory" in fields:
        target = Path(to).resolve() if to is not None else run_dir.resolve() / name
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise WorkbenchError(
                f"{target}: already exists and is not empty (a live {name} sink or an earlier "
                "export wrote it); choose another --to or remove it"
            )
        params["directory"] = str(target)
    elif to is not None:
        raise WorkbenchError(f"event sink {name!r} has no `directory` param, so --to does not apply to it")
    try:
        sink = registry.create(KIND, name, **params)
    except Exception as exc:
        if isinstance(exc, WorkbenchError):
            raise
        raise WorkbenchError(f"event sink {name!r} could not be created: {_one_line(exc)}") from None
    count = replay(run_dir, [(name, sink)], recipe)
    return target, count

"""Every figure of a run as a CSV row.

A workbench event_sink component, registered as `__NAME__` (package __DIST__).

The runner hands a sink every event it writes to `events.jsonl`, in order, on the sink's own
thread. This one keeps the figures: each `epoch` event's metrics and each `result` event's
figures become rows of `<run dir>/<file>` (variant, stage, epoch, name, value).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from workbench.api import StrictModel, hookimpl

COLUMNS = ["variant", "stage", "epoch", "name", "value"]


class ExampleParams(StrictModel):
    file: str = "figures.csv"
    """File name of the CSV, in the run directory."""


def numbers(figures: dict[str, Any], prefix: str = ""):
    """(name, value) of every number in `figures`; nested tables (OOD sets) as `set/auroc`."""
    for name, value in figures.items():
        if isinstance(value, dict):
            yield from numbers(value, f"{prefix}{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + name, value


class ExampleSink:
    """Figures to a CSV file, one row each, as the events arrive."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def open(self, run_dir: Path, recipe: dict[str, Any]) -> None:
        path = Path(run_dir) / self.params.file
        new = not path.exists()  # a resumed run appends
        self.stream = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.stream)
        if new:
            self.writer.writerow(COLUMNS)

    def write(self, event: dict[str, Any]) -> None:
        if event["type"] == "epoch":
            figures, where = event["metrics"], (event.get("variant"), event["stage"], event["epoch"])
        elif event["type"] == "result":
            figures, where = event["figures"], (event["variant"], event["section"], "")
        else:
            return
        self.writer.writerows((*where, name, value) for name, value in numbers(figures))
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


@hookimpl
def register_event_sinks(register):
    register("__NAME__", ExampleSink, params=ExampleParams,
             summary="Example event sink: figures to a CSV file.")

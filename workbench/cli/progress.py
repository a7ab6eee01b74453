"""Terminal progress built from the run's events: rich bars on a TTY, plain lines otherwise."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Figures worth a glance in an epoch line, in this order when present.
HEADLINE_METRICS = ("loss", "ce", "train_accuracy", "test_accuracy", "ood_loss")


def epoch_summary(metrics: dict[str, Any]) -> str:
    parts = [f"{k} {metrics[k]:.4f}" for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float))]
    dep_x = sum(v for k, v in metrics.items() if k.startswith("dep_x/") and isinstance(v, (int, float)))
    dep_y = sum(v for k, v in metrics.items() if k.startswith("dep_y/") and isinstance(v, (int, float)))
    if any(k.startswith("dep_x/") for k in metrics):
        parts.append(f"Σd(X,Z) {dep_x:.4f}  Σd(Z,Y) {dep_y:.4f}")
    return "  ".join(parts)


def stage_label(event: dict[str, Any]) -> str:
    variant = event.get("variant")
    return f"{event['stage']} {variant}" if variant else event["stage"]


class ConsoleReporter:
    """An event listener. Use as a context manager around the run."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        ) if self.live else None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ConsoleReporter:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        kind = event["type"]
        if self.progress:
            self._live(kind, event)
        else:
            self._plain(kind, event)

    def _live(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "stage_started" and event.get("total"):
            self._bar(event)
        elif kind in ("epoch", "progress"):
            task = self.tasks.get(stage_label(event))
            if task is None and kind == "progress" and event.get("total"):
                task = self._bar(event)  # steps inside a stage (a GAN prior, an attack's search)
            if task is not None:
                done = event.get("epoch", event.get("step", 0))
                info = epoch_summary(event.get("metrics", {})) if kind == "epoch" else ""
                self.progress.update(task, completed=done, info=info)
        elif kind == "stage_finished":
            task = self.tasks.get(stage_label(event))
            if task is not None:
                self.progress.update(task, completed=self.progress.tasks[task].total)
        elif kind == "log" or kind == "result":
            self._plain(kind, event)

    def _bar(self, event: dict[str, Any]) -> Any:
        label = stage_label(event)
        self.tasks[label] = self.progress.add_task(label, total=event["total"], info="")
        return self.tasks[label]

    def _plain(self, kind: str, event: dict[str, Any]) -> None:
        def print_(text: str, **_: object) -> None:
            # Plain output (a file, a pipe) never hard-wraps at the console's width (80 there).
            self.console.print(text, markup=False, highlight=False, soft_wrap=not self.console.is_terminal)

        if kind == "run_started":
            print_(f"run {event['run_dir']}: {', '.join(event['variants'])} on {event.get('device')}"
                   f"{' (resumed)' if event.get('resumed') else ''}", highlight=False)
        elif kind == "stage_started":
            print_(f"[{stage_label(event)}] started", highlight=False)
        elif kind == "epoch":
            print_(f"[{stage_label(event)}] epoch {event['epoch']}/{event['epochs']}  "
                   f"{epoch_summary(event['metrics'])}", highlight=False)
        elif kind == "stage_finished":
            print_(f"[{stage_label(event)}] done in {event['seconds']:.1f}s", highlight=False)
        elif kind == "result":
            figures = "  ".join(f"{k} {v:.4f}" for k, v in event["figures"].items() if isinstance(v, (int, float)))
            print_(f"[{event['variant']}] {event['section']}: {figures}", highlight=False)
        elif kind == "log":
            print_(f"{event.get('level', 'info')}: {event['message']}", highlight=False)
        elif kind == "run_finished":
            print_(f"run finished in {event['seconds']:.1f}s", highlight=False)

"""What the runs views share: status colours, progress bars, file stamps."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

STATUS_STYLE = {"running": "bold cyan", "finished": "green", "failed": "bold red", "interrupted": "yellow",
                "missing": "dim", "unknown": "dim", "starting": "cyan"}
LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "success": "green", "info": ""}


def styled_status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def files_stamp(run_dir: Path) -> tuple:
    """What changes when a run's files do (their times and sizes): a view re-reads a run only then."""
    stamp = []
    for name in ("events.jsonl", "results.json", "run.json"):
        try:
            stat = (run_dir / name).stat()
            stamp.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


def progress_bar(fraction: float | None, width: int = 30) -> str:
    if fraction is None:
        return "·" * width
    filled = int(round(fraction * width))
    return "█" * filled + "░" * (width - filled)


def mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None

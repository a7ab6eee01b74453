"""Runs mode: the list of runs and the live view of one run (results across runs: `tui.results`)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, RichLog, Static

from workbench.errors import WorkbenchError
from workbench.storage.runs import RunInfo, is_run_dir, summarize
from workbench.tui.charts import half_block_image, line_chart, load_picture
from workbench.tui.follow import EventFollower, RunState, format_seconds
from workbench.tui.launch import cancel_run, resume_run
from workbench.tui.listing import LEVEL_STYLE, files_stamp, progress_bar, styled_status
from workbench.tui.results import ResultsScreen, SweepScreen
from workbench.tui.sysinfo import CpuSampler, GpuReader, gibibytes, read_memory


class RunScanner:
    """Summaries of the run directories under a folder, re-read only when a run's files change."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple, RunInfo]] = {}

    def scan(self, runs_dir: Path) -> list[RunInfo]:
        runs_dir = Path(runs_dir)
        found = []
        try:
            candidates = [p for p in runs_dir.iterdir() if p.is_dir()]
        except OSError:
            return []
        for path in candidates:
            try:
                if not is_run_dir(path):
                    continue
                stamp = files_stamp(path)
                cached = self._cache.get(path)
                # A running run can die without writing anything: always look again at those.
                if cached is None or cached[0] != stamp or cached[1].status == "running":
                    cached = (stamp, summarize(path))
                    self._cache[path] = cached
                found.append(cached[1])
            except OSError:  # deleted while we looked
                continue
        for gone in set(self._cache) - {info.path for info in found}:
            del self._cache[gone]
        return sorted(found, key=lambda r: (r.started or 0, r.name), reverse=True)


class RunsScanned(Message):
    """A fresh scan of the runs dir (only the newest one matters)."""

    def __init__(self, runs: list[RunInfo]) -> None:
        super().__init__()
        self.runs = runs

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsScanned)


class RunsScreen(Screen):
    """Every run under the runs dir, including ones started from the CLI elsewhere."""

    BINDINGS = [
        Binding("enter", "open", "Watch"),
        Binding("space", "toggle", "Select"),
        Binding("r", "results", "Results"),
        Binding("c", "cancel", "Cancel run"),
        Binding("u", "resume", "Resume run"),
        Binding("f5", "rescan", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunInfo] = []
        self.selected: set[Path] = set()
        self.scanner = RunScanner()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("", id="runs-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#runs-title", Label).update(f"Runs in {self.app.runs_dir}")
        table = self.query_one(DataTable)
        table.add_column("✓", key="sel", width=1)
        for name in ("run", "status", "recipe", "started", "duration", "headline"):
            table.add_column(name, key=name)
        self.action_rescan()
        self.set_interval(2.0, self.action_rescan)

    @work(thread=True, exclusive=True, group="scan")
    def action_rescan(self) -> None:
        self.post_message(RunsScanned(self.scanner.scan(self.app.runs_dir)))

    @on(RunsScanned)
    def _scanned(self, message: RunsScanned) -> None:
        self.runs = message.runs
        self._fill()

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        current = self._current()
        table.clear()
        for info in self.runs:
            recipe = Path(info.recipe).name if info.recipe else ""
            table.add_row("✓" if info.path in self.selected else "", info.name, styled_status(info.status), recipe,
                          info.started_text, info.duration_text, info.error or info.headline, key=str(info.path))
        if current is not None:
            keys = [str(info.path) for info in self.runs]
            if str(current.path) in keys:
                table.move_cursor(row=keys.index(str(current.path)), animate=False)

    def _current(self) -> RunInfo | None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        return self.runs[row] if self.runs and row is not None and 0 <= row < len(self.runs) else None

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        info = self._current()
        if info is not None:
            self.app.push_screen(SweepScreen(info.path) if info.kind == "sweep" else RunScreen(info.path))

    def action_toggle(self) -> None:
        info = self._current()
        if info is None:
            return
        self.selected ^= {info.path}
        self._fill()

    def action_results(self) -> None:
        chosen = [info.path for info in self.runs if info.path in self.selected and info.kind != "sweep"]
        current = self._current()
        if not chosen and current is not None:
            if current.kind == "sweep":
                self.app.push_screen(SweepScreen(current.path))
                return
            chosen = [current.path]
        if chosen:
            self.app.push_screen(ResultsScreen(chosen))

    def action_cancel(self) -> None:
        info = self._current()
        if info is not None and info.kind == "sweep":
            self.notify("stop a sweep where it runs (Ctrl-C); it stays resumable", severity="warning")
        elif info is not None:
            self.app.cancel(info.path)

    def action_resume(self) -> None:
        info = self._current()
        if info is not None and info.kind == "sweep":
            self.notify(f"finish a sweep with: workbench sweep {info.path} --resume", severity="warning")
        elif info is not None:
            self.app.resume(info.path)


def _metric_groups(curves: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, list]]:
    """Curves split the way a researcher reads them: losses, accuracies, dependency terms, OOD."""
    groups: dict[str, dict[str, list]] = {"loss": {}, "accuracy": {}, "dependency": {}, "ood": {}}
    for name, points in sorted(curves.items()):
        if name.startswith(("dep_x/", "dep_y/")):
            groups["dependency"][name] = points
        elif name.startswith("ood"):
            groups["ood"][name] = points
        elif "acc" in name:
            groups["accuracy"][name] = points
        elif name == "lr":  # a schedule, not a loss; its scale would flatten the loss curves
            continue
        else:
            groups["loss"][name] = points
    return groups


class RunScreen(Screen):
    """One run, live: progress and ETA, curves, device, event log, reconstructions."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("v", "next_variant", "Next variant"),
        Binding("r", "results", "Results"),
        Binding("c", "cancel", "Cancel run"),
        Binding("u", "resume", "Resume run"),
    ]
    POLL_SECONDS = 0.25

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.follower = EventFollower(self.run_dir)
        self.state = RunState()
        self.variant: str | None = None  # None: follow the variant being trained
        self.cpu = CpuSampler()
        self.gpu = GpuReader()
        self._log_shown = 0
        self._corrupt_reported = 0
        self._missing_reported = False
        self._pictures: dict[Path, int] = {}
        self._dirty = True

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="run-header")
        with Horizontal(id="run-body"):
            with VerticalScroll(id="run-left"):
                yield Static("", id="progress")
                yield Static("", id="curves-loss")
                yield Static("", id="curves-accuracy")
                yield Static("", id="curves-dependency")
                yield Static("", id="curves-ood")
            with VerticalScroll(id="run-right"):
                yield Static("", id="device")
                yield Static("", id="recon")
        yield RichLog(id="log", max_lines=2000, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.poll()
        self.refresh_device()
        self.set_interval(self.POLL_SECONDS, self.poll)
        self.set_interval(1.0, self.refresh_device)
        self.set_interval(2.0, self.refresh_pictures)
        self.refresh_pictures()

    # -------------------------------------------------------------- following

    def poll(self) -> None:
        """Read what was appended since the last tick; redraw once however many events came."""
        events = self.follower.poll()
        if self.follower.restarted:
            self.state = RunState()
            self._log_shown = 0
            self.query_one(RichLog).clear()
        if events:
            self.state.apply_all(events)
            self._dirty = True
        if self.follower.corrupt_lines > self._corrupt_reported:
            new = self.follower.corrupt_lines - self._corrupt_reported
            self._corrupt_reported = self.follower.corrupt_lines
            self.notify(f"{self.follower.path}: {new} corrupt line(s) skipped", severity="warning")
        if self.follower.missing and not self.run_dir.exists() and not self._missing_reported:
            self._missing_reported = True
            self.notify(f"{self.run_dir}: the run directory was deleted", severity="error", timeout=8)
            self._dirty = True
        if self._dirty:
            self._dirty = False
            self.render_state()

    def _status(self) -> str:
        if not self.run_dir.exists():
            return "missing"
        return self.state.status(self.run_dir)

    def _shown_variant(self) -> str | None:
        if self.variant is not None:
            return self.variant
        if self.state.current is not None and self.state.current.variant:
            return self.state.current.variant
        return next(iter(self.state.curves), None)

    def render_state(self) -> None:
        state = self.state
        status = self._status()
        header = Text()
        header.append(f"{self.run_dir.name}  ", style="bold")
        header.append_text(styled_status(status))
        header.append(f"   recipe {state.recipe or '–'}   elapsed {format_seconds(state.elapsed())}"
                      f"   events {state.events_seen}")
        if state.world_size > 1:
            header.append(f"   {state.world_size} processes (DDP)", style="bold")
        if state.error:
            header.append(f"\n✗ {state.error}", style="bold red")
        elif status == "interrupted":
            header.append("\nstopped; press u to resume", style="yellow")
        self.query_one("#run-header", Static).update(header)

        progress = Text("Stages\n", style="bold")
        for stage in list(state.stages.values())[-8:]:
            fraction = stage.fraction
            done = f"{int(stage.done)}/{int(stage.total)}" if stage.total else ""
            if stage.finished:
                tail = f"done in {format_seconds(stage.seconds)}"
            else:
                tail = f"ETA {format_seconds(stage.eta)}" if stage.eta is not None else "…"
            progress.append(f"{stage.label:<24.24} ")
            progress.append(progress_bar(fraction, 24), style="green" if stage.finished else "cyan")
            progress.append(f" {done:>9} {tail}\n")
        if not state.stages:
            progress.append("waiting for the first stage…", style="dim")
        self.query_one("#progress", Static).update(progress)

        variant = self._shown_variant()
        width = max(30, self.app.size.width // 2 - 6)
        groups = _metric_groups(state.curves.get(variant or "", {}))
        titles = {"loss": "Loss", "accuracy": "Accuracy", "dependency": "Dependency terms (dep_x/j, dep_y/j)",
                  "ood": "OOD loss"}
        for name, series in groups.items():
            title = f"{titles[name]} · {variant}" if variant else titles[name]
            widget = self.query_one(f"#curves-{name}", Static)
            widget.display = bool(series) or name in ("loss", "accuracy")
            widget.update(line_chart(series, width=width, height=5, title=title))

        log = self.query_one(RichLog)
        entries = list(state.log)
        new_count = min(len(entries), state.log_count - self._log_shown)
        for t, level, text in entries[len(entries) - new_count:] if new_count > 0 else []:
            stamp = time.strftime("%H:%M:%S", time.localtime(t)) if t else "--:--:--"
            log.write(Text(f"{stamp} {text}", style=LEVEL_STYLE.get(level, "")))
        self._log_shown = state.log_count

    def refresh_device(self) -> None:
        text = Text("Device\n", style="bold")
        cpu = self.cpu.sample()
        text.append(f"CPU  {progress_bar(None if cpu is None else cpu / 100, 20)} "
                    f"{'–' if cpu is None else f'{cpu:5.1f}%'}\n")
        memory = read_memory()
        if memory is not None:
            used, total = memory
            text.append(f"RAM  {progress_bar(used / total, 20)} {gibibytes(used)} / {gibibytes(total)}\n")
        else:
            text.append("RAM  n/a (no /proc/meminfo)\n", style="dim")
        readings = self.gpu.read()
        for index, gpu in enumerate(readings):
            text.append(f"GPU{index} {progress_bar(gpu.utilization / 100, 20)} {gpu.utilization:5.1f}%  "
                        f"{gibibytes(gpu.memory_used)} / {gibibytes(gpu.memory_total)}  {gpu.name}\n")
        if not readings and self.gpu.why:
            text.append(self.gpu.why + "\n", style="dim")
        self.query_one("#device", Static).update(text)

    def refresh_pictures(self) -> None:
        """Reconstruction grids of finished attacks, redrawn when a file appears or changes."""
        try:
            found = sorted(self.run_dir.glob("*/reconstructions/*.png")) or sorted(
                self.run_dir.glob("*/reconstructions/*.safetensors"))
        except OSError:
            found = []
        stamps = {}
        for path in found:
            try:
                stamps[path] = path.stat().st_mtime_ns
            except OSError:
                continue
        if stamps == self._pictures:
            return
        self._pictures = stamps
        text = Text("Reconstructions\n", style="bold")
        if not stamps:
            text.append("none yet (they appear when an attack finishes)", style="dim")
        else:
            text.append("a row per class: its private images, then the reconstructions by restart "
                        "(full size in report.html)\n", style="dim")
        width = max(20, self.app.size.width // 2 - 6)
        for path in stamps:
            text.append(f"{path.parent.parent.name} · {path.stem}\n", style="bold")
            try:
                text.append_text(half_block_image(load_picture(path, max_width=width, max_height_cells=10)))
            except Exception as exc:  # a half-written or foreign file must not take the view down
                text.append(f"cannot show {path.name}: {type(exc).__name__}", style="yellow")
            text.append("\n")
        self.query_one("#recon", Static).update(text)

    # -------------------------------------------------------------- actions

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_next_variant(self) -> None:
        names = self.state.variants or list(self.state.curves)
        if not names:
            return
        current = self._shown_variant()
        index = names.index(current) + 1 if current in names else 0
        self.variant = names[index % len(names)]
        self.notify(f"showing {self.variant}")
        self.render_state()

    def action_results(self) -> None:
        self.app.push_screen(ResultsScreen([self.run_dir]))

    def action_cancel(self) -> None:
        self.app.cancel(self.run_dir)

    def action_resume(self) -> None:
        self.app.resume(self.run_dir)


# ------------------------------------------------------------------ results


def cancel(app, run_dir: Path) -> None:
    try:
        pid = cancel_run(run_dir)
    except WorkbenchError as exc:
        app.notify(str(exc), severity="warning")
        return
    app.notify(f"sent a stop to {Path(run_dir).name} (pid {pid}); it stops cleanly and stays resumable")


def resume(app, run_dir: Path) -> None:
    try:
        launched = resume_run(run_dir)
    except (WorkbenchError, OSError) as exc:
        app.notify(str(exc), severity="warning")
        return
    app.launched.append(launched)
    app.notify(f"resuming {Path(run_dir).name}")

"""The results across runs, and a sweep's view: the headline figures in a table, details on a key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Static

from workbench.reporting.columns import cell_text, figure, headline_columns, results_columns, variant_label
from workbench.storage.runs import clean_results
from workbench.tui.charts import half_block_image, load_picture, scatter_chart
from workbench.tui.listing import files_stamp, mtime, progress_bar, styled_status


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """Per-variant results: the run's results.json, else each finished variant's own (a running run)."""
    run_dir = Path(run_dir)
    try:
        data = clean_results(json.loads((run_dir / "results.json").read_text()))
        if data is not None:
            return data["variants"]
    except (OSError, ValueError):
        pass
    found = []
    for path in sorted(run_dir.glob("*/results.json")):
        try:
            variant = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(variant, dict):
            found.append({**variant, "name": path.parent.name})
    return (clean_results({"variants": found}) or {"variants": []})["variants"]



HEADLINE_WIDTH = 120
"""The terminal columns the headline table fits in; attack columns beyond it wait for `d`."""


def results_rows(run_dirs: list[Path], details: bool = False, width: int = HEADLINE_WIDTH
                 ) -> tuple[list[str], list[list[str]], list[tuple[str, float, float]]]:
    """Columns, rows and privacy-vs-utility points (mean headline attack top-1, test accuracy).

    The headline columns of report.md (test accuracy, each attack's headline top-1 ± its spread over
    restarts, OOD FPR95 and AUROC) as far as they fit in `width` terminal columns (the attacks that do
    not fit are left to the details), or with `details` every column of its details table."""
    per_run = [(Path(d), read_results(d)) for d in run_dirs]
    every = [v for _, vs in per_run for v in vs]
    headline = headline_columns(every)
    columns = results_columns(every) if details else headline
    rows, points = [], []
    for run_dir, variants in per_run:
        for variant in variants:
            cells = [_fmt(figure(variant, c.section, c.key)) if details else cell_text(variant, c, compact=True)
                     for c in columns]
            rows.append([run_dir.name, variant_label(variant), *cells])
            accuracy = figure(variant, "utility", "test_accuracy")
            top1s = [figure(variant, c.section, c.key) for c in headline if c.section == "attacks"]
            top1s = [x for x in top1s if x is not None]
            if top1s and accuracy is not None:
                label = variant["name"] if len(per_run) == 1 else f"{run_dir.name}/{variant['name']}"
                points.append((label, sum(top1s) / len(top1s), accuracy))
    headings = ["run", "variant", *(c.heading for c in columns)]
    if details:
        return headings, rows, points
    attack_columns = [i + 2 for i, c in enumerate(columns) if c.section == "attacks"]
    return (*fit_columns(headings, rows, attack_columns, width), points)


def fit_columns(headings: list[str], rows: list[list[str]], attack_columns: list[int],
                width: int) -> tuple[list[str], list[list[str]]]:
    """The table within `width` terminal columns: attack columns (indices `attack_columns`) are dropped
    from the right until it fits (test accuracy, OOD and the budget stay), and a last column says how
    many wait for `d`."""
    def span(index: int) -> int:  # a DataTable cell: its widest text plus one space each side
        return max(len(headings[index]), *(len(row[index]) for row in rows)) + 2 if rows else len(headings[index]) + 2

    keep = list(range(len(headings)))
    attacks = list(attack_columns)
    hidden = 0
    more = len("+99 attack columns: d") + 2
    while sum(span(i) for i in keep) + (more if hidden else 0) > width and attacks:
        keep.remove(attacks.pop())
        hidden += 1
    if not hidden:
        return headings, rows
    note = f"+{hidden} attack column{'s' if hidden > 1 else ''}: d"
    return [*(headings[i] for i in keep), note], [[*(row[i] for i in keep), ""] for row in rows]


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


class ResultsScreen(Screen):
    """Privacy × utility × OOD across the variants of the selected runs, and their trade-off: the
    headline columns (they fit 120 columns for a few attacks), every figure on `d`."""

    BINDINGS = [Binding("escape", "back", "Back"), Binding("d", "details", "Details"),
                Binding("f5", "reload", "Reload")]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = [Path(d) for d in run_dirs]
        self.details = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Label("", id="results-title")
            yield DataTable(id="results", zebra_stripes=True)
            yield Static("", id="tradeoff")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        names = ", ".join(d.name for d in self.run_dirs)
        shown = "every figure (d: headline)" if self.details else "headline; ± over restarts (d: every figure)"
        self.query_one("#results-title", Label).update(f"Results: {names}  (top-1 ↓ more private; test acc ↑ "
                                                       f"more useful; OOD AUROC ↑)  {shown}")
        columns, rows, points = results_rows(self.run_dirs, details=self.details)
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns(*columns)
        for row in rows:
            table.add_row(*row)
        if not rows:
            self.notify("no results yet in the selected runs", severity="warning")
        chart = Text("Privacy vs utility\n", style="bold")
        if points:
            width = max(30, min(90, self.app.size.width - 4))
            chart.append_text(scatter_chart(points, width=width, height=10, x_label="attack top-1 accuracy",
                                            y_label="test accuracy"))
        else:
            chart.append("no attack figures yet: the plot needs attack top-1 and test accuracy", style="dim")
        self.query_one("#tradeoff", Static).update(chart)

    def action_details(self) -> None:
        self.details = not self.details
        self.action_reload()

    def action_back(self) -> None:
        self.app.pop_screen()


class SweepScreen(Screen):
    """One sweep: progress (k of N runs), its aggregate table (mean ± std over seeds, paired
    differences against `none`) and its Pareto plot, re-read while the sweep runs."""

    BINDINGS = [Binding("escape", "back", "Back"), Binding("f5", "reload", "Reload")]

    def __init__(self, sweep_dir: Path) -> None:
        super().__init__()
        self.sweep_dir = Path(sweep_dir)
        self._stamp: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Label("", id="sweep-title")
            yield Static("", id="sweep-progress")
            yield DataTable(id="sweep-aggregate", zebra_stripes=True)
            yield Static("", id="sweep-pareto")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()
        self.set_interval(2.0, self._poll)

    def _poll(self) -> None:
        stamp = files_stamp(self.sweep_dir) + (mtime(self.sweep_dir / "aggregate.json"),)
        if stamp != self._stamp:
            self.action_reload()

    def action_reload(self) -> None:
        from workbench.storage.runs import summarize_sweep
        from workbench.sweeps.aggregate import cell, figure_title, headline_figures, verdict

        self._stamp = files_stamp(self.sweep_dir) + (mtime(self.sweep_dir / "aggregate.json"),)
        info = summarize_sweep(self.sweep_dir)
        self.query_one("#sweep-title", Label).update(
            f"Sweep {info.name}  ({Path(info.recipe).name if info.recipe else ''})")
        progress = Text(f"{progress_bar((info.done or 0) / info.total if info.total else None)}  ")
        progress.append(f"{info.done or 0} of {info.total or '?'} runs finished", style="bold")
        if info.failed:
            progress.append(f", {info.failed} failed", style="bold red")
        progress.append("  ")
        progress.append_text(styled_status(info.status))
        self.query_one("#sweep-progress", Static).update(progress)
        table = self.query_one(DataTable)
        table.clear(columns=True)
        try:
            data = json.loads((self.sweep_dir / "aggregate.json").read_text())
            points = data["points"]
        except (OSError, ValueError, KeyError, TypeError):
            data, points = None, []
        if data is not None:
            columns = headline_figures(data)
            table.add_columns("point", "variant", *(figure_title(c) for c in columns),
                              *(f"Δ {figure_title(c)}" for c in columns))
            for point in points:
                for variant in point.get("variants", []):
                    paired = variant.get("paired", {}).get("figures", {})
                    table.add_row(point["id"], variant_label(variant), *(cell(variant["figures"].get(c)) for c in columns),
                                  *(verdict(paired[c]) if c in paired else "–" for c in columns))
        picture = self.sweep_dir / "pareto.png"
        pareto = Text("Privacy against utility (pareto.png)\n", style="bold")
        if picture.exists():
            width = max(40, min(100, self.app.size.width - 4))
            pareto.append_text(half_block_image(load_picture(picture, max_width=width, max_height_cells=24)))
        else:
            pareto.append("aggregate.json and pareto.png are written when the sweep ends", style="dim")
        self.query_one("#sweep-pareto", Static).update(pareto)

    def action_back(self) -> None:
        self.app.pop_screen()

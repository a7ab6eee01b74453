"""Tables on the terminal: a run's results (report.md's headline columns, best per column marked)
and a sweep's aggregate."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from workbench.reporting.columns import headline_cells, variant_label


def results_table(results: dict[str, Any]) -> Table:
    """The headline columns of report.md (rounded to their spread); every figure is in its Details."""
    headings, rows, best = headline_cells(results)
    table = Table(title="privacy × utility × OOD (↑/↓ better for the defender, best in green; ± over the attack's "
                        "restarts; every figure in report.md)", title_justify="left")
    table.add_column(headings[0], style="bold")
    for heading in headings[1:]:
        table.add_column(heading, justify="right")
    for row, marks in zip(rows, best, strict=True):
        table.add_row(*(f"[bold green]{cell}[/]" if mark else cell for cell, mark in zip(row, marks, strict=True)))
    return table


def aggregate_table(data: dict[str, Any]) -> Table:
    """A sweep's aggregate: mean ± std (n) per point and variant, the headline figures."""
    from workbench.sweeps.aggregate import cell, figure_title, headline_figures

    columns = headline_figures(data)
    table = Table(title="mean ± std (n) over seeds", title_justify="left")
    for column in ("point", "variant", *(figure_title(c) for c in columns)):
        table.add_column(column)
    for point in data["points"]:
        for variant in point["variants"]:
            table.add_row(point["id"], variant_label(variant), *(cell(variant["figures"].get(c)) for c in columns))
    return table

"""Tables on the terminal: a run's results (the same columns as report.md, best per column marked)
and a sweep's aggregate."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from workbench.reporting.columns import best_per_column, figure, results_columns


def results_table(results: dict[str, Any]) -> Table:
    variants = results["variants"]
    columns = results_columns(variants)
    best = best_per_column(variants, columns)
    table = Table(title="privacy × utility × OOD (fractions; ↑/↓ better for the defender; best in green)",
                  title_justify="left")
    table.add_column("variant", style="bold")
    for column in columns:
        table.add_column(column.heading, justify="right")
    many = len(results["variants"]) > 1
    for variant in results["variants"]:
        cells = []
        for column in columns:
            value = figure(variant, column.section, column.key)
            if value is None:
                cells.append("–")
            elif many and best.get(column) == value:
                cells.append(f"[bold green]{value:.4f}[/]")
            else:
                cells.append(f"{value:.4f}")
        table.add_row(variant["name"], *cells)
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
            table.add_row(point["id"], variant["name"], *(cell(variant["figures"].get(c)) for c in columns))
    return table

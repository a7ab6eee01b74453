"""The results table on the terminal: the same columns as report.md, best per column marked."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from workbench.report import best_per_column, figure, table_columns


def results_table(results: dict[str, Any]) -> Table:
    columns = table_columns(results)
    best = best_per_column(results, columns)
    table = Table(title="privacy × utility × OOD (fractions; ↑/↓ better for the defender; best in green)",
                  title_justify="left")
    table.add_column("variant", style="bold")
    for _, _, title, _ in columns:
        table.add_column(title, justify="right")
    many = len(results["variants"]) > 1
    for variant in results["variants"]:
        cells = []
        for section, key, _, _ in columns:
            value = figure(variant, section, key)
            if value is None:
                cells.append("–")
            elif many and best.get(f"{section}.{key}") == value:
                cells.append(f"[bold green]{value:.4f}[/]")
            else:
                cells.append(f"{value:.4f}")
        table.add_row(variant["name"], *cells)
    return table

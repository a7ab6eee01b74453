"""`report.md`: what a researcher reads after a run — header, results table, figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.checkpoint import atomic_write_text
from workbench.recipe import Recipe

# (section, key, column title, higher is better) — the columns of the results table.
COLUMNS: list[tuple[str, str, str, bool]] = [
    ("utility", "test_accuracy", "test acc ↑", True),
]


def figure(variant: dict[str, Any], section: str, key: str) -> float | None:
    value = variant.get(section, {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else None


def table_columns(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """The columns that at least one variant has a figure for."""
    columns = list(COLUMNS)
    attack_names = sorted({a for v in results["variants"] for a in v.get("attacks", {})})
    for attack in attack_names:
        columns += [
            ("attacks", f"{attack}.top1", f"{attack} top-1 ↓", False),
            ("attacks", f"{attack}.top5", f"{attack} top-5 ↓", False),
            ("attacks", f"{attack}.knn_dist", f"{attack} KNN ↑", True),
            ("attacks", f"{attack}.fid", f"{attack} FID ↑", True),
        ]
    if any("ood" in v for v in results["variants"]):
        columns += [
            ("ood", "mean.fpr95", "FPR95 ↓", False),
            ("ood", "mean.auroc", "AUROC ↑", True),
        ]
    return [c for c in columns if any(figure(v, c[0], c[1]) is not None for v in results["variants"])]


def best_per_column(results: dict[str, Any], columns) -> dict[str, float]:
    best = {}
    for section, key, _, higher in columns:
        values = [figure(v, section, key) for v in results["variants"]]
        values = [x for x in values if x is not None]
        if values:
            best[f"{section}.{key}"] = max(values) if higher else min(values)
    return best


def markdown_table(results: dict[str, Any]) -> str:
    columns = table_columns(results)
    best = best_per_column(results, columns)
    lines = ["| variant | " + " | ".join(c[2] for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for variant in results["variants"]:
        cells = []
        for section, key, _, _ in columns:
            value = figure(variant, section, key)
            text = "–" if value is None else f"{value:.4f}"
            if value is not None and best.get(f"{section}.{key}") == value and len(results["variants"]) > 1:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {variant['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(run_dir: Path, results: dict[str, Any], recipe: Recipe) -> Path:
    machine = results.get("machine", {})
    parts = [
        f"# {recipe.title or 'workbench run'}",
        "",
        f"- recipe: `{results['recipe']}` (hash `{results['recipe_hash']}`), seed {results['seed']}",
        f"- device: {results.get('device', '?')}; " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        "## Results",
        "",
        "Fractions in [0, 1]; ↑ higher is better for the defender, ↓ lower; best per column in bold.",
        "",
        markdown_table(results),
        "",
    ]
    path = Path(run_dir) / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path

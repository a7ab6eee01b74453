"""`report.md`: what a researcher reads after a run — header, results table, figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomllib

from workbench.recipe.schema import Recipe
from workbench.reporting.columns import best_per_column, figure, results_columns
from workbench.reporting.plots import line_chart, save_png, scatter
from workbench.storage.checkpoint import atomic_write_text
from workbench.storage.events import EVENTS_FILE, read_events


def markdown_table(results: dict[str, Any]) -> str:
    variants = results["variants"]
    columns = results_columns(variants)
    best = best_per_column(variants, columns)
    lines = ["| variant | " + " | ".join(c.heading for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for variant in variants:
        cells = []
        for column in columns:
            value = figure(variant, column.section, column.key)
            text = "–" if value is None else f"{value:.4f}"
            if value is not None and best.get(column) == value and len(variants) > 1:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {variant['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _epoch_series(run_dir: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """metric -> variant -> [(epoch, value)] from the target-training epoch events."""
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for event in read_events(run_dir / EVENTS_FILE):
        if event["type"] != "epoch" or event.get("stage") != "train" or event.get("variant") in (None, "evaluation-model"):
            continue
        metrics = event.get("metrics", {})
        values = dict(metrics)
        deps_x = [v for k, v in metrics.items() if k.startswith("dep_x/") and isinstance(v, (int, float))]
        deps_y = [v for k, v in metrics.items() if k.startswith("dep_y/") and isinstance(v, (int, float))]
        if deps_x:
            values["sum_j d(X, Z_j)"] = sum(deps_x)
            values["sum_j d(Z_j, Y)"] = sum(deps_y)
        for name, value in values.items():
            if isinstance(value, (int, float)):
                points = series.setdefault(name, {}).setdefault(event["variant"], [])
                points = [p for p in points if p[0] != event["epoch"]]  # a resumed epoch replaces its first try
                points.append((float(event["epoch"]), float(value)))
                series[name][event["variant"]] = points
    return series


def _figures(run_dir: Path, results: dict[str, Any]) -> list[str]:
    """Write the report's PNG figures and return the markdown that shows them."""
    folder = run_dir / "figures"
    lines: list[str] = []
    variants = results["variants"]
    attacks = sorted({a for v in variants for a in v.get("attacks", {})})
    for attack in attacks:
        points = [(v["name"], figure(v, "utility", "test_accuracy"), figure(v, "attacks", f"{attack}.top1"))
                  for v in variants]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        if points:
            name = f"privacy_utility_{attack}.png"
            save_png(scatter(points, "test accuracy (utility, higher is better)",
                             f"{attack} attack top-1 (lower = more private)",
                             f"privacy vs utility: {attack}"), folder / name)
            lines += [f"![privacy vs utility, {attack}](figures/{name})", ""]
    series = _epoch_series(run_dir)
    charts = [("loss", "training loss", "curve_loss.png"),
              ("test_accuracy", "test accuracy", "curve_test_accuracy.png"),
              ("sum_j d(X, Z_j)", "input-hidden dependence sum_j d(X, Z_j)", "curve_dependence_x.png"),
              ("sum_j d(Z_j, Y)", "hidden-label dependence sum_j d(Z_j, Y)", "curve_dependence_y.png"),
              ("ood_loss", "OOD loss (phase 2)", "curve_ood_loss.png")]
    for key, title, name in charts:
        if key in series:
            save_png(line_chart(series[key], "epoch", key, title), folder / name)
            lines += [f"![{title}](figures/{name})", ""]
    return lines


def fid_conventions(run_dir: Path, recipe: Recipe) -> list[str]:
    """One header line per FID metric: which convention (feature model, which reconstructions,
    how many private images) produced the figure. Read from the resolved recipe, so defaults show."""
    try:
        tables = tomllib.loads((Path(run_dir) / "recipe.toml").read_text()).get("metrics", [])
    except (OSError, ValueError):
        tables = [{"use": m.use, **m.params} for m in recipe.metrics]
    lines = []
    for table in tables:
        if "fid" in str(table.get("use", "")):
            shown = [(k, v) for k, v in table.items() if k not in ("use", "weights_file")]
            params = ", ".join(f"{k} = {json.dumps(v)}" for k, v in shown)
            lines.append(f"- FID convention: `{table['use']}` ({params or 'defaults'}); see docs/attacks.md")
    return lines


def evaluation_header(evaluation: dict[str, Any] | None) -> list[str]:
    """Which E judged the attacks: its backbone, trained here or loaded from which file (with the
    file's SHA-256), and the size its inputs are resized to."""
    if not evaluation:
        return []
    backbone = evaluation.get("backbone", "?")
    if evaluation.get("weights_file"):
        source = (f"`{backbone}` loaded from `{evaluation['weights_file']}` "
                  f"(sha256 `{evaluation.get('weights_sha256', '?')}`), not trained")
    else:
        source = f"`{backbone}` trained on the private data"
    resized = f"; inputs resized to {evaluation['input_size']} px" if evaluation.get("input_size") else ""
    return [f"- evaluation model E: {source}{resized}"]


def write_report(run_dir: Path, results: dict[str, Any], recipe: Recipe) -> Path:
    run_dir = Path(run_dir)
    machine = results.get("machine", {})
    parts = [
        f"# {recipe.title or 'workbench run'}",
        "",
        f"- recipe: `{results['recipe']}` (hash `{results['recipe_hash']}`), seed {results['seed']}",
        f"- device: {results.get('device', '?')}; " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        f"- variants: {', '.join(v['name'] for v in results['variants'])}",
        *fid_conventions(run_dir, recipe),
        *evaluation_header(results.get("evaluation_model")),
        "",
        "## Results",
        "",
        "Fractions in [0, 1]; ↑ higher is better for the defender, ↓ lower; best per column in bold.",
        "",
        markdown_table(results),
        "",
    ]
    evaluation = results.get("evaluation_model")
    if evaluation:
        parts += [f"Attack figures are judged by the evaluation model E (test accuracy "
                  f"{evaluation.get('test_accuracy', float('nan')):.4f}); KNN distance and FID are computed "
                  "in E's feature space.", ""]
    ood_variants = [v for v in results["variants"] if "ood" in v]
    if ood_variants:
        parts += ["## OOD detection", "", f"Score: `{ood_variants[0]['ood']['score']}`. "
                  f"{ood_variants[0]['ood'].get('convention', '')}", "",
                  "| variant | set | FPR95 ↓ | AUROC ↑ | AUPR-In ↑ | AUPR-Out ↑ |", "|---|---|---:|---:|---:|---:|"]
        for v in ood_variants:
            for name, m in [*v["ood"]["sets"].items(), ("mean", v["ood"]["mean"])]:
                parts.append(f"| {v['name']} | {name} | {m['fpr95']:.4f} | {m['auroc']:.4f} | "
                             f"{m['aupr_in']:.4f} | {m['aupr_out']:.4f} |")
        parts.append("")
        for v in ood_variants:
            if (run_dir / v["name"] / "ood_histogram.png").exists():
                parts += [f"![OOD scores, {v['name']}]({v['name']}/ood_histogram.png)", ""]
    figures = _figures(run_dir, results)
    if figures:
        parts += ["## Figures", "", *figures]
    grids = sorted(run_dir.glob("*/reconstructions/*.png"))
    if grids:
        parts += ["## Reconstructions", "", "Each row: private training images of a class (left), then the "
                  "attack's reconstructions for that class.", ""]
        for grid in grids:
            variant, attack = grid.parent.parent.name, grid.stem
            parts += [f"**{variant}, {attack}**", "", f"![{variant} {attack}]({grid.relative_to(run_dir)})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path

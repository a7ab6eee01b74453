"""`report.md` and `report.html`: what a researcher reads after a run — header, a compact headline
table, a verdict per variant, what one seed can show, figures, labelled reconstruction grids, and
every figure in a details table (`results.json` keeps everything)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from workbench.recipe.schema import Recipe
from workbench.reporting.columns import (
    best_per_column,
    figure,
    headline_cells,
    headline_columns,
    post_hoc_note,
    results_columns,
    variant_label,
)
from workbench.reporting.drawing import save_png
from workbench.reporting.plots import line_chart, scatter
from workbench.reporting.verdicts import run_verdicts, seed_note
from workbench.storage.checkpoint import atomic_write_text
from workbench.storage.events import EVENTS_FILE, read_events

REPORT_FILE = "report.md"
HTML_FILE = "report.html"


@dataclass(frozen=True)
class Picture:
    """A PNG of the run directory shown in the reports: `path` relative to the run directory."""

    title: str
    path: Path


def markdown_table(results: dict[str, Any]) -> str:
    """Every figure of every variant (the details table), four decimals, best per column in bold."""
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
        lines.append(f"| {variant_label(variant)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_markdown_table(results: dict[str, Any]) -> str:
    headings, rows, marks = headline_cells(results)
    lines = ["| " + " | ".join(headings) + " |", "|---|" + "---:|" * (len(headings) - 1)]
    for row, flags in zip(rows, marks, strict=True):
        lines.append("| " + " | ".join(f"**{c}**" if bold else c for c, bold in zip(row, flags, strict=True))
                     + " |")
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


def _figures(run_dir: Path, results: dict[str, Any]) -> list[Picture]:
    """Write the report's PNG figures (privacy against utility per attack, training curves)."""
    folder = run_dir / "figures"
    pictures: list[Picture] = []
    variants = results["variants"]
    attacks = sorted({a for v in variants for a in v.get("attacks", {})})
    headline = {c.key.split(".")[0]: c.key for c in headline_columns(variants) if c.section == "attacks"}
    for attack in attacks:
        key = headline.get(attack, f"{attack}.top1")
        points = [(v["name"], figure(v, "utility", "test_accuracy"), figure(v, "attacks", key)) for v in variants]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        if points:
            name = f"privacy_utility_{attack}.png"
            title = key.split(".", 1)[1].replace("_", " ").replace("top1", "top-1")
            save_png(scatter(points, "test accuracy (utility, higher is better)",
                             f"{attack} attack {title} (lower = more private)",
                             f"privacy vs utility: {attack}"), folder / name)
            pictures.append(Picture(f"privacy vs utility, {attack}", Path("figures") / name))
    series = _epoch_series(run_dir)
    charts = [("loss", "training loss", "curve_loss.png"),
              ("test_accuracy", "test accuracy", "curve_test_accuracy.png"),
              ("sum_j d(X, Z_j)", "input-hidden dependence sum_j d(X, Z_j)", "curve_dependence_x.png"),
              ("sum_j d(Z_j, Y)", "hidden-label dependence sum_j d(Z_j, Y)", "curve_dependence_y.png"),
              ("ood_loss", "OOD loss (phase 2)", "curve_ood_loss.png")]
    for key, title, name in charts:
        if key in series:
            save_png(line_chart(series[key], "epoch", key, title), folder / name)
            pictures.append(Picture(title, Path("figures") / name))
    return pictures


def ood_pictures(run_dir: Path, results: dict[str, Any]) -> list[Picture]:
    """Each variant's OOD score histogram (written by the evaluation)."""
    return [Picture(f"OOD scores, {v['name']}", Path(v["name"]) / "ood_histogram.png")
            for v in results["variants"] if "ood" in v and (run_dir / v["name"] / "ood_histogram.png").exists()]


def reconstruction_pictures(run_dir: Path, results: dict[str, Any]) -> list[Picture]:
    """The labelled reconstruction grid of each variant and attack, variants in the run's order."""
    order = {v["name"]: i for i, v in enumerate(results["variants"])}
    grids = sorted(run_dir.glob("*/reconstructions/*.png"),
                   key=lambda g: (order.get(g.parent.parent.name, len(order)), g.parent.parent.name, g.stem))
    return [Picture(_grid_title(grid), grid.relative_to(run_dir)) for grid in grids]


def _grid_title(grid: Path) -> str:
    """`none: gmi reconstructions`; another picture of the attack (`gmi.nearest.png`) names its kind."""
    attack, _, kind = grid.stem.partition(".")
    kinds = {"nearest": "each reconstruction beside its nearest private and public image"}
    what = f"{attack}, {kinds.get(kind, kind.replace('-', ' '))}" if kind else f"{attack} reconstructions"
    return f"{grid.parent.parent.name}: {what}"


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


def header_lines(run_dir: Path, results: dict[str, Any], recipe: Recipe) -> list[str]:
    """The report's header as markdown list items (recipe, seed, machine, post-hoc variants, E, FID convention)."""
    machine = results.get("machine", {})
    post_hoc = post_hoc_note(results["variants"])
    return [
        f"- recipe: `{results['recipe']}` (hash `{results['recipe_hash']}`), seed {results['seed']}",
        f"- device: {results.get('device', '?')}; " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        f"- variants: {', '.join(v['name'] for v in results['variants'])}",
        *([f"- {post_hoc}"] if post_hoc else []),
        *fid_conventions(run_dir, recipe),
        *evaluation_header(results.get("evaluation_model")),
    ]


HEADLINE_NOTE = ("Fractions in [0, 1]; ↑ higher is better for the defender, ↓ lower; best per column in bold. "
                 "An attack's column is its headline top-1 (the evaluators' agreed top-1 where the run has several); "
                 "± is its standard deviation over the attack's restarts.")


def evaluation_note(results: dict[str, Any]) -> str | None:
    evaluation = results.get("evaluation_model")
    if not evaluation:
        return None
    return (f"Attack figures are judged by the evaluation model E (test accuracy "
            f"{evaluation.get('test_accuracy', float('nan')):.3f}); KNN distance and FID are computed "
            "in E's feature space.")


def ood_rows(results: dict[str, Any]) -> list[list[str]]:
    """variant, set, FPR95, AUROC, AUPR-In, AUPR-Out for every OOD set and the mean."""
    rows = []
    for v in results["variants"]:
        if "ood" not in v:
            continue
        for name, m in [*v["ood"]["sets"].items(), ("mean", v["ood"]["mean"])]:
            rows.append([v["name"], name, *(f"{m[k]:.4f}" for k in ("fpr95", "auroc", "aupr_in", "aupr_out"))])
    return rows


def write_report(run_dir: Path, results: dict[str, Any], recipe: Recipe) -> Path:
    """Write report.md and report.html (and the PNGs they show); returns report.md's path."""
    from workbench.reporting.html import write_run_html

    run_dir = Path(run_dir)
    header = header_lines(run_dir, results, recipe)
    verdicts = run_verdicts(results)
    note = seed_note(results, run_dir)
    parts = [f"# {recipe.title or 'workbench run'}", "", *header, "",
             "## Results", "", HEADLINE_NOTE, "", headline_markdown_table(results), ""]
    if evaluation_note(results):
        parts += [evaluation_note(results), ""]
    parts += [f"> {note}", ""]
    if verdicts:
        parts += ["### Verdicts", "", *(f"- **{name}**: {text}" for name, text in verdicts.items()), ""]
    ood_variants = [v for v in results["variants"] if "ood" in v]
    histograms = ood_pictures(run_dir, results)
    if ood_variants:
        parts += ["## OOD detection", "", f"Score: `{ood_variants[0]['ood']['score']}`. "
                  f"{ood_variants[0]['ood'].get('convention', '')}", "",
                  "| variant | set | FPR95 ↓ | AUROC ↑ | AUPR-In ↑ | AUPR-Out ↑ |", "|---|---|---:|---:|---:|---:|"]
        parts += ["| " + " | ".join(row) + " |" for row in ood_rows(results)]
        parts.append("")
        for picture in histograms:
            parts += [f"![{picture.title}]({picture.path.as_posix()})", ""]
    figures = _figures(run_dir, results)
    if figures:
        parts += ["## Figures", "", *(line for p in figures for line in (f"![{p.title}]({p.path.as_posix()})", ""))]
    grids = reconstruction_pictures(run_dir, results)
    if grids:
        parts += ["## Reconstructions", "", RECONSTRUCTIONS_NOTE, ""]
        for picture in grids:
            parts += [f"**{picture.title}**", "", f"![{picture.title}]({picture.path.as_posix()})", ""]
    parts += ["## Details", "", "Every figure of every variant (four decimals; results.json has them unrounded).", "",
              markdown_table(results), ""]
    path = run_dir / REPORT_FILE
    atomic_write_text(path, "\n".join(parts))
    write_run_html(run_dir, {
        "title": recipe.title or "workbench run",
        "header": header,
        "headline": headline_cells(results),
        "headline_note": HEADLINE_NOTE,
        "evaluation_note": evaluation_note(results),
        "seed_note": note,
        "verdicts": verdicts,
        "ood": {"score": ood_variants[0]["ood"]["score"], "convention": ood_variants[0]["ood"].get("convention", ""),
                "rows": ood_rows(results)} if ood_variants else None,
        "histograms": histograms,
        "figures": figures,
        "grids": grids,
        "reconstructions_note": RECONSTRUCTIONS_NOTE,
        "details": details_cells(results),
    })
    return path


RECONSTRUCTIONS_NOTE = ("One row per attacked class. Left of the gap: private training images of that class "
                        "(what the attacker tries to recover); right: the attack's reconstructions of it, one "
                        "column per restart (r3 = restart 3; r3.2 = restart 3's second draw where a restart "
                        "draws several).")


def details_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every column of `results_columns`, four decimals: headings and one row per variant."""
    variants = results["variants"]
    columns = results_columns(variants)
    rows = [[variant_label(v), *("–" if (x := figure(v, c.section, c.key)) is None else f"{x:.4f}" for c in columns)]
            for v in variants]
    return ["variant", *(c.heading for c in columns)], rows

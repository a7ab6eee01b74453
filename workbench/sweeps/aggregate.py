"""A sweep's outputs: `aggregate.json` (per point × variant × figure statistics over seeds),
`report.md` and `report.html` (mean ± std, paired differences against `none`, per-seed figures in
the HTML) and `pareto.png`.

Everything here is a pure function of the runs' `results.json` files, so a sweep that was
interrupted and finished later writes the same files as one that ran straight through.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from workbench.reporting.columns import HEADLINE_ATTACK_KEYS, is_post_hoc, rounded, variant_label
from workbench.sweeps.stats import paired, summarize

AGGREGATE_FILE = "aggregate.json"
REPORT_FILE = "report.md"
HTML_FILE = "report.html"
PARETO_FILE = "pareto.png"
BASELINE = "none"
"""The variant every defense is compared with (paired over seeds)."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def flatten(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves as dotted paths: `utility.test_accuracy`, `attacks.gmi.top1`, `ood.mean.fpr95`."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "name" and not prefix:
                continue
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and prefix:
        out[prefix] = float(data)
    return out


def aggregate(points: list[dict[str, Any]]) -> dict[str, Any]:
    """`points`: `[{"id", "values", "seeds": [...], "results": {seed: results.json or None}}]`.

    Returns `{"points": [{"id", "values", "seeds", "missing", "variants": [{"name", "figures":
    {figure: {"n", "mean", "std", "ci95", "values"}}, "paired": {...}}]}]}`; `values` follow
    the point's `seeds` (null where a run has no such figure); `paired` holds the per-seed
    differences to `none` of the same point. A variant whose runs record a post-hoc defense keeps
    that record (`"defense": {"use", "post_hoc": true}`), so the sweep's tables mark it.
    """
    out = []
    for point in points:
        done = [s for s in point["seeds"] if point["results"].get(s) is not None]
        missing = [s for s in point["seeds"] if point["results"].get(s) is None]
        per_variant: dict[str, dict[int, dict[str, float]]] = {}
        post_hoc: dict[str, dict[str, Any]] = {}
        for seed in done:
            for variant in point["results"][seed].get("variants", []):
                per_variant.setdefault(variant["name"], {})[seed] = flatten(variant)
                if is_post_hoc(variant):
                    post_hoc[variant["name"]] = {"use": variant["defense"].get("use"), "post_hoc": True}
        variants = []
        for name, by_seed in per_variant.items():
            names: dict[str, None] = {}
            for seed in done:
                names.update(dict.fromkeys(by_seed.get(seed, {})))
            figures = {f: summarize([by_seed.get(seed, {}).get(f) for seed in done]) for f in names}
            entry = {"name": name, "figures": figures}
            if name in post_hoc:
                entry["defense"] = post_hoc[name]
            variants.append(entry)
        baseline = next((v for v in variants if v["name"] == BASELINE), None)
        if baseline is not None:
            for variant in variants:
                if variant is baseline:
                    continue
                variant["paired"] = {"against": BASELINE, "figures": {
                    f: paired(stats["values"], baseline["figures"][f]["values"])
                    for f, stats in variant["figures"].items() if f in baseline["figures"]}}
        out.append({"id": point["id"], "values": point["values"], "seeds": done, "missing": missing,
                    "variants": variants})
    return {"points": out}


def write_aggregate(sweep_dir: Path, data: dict[str, Any]) -> Path:
    path = Path(sweep_dir) / AGGREGATE_FILE
    atomic_write_text(path, json.dumps(_clean(data), indent=2) + "\n")
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


# ------------------------------------------------------------------ report


def headline_figures(data: dict[str, Any]) -> list[str]:
    """The report's columns: test accuracy, each attack's top-1 (and queries, where it counts them), mean
    FPR95 and AUROC (those present)."""
    present: dict[str, None] = {}
    for point in data["points"]:
        for variant in point["variants"]:
            present.update(dict.fromkeys(variant["figures"]))
    attacks = sorted({f.split(".")[1] for f in present if f.startswith("attacks.")
                      and f.rsplit(".", 1)[1] in HEADLINE_ATTACK_KEYS})
    # An attack's headline: the evaluators' agreed top-1 where the runs have several evaluators, else top-1.
    headline = [next(f for k in HEADLINE_ATTACK_KEYS if (f := f"attacks.{a}.{k}") in present) for a in attacks]
    # A black-box or label-only attack's queries (its oracle's count) beside its headline.
    headline = [f for h in headline for f in (h, h.rsplit(".", 1)[0] + ".queries")]
    wanted = ["utility.test_accuracy", *headline, "ood.mean.fpr95", "ood.mean.auroc"]
    return [f for f in wanted if f in present]


def figure_title(path: str) -> str:
    parts = path.split(".")
    if path == "utility.test_accuracy":
        return "test accuracy"
    if parts[0] == "attacks" and len(parts) == 3:
        return f"{parts[1].upper() if len(parts[1]) <= 5 else parts[1]} {parts[2].replace('top', 'top-').replace('_', ' ')}"
    if parts[:2] == ["ood", "mean"] and len(parts) == 3:
        return f"mean {parts[2].upper()}"
    return path


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cell(stats: dict[str, Any] | None) -> str:
    """`mean ± std (n)`, rounded to fit the std (`workbench.reporting.columns.rounded`)."""
    if not stats or stats["mean"] is None:
        return "–"
    return f"{rounded(stats['mean'], stats['std'])} ({stats['n']})"


def verdict(stats: dict[str, Any]) -> str:
    """'lowers by 0.25 [0.15, 0.35]', 'raises by …' or 'no difference (…)' from a paired interval."""
    lo, hi = stats["ci95"]
    mean = stats["mean"]
    if mean is None:
        return "–"
    if lo is None:
        return f"{mean:+.3f} (one seed: no interval)"
    if hi < 0:
        return f"lowers by {-mean:.3f} [{-hi:.3f}, {-lo:.3f}]"
    if lo > 0:
        return f"raises by {mean:.3f} [{lo:.3f}, {hi:.3f}]"
    return f"no difference ({mean:+.3f} [{lo:+.3f}, {hi:+.3f}])"


def header_lines(header: dict[str, Any], failed: dict[str, str]) -> list[str]:
    return [f"- recipe: `{header['recipe']}`",
            f"- seeds: {', '.join(map(str, header['seeds']))}",
            f"- grid: {', '.join(f'`{k}` = {v}' for k, v in header['grid'].items()) or 'none (seeds only)'}",
            f"- executor: `{header['executor']}`",
            f"- runs: {header['finished']} of {header['total']} finished" + (f", {len(failed)} failed" if failed else "")]


SWEEP_NOTE = ("Figures are mean ± sample std over seeds (n runs), rounded to fit the std; differences against "
              "`none` are paired by seed, with a 95 % confidence interval from Student's t.")


def seeds_note(header: dict[str, Any]) -> str | None:
    """What a sweep over fewer than two seeds cannot give (no spread, no interval), and the fix."""
    if len(header["seeds"]) > 1:
        return None
    return ("One seed: the figures are one draw each, with no spread and no confidence interval. Run it over "
            "several seeds (`seeds = [0, 1, 2, 3, 4]` in the sweep file, or `--set seeds=0-4`) to compare variants.")


def paired_rows(point: dict[str, Any], columns: list[str]) -> list[list[str]]:
    """variant, then a verdict per headline figure against `none` (paired over seeds)."""
    return [[variant_label(v), *(verdict(v["paired"]["figures"][c]) if c in v["paired"]["figures"] else "–"
                          for c in columns)] for v in point["variants"] if "paired" in v]


def render_report(data: dict[str, Any], header: dict[str, Any], failed: dict[str, str]) -> str:
    """report.md: header, one mean ± std table per point, paired differences, failures, the plot."""
    columns = headline_figures(data)
    lines = [f"# Sweep: {header.get('title') or header['recipe']}", "", *header_lines(header, failed), ""]
    lines += [SWEEP_NOTE, ""]
    if seeds_note(header):
        lines += [f"> {seeds_note(header)}", ""]
    for point in data["points"]:
        title = point["id"] if point["values"] else "all runs"
        lines += [f"## {title}", ""]
        if point["values"]:
            lines += [", ".join(f"`{k}` = {v}" for k, v in point["values"].items()), ""]
        if point["missing"]:
            lines += [f"Missing seeds (not finished): {', '.join(map(str, point['missing']))}", ""]
        if not point["variants"]:
            lines += ["No finished runs.", ""]
            continue
        lines += ["| variant | " + " | ".join(figure_title(c) for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for variant in point["variants"]:
            lines.append(f"| {variant_label(variant)} | " + " | ".join(cell(variant["figures"].get(c)) for c in columns)
                         + " |")
        lines.append("")
        compared = paired_rows(point, columns)
        if compared:
            lines += [f"Against `{BASELINE}`, paired over seeds:", ""]
            lines += ["| variant | " + " | ".join(figure_title(c) for c in columns) + " |",
                      "|---|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(row) + " |" for row in compared]
            lines.append("")
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- `{run}`: {error}" for run, error in sorted(failed.items())]
        lines.append("")
    lines += ["## Privacy against utility", "", f"![privacy against utility]({PARETO_FILE})", ""]
    return "\n".join(lines)


def per_seed_rows(point: dict[str, Any], columns: list[str]) -> list[list[str]]:
    """variant, seed, then each headline figure of that seed's run (four decimals)."""
    rows = []
    for variant in point["variants"]:
        for index, seed in enumerate(point["seeds"]):
            cells = []
            for column in columns:
                values = (variant["figures"].get(column) or {}).get("values") or []
                value = values[index] if index < len(values) else None
                cells.append("–" if value is None else f"{value:.4f}")
            rows.append([variant_label(variant), str(seed), *cells])
    return rows


def _pareto_axes(sweep_dir: Path) -> tuple[str, str | None]:
    """The sweep file's `[pareto]` figures, as the sweep resolved them into sweep.toml."""
    import tomllib

    try:
        pareto = tomllib.loads((Path(sweep_dir) / "sweep.toml").read_text()).get("pareto", {})
    except (OSError, ValueError):
        pareto = {}
    return pareto.get("x", "utility.test_accuracy"), pareto.get("y")


def render_html(sweep_dir: Path, data: dict[str, Any], header: dict[str, Any], failed: dict[str, str]) -> str:
    """report.html: what report.md says, the Pareto plot embedded, and each seed's figures on demand."""
    import io

    from workbench.reporting.html import png_data_uri, render_sweep_html

    columns = headline_figures(data)
    titles = [figure_title(c) for c in columns]
    points = []
    for point in data["points"]:
        points.append({
            "title": point["id"] if point["values"] else "all runs",
            "values": ", ".join(f"`{k}` = {v}" for k, v in point["values"].items()),
            "missing": ", ".join(map(str, point["missing"])),
            "rows": [[variant_label(v), *(cell(v["figures"].get(c)) for c in columns)] for v in point["variants"]],
            "paired": paired_rows(point, columns),
            "per_seed": per_seed_rows(point, columns),
        })
    buffer = io.BytesIO()
    pareto_plot(data, *_pareto_axes(sweep_dir)).save(buffer, format="PNG")
    return render_sweep_html({
        "title": f"Sweep: {header.get('title') or header['recipe']}",
        "header": header_lines(header, failed),
        "note": SWEEP_NOTE,
        "seeds_note": seeds_note(header),
        "baseline": BASELINE,
        "headings": ["variant", *titles],
        "points": points,
        "failed": sorted(failed.items()),
        "pareto": png_data_uri(buffer.getvalue()),
    })


def write_report(sweep_dir: Path, data: dict[str, Any], header: dict[str, Any], failed: dict[str, str]) -> Path:
    """Write report.md and report.html; returns report.md's path."""
    path = Path(sweep_dir) / REPORT_FILE
    atomic_write_text(path, render_report(data, header, failed))
    atomic_write_text(Path(sweep_dir) / HTML_FILE, render_html(sweep_dir, data, header, failed))
    return path


# ------------------------------------------------------------------ pareto plot


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x higher-better, y lower-better),
    sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 <= y) and (x2 > x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def default_privacy_figure(data: dict[str, Any]) -> str | None:
    for figure in headline_figures(data):
        if figure.startswith("attacks."):
            return figure
    return None


def pareto_plot(data: dict[str, Any], x_figure: str = "utility.test_accuracy", y_figure: str | None = None):
    """Privacy (y, lower is better) against utility (x): one marker per variant and grid point with
    95 % CI error bars both ways, coloured by variant, and the Pareto front as a dashed line."""
    from workbench.reporting.drawing import (
        BLACK,
        DEFAULT_SIZE,
        PALETTE,
        Axes,
        draw_text,
        padded_range,
        text_size,
    )
    from workbench.reporting.plots import label_boxes

    y_figure = y_figure or default_privacy_figure(data)
    marks = []  # (label, variant, x, y, (xlo, xhi), (ylo, yhi))
    for point in data["points"]:
        for variant in point["variants"]:
            fx, fy = variant["figures"].get(x_figure), variant["figures"].get(y_figure) if y_figure else None
            if not fx or not fy or fx["mean"] is None or fy["mean"] is None:
                continue
            label = variant["name"] if not point["values"] else f"{variant['name']} {point['id']}"
            xs = fx["ci95"] if fx["ci95"][0] is not None else [fx["mean"], fx["mean"]]
            ys = fy["ci95"] if fy["ci95"][0] is not None else [fy["mean"], fy["mean"]]
            marks.append((label, variant["name"], fx["mean"], fy["mean"], xs, ys))
    # A variant the grid does not touch (`none` in a λ sweep) has the same figures at every point:
    # one marker, labelled with its name only.
    merged: dict[tuple, list] = {}
    for mark in marks:
        key = (mark[1], *(round(v, 12) for v in (mark[2], mark[3], *mark[4], *mark[5])))
        merged.setdefault(key, []).append(mark)
    marks = [group[0] if len(group) == 1 else (group[0][1], *group[0][1:]) for group in merged.values()]
    title = f"{figure_title(y_figure) if y_figure else 'attack top-1'} against {figure_title(x_figure)} (95 % CI)"
    axes = Axes(DEFAULT_SIZE, padded_range([v for m in marks for v in m[4]], 0.1),
                 padded_range([v for m in marks for v in m[5]], 0.1), title,
                 f"{figure_title(x_figure)} (higher is better)", f"{figure_title(y_figure) if y_figure else ''} "
                 "(lower is better)")
    if not marks:
        axes.note(f"no runs with both {x_figure} and {y_figure or 'an attack top-1'}")
        return axes.image
    colours: dict[str, tuple[int, int, int]] = {}
    for _, variant, *_ in marks:
        colours.setdefault(variant, PALETTE[len(colours) % len(PALETTE)])
    front = pareto_front([(m[2], m[3]) for m in marks])
    path = [(axes.px(marks[i][2]), axes.py(marks[i][3])) for i in front]
    for (x0, y0), (x1, y1) in zip(path, path[1:], strict=False):  # dashed
        steps = max(1, int(math.hypot(x1 - x0, y1 - y0) // 6))
        for k in range(0, steps, 2):
            a, b = k / steps, min(1.0, (k + 1) / steps)
            axes.draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                           fill=(90, 90, 90), width=2)
    anchors, sizes = [], []
    for label, variant, x, y, (xlo, xhi), (ylo, yhi) in marks:
        colour = colours[variant]
        cx, cy = axes.px(x), axes.py(y)
        for a, b in (((axes.px(xlo), cy), (axes.px(xhi), cy)), ((cx, axes.py(ylo)), (cx, axes.py(yhi)))):
            axes.draw.line([a, b], fill=colour, width=1)
        for ex in (axes.px(xlo), axes.px(xhi)):
            axes.draw.line([(ex, cy - 3), (ex, cy + 3)], fill=colour)
        for ey in (axes.py(ylo), axes.py(yhi)):
            axes.draw.line([(cx - 3, ey), (cx + 3, ey)], fill=colour)
        axes.draw.ellipse([cx - 4.5, cy - 4.5, cx + 4.5, cy + 4.5], fill=colour, outline=BLACK)
        anchors.append((cx, cy, cx > axes.left + 2 * (axes.right - axes.left) / 3))
        sizes.append(text_size(axes.draw, label, axes.font))
    if len(marks) <= 24:  # beyond that, labels only clutter: the legend names the colours
        for (label, *_), box in zip(marks, label_boxes(anchors, sizes), strict=True):
            draw_text(axes.draw, (box[0], box[1]), label, axes.font, BLACK, "lt")
    axes.legend([*colours.items(), ("Pareto front", (90, 90, 90))])
    axes.image.info.update(front=[marks[i][0] for i in front])
    return axes.image


def write_pareto(sweep_dir: Path, data: dict[str, Any], x: str, y: str | None) -> Path:
    from workbench.reporting.drawing import save_png

    return save_png(pareto_plot(data, x, y), Path(sweep_dir) / PARETO_FILE)

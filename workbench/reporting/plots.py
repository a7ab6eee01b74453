"""Charts for reports, drawn with Pillow only: overlaid histograms (OOD score distributions), a
labelled scatter (privacy × utility per variant) and a line chart (training curves). Each returns
a `PIL.Image` about 640×400 on white, with numbered axis ticks, so a report reads well without any
plotting stack. Primitives (palette, axes, `save_png`) are in `workbench.reporting.drawing`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from workbench.errors import WorkbenchError
from workbench.reporting.drawing import (
    BLACK,
    DEFAULT_SIZE,
    HISTOGRAM_ALPHA,
    MARGIN_BOTTOM,
    MARGIN_TOP,
    PALETTE,
    Axes,
    draw_text,
    padded_range,
    text_size,
)


def histogram(
    series: Mapping[str, np.ndarray],
    title: str,
    bins: int = 30,
    xlabel: str = "score",
    size: tuple[int, int] = DEFAULT_SIZE,
) -> Image.Image:
    """Overlaid translucent histograms on shared bins, as shares of each series (sizes may differ).

    Non-finite values are dropped and counted in the legend; an empty series still gets a
    legend entry, so a missing OOD set is visible rather than silently absent.
    """
    if bins < 1:
        raise WorkbenchError(f"histogram: bins must be >= 1, got {bins}")
    cleaned: dict[str, tuple[np.ndarray, int]] = {}
    for name, values in series.items():
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        finite = flat[np.isfinite(flat)]
        cleaned[name] = (finite, flat.size - finite.size)
    pooled = np.concatenate([v for v, _ in cleaned.values()]) if cleaned else np.empty(0)
    if pooled.size:
        low, high = float(pooled.min()), float(pooled.max())
        if high == low:
            low, high = padded_range([low])
    else:
        low, high = 0.0, 1.0
    edges = np.linspace(low, high, bins + 1)
    shares = {}
    for name, (values, _) in cleaned.items():
        counts, _ = np.histogram(values, bins=edges)
        shares[name] = counts / values.size if values.size else counts.astype(float)
    top = max((float(s.max()) for s in shares.values() if s.size), default=0.0)
    # Headroom above the tallest bar for the legend (about 19 px a line), so it hides no bar.
    plot_height = size[1] - MARGIN_TOP - MARGIN_BOTTOM
    legend_fraction = min(0.5, (19 * len(shares) + 24) / plot_height)
    y_high = top / (1.0 - legend_fraction) if top > 0 else 1.0
    axes = Axes(size, (low, high), (0.0, y_high), title, xlabel, "share of samples")

    overlay = Image.new("RGBA", axes.image.size, (0, 0, 0, 0))
    overlay_draw = ImageDraw.Draw(overlay)
    legend = []
    for i, (name, share) in enumerate(shares.items()):
        colour = PALETTE[i % len(PALETTE)]
        values, dropped = cleaned[name]
        for left_edge, right_edge, height in zip(edges[:-1], edges[1:], share, strict=True):
            if height <= 0:
                continue
            box = [
                round(axes.px(left_edge)),
                round(axes.py(height)),
                round(axes.px(right_edge)) - 1,
                round(axes.py(0)) - 1,
            ]
            # Bars thinner or lower than a pixel still get one pixel (Pillow refuses inverted boxes).
            box[2] = max(box[0], box[2])
            box[1] = min(box[1], box[3])
            overlay_draw.rectangle(box, fill=(*colour, HISTOGRAM_ALPHA), outline=(*colour, 220))
        suffix = (f"n={values.size}" if values.size else "empty") + (
            f", {dropped} non-finite dropped" if dropped else ""
        )
        legend.append((f"{name} ({suffix})", colour))
    composed = Image.alpha_composite(axes.image.convert("RGBA"), overlay).convert("RGB")
    composed.info.update(axes.image.info)
    axes.image, axes.draw = composed, ImageDraw.Draw(composed)
    if not pooled.size:
        axes.note("no finite values")
    axes.legend(legend)
    return axes.image


# ---------------------------------------------------------------- scatter and lines


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_boxes(
    anchors: Sequence[tuple[float, float, bool]], sizes: Sequence[tuple[int, int]], gap: int = 2
) -> list[tuple[float, float, float, float]]:
    """Pixel boxes `(x0, y0, x1, y1)` for point labels: each sits beside its dot at `(cx, cy)`
    (left of it when the anchor's flag is set, else right), just above the dot's centre, and
    moves down or up by a line at a time past labels already placed, so no two overlap (two
    variants with nearly the same figures stay readable)."""
    boxes: list[tuple[float, float, float, float]] = []
    for (cx, cy, left), (width, height) in zip(anchors, sizes, strict=True):
        x0 = cx - 9 - width if left else cx + 9
        step = height + gap
        for shift in [0] + [k * sign for k in range(1, len(boxes) + 2) for sign in (1, -1)]:
            top = cy - 2 - height + shift * step
            box = (x0, top, x0 + width, top + height)
            if not any(_overlap(box, other) for other in boxes):
                break
        boxes.append(box)
    return boxes


def scatter(
    points: Sequence[tuple[str, float, float]],
    xlabel: str,
    ylabel: str,
    title: str,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> Image.Image:
    """One dot per `(label, x, y)`, each labelled beside it (e.g. variants: utility vs attack accuracy).

    Points with a non-finite coordinate cannot be placed; they are listed under the plot instead.
    """
    placed = [(label, float(x), float(y)) for label, x, y in points if math.isfinite(x) and math.isfinite(y)]
    skipped = [label for label, x, y in points if not (math.isfinite(x) and math.isfinite(y))]
    axes = Axes(
        size,
        padded_range([p[1] for p in placed], 0.12),
        padded_range([p[2] for p in placed], 0.12),
        title,
        xlabel,
        ylabel,
    )
    anchors, sizes = [], []
    for i, (label, x, y) in enumerate(placed):
        colour = PALETTE[i % len(PALETTE)]
        cx, cy = axes.px(x), axes.py(y)
        axes.draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour, outline=BLACK)
        # Labels go left of dots in the right third so they stay inside the canvas.
        anchors.append((cx, cy, cx > axes.left + 2 * (axes.right - axes.left) / 3))
        sizes.append(text_size(axes.draw, label, axes.font))
    for (label, _, _), box in zip(placed, label_boxes(anchors, sizes), strict=True):
        draw_text(axes.draw, (box[0], box[1]), label, axes.font, BLACK, "lt")
    if not placed:
        axes.note("no points")
    if skipped:
        draw_text(
            axes.draw,
            (axes.left, axes.image.height - 6),
            "not plotted (NaN): " + ", ".join(skipped),
            axes.font,
            (160, 60, 60),
            "lb",
        )
    return axes.image


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> Image.Image:
    """One polyline with small markers per series (e.g. loss per epoch); NaN points break the line."""
    finite_xs = [float(x) for pts in series.values() for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    finite_ys = [float(y) for pts in series.values() for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    axes = Axes(size, padded_range(finite_xs, 0.02), padded_range(finite_ys, 0.08), title, xlabel, ylabel)
    legend = []
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        segment: list[tuple[float, float]] = []
        segments = [segment]
        for x, y in pts:
            if math.isfinite(x) and math.isfinite(y):
                segment.append((axes.px(float(x)), axes.py(float(y))))
            elif segment:
                segment = []
                segments.append(segment)
        for run in segments:
            if len(run) > 1:
                axes.draw.line(run, fill=colour, width=2, joint="curve")
            for cx, cy in run:
                axes.draw.ellipse([cx - 2.5, cy - 2.5, cx + 2.5, cy + 2.5], fill=colour)
        legend.append((name if any(segments) else f"{name} (no finite points)", colour))
    if not finite_xs:
        axes.note("no data")
    axes.legend(legend)
    return axes.image


# ---------------------------------------------------------------- saving



"""Figures for reports, drawn with Pillow only (matplotlib is not a dependency).

Four kinds: an image grid (reconstructions), overlaid histograms (OOD score distributions), a
labelled scatter (privacy × utility per variant) and a line chart (training curves). Each returns
a `PIL.Image` about 640×400 on white, with numbered axis ticks, in Pillow's default font, so
`report.md` can link PNGs that read well without any plotting stack. `save_png` writes atomically.

Chart images carry their layout in `image.info` (`plot_box` = (left, top, right, bottom) in
pixels, `x_range`, `y_range` in data units), so callers and tests can map data to pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from workbench.errors import WorkbenchError
from workbench.storage.files import atomic_path

# Okabe–Ito colours: distinguishable with the common colour-vision deficiencies.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),  # blue
    (230, 159, 0),  # orange
    (0, 158, 115),  # green
    (213, 94, 0),  # vermillion
    (86, 180, 233),  # sky blue
    (204, 121, 167),  # reddish purple
    (120, 120, 120),  # grey
    (240, 228, 66),  # yellow (last: weak on white)
)

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID = (228, 228, 228)
AXIS = (60, 60, 60)
DEFAULT_SIZE = (640, 400)
HISTOGRAM_ALPHA = 110
"""Bar opacity out of 255: low enough that overlapping distributions stay visible."""

# Margins around the plot area: room for the title, tick labels and axis labels.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 72, 24, 40, 52


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font; the sized variant needs FreeType, else the bitmap fallback."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _draw_text(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, fill=BLACK, align: str = "lt"
) -> None:
    """Draw `text` with its bounding box aligned at `xy`: align = (l|m|r)(t|m|b)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    x = xy[0] - {"l": 0, "m": width / 2, "r": width}[align[0]] - left
    y = xy[1] - {"t": 0, "m": height / 2, "b": height}[align[1]] - top
    draw.text((x, y), text, font=font, fill=fill)


# ---------------------------------------------------------------- ticks and axes


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) covering [low, high], about `target` of them."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw_step = (high - low) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first = math.ceil(low / step - 1e-9) * step
    count = int(math.floor((high - first) / step + 1e-9)) + 1
    return [first + i * step for i in range(count)]


def _format_tick(value: float, step: float) -> str:
    """Just enough decimals to tell neighbouring ticks apart; large or tiny values in %g."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or (abs(value) < 1e-3):
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def _padded_range(values: Sequence[float], fraction: float = 0.06) -> tuple[float, float]:
    """A range around finite values with some air; a default when there are none or they are equal."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high == low:
        half = abs(low) * 0.1 or 0.5
        return low - half, high + half
    pad = (high - low) * fraction
    return low - pad, high + pad


def _extend_to_ticks(low: float, high: float) -> tuple[float, float, list[float]]:
    """Grow [low, high] to the nearest round ticks when that is close (at most half a tick step),
    so the axis usually starts and ends on a label without wasting a whole step of space."""
    ticks = nice_ticks(low, high)
    if len(ticks) >= 2:
        step = ticks[1] - ticks[0]
        rounded_low = math.floor(low / step + 1e-9) * step
        rounded_high = math.ceil(high / step - 1e-9) * step
        low = rounded_low if low - rounded_low <= step / 2 else low
        high = rounded_high if rounded_high - high <= step / 2 else high
        ticks = nice_ticks(low, high)
    return low, high, ticks


class _Axes:
    """A white canvas with a framed plot area, gridlines, numbered ticks, axis labels and title."""

    def __init__(
        self,
        size: tuple[int, int],
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        title: str,
        xlabel: str,
        ylabel: str,
    ):
        self.image = Image.new("RGB", size, WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font(12)
        self.title_font = _font(15)
        width, height = size
        self.left, self.top = MARGIN_LEFT, MARGIN_TOP
        self.right, self.bottom = width - MARGIN_RIGHT, height - MARGIN_BOTTOM
        self.x_low, self.x_high, self.x_ticks = _extend_to_ticks(*x_range)
        self.y_low, self.y_high, self.y_ticks = _extend_to_ticks(*y_range)
        self._draw_frame(title, xlabel, ylabel)
        self.image.info.update(
            plot_box=(self.left, self.top, self.right, self.bottom),
            x_range=(self.x_low, self.x_high),
            y_range=(self.y_low, self.y_high),
        )

    def px(self, x: float) -> float:
        return self.left + (x - self.x_low) / (self.x_high - self.x_low) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y_low) / (self.y_high - self.y_low) * (self.bottom - self.top)

    def _draw_frame(self, title: str, xlabel: str, ylabel: str) -> None:
        draw, font = self.draw, self.font
        x_step = self.x_ticks[1] - self.x_ticks[0] if len(self.x_ticks) > 1 else 1.0
        y_step = self.y_ticks[1] - self.y_ticks[0] if len(self.y_ticks) > 1 else 1.0
        for x in self.x_ticks:
            px = round(self.px(x))
            draw.line([(px, self.top), (px, self.bottom)], fill=GRID)
            draw.line([(px, self.bottom), (px, self.bottom + 4)], fill=AXIS)
            _draw_text(draw, (px, self.bottom + 7), _format_tick(x, x_step), font, AXIS, "mt")
        for y in self.y_ticks:
            py = round(self.py(y))
            draw.line([(self.left, py), (self.right, py)], fill=GRID)
            draw.line([(self.left - 4, py), (self.left, py)], fill=AXIS)
            _draw_text(draw, (self.left - 7, py), _format_tick(y, y_step), font, AXIS, "rm")
        draw.rectangle([self.left, self.top, self.right, self.bottom], outline=AXIS)
        _draw_text(draw, ((self.left + self.right) / 2, 12), title, self.title_font, BLACK, "mt")
        _draw_text(draw, ((self.left + self.right) / 2, self.image.height - 6), xlabel, font, BLACK, "mb")
        if ylabel:
            # Pillow cannot draw rotated text directly: draw it on a strip and rotate the strip.
            text_w, text_h = _text_size(draw, ylabel, font)
            strip = Image.new("RGB", (text_w + 4, text_h + 6), WHITE)
            _draw_text(ImageDraw.Draw(strip), (2, 3), ylabel, font, BLACK, "lt")
            strip = strip.rotate(90, expand=True)
            y0 = round((self.top + self.bottom) / 2 - strip.height / 2)
            self.image.paste(strip, (4, max(0, y0)))

    def note(self, text: str) -> None:
        """A grey message in the middle of the plot area (for 'no data')."""
        _draw_text(
            self.draw,
            ((self.left + self.right) / 2, (self.top + self.bottom) / 2),
            text,
            self.font,
            (130, 130, 130),
            "mm",
        )

    def _emptiest_corner(self, box_w: int, box_h: int) -> tuple[int, int]:
        """Top-left corner for a legend box: the plot-area corner that hides the fewest drawn pixels."""
        corners = [
            (self.right - box_w - 8, self.top + 8),
            (self.left + 8, self.top + 8),
            (self.right - box_w - 8, self.bottom - box_h - 8),
            (self.left + 8, self.bottom - box_h - 8),
        ]
        pixels = np.asarray(self.image.convert("RGB"), dtype=np.int16)

        def covered(corner: tuple[int, int]) -> int:
            x0, y0 = max(corner[0], 0), max(corner[1], 0)
            patch = pixels[y0 : y0 + box_h + 1, x0 : x0 + box_w + 1]
            # Anything not white and not a light gridline counts as data.
            return int((patch.min(axis=2) < GRID[0] - 10).sum())

        return min(corners, key=covered)  # ties keep the first: top-right

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
        """Colour swatches with names, boxed in the top-right corner of the plot area."""
        if not entries:
            return
        line_h = max(_text_size(self.draw, "Hg", self.font)[1], 10) + 6
        text_w = max(_text_size(self.draw, name, self.font)[0] for name, _ in entries)
        box_w, box_h = text_w + 34, line_h * len(entries) + 8
        x0, y0 = self._emptiest_corner(box_w, box_h)
        self.draw.rectangle([x0, y0, x0 + box_w, y0 + box_h], fill=WHITE, outline=(170, 170, 170))
        for i, (name, colour) in enumerate(entries):
            cy = y0 + 4 + line_h * i + line_h / 2
            self.draw.rectangle([x0 + 8, cy - 5, x0 + 20, cy + 5], fill=colour)
            _draw_text(self.draw, (x0 + 26, cy), name, self.font, BLACK, "lm")


# ---------------------------------------------------------------- image grid


def _to_uint8_hwc(images) -> np.ndarray:
    """`[n, C, H, W]` floats in [0, 1] (tensor or array) -> `[n, H, W, 3]` uint8, rounded."""
    array = (
        images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images, np.float32)
    )
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise WorkbenchError(
            f"image_grid: images must be shaped [n, C, H, W] with C = 1 or 3, got {tuple(array.shape)}"
        )
    array = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0)
    pixels = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    if pixels.shape[1] == 1:
        pixels = np.repeat(pixels, 3, axis=1)
    return pixels.transpose(0, 2, 3, 1)


def image_grid(
    images,
    nrow: int = 8,
    scale: int = 2,
    pad: int = 2,
    labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    groups: Sequence[tuple[str, int]] | None = None,
) -> Image.Image:
    """Images in rows of `nrow`, each enlarged `scale`× (nearest neighbour, so pixels stay exact).

    Image i sits in row `i // nrow`, column `i % nrow`, at
    `(label_width + pad + col·(W·scale + pad) + gap·g(col), header + pad + row·(H·scale + pad))`:
    `labels` (one per row, e.g. the target class) are written in a left column of `label_width`
    pixels (0 without labels); `column_labels` (one per column, e.g. the restart) and `groups`
    (`(title, columns)` pairs spanning the row, e.g. private images then reconstructions) are written
    in a header of `header` pixels above the tiles (0 without either), and with groups a gap of
    `GROUP_GAP` pixels separates them (`g(col)` = the number of groups before `col`'s).
    """
    if nrow < 1 or scale < 1 or pad < 0:
        raise WorkbenchError(
            f"image_grid: need nrow >= 1, scale >= 1, pad >= 0; got nrow={nrow}, scale={scale}, pad={pad}"
        )
    if column_labels is not None and len(column_labels) != nrow:
        raise WorkbenchError(f"image_grid: got {len(column_labels)} column labels for {nrow} columns")
    if groups is not None and sum(count for _, count in groups) != nrow:
        raise WorkbenchError(
            f"image_grid: the groups span {sum(count for _, count in groups)} columns, the grid has {nrow}"
        )
    pixels = _to_uint8_hwc(images)
    count = pixels.shape[0]
    font = _font(12)
    if count == 0:
        empty = Image.new("RGB", (160, 40), WHITE)
        _draw_text(ImageDraw.Draw(empty), (80, 20), "(no images)", font, (130, 130, 130), "mm")
        return empty
    rows, cols = math.ceil(count / nrow), min(nrow, count)
    if labels is not None and len(labels) != rows:
        raise WorkbenchError(f"image_grid: got {len(labels)} row labels for {rows} rows of {nrow} images")
    cell_h, cell_w = pixels.shape[1] * scale, pixels.shape[2] * scale
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((_text_size(measure, str(t), font)[0] for t in labels), default=0) + 8 if labels else 0
    line_h = _text_size(measure, "Hg", font)[1] + 6
    header = line_h * (bool(column_labels) + bool(groups))
    group_of = [g for g, (_, span) in enumerate(groups or []) for _ in range(span)] or [0] * nrow
    gap = GROUP_GAP if groups else 0

    def left(col: int) -> int:
        return label_width + pad + col * (cell_w + pad) + gap * group_of[col]

    width = left((nrow if header else cols) - 1) + cell_w + pad  # a header spans every column
    grid = Image.new("RGB", (width, header + pad + rows * (cell_h + pad)), WHITE)
    for index in range(count):
        row, col = divmod(index, nrow)
        tile = Image.fromarray(pixels[index], "RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
        grid.paste(tile, (left(col), header + pad + row * (cell_h + pad)))
    draw = ImageDraw.Draw(grid)
    if labels:
        for row, text in enumerate(labels):
            _draw_text(
                draw, (label_width - 4, header + pad + row * (cell_h + pad) + cell_h / 2), str(text), font, BLACK,
                "rm",
            )
    if groups:
        first = 0
        for title, span in groups:
            x0, x1 = left(first), left(first + span - 1) + cell_w
            _draw_text(draw, ((x0 + x1) / 2, line_h / 2), str(title), font, BLACK, "mm")
            draw.line([(x0, line_h - 2), (x1, line_h - 2)], fill=AXIS)
            first += span
    if column_labels:
        for col, text in enumerate(column_labels):
            _draw_text(draw, (left(col) + cell_w / 2, header - line_h / 2), str(text), font, AXIS, "mm")
    return grid


GROUP_GAP = 10
"""Pixels between column groups of an image grid (private images | reconstructions)."""


def _as_array(values) -> np.ndarray:
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)


def reconstruction_grid(
    private_images,
    private_labels,
    images,
    targets,
    restarts=None,
    class_names: Sequence[str] = (),
    per_class: int = 8,
    private: int = 4,
) -> Image.Image:
    """An attack's reconstructions, labelled: one row per attacked class (its name on the left), the
    class's first `private` private training images, then its reconstructions one column per restart.

    Columns are (restart, draw) pairs, at most `per_class`: each restart's first draw, then second
    draws while room is left, shown in restart order; a restart with
    several draws per class (GMI's samples) gets one column per draw, headed `r0.1`, `r0.2`, …, else
    `r0`, `r1`, …. Without restart indices the reconstructions are numbered in their order. A class
    missing a cell (fewer private images, fewer reconstructions) gets a white tile there.
    """
    real_x, real_y = _as_array(private_images), _as_array(private_labels)
    fakes, fake_y = _as_array(images), _as_array(targets)
    fake_r = _as_array(restarts) if restarts is not None else None
    classes = sorted({int(c) for c in fake_y.tolist()})
    keys: list[list[tuple[int, int]]] = []  # per class: (restart, draw) of each of its reconstructions
    for cls in classes:
        order = np.flatnonzero(fake_y == cls)
        seen: dict[int, int] = {}
        class_keys = []
        for position, index in enumerate(order):
            restart = int(fake_r[index]) if fake_r is not None else position
            class_keys.append((restart, seen.get(restart, 0)))
            seen[restart] = seen.get(restart, 0) + 1
        keys.append(class_keys)
    # Every restart's first draw before any second draw, so the columns cover as many restarts as fit.
    columns = sorted(sorted({k for class_keys in keys for k in class_keys}, key=lambda k: (k[1], k[0]))[:per_class])
    several_draws = any(draw > 0 for _, draw in columns)
    if fake_r is None:
        headings = [str(i + 1) for i in range(len(columns))]
    else:
        headings = [f"r{r}.{d + 1}" if several_draws else f"r{r}" for r, d in columns]
    blank = np.ones(fakes.shape[1:], dtype=np.float32)
    tiles = []
    for cls, class_keys in zip(classes, keys, strict=True):
        real = real_x[real_y == cls][:private]
        tiles += [*real, *[blank] * (private - len(real))]
        where = dict(zip(class_keys, np.flatnonzero(fake_y == cls), strict=True))
        tiles += [fakes[where[key]] if key in where else blank for key in columns]
    names = [class_names[c] if c < len(class_names) else str(c) for c in classes]
    width = private + len(columns)
    groups = [("private training images", private), ("reconstructions by restart" if fake_r is not None else "reconstructions",
                                     len(columns))]
    groups = [(title, span) for title, span in groups if span]
    return image_grid(np.stack(tiles).astype(np.float32), nrow=width, scale=max(1, 64 // fakes.shape[-1]),
                      labels=names, column_labels=[""] * private + headings, groups=groups)


# ---------------------------------------------------------------- histogram


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
            low, high = _padded_range([low])
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
    axes = _Axes(size, (low, high), (0.0, y_high), title, xlabel, "share of samples")

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
    axes = _Axes(
        size,
        _padded_range([p[1] for p in placed], 0.12),
        _padded_range([p[2] for p in placed], 0.12),
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
        sizes.append(_text_size(axes.draw, label, axes.font))
    for (label, _, _), box in zip(placed, label_boxes(anchors, sizes), strict=True):
        _draw_text(axes.draw, (box[0], box[1]), label, axes.font, BLACK, "lt")
    if not placed:
        axes.note("no points")
    if skipped:
        _draw_text(
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
    axes = _Axes(size, _padded_range(finite_xs, 0.02), _padded_range(finite_ys, 0.08), title, xlabel, ylabel)
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


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write `image` as PNG atomically (`workbench.storage.files.atomic_path`).

    A reader (the TUI, a browser on report.md) never sees a half-written file.
    """
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as stream:
        image.save(stream, format="PNG")
    return target

"""Drawing in the terminal: braille line and scatter charts, half-block images.

Braille cells hold 2×4 dots, so a chart of w×h characters has 2w×4h points; a half-block
cell shows two pixels stacked (upper half as the foreground colour, lower as the background).
Everything returns `rich.text.Text`, which any Textual `Static` can show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.style import Style
from rich.text import Text

BRAILLE_BASE = 0x2800
# Bit of each dot in a braille cell, indexed [row][column] (Unicode braille patterns, dots 1-8).
BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))

PALETTE = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#90a4ae", "#f06292")


class BrailleCanvas:
    """A grid of braille cells; each cell keeps the colour of the last dot drawn in it."""

    def __init__(self, width: int, height: int):
        self.width = max(1, width)
        self.height = max(1, height)
        self.bits = [[0] * self.width for _ in range(self.height)]
        self.colors: list[list[str | None]] = [[None] * self.width for _ in range(self.height)]

    @property
    def dots_x(self) -> int:
        return self.width * 2

    @property
    def dots_y(self) -> int:
        return self.height * 4

    def set(self, x: int, y: int, color: str | None = None) -> None:
        """Light dot (x, y); y = 0 is the top row. Dots outside the canvas are ignored."""
        if not (0 <= x < self.dots_x and 0 <= y < self.dots_y):
            return
        row, col = y // 4, x // 2
        self.bits[row][col] |= BRAILLE_BITS[y % 4][x % 2]
        if color is not None:
            self.colors[row][col] = color

    def line(self, x0: int, y0: int, x1: int, y1: int, color: str | None = None) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.set(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), color)

    def rows(self) -> list[str]:
        return ["".join(chr(BRAILLE_BASE + bits) for bits in row) for row in self.bits]

    def render(self) -> Text:
        text = Text()
        for r, row in enumerate(self.bits):
            for c, bits in enumerate(row):
                color = self.colors[r][c]
                text.append(chr(BRAILLE_BASE + bits), style=color or "")
            if r < self.height - 1:
                text.append("\n")
        return text


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _span(lo: float, hi: float) -> tuple[float, float]:
    if lo == hi:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    return lo, hi


def scale(value: float, lo: float, hi: float, dots: int, flip: bool = False) -> int:
    """Map value in [lo, hi] onto 0 … dots-1 (flipped for y, where dot 0 is the top)."""
    position = round((value - lo) / (hi - lo) * (dots - 1))
    return dots - 1 - position if flip else position


def _number(value: float) -> str:
    return f"{value:.3g}"


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]], width: int = 40, height: int = 6, title: str = ""
) -> Text:
    """Lines of (x, y) points, one colour per series, y range on the left, legend below."""
    points = {name: [(x, y) for x, y in pts if _finite([x, y]) == [x, y]] for name, pts in series.items()}
    points = {name: pts for name, pts in points.items() if pts}
    out = Text()
    if title:
        out.append(title + "\n", style="bold")
    if not points:
        out.append("no data yet", style="dim")
        return out
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    x_lo, x_hi = _span(min(xs), max(xs))
    y_lo, y_hi = _span(min(ys), max(ys))
    label_width = max(len(_number(y_lo)), len(_number(y_hi)))
    canvas = BrailleCanvas(max(4, width - label_width - 1), height)
    for index, pts in enumerate(points.values()):
        color = PALETTE[index % len(PALETTE)]
        dots = [
            (scale(x, x_lo, x_hi, canvas.dots_x), scale(y, y_lo, y_hi, canvas.dots_y, flip=True)) for x, y in pts
        ]
        if len(dots) == 1:
            canvas.set(*dots[0], color)
        for (ax, ay), (bx, by) in zip(dots, dots[1:], strict=False):
            canvas.line(ax, ay, bx, by, color)
    body = canvas.render().split("\n")
    for r, row in enumerate(body):
        label = _number(y_hi) if r == 0 else (_number(y_lo) if r == len(body) - 1 else "")
        out.append(label.rjust(label_width) + "│", style="dim")
        out.append_text(row)
        out.append("\n")
    out.append(" " * label_width + "└" + _number(x_lo).ljust(canvas.width - len(_number(x_hi))) + _number(x_hi),
               style="dim")
    out.append("\n")
    for index, name in enumerate(points):
        out.append("● ", style=PALETTE[index % len(PALETTE)])
        out.append(name + "  ")
    return out


def scatter_chart(
    points: Sequence[tuple[str, float, float]],
    width: int = 50,
    height: int = 12,
    x_label: str = "x",
    y_label: str = "y",
) -> Text:
    """Labelled points (label, x, y): each drawn as a coloured dot, with a legend of labels."""
    points = [(label, x, y) for label, x, y in points if _finite([x, y]) == [x, y]]
    out = Text()
    out.append(f"{y_label} ↑\n", style="dim")
    if not points:
        out.append("no figures to plot yet", style="dim")
        return out
    x_lo, x_hi = _span(min(p[1] for p in points), max(p[1] for p in points))
    y_lo, y_hi = _span(min(p[2] for p in points), max(p[2] for p in points))
    label_width = max(len(_number(y_lo)), len(_number(y_hi)))
    canvas = BrailleCanvas(max(4, width - label_width - 1), height)
    for index, (_label, x, y) in enumerate(points):
        px = scale(x, x_lo, x_hi, canvas.dots_x)
        py = scale(y, y_lo, y_hi, canvas.dots_y, flip=True)
        color = PALETTE[index % len(PALETTE)]
        for dx in (0, 1):  # a 2×2 blob so one point is visible
            for dy in (0, 1):
                canvas.set(px + dx if px + dx < canvas.dots_x else px - dx, py + dy if py + dy < canvas.dots_y
                           else py - dy, color)
    body = canvas.render().split("\n")
    for r, row in enumerate(body):
        label = _number(y_hi) if r == 0 else (_number(y_lo) if r == len(body) - 1 else "")
        out.append(label.rjust(label_width) + "│", style="dim")
        out.append_text(row)
        out.append("\n")
    out.append(" " * label_width + "└" + _number(x_lo).ljust(canvas.width - len(_number(x_hi))) + _number(x_hi),
               style="dim")
    out.append(f"\n{' ' * label_width} {x_label} →\n", style="dim")
    for index, (label, x, y) in enumerate(points):
        out.append("● ", style=PALETTE[index % len(PALETTE)])
        out.append(f"{label} ({_number(x)}, {_number(y)})\n")
    return out


def to_rgb(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4, float in [0, 1] or uint8 -> HxWx3 uint8."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[:, :, :3]
    if array.dtype != np.uint8:
        array = np.clip(np.nan_to_num(array.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return array


def fit(image: np.ndarray, max_width: int, max_height_cells: int) -> np.ndarray:
    """Nearest-neighbour shrink so the image fits max_width columns and max_height_cells rows."""
    height, width = image.shape[:2]
    factor = max(width / max(1, max_width), height / max(1, 2 * max_height_cells), 1.0)
    if factor == 1.0:
        return image
    new_w, new_h = max(1, int(width / factor)), max(1, int(height / factor))
    rows = (np.arange(new_h) * height / new_h).astype(int)
    cols = (np.arange(new_w) * width / new_w).astype(int)
    return image[rows][:, cols]


def half_block_image(image: np.ndarray) -> Text:
    """Two pixel rows per text row: '▀' in the upper pixel's colour on the lower pixel's colour."""
    rgb = to_rgb(image)
    height, width = rgb.shape[:2]
    text = Text()
    for top in range(0, height, 2):
        for x in range(width):
            upper = rgb[top, x]
            style = Style(color=f"rgb({upper[0]},{upper[1]},{upper[2]})")
            if top + 1 < height:
                lower = rgb[top + 1, x]
                style += Style(bgcolor=f"rgb({lower[0]},{lower[1]},{lower[2]})")
            text.append("▀", style=style)
        if top + 2 < height:
            text.append("\n")
    return text


def load_picture(path: Path, max_width: int = 60, max_height_cells: int = 16) -> np.ndarray:
    """A reconstruction grid as RGB: the PNG, or the first images of the safetensors beside it."""
    path = Path(path)
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as picture:
            array = np.asarray(picture.convert("RGB"))
    else:
        from safetensors.numpy import load_file

        images = load_file(str(path))["images"]  # [n, C, H, W]
        array = tile(images[:8])
    return fit(to_rgb(array), max_width, max_height_cells)


def tile(images: np.ndarray) -> np.ndarray:
    """[n, C, H, W] in [0, 1] -> one row H×(n·W)×C, a one-pixel gap between images."""
    n, channels, height, width = images.shape
    row = np.zeros((height, n * (width + 1) - 1, channels), dtype=np.float32)
    for i in range(n):
        row[:, i * (width + 1) : i * (width + 1) + width] = np.transpose(images[i], (1, 2, 0))
    return row

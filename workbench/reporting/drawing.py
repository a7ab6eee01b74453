"""Drawing primitives for the report's figures, with Pillow only (matplotlib is not a dependency):
the palette, fonts and text, axis ticks, an `Axes` that maps data to pixels, and `save_png`,
which writes atomically. Charts are in `workbench.reporting.plots`, image grids in
`workbench.reporting.grids`.

Chart images carry their layout in `image.info` (`plot_box` = (left, top, right, bottom) in
pixels, `x_range`, `y_range` in data units), so callers and tests can map data to pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font; the sized variant needs FreeType, else the bitmap fallback."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def draw_text(
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


def format_tick(value: float, step: float) -> str:
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


def padded_range(values: Sequence[float], fraction: float = 0.06) -> tuple[float, float]:
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


def extend_to_ticks(low: float, high: float) -> tuple[float, float, list[float]]:
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


class Axes:
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
        self.font = load_font(12)
        self.title_font = load_font(15)
        width, height = size
        self.left, self.top = MARGIN_LEFT, MARGIN_TOP
        self.right, self.bottom = width - MARGIN_RIGHT, height - MARGIN_BOTTOM
        self.x_low, self.x_high, self.x_ticks = extend_to_ticks(*x_range)
        self.y_low, self.y_high, self.y_ticks = extend_to_ticks(*y_range)
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
            draw_text(draw, (px, self.bottom + 7), format_tick(x, x_step), font, AXIS, "mt")
        for y in self.y_ticks:
            py = round(self.py(y))
            draw.line([(self.left, py), (self.right, py)], fill=GRID)
            draw.line([(self.left - 4, py), (self.left, py)], fill=AXIS)
            draw_text(draw, (self.left - 7, py), format_tick(y, y_step), font, AXIS, "rm")
        draw.rectangle([self.left, self.top, self.right, self.bottom], outline=AXIS)
        draw_text(draw, ((self.left + self.right) / 2, 12), title, self.title_font, BLACK, "mt")
        draw_text(draw, ((self.left + self.right) / 2, self.image.height - 6), xlabel, font, BLACK, "mb")
        if ylabel:
            # Pillow cannot draw rotated text directly: draw it on a strip and rotate the strip.
            text_w, text_h = text_size(draw, ylabel, font)
            strip = Image.new("RGB", (text_w + 4, text_h + 6), WHITE)
            draw_text(ImageDraw.Draw(strip), (2, 3), ylabel, font, BLACK, "lt")
            strip = strip.rotate(90, expand=True)
            y0 = round((self.top + self.bottom) / 2 - strip.height / 2)
            self.image.paste(strip, (4, max(0, y0)))

    def note(self, text: str) -> None:
        """A grey message in the middle of the plot area (for 'no data')."""
        draw_text(
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
        line_h = max(text_size(self.draw, "Hg", self.font)[1], 10) + 6
        text_w = max(text_size(self.draw, name, self.font)[0] for name, _ in entries)
        box_w, box_h = text_w + 34, line_h * len(entries) + 8
        x0, y0 = self._emptiest_corner(box_w, box_h)
        self.draw.rectangle([x0, y0, x0 + box_w, y0 + box_h], fill=WHITE, outline=(170, 170, 170))
        for i, (name, colour) in enumerate(entries):
            cy = y0 + 4 + line_h * i + line_h / 2
            self.draw.rectangle([x0 + 8, cy - 5, x0 + 20, cy + 5], fill=colour)
            draw_text(self.draw, (x0 + 26, cy), name, self.font, BLACK, "lm")


# ---------------------------------------------------------------- image grid


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write `image` as PNG atomically (`workbench.storage.files.atomic_path`).

    A reader (the TUI, a browser on report.md) never sees a half-written file.
    """
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as stream:
        image.save(stream, format="PNG")
    return target

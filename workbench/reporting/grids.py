"""Image grids for reports: reconstructions in rows by class, with labelled columns and groups."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from workbench.errors import WorkbenchError
from workbench.reporting.drawing import AXIS, BLACK, WHITE, draw_text, load_font, text_size


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
    font = load_font(12)
    if count == 0:
        empty = Image.new("RGB", (160, 40), WHITE)
        draw_text(ImageDraw.Draw(empty), (80, 20), "(no images)", font, (130, 130, 130), "mm")
        return empty
    rows, cols = math.ceil(count / nrow), min(nrow, count)
    if labels is not None and len(labels) != rows:
        raise WorkbenchError(f"image_grid: got {len(labels)} row labels for {rows} rows of {nrow} images")
    cell_h, cell_w = pixels.shape[1] * scale, pixels.shape[2] * scale
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((text_size(measure, str(t), font)[0] for t in labels), default=0) + 8 if labels else 0
    line_h = text_size(measure, "Hg", font)[1] + 6
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
            draw_text(
                draw, (label_width - 4, header + pad + row * (cell_h + pad) + cell_h / 2), str(text), font, BLACK,
                "rm",
            )
    if groups:
        first = 0
        for title, span in groups:
            x0, x1 = left(first), left(first + span - 1) + cell_w
            draw_text(draw, ((x0 + x1) / 2, line_h / 2), str(title), font, BLACK, "mm")
            draw.line([(x0, line_h - 2), (x1, line_h - 2)], fill=AXIS)
            first += span
    if column_labels:
        for col, text in enumerate(column_labels):
            draw_text(draw, (left(col) + cell_w / 2, header - line_h / 2), str(text), font, AXIS, "mm")
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



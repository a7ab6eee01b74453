"""Pillow plots: sizes, exact grid pixels, data drawn where the data is, robustness, PNG round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.errors import WorkbenchError
from workbench.reporting.drawing import PALETTE, nice_ticks, save_png
from workbench.reporting.grids import GROUP_GAP, image_grid, reconstruction_grid
from workbench.reporting.plots import histogram, line_chart, scatter
from workbench.storage.files import StorageError


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _data_to_px(image: Image.Image, x: float, y: float) -> tuple[int, int]:
    """Data -> pixel with the layout the chart reports in `image.info`, computed independently here."""
    left, top, right, bottom = image.info["plot_box"]
    (x_low, x_high), (y_low, y_high) = image.info["x_range"], image.info["y_range"]
    return (
        round(left + (x - x_low) / (x_high - x_low) * (right - left)),
        round(bottom - (y - y_low) / (y_high - y_low) * (bottom - top)),
    )


def _px_to_x(image: Image.Image, column: int) -> float:
    left, _, right, _ = image.info["plot_box"]
    x_low, x_high = image.info["x_range"]
    return x_low + (column - left) / (right - left) * (x_high - x_low)


# ================================================================ image grid


def test_grid_blocks_equal_the_input_images_scaled():
    # Values k/255 make the expected bytes exact: k.
    levels = torch.randint(0, 256, (7, 3, 5, 4), generator=torch.Generator().manual_seed(0))
    images = levels.float() / 255
    scale, pad, nrow = 3, 2, 3
    grid = image_grid(images, nrow=nrow, scale=scale, pad=pad)
    cell_h, cell_w = 5 * scale, 4 * scale
    assert grid.size == (pad + nrow * (cell_w + pad), pad + 3 * (cell_h + pad))  # 7 images -> 3 rows
    pixels = _pixels(grid)
    for index in range(7):
        row, col = divmod(index, nrow)
        x0, y0 = pad + col * (cell_w + pad), pad + row * (cell_h + pad)
        block = pixels[y0 : y0 + cell_h, x0 : x0 + cell_w]
        expected = np.repeat(
            np.repeat(levels[index].numpy().transpose(1, 2, 0), scale, axis=0), scale, axis=1
        )
        np.testing.assert_array_equal(block, expected)
    # The padding between cells is background white, and the two unused cells in the last row too.
    assert (pixels[:pad] == 255).all()
    assert (pixels[pad + 2 * (cell_h + pad) :, pad + 1 * (cell_w + pad) :] == 255).all()


def test_grid_grayscale_nan_and_out_of_range_values():
    images = torch.tensor([[[[0.0, 1.0], [float("nan"), 2.0]]], [[[-1.0, 0.5], [0.2, 1.0]]]])
    grid = image_grid(images, nrow=2, scale=1, pad=0)
    pixels = _pixels(grid)
    assert grid.size == (4, 2)
    # Grey images become equal RGB channels; NaN -> 0, values clipped to [0, 1], 0.5 -> round(127.5) = 128.
    np.testing.assert_array_equal(pixels[..., 0], [[0, 255, 0, 128], [0, 255, 51, 255]])
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_grid_row_labels_sit_in_a_left_column():
    levels = torch.randint(0, 256, (4, 3, 6, 6), generator=torch.Generator().manual_seed(1))
    plain = image_grid(levels / 255, nrow=2, scale=2, pad=1)
    labelled = image_grid(levels / 255, nrow=2, scale=2, pad=1, labels=["class 0", "class 1"])
    label_width = labelled.width - plain.width
    assert label_width > 20 and labelled.height == plain.height
    # The image cells are unchanged, shifted right by the label column, which holds dark text.
    np.testing.assert_array_equal(_pixels(labelled)[:, label_width:], _pixels(plain))
    assert (_pixels(labelled)[:, :label_width] < 100).any()


def test_grid_column_labels_and_groups_add_a_header_and_a_gap():
    levels = torch.randint(0, 256, (6, 3, 4, 4), generator=torch.Generator().manual_seed(2))
    plain = image_grid(levels / 255, nrow=3, scale=2, pad=1)
    headed = image_grid(levels / 255, nrow=3, scale=2, pad=1, column_labels=["a", "b", "c"],
                        groups=[("left", 1), ("right", 2)])
    header = headed.height - plain.height
    assert header > 20 and headed.width == plain.width + GROUP_GAP
    pixels, reference = _pixels(headed), _pixels(plain)
    # Column 0 as before, shifted down by the header; columns 1-2 also right by the gap.
    cell = 4 * 2 + 1
    np.testing.assert_array_equal(pixels[header:, : 1 + cell], reference[:, : 1 + cell])
    np.testing.assert_array_equal(pixels[header:, 1 + cell + GROUP_GAP :], reference[:, 1 + cell :])
    assert (pixels[:header] < 100).any()  # the header holds text
    with pytest.raises(WorkbenchError, match="2 column labels for 3 columns"):
        image_grid(levels / 255, nrow=3, column_labels=["a", "b"])
    with pytest.raises(WorkbenchError, match="span 2 columns, the grid has 3"):
        image_grid(levels / 255, nrow=3, groups=[("x", 2)])


def test_reconstruction_grid_rows_by_class_columns_by_restart_private_first():
    # Two classes, 3 restarts x 2 draws each, each image a flat grey level naming (class, restart, draw).
    size = 8
    private_x = torch.stack([torch.full((1, size, size), 0.1 * c + 0.01 * k) for c in (0, 1) for k in range(3)])
    private_y = torch.tensor([0, 0, 0, 1, 1, 1])
    targets, restarts, levels = [], [], []
    for draw in range(2):
        for restart in range(3):
            for cls in (1, 0):  # out of order on purpose
                targets.append(cls)
                restarts.append(restart)
                levels.append((100 + 40 * cls + 10 * restart + 3 * draw) / 255)
    images = torch.tensor(levels).view(-1, 1, 1, 1).expand(-1, 1, size, size).contiguous()
    grid = reconstruction_grid(private_x, private_y, images, torch.tensor(targets), torch.tensor(restarts),
                               ["zero", "one"], per_class=4, private=2)
    scale, pad = 64 // size, 2
    cell = size * scale
    pixels = _pixels(grid)
    # Header, then a row per class; columns: 2 private, gap, then r0.1 r0.2 r1.1 r2.1 (first draws first).
    rows_top = grid.height - 2 * (cell + pad)
    label_width = grid.width - (pad + 6 * (cell + pad) + GROUP_GAP)

    def tile(row: int, col: int) -> int:
        x = label_width + pad + col * (cell + pad) + (GROUP_GAP if col >= 2 else 0)
        y = rows_top + row * (cell + pad)
        block = pixels[y : y + cell, x : x + cell, 0]
        assert (block == block[0, 0]).all()
        return int(block[0, 0])

    for row, cls in enumerate((0, 1)):
        assert [tile(row, c) for c in range(2)] == [round(255 * (0.1 * cls + 0.01 * k)) for k in range(2)]
        expected = [(0, 0), (0, 1), (1, 0), (2, 0)]
        assert [tile(row, 2 + i) for i in range(4)] == [100 + 40 * cls + 10 * r + 3 * d for r, d in expected]


def test_reconstruction_grid_pads_missing_cells_white():
    images = torch.zeros(3, 1, 4, 4)
    grid = reconstruction_grid(torch.zeros(1, 1, 4, 4), torch.tensor([0]), images, torch.tensor([0, 0, 1]),
                               None, [], per_class=2, private=2)
    pixels = _pixels(grid)
    cell, pad = 4 * 16, 2
    rows_top = grid.height - 2 * (cell + pad)
    right = grid.width - pad - cell  # the last reconstruction column
    assert (pixels[rows_top : rows_top + cell, right : right + cell] == 0).all()  # class 0 has two
    assert (pixels[rows_top + cell + pad :, right : right + cell] == 255).all()  # class 1 only one: white


def test_grid_rejects_bad_input_and_handles_no_images():
    with pytest.raises(WorkbenchError, match=r"2 row labels for 1 rows"):
        image_grid(torch.zeros(3, 1, 4, 4), nrow=4, labels=["a", "b"])
    with pytest.raises(WorkbenchError, match=r"\[n, C, H, W\] with C = 1 or 3, got \(2, 4, 4\)"):
        image_grid(torch.zeros(2, 4, 4))
    with pytest.raises(WorkbenchError, match="nrow >= 1"):
        image_grid(torch.zeros(1, 1, 2, 2), nrow=0)
    empty = image_grid(torch.zeros(0, 3, 8, 8))
    assert empty.width > 0 and empty.height > 0


# ================================================================ histogram


def _bluish(pixel: np.ndarray) -> bool:
    return pixel[2] - pixel[0] > 30  # PALETTE[0], blue, over white


def _orangish(pixel: np.ndarray) -> bool:
    return pixel[0] - pixel[2] > 30  # PALETTE[1], orange, over white


def test_histogram_bars_appear_where_the_data_is():
    rng = np.random.default_rng(0)
    chart = histogram({"ID": rng.uniform(0, 1, 400), "OOD": rng.uniform(9, 10, 400)}, "scores", bins=20)
    assert chart.size == (640, 400)
    pixels = _pixels(chart)
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    left, _, right, bottom = chart.info["plot_box"]
    bin_width = 10 / 20
    just_above_axis = pixels[bottom - 2]
    blue_x = [_px_to_x(chart, c) for c in range(left + 2, right - 1) if _bluish(just_above_axis[c])]
    orange_x = [_px_to_x(chart, c) for c in range(left + 2, right - 1) if _orangish(just_above_axis[c])]
    assert blue_x and orange_x
    assert min(blue_x) >= -bin_width and max(blue_x) <= 1 + bin_width
    assert min(orange_x) >= 9 - bin_width and max(orange_x) <= 10 + bin_width
    # Nothing drawn over the empty stretch between the two clusters.
    middle = [c for c in range(left + 2, right - 1) if 3 <= _px_to_x(chart, c) <= 7]
    assert middle and not any(_bluish(just_above_axis[c]) or _orangish(just_above_axis[c]) for c in middle)


def test_histogram_draws_numbered_ticks_in_the_margins():
    chart = histogram({"a": np.linspace(0, 1, 50)}, "ticks")
    pixels = _pixels(chart)
    left, top, right, bottom = chart.info["plot_box"]
    assert (pixels[top:bottom, 20 : left - 6] < 120).any()  # y tick numbers
    assert (pixels[bottom + 6 : bottom + 22, left:right] < 120).any()  # x tick numbers


def test_histogram_survives_nan_empty_and_constant_series():
    for series in ({"ID": np.array([]), "OOD": np.array([np.nan, np.inf])}, {}, {"c": np.full(10, 0.5)}):
        chart = histogram(series, "edge case")
        assert chart.size == (640, 400)
    # The constant series gets a bar around 0.5.
    chart = histogram({"c": np.full(10, 0.5)}, "constant")
    left, _, right, bottom = chart.info["plot_box"]
    row = _pixels(chart)[bottom - 2]
    blue_x = [_px_to_x(chart, c) for c in range(left + 2, right - 1) if _bluish(row[c])]
    assert blue_x and min(blue_x) >= 0.4 and max(blue_x) <= 0.6
    with pytest.raises(WorkbenchError, match="bins must be >= 1"):
        histogram({"a": [1.0]}, "t", bins=0)


# ================================================================ scatter and line chart


def test_scatter_draws_each_point_at_its_coordinates():
    points = [("none", 0.99, 0.44), ("bido-hsic", 0.97, 0.40), ("mid", 0.95, 0.6)]
    chart = scatter(points, "test accuracy", "attack top-1", "privacy x utility")
    assert chart.size == (640, 400)
    pixels = _pixels(chart)
    for index, (_, x, y) in enumerate(points):
        column, row = _data_to_px(chart, x, y)
        assert tuple(pixels[row, column]) == PALETTE[index]


def test_scatter_skips_nan_points_and_handles_no_points():
    chart = scatter([("ok", 1.0, 2.0), ("broken", math.nan, 0.3)], "x", "y", "t")
    column, row = _data_to_px(chart, 1.0, 2.0)
    assert tuple(_pixels(chart)[row, column]) == PALETTE[0]
    assert scatter([], "x", "y", "empty").size == (640, 400)


def test_line_chart_draws_segments_and_breaks_at_nan():
    chart = line_chart(
        {"loss": [(0, 0.0), (1, 1.0), (2, math.nan), (3, 0.0), (4, 1.0)]}, "epoch", "loss", "curve"
    )
    pixels = _pixels(chart)

    def line_near(x: float, y: float) -> bool:
        """The series colour within one pixel of (x, y): lines are rasterised, not exact."""
        column, row = _data_to_px(chart, x, y)
        patch = pixels[row - 1 : row + 2, column - 1 : column + 2].reshape(-1, 3)
        return any(tuple(p) == PALETTE[0] for p in patch)

    # Midpoints of the segments (0,0)-(1,1) and (3,0)-(4,1) are on the line; between 1 and 3 the
    # NaN at x = 2 breaks it, so no line joins (1, 1) to (3, 0).
    assert line_near(0.5, 0.5) and line_near(3.5, 0.5)
    assert not line_near(2.0, 0.5)
    assert line_chart({}, "x", "y", "empty").size == (640, 400)
    assert line_chart({"all nan": [(0, math.nan)]}, "x", "y", "nan").size == (640, 400)


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # Span 14.4 / 6 ticks = 2.4 -> smallest step of 1, 2, 2.5, 5 x 10^k at least that is 2.5.
    assert nice_ticks(-14.7, -0.3) == pytest.approx([-12.5, -10.0, -7.5, -5.0, -2.5])
    assert nice_ticks(3.0, 3.0) == [3.0]


# ================================================================ saving


def test_save_png_round_trip_is_atomic(tmp_path):
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB")
    target = save_png(image, tmp_path / "nested" / "grid.png")
    assert target == tmp_path / "nested" / "grid.png"
    with Image.open(target) as loaded:
        assert loaded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(loaded.convert("RGB")), np.asarray(image))
    assert sorted(p.name for p in target.parent.iterdir()) == ["grid.png"]  # no temp file left


def test_save_png_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "plot.png"
    save_png(Image.new("RGB", (4, 4), (255, 0, 0)), target)
    before = target.read_bytes()

    class Broken:
        def save(self, stream, format):
            stream.write(b"partial")
            raise OSError("disk full")

    with pytest.raises(StorageError) as caught:  # one line naming the file, the reason kept
        save_png(Broken(), target)
    assert str(caught.value).startswith(f"{target}: cannot write") and "\n" not in str(caught.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_labels_of_nearby_points_do_not_overlap():
    from workbench.reporting.plots import label_boxes

    # Three dots almost on top of each other (variants with nearly equal figures), one far away.
    anchors = [(100.0, 200.0, False), (100.0, 203.0, False), (101.0, 198.0, False), (400.0, 50.0, True)]
    sizes = [(60, 12), (80, 12), (70, 12), (40, 12)]
    boxes = label_boxes(anchors, sizes)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    # A label with room keeps its place: right of its dot (or left, when flagged), just above it.
    assert boxes[0] == (109.0, 186.0, 169.0, 198.0)
    assert boxes[3] == (400.0 - 9 - 40, 36.0, 391.0, 48.0)
    # A crowded one moves by whole lines only.
    assert (boxes[1][1] - (203.0 - 2 - 12)) % 14 == 0

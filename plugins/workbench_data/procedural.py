"""Procedural OOD sets: deterministic by seed, no files, families a digit classifier never saw.

Intended pairing (BiDO+ needs auxiliary OOD data disjoint from the OOD test sets):

- auxiliary (BiDO+ training): `letters` with `role = "auxiliary"` (glyphs A-M) and `shapes`
  with `role = "auxiliary"`;
- test (evaluation): `letters` (glyphs N-Z), `noise`, and for digits `digits-public`.

Every image stream is seeded from the run seed *and* the component's own params (including
`role`), so two sets that differ in any param, or only in role, never share an image.
"""

from __future__ import annotations

import abc
import math
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, field_validator
from torch import Tensor
from torch.utils.data import TensorDataset

from workbench.api import StrictModel, seeds

from .base import OODComponent
from .common import OOD_LABEL, OODRole, check_in_channels, convert_channels, resize_batch

PROCEDURAL_SOURCE = "generated on the fly by workbench (deterministic by seed); no files"
CHUNK = 256
"""Images rendered per chunk, so a large `size` at a large `image_size` stays small in memory."""


class ProceduralParams(StrictModel):
    size: int = Field(1000, ge=1, le=1_000_000)
    """Number of images to generate."""
    role: OODRole = "test"
    """`auxiliary` (BiDO+ training data) or `test` (evaluation); enters the seed, so the two never coincide."""


class ProceduralOOD(OODComponent, abc.ABC):
    embedded: ClassVar[bool] = True
    source: ClassVar[str] = PROCEDURAL_SOURCE
    params: ProceduralParams
    params_model: ClassVar[type[StrictModel]] = ProceduralParams

    def stream_seed(self, seed: int) -> int:
        """The run seed mixed with this set's name and params: different params, different images."""
        return seeds.derive(seed, "ood-set", self.name, self.params.model_dump(mode="json"))

    def load(self, image_size: int, in_channels: int, seed: int) -> TensorDataset:
        check_in_channels(in_channels, self.name)
        rng = np.random.default_rng(self.stream_seed(seed))
        chunks = []
        for start in range(0, self.params.size, CHUNK):
            count = min(CHUNK, self.params.size - start)
            chunks.append(self.generate(count, image_size, in_channels, rng).clamp_(0.0, 1.0))
        images = torch.cat(chunks)
        return TensorDataset(images, torch.full((len(images),), OOD_LABEL, dtype=torch.long))

    @abc.abstractmethod
    def generate(self, count: int, image_size: int, in_channels: int, rng: np.random.Generator) -> Tensor:
        """`[count, in_channels, image_size, image_size]` floats; draws only from `rng`."""


# ---------------------------------------------------------------- letters

AUXILIARY_GLYPHS = "ABCDEFGHJKLM"
TEST_GLYPHS = "NPQRSTUVWXYZ"


class LettersParams(ProceduralParams):
    glyphs: str | None = None
    """Characters to draw; empty = A-M (minus I) for role auxiliary, N-Z (minus O) for test. No digits."""
    max_rotation: float = Field(25.0, ge=0.0, le=180.0)
    """Largest random rotation in degrees (either way)."""
    scale_range: tuple[float, float] = (0.75, 1.1)
    """Random scale of the glyph relative to the canvas, low and high."""
    max_shift: float = Field(0.12, ge=0.0, le=0.5)
    """Largest random shift as a fraction of the image side, per axis."""
    max_stroke: int = Field(2, ge=0, le=6)
    """Largest extra stroke width (pixels on a 64-pixel canvas), so letters vary from thin to bold."""

    @field_validator("glyphs")
    @classmethod
    def _glyphs_are_letters(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("glyphs is empty; expected characters such as 'ABCDEFGHJKLM'")
        digits = [c for c in value if c.isdigit()]
        if digits:
            raise ValueError(
                f"glyphs contains the digit {digits[0]!r}; digits are in-distribution for digit data"
            )
        if any(c.isspace() for c in value):
            raise ValueError("glyphs contains whitespace; expected visible characters only")
        return value

    @field_validator("scale_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.1 <= low <= high <= 3.0:
            raise ValueError(f"scale_range {list(value)} must satisfy 0.1 <= low <= high <= 3")
        return value


CANVAS = 64
"""Letters are rendered on a 64-pixel canvas (larger for large outputs), then warped and resized."""


@lru_cache(maxsize=8)
def default_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font (Pillow >= 10.1 ships a scalable one), loaded once per size."""
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=256)
def rendered_glyph(glyph: str, stroke: int, canvas: int) -> Tensor:
    """One glyph, white on black, centred on a `canvas` square: `[canvas, canvas]` floats."""
    font = default_font(canvas)  # cap height ~0.7 of the canvas, about as tall as a digit in its box
    image = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), glyph, font=font, stroke_width=stroke)
    origin = ((canvas - (right - left)) / 2 - left, (canvas - (bottom - top)) / 2 - top)
    draw.text(origin, glyph, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def affine_warp(images: Tensor, angles: Tensor, scales: Tensor, shifts: Tensor, out_size: int) -> Tensor:
    """Rotate, scale and shift `[N, C, H, W]` about the centre (shifts in [-1, 1] image units).

    Samples straight onto an `out_size` grid: warping at full canvas size costs ~10x more.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    # affine_grid maps output coordinates to input ones, so build the inverse transform.
    theta = torch.zeros(len(images), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / scales, sin / scales
    theta[:, 1, 0], theta[:, 1, 1] = -sin / scales, cos / scales
    theta[:, :, 2] = -torch.einsum("nij,nj->ni", theta[:, :, :2], shifts)
    grid = F.affine_grid(theta, [len(images), images.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Letters(ProceduralOOD):
    """Rendered letters (Pillow's built-in font) with random rotation, scale, shift and stroke width."""

    name: ClassVar[str] = "letters"
    summary: ClassVar[str] = (
        "procedural OOD: rendered letters with affine jitter; glyph sets split aux/test (embedded)"
    )
    notes: ClassVar[str] = (
        "Bright glyphs on a dark ground, like digits. Pair role='auxiliary' (A-M) for BiDO+ training with the "
        "default role='test' (N-Z) for evaluation: disjoint glyphs and disjoint seeds."
    )
    params: LettersParams
    params_model: ClassVar[type[StrictModel]] = LettersParams

    @property
    def glyphs(self) -> str:
        if self.params.glyphs is not None:
            return self.params.glyphs
        return AUXILIARY_GLYPHS if self.params.role == "auxiliary" else TEST_GLYPHS

    def generate(self, count: int, image_size: int, in_channels: int, rng: np.random.Generator) -> Tensor:
        p = self.params
        canvas = max(CANVAS, image_size)
        glyphs = self.glyphs
        which = rng.integers(0, len(glyphs), size=count)
        strokes = rng.integers(0, p.max_stroke + 1, size=count)
        base = torch.stack(
            [rendered_glyph(glyphs[g], int(s), canvas) for g, s in zip(which, strokes, strict=True)]
        )
        angles = torch.from_numpy(rng.uniform(-1, 1, size=count) * math.radians(p.max_rotation)).float()
        scales = torch.from_numpy(rng.uniform(*p.scale_range, size=count)).float()
        shifts = torch.from_numpy(rng.uniform(-1, 1, size=(count, 2)) * 2 * p.max_shift).float()
        ink = torch.from_numpy(rng.uniform(0.7, 1.0, size=(count, 1, 1, 1))).float()
        # Warp at twice the output size, then an antialiased resize smooths the edges.
        warped = affine_warp(base[:, None], angles, scales, shifts, min(canvas, 2 * image_size)) * ink
        return convert_channels(resize_batch(warped, image_size), in_channels)


# ---------------------------------------------------------------- noise


class NoiseParams(ProceduralParams):
    distribution: Literal["gaussian", "uniform"] = "gaussian"
    """Per-pixel distribution: gaussian N(0.5, std^2) clipped to [0, 1], or uniform on [0, 1]."""
    std: float = Field(0.5, gt=0.0, le=5.0)
    """Standard deviation of the gaussian (before clipping); ignored for uniform."""
    blur: float = Field(0.0, ge=0.0, le=32.0)
    """Gaussian blur sigma in output pixels: 0 = white noise, larger = smoother blobs (then stretched to [0, 1])."""


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable gaussian blur with reflected borders (so edges are not darkened)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    # Reflection needs the pad to be smaller than the image; tiny images replicate the border instead.
    mode = "reflect" if radius < min(images.shape[-2:]) else "replicate"
    padded = F.pad(images, (radius, radius, radius, radius), mode=mode)
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)


class Noise(ProceduralOOD):
    """Gaussian or uniform pixel noise, optionally blurred into smooth blobs."""

    name: ClassVar[str] = "noise"
    summary: ClassVar[str] = "procedural OOD: gaussian/uniform noise, optionally blurred (embedded)"
    notes: ClassVar[str] = "Intended as an OOD *test* set (far-OOD). Colour noise for RGB data."
    params: NoiseParams
    params_model: ClassVar[type[StrictModel]] = NoiseParams

    def generate(self, count: int, image_size: int, in_channels: int, rng: np.random.Generator) -> Tensor:
        p = self.params
        shape = (count, in_channels, image_size, image_size)
        if p.distribution == "gaussian":
            values = rng.normal(0.5, p.std, size=shape)
        else:
            values = rng.uniform(0.0, 1.0, size=shape)
        images = torch.from_numpy(values.astype(np.float32))
        if p.blur > 0:
            images = gaussian_blur(images, p.blur)
            # Blurring averages the noise towards grey; stretch each image back to the full range.
            low = images.amin(dim=(1, 2, 3), keepdim=True)
            high = images.amax(dim=(1, 2, 3), keepdim=True)
            images = (images - low) / (high - low).clamp_min(1e-6)
        return images


# ---------------------------------------------------------------- shapes


class ShapesParams(ProceduralParams):
    max_shapes: int = Field(3, ge=1, le=12)
    """Each image gets 1..max_shapes random shapes."""
    kinds: list[Literal["ellipse", "rectangle", "line", "triangle"]] = [
        "ellipse",
        "rectangle",
        "line",
        "triangle",
    ]
    """Which shape kinds to draw."""


class Shapes(ProceduralOOD):
    """Random ellipses, rectangles, lines and triangles, filled or outlined, on a dark ground."""

    name: ClassVar[str] = "shapes"
    summary: ClassVar[str] = "procedural OOD: random ellipses, rectangles, lines, triangles (embedded)"
    notes: ClassVar[str] = (
        "Intended as BiDO+ *auxiliary* data (role='auxiliary') next to letters A-M; geometric strokes "
        "without any digit's topology. Random colours for RGB data."
    )
    params: ShapesParams
    params_model: ClassVar[type[StrictModel]] = ShapesParams

    def generate(self, count: int, image_size: int, in_channels: int, rng: np.random.Generator) -> Tensor:
        # Draw at twice the size and downsample, which antialiases the edges.
        side = 2 * image_size
        mode = "L" if in_channels == 1 else "RGB"
        images = []
        for _ in range(count):
            background = self._colour(rng, mode, 0, 60)
            image = Image.new(mode, (side, side), background)
            draw = ImageDraw.Draw(image)
            for _ in range(int(rng.integers(1, self.params.max_shapes + 1))):
                self._draw_one(draw, rng, side, mode)
            array = np.asarray(image, dtype=np.float32) / 255.0
            images.append(torch.from_numpy(array[None] if mode == "L" else array.transpose(2, 0, 1).copy()))
        return resize_batch(torch.stack(images), image_size)

    @staticmethod
    def _colour(rng: np.random.Generator, mode: str, low: int, high: int) -> int | tuple[int, int, int]:
        if mode == "L":
            return int(rng.integers(low, high + 1))
        return tuple(int(v) for v in rng.integers(low, high + 1, size=3))

    def _draw_one(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int, mode: str) -> None:
        kind = self.params.kinds[int(rng.integers(0, len(self.params.kinds)))]
        colour = self._colour(rng, mode, 120, 255)
        width = int(rng.integers(max(1, side // 32), max(2, side // 8) + 1))
        filled = bool(rng.integers(0, 2))
        x0, y0 = rng.uniform(0, side * 0.7, size=2)
        extent = rng.uniform(side * 0.2, side * 0.7, size=2)
        box = [
            float(x0),
            float(y0),
            float(min(side - 1, x0 + extent[0])),
            float(min(side - 1, y0 + extent[1])),
        ]
        if kind == "ellipse":
            draw.ellipse(box, fill=colour if filled else None, outline=colour, width=width)
        elif kind == "rectangle":
            draw.rectangle(box, fill=colour if filled else None, outline=colour, width=width)
        elif kind == "line":
            points = [tuple(float(v) for v in rng.uniform(0, side, size=2)) for _ in range(2)]
            draw.line(points, fill=colour, width=width)
        else:
            points = [tuple(float(v) for v in rng.uniform(0, side, size=2)) for _ in range(3)]
            draw.polygon(points, fill=colour if filled else None, outline=colour, width=width)

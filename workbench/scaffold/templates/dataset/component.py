"""Oriented bars, generated from the seed.

A workbench dataset component, registered as `__NAME__` (package __DIST__).

Class k is a bright bar through the centre at angle k * 180 / (2N) degrees (a little jitter and
noise on each image). Angles 0..N-1 are private, N..2N-1 the attacker's public data. No files.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import TensorDataset
from workbench.api import DataSplits, StrictModel, hookimpl


class ExampleParams(StrictModel):
    image_size: int = Field(16, ge=8, le=128)
    """Side length of the square, single-channel images."""
    private_classes: int = Field(4, ge=2, le=16)
    """Angles 0..N-1 are private (the target learns them); N..2N-1 are public."""
    per_class: int = Field(100, ge=5)
    """Images per class; a fifth of each private class is the test split."""


def bars(angles: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Bars through the (jittered) centre at `angles` in radians: `[n, 1, size, size]` in [0, 1]."""
    n = len(angles)
    angles = angles + 0.05 * torch.randn(n, generator=generator)
    centre = 0.1 * torch.randn(n, 2, 1, 1, generator=generator)
    grid = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    distance = ((y - centre[:, 1]) * angles.cos()[:, None, None]
                - (x - centre[:, 0]) * angles.sin()[:, None, None]).abs()
    images = torch.exp(-((distance / 0.15) ** 2)) + 0.05 * torch.randn(n, size, size, generator=generator)
    return images.clamp(0, 1)[:, None]


class ExampleDataset:
    """Oriented bars: private angles and public angles, deterministic by seed."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def load(self, seed: int) -> DataSplits:
        p = self.params
        generator = torch.Generator().manual_seed(seed)
        classes = 2 * p.private_classes
        labels = torch.arange(classes).repeat_interleave(p.per_class)
        images = bars(labels * math.pi / classes, p.image_size, generator)
        private = labels < p.private_classes
        test = private & (torch.arange(len(labels)) % p.per_class < p.per_class // 5)

        def split(mask: Tensor) -> TensorDataset:
            return TensorDataset(images[mask], labels[mask])

        return DataSplits(
            train=split(private & ~test),
            test=split(test),
            public=split(~private),  # labels N..2N-1: never a private class
            num_classes=p.private_classes,
            in_channels=1,
            image_size=p.image_size,
            class_names=[f"{180 * k / classes:g} deg" for k in range(p.private_classes)],
        )


@hookimpl
def register_datasets(register):
    register("__NAME__", ExampleDataset, params=ExampleParams,
             summary="Example dataset: oriented bars.")

"""Rings, generated from the seed.

A workbench ood_dataset component, registered as `__NAME__` (package __DIST__).

Rings of random centre, radius and thickness: shapes a digit classifier never saw, shaped like
the in-distribution images. Use as an OOD test set (`[ood.test_sets]`) or as BiDO+'s auxiliary
data (`[variants.ood_training] dataset`), but not as both in one recipe.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch.utils.data import TensorDataset
from workbench.api import StrictModel, hookimpl

OOD_LABEL = -1
"""The label every OOD image carries (workbench never trains on it)."""


class ExampleParams(StrictModel):
    size: int = Field(500, ge=1)
    """Number of images."""


class ExampleOODDataset:
    """Rings on a dark background."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def load(self, image_size: int, in_channels: int, seed: int) -> TensorDataset:
        n = self.params.size
        generator = torch.Generator().manual_seed(seed)
        centre = 0.3 * (torch.rand(n, 2, 1, 1, generator=generator) - 0.5)
        radius = 0.3 + 0.4 * torch.rand(n, 1, 1, generator=generator)
        width = 0.05 + 0.1 * torch.rand(n, 1, 1, generator=generator)
        grid = torch.linspace(-1, 1, image_size)
        y, x = torch.meshgrid(grid, grid, indexing="ij")
        distance = ((x - centre[:, 0]) ** 2 + (y - centre[:, 1]) ** 2).sqrt()
        images = torch.exp(-(((distance - radius) / width) ** 2)).clamp(0, 1)
        images = images[:, None].expand(n, in_channels, image_size, image_size).contiguous()
        return TensorDataset(images, torch.full((n,), OOD_LABEL))


@hookimpl
def register_ood_datasets(register):
    register("__NAME__", ExampleOODDataset, params=ExampleParams,
             summary="Example OOD set: rings.")

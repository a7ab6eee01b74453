"""Linear CKA between two batches.

A workbench dependency component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor
from workbench.api import StrictModel, hookimpl


class ExampleParams(StrictModel):
    scale: float = Field(1.0, gt=0)
    """Multiplies the measure (a stand-in for your own params)."""


class ExampleMeasure:
    """Linear CKA: ||A^T B||_F^2 / (||A^T A||_F ||B^T B||_F) of the centred samples, in [0, 1]."""

    kernel_a = "linear"
    kernel_b = "linear"

    def __init__(self, params: ExampleParams):
        self.params = params

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        a = a.flatten(1).float() - a.flatten(1).float().mean(0)
        b = b.flatten(1).float() - b.flatten(1).float().mean(0)
        cross = (a.T @ b).pow(2).sum()
        norm = (a.T @ a).pow(2).sum().sqrt() * (b.T @ b).pow(2).sum().sqrt()
        return self.params.scale * cross / norm.clamp_min(1e-12)


@hookimpl
def register_dependency_measures(register):
    register("__NAME__", ExampleMeasure, params=ExampleParams,
             summary="Example dependency measure.")

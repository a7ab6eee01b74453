"""The margin between the two top logits.

A workbench ood_score component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from workbench.api import NoParams, hookimpl


class ExampleScore:
    """Top-1 logit minus top-2 logit: large when the model is sure of one class (higher = more ID)."""

    def __init__(self, params: NoParams):
        self.params = params

    @torch.no_grad()
    def __call__(self, model: nn.Module, x: Tensor) -> Tensor:
        top = model(x).float().topk(2, dim=1).values
        return top[:, 0] - top[:, 1]


@hookimpl
def register_ood_scores(register):
    register("__NAME__", ExampleScore,
             summary="Example OOD score: top-1 minus top-2 logit.")

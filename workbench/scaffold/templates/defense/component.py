"""Cross-entropy with label smoothing.

A workbench defense component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from workbench.api import Defense, LossOutput, StrictModel, hookimpl


class ExampleParams(StrictModel):
    smoothing: float = Field(0.1, ge=0, lt=1)
    """Label smoothing of the cross-entropy (a stand-in for your own params)."""


class ExampleDefense(Defense):
    """Cross-entropy with label smoothing, through the shared trainer."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.params.smoothing)
        return LossOutput(loss, {"ce": float(loss.detach())})


@hookimpl
def register_defenses(register):
    register("__NAME__", ExampleDefense, params=ExampleParams,
             summary="Example defense.")

"""Flatten the prediction on OOD images.

A workbench ood_loss component, registered as `__NAME__` (package __DIST__).

Added to the defense's loss once auxiliary OOD data joins (BiDO+'s second phase): the mean top
softmax probability on the OOD batch, times `weight`; it is smallest (weight / K) when the model
is equally unsure of all K classes there. A loss that needs statistics of the warmed-up model
would also offer `prepare(model, id_data, ood_data, device) -> dict` and `restore(state)`.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor
from workbench.api import StrictModel, hookimpl


class ExampleParams(StrictModel):
    weight: float = Field(0.5, ge=0)
    """Weight of the term against the defense's loss."""


class ExampleOODLoss:
    """weight * mean over the OOD batch of max softmax(ood_logits)."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def __call__(self, id_logits: Tensor, ood_logits: Tensor) -> Tensor:
        return self.params.weight * ood_logits.softmax(dim=1).amax(dim=1).mean()


@hookimpl
def register_ood_losses(register):
    register("__NAME__", ExampleOODLoss, params=ExampleParams,
             summary="Example OOD loss: mean OOD max-softmax.")

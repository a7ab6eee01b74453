"""A one-hidden-layer MLP classifier.

A workbench backbone component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn
from workbench.api import StrictModel, hookimpl


class ExampleParams(StrictModel):
    hidden: int = Field(64, ge=1)
    """Width of the hidden layer."""


class ExampleNetwork(nn.Module):
    """What `build` returns: logits, and the hidden representations BiDO constrains, in one pass."""

    def __init__(self, num_classes: int, in_features: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        self.feature_dim = hidden
        self.hidden_names = ["feature"]

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feature = self.body(x)
        return self.head(feature), [feature]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]


class ExampleBackbone:
    """A one-hidden-layer MLP."""

    def __init__(self, params: ExampleParams):
        self.params = params

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return ExampleNetwork(num_classes, in_channels * image_size * image_size, self.params.hidden)


@hookimpl
def register_backbones(register):
    register("__NAME__", ExampleBackbone, params=ExampleParams,
             summary="Example backbone (an MLP).")

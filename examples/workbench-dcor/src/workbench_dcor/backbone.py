"""LeNet-5 (LeCun et al. 1998) with the hidden outputs BiDO regularises."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from workbench.api import StrictModel


class LeNet5Params(StrictModel):
    width: int = Field(6, ge=1)
    """Channels of the first convolution (the second has 16/6 times as many)."""


class LeNet5Network(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int):
        super().__init__()
        second = max(1, round(width * 16 / 6))
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(width, second, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        side = image_size // 4
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(second * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU()
        )
        self.head = nn.Linear(84, num_classes)
        self.feature_dim = 84
        self.hidden_names = ["block1", "block2", "feature"]

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z1 = self.block1(x)
        z2 = self.block2(z1)
        feature = self.features(z2)
        return self.head(feature), [z1, z2, feature]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]


class LeNet5:
    """LeNet-5 for small grey or colour images (side divisible by 4)."""

    def __init__(self, params: LeNet5Params):
        self.params = params

    def build(self, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        from workbench.api import WorkbenchError

        if image_size % 4 or image_size < 8:
            raise WorkbenchError(f"lenet5: image_size {image_size} must be a multiple of 4, at least 8")
        return LeNet5Network(num_classes, in_channels, image_size, self.params.width)

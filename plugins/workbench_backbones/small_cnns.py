"""The BiDO authors' MNIST networks: MCNN (the defended target) and SCNN (the evaluation model).

Shapes follow `AlanPeng0897/Defend_MI` `BiDO/model.py`: conv → BatchNorm → LeakyReLU(0.2)
→ max-pool blocks with 7×7 then 5×5 kernels. The authors run them on 32×32 inputs, where the
unpadded ("valid") convolutions shrink the last block to 1×1. To serve other image sizes:
- `padding = "auto"` keeps the authors' valid convolutions whenever they leave at least 1×1,
  and otherwise (28, 16, 8 pixels) pads them to keep the size ("same");
- the penultimate feature is the global average of the last block, which at 32×32 is exactly the
  authors' flattened 1×1 map, and elsewhere keeps `feature_dim` independent of the image size.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from workbench.api import StrictModel, Width, WorkbenchError

from ._common import HiddenClassifier, check_build_args

Padding = Literal["auto", "valid", "same"]


class MCNNParams(StrictModel):
    """MCNN: three conv blocks, the BiDO authors' MNIST target."""

    width: Width = 64
    """Channels of the first block; the next blocks have 2× and 4× (authors: 64 → 64/128/256)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the penultimate feature before the linear head (authors: none)."""
    padding: Padding = "auto"
    """`valid`: the authors' unpadded convolutions (needs images of at least 32 px); `same`: padded,
    works from 4 px; `auto`: valid where it fits, else same."""


class SCNNParams(StrictModel):
    """SCNN: five conv layers, the BiDO authors' MNIST evaluation classifier."""

    width: Width = 32
    """Channels of the first conv; later convs have 2×, 4×, 8×, 16× (authors: 32 → feature 512)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the penultimate feature before the linear head (authors: none)."""
    padding: Padding = "auto"
    """`valid`: the authors' unpadded convolutions (needs images of at least 32 px); `same`: padded,
    works from 4 px; `auto`: valid where it fits, else same."""


def _block_sizes(image_size: int, padding: Literal["valid", "same"]) -> tuple[int, int, int] | None:
    """Side lengths after block 1, block 2 and block 3, or None where a block would vanish."""
    if padding == "valid":  # 7×7 conv with padding 1 loses 4 px, 5×5 unpadded convs lose 4 px
        conv1 = image_size - 4
        pooled1 = conv1 // 2
        conv2 = pooled1 - 4
        pooled2 = conv2 // 2
        conv3 = pooled2 - 4
    else:
        conv1 = image_size
        pooled1 = conv1 // 2
        conv2 = pooled1
        pooled2 = conv2 // 2
        conv3 = pooled2
    sizes = (conv1, pooled1, conv2, pooled2, conv3)
    return (pooled1, pooled2, conv3) if min(sizes) >= 1 else None


def _resolve_padding(owner: str, padding: Padding, image_size: int) -> Literal["valid", "same"]:
    if padding == "auto":
        if _block_sizes(image_size, "valid"):
            return "valid"
        padding = "same"
    if _block_sizes(image_size, padding) is None:
        if padding == "valid":
            hint = '; use padding = "auto" or "same" for small images'
            smallest = 32
        else:
            hint = "; two 2x poolings need at least 4 px"
            smallest = 4
        raise WorkbenchError(
            f"{owner}: padding {padding!r} needs images of at least {smallest} px (got image_size={image_size}){hint}"
        )
    return padding


def _conv_block(in_channels: int, out_channels: int, kernel: int, padding: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=1, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.2),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def _front_blocks(in_channels: int, width: int, padding: Literal["valid", "same"]) -> nn.ModuleList:
    """The three blocks MCNN and SCNN share: 7×7 conv + pool, 5×5 conv + pool, 5×5 conv."""
    same = padding == "same"
    return nn.ModuleList(
        [
            _conv_block(in_channels, width, 7, 3 if same else 1, pool=True),
            _conv_block(width, 2 * width, 5, 2 if same else 0, pool=True),
            _conv_block(2 * width, 4 * width, 5, 2 if same else 0, pool=False),
        ]
    )


class MCNN(HiddenClassifier):
    """Hiddens: block1, block2 (pooled conv maps) and the feature (block 3, globally averaged).

    As in the authors' model, block 3 is the penultimate feature, so there are three hiddens.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        width: int,
        dropout: float,
        padding: Literal["valid", "same"],
    ):
        super().__init__()
        self.blocks = _front_blocks(in_channels, width, padding)
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = 4 * width
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.hidden_names = ["block1", "block2", "feature"]

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        block1 = self.blocks[0](x)
        block2 = self.blocks[1](block1)
        feature = self.blocks[2](block2).mean(dim=(2, 3))
        logits = self.head(self.dropout(feature))
        return logits, [block1, block2, feature]


class SCNN(HiddenClassifier):
    """Hiddens: block1, block2, block3 (conv maps) and the feature (two 3×3 convs, averaged)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        width: int,
        dropout: float,
        padding: Literal["valid", "same"],
    ):
        super().__init__()
        self.blocks = _front_blocks(in_channels, width, padding)
        self.tail = nn.Sequential(
            _conv_block(4 * width, 8 * width, 3, 1, pool=False),
            _conv_block(8 * width, 16 * width, 3, 1, pool=False),
        )
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = 16 * width
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.hidden_names = ["block1", "block2", "block3", "feature"]

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        block1 = self.blocks[0](x)
        block2 = self.blocks[1](block1)
        block3 = self.blocks[2](block2)
        feature = self.tail(block3).mean(dim=(2, 3))
        logits = self.head(self.dropout(feature))
        return logits, [block1, block2, block3, feature]


class MCNNBackbone:
    """Builds MCNN for a dataset's classes, channels and image size."""

    def __init__(self, params: MCNNParams):
        self.params = params

    def build(self, num_classes: int, in_channels: int, image_size: int) -> MCNN:
        owner = "backbone 'mcnn'"
        check_build_args(owner, num_classes, in_channels, image_size)
        padding = _resolve_padding(owner, self.params.padding, image_size)
        return MCNN(num_classes, in_channels, self.params.width, self.params.dropout, padding)


class SCNNBackbone:
    """Builds SCNN for a dataset's classes, channels and image size."""

    def __init__(self, params: SCNNParams):
        self.params = params

    def build(self, num_classes: int, in_channels: int, image_size: int) -> SCNN:
        owner = "backbone 'scnn'"
        check_build_args(owner, num_classes, in_channels, image_size)
        padding = _resolve_padding(owner, self.params.padding, image_size)
        return SCNN(num_classes, in_channels, self.params.width, self.params.dropout, padding)

"""FaceNet, the face classifier BiDO, KED-MI and LOMMA judge CelebA reconstructions with.

The evaluation model of the MI papers' CelebA protocol is an IR-50 ("improved residual" ResNet of
face.evoLVe / InsightFace) trained on the 1000 private identities at 112×112 px (file
`FaceNet_95.88.tar`). Its layout, as `AlanPeng0897/Defend_MI` `BiDO/model.py` (`FaceNet`) and the
authors' `evolve.py` (`IR_50_112`, `Backbone112`, `bottleneck_IR`) build it:

- input layer: 3×3 conv (64, stride 1, no bias) → BatchNorm → PReLU;
- four stages of IR units (50 layers: 3, 4, 14, 3 units; 152: 3, 8, 36, 3) with 64, 128, 256,
  512 channels; the first unit of each stage halves the resolution. A unit is
  BN → 3×3 conv (stride 1) → PReLU → 3×3 conv (the stage's stride) → BN, plus a shortcut that is a
  strided 1×1 conv + BN when the width changes and a stride-only subsampling otherwise;
- output layer: BatchNorm2d → Dropout(0.5) → flatten → Linear(512·s·s → 512) → BatchNorm1d, where
  s = image_size / 16 (7 at 112 px): the 512-d face feature that KNN distance and BiDO's FID use;
- head: Linear(512 → classes), PyTorch's default initialisation (the trunk uses Xavier).

Module names follow the reference (`feature.input_layer`, `feature.body.N.res_layer`,
`feature.output_layer`, `fc_layer`), so the authors' checkpoint, converted to safetensors with
its `module.` prefix dropped, loads as it is (docs/attacks.md, "E from a file").
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from workbench.api import StrictModel, WorkbenchError

from ._common import HiddenClassifier, check_build_args

OWNER = "backbone 'facenet'"
# Four stride-2 stages: the side shrinks 16-fold.
_DOWNSAMPLING = 16
_STAGE_WIDTHS = (64, 128, 256, 512)
_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
FEATURE_DIM = 512


class FaceNetParams(StrictModel):
    """FaceNet: the IR ResNet face classifier of BiDO's CelebA evaluation (IR-50 at 112 px)."""

    depth: Literal[50, 100, 152] = 50
    """IR depth: 50 is the papers' evaluation model `FaceNet` (`IR_50_112`); 152 the IR-152 used as a
    CelebA target in KED-MI/LOMMA (units per stage: 50 → 3, 4, 14, 3; 100 → 3, 13, 30, 3;
    152 → 3, 8, 36, 3; `evolve.py` `get_blocks`)."""
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    """Dropout in the output layer before the 512-d linear (reference `Dropout()`, p = 0.5); only
    active while training."""


class IRUnit(nn.Module):
    """One IR unit: pre-activation-style residual branch plus a (projected or subsampled) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        if in_channels == channels:
            # A 1×1 max-pool with a stride only subsamples: the reference's identity shortcut.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRTrunk(nn.Module):
    """Input layer, the IR stages and the 512-d output layer (the reference's `Backbone112`)."""

    def __init__(self, depth: int, in_channels: int, image_size: int, dropout: float):
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        units: list[nn.Module] = []
        self.stage_ends: list[int] = []
        previous = 64
        for width, count in zip(_STAGE_WIDTHS, _UNITS[depth], strict=True):
            for i in range(count):
                units.append(IRUnit(previous, width, 2 if i == 0 else 1))
                previous = width
            self.stage_ends.append(len(units))
        self.body = nn.Sequential(*units)
        side = image_size // _DOWNSAMPLING
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(previous),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(previous * side * side, FEATURE_DIM),
            nn.BatchNorm1d(FEATURE_DIM),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's `_initialize_weights`: Xavier-uniform convs and linears, BN at (1, 0)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(512-d feature, [stage 1 … stage 4 outputs])."""
        x = self.input_layer(x)
        stages, start = [], 0
        for stop in self.stage_ends:
            x = self.body[start:stop](x)
            stages.append(x)
            start = stop
        return self.output_layer(x), stages


class FaceNet(HiddenClassifier):
    """Hiddens: stage1–stage4 (IR stage outputs) and the 512-d feature (after the output layer)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, depth: int, dropout: float):
        super().__init__()
        self.feature = IRTrunk(depth, in_channels, image_size, dropout)
        self.fc_layer = nn.Linear(FEATURE_DIM, num_classes)
        self.feature_dim = FEATURE_DIM
        self.hidden_names = ["stage1", "stage2", "stage3", "stage4", "feature"]

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feature, stages = self.feature.forward_stages(x)
        return self.fc_layer(feature), [*stages, feature]


class FaceNetBackbone:
    """Builds FaceNet for `image_size` (a multiple of 16; 112 for the papers' evaluation model)."""

    def __init__(self, params: FaceNetParams):
        self.params = params

    def build(self, num_classes: int, in_channels: int, image_size: int) -> FaceNet:
        check_build_args(OWNER, num_classes, in_channels, image_size)
        if image_size % _DOWNSAMPLING:
            raise WorkbenchError(
                f"{OWNER}: image_size must be a multiple of {_DOWNSAMPLING} (four 2x stages; got {image_size}); "
                "the papers' evaluation model runs at 112 px: set the evaluation table's input_size = 112"
            )
        return FaceNet(num_classes, in_channels, image_size, self.params.depth, self.params.dropout)

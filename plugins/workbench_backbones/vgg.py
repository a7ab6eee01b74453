"""VGG16-BN, the BiDO authors' CelebA target (64×64 faces).

The conv stack is torchvision's `vgg16_bn().features` layout (built without weights, so the
state-dict keys match torchvision checkpoints), followed as in `AlanPeng0897/Defend_MI`
`BiDO/model.py` by BatchNorm1d on the flattened 512×2×2 map and one linear layer, with no fully
connected 4096 layers. The authors' BiDO loss uses five hiddens: the pooled outputs of conv
blocks 1–4 and the BatchNorm'd flattened block 5 (block 5 itself is not a separate hidden, it
would repeat the feature). We return the same five.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from workbench.api import StrictModel, WorkbenchError

from ._common import (
    HiddenClassifier,
    check_build_args,
    load_checked,
    read_state_dict,
    require_file,
)

OWNER = "backbone 'vgg16-bn'"
# Five max-pools halve the image five times.
_DOWNSAMPLING = 32


class VGG16BNParams(StrictModel):
    """VGG16 with BatchNorm: the BiDO authors' CelebA target."""

    pretrained_file: Path | None = None
    """Local torchvision/safetensors state dict for the conv stack (`features.*` keys, e.g. the file
    behind torchvision's `VGG16_BN_Weights`); the head is always fresh. Never downloaded."""
    feature_bn_shift: bool = False
    """Learn the bias of the BatchNorm1d on the penultimate feature (the authors freeze it at 0)."""


def _vgg16_bn_features(in_channels: int) -> nn.Sequential:
    """torchvision's VGG16-BN conv stack (config "D"), first conv adapted to `in_channels`."""
    from torchvision.models.vgg import cfgs, make_layers  # lazy: keeps `workbench plugins list` fast

    features = make_layers(cfgs["D"], batch_norm=True)
    if in_channels != 3:
        first = features[0]
        features[0] = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, padding=first.padding)
    return features


class VGG16BN(HiddenClassifier):
    """Hiddens: block1–block4 (pooled conv maps) and the feature (BN of flattened block 5)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, feature_bn_shift: bool):
        super().__init__()
        self.features = _vgg16_bn_features(in_channels)
        self._pool_indices = [i for i, layer in enumerate(self.features) if isinstance(layer, nn.MaxPool2d)]
        side = image_size // _DOWNSAMPLING
        last_channels = [layer for layer in self.features if isinstance(layer, nn.Conv2d)][-1].out_channels
        self.feature_dim = last_channels * side * side
        self.feature_bn = nn.BatchNorm1d(self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.hidden_names = ["block1", "block2", "block3", "block4", "feature"]
        self._init_weights()
        if not feature_bn_shift:
            self.feature_bn.bias.requires_grad_(False)  # the authors' "no shift": bias stays 0

    def _init_weights(self) -> None:
        """torchvision's VGG initialisation (make_layers alone leaves PyTorch's defaults)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        hiddens: list[Tensor] = []
        start = 0
        for stop in self._pool_indices:
            x = self.features[start : stop + 1](x)
            hiddens.append(x)
            start = stop + 1
        feature = self.feature_bn(torch.flatten(hiddens.pop(), 1))  # block 5 lives on as the feature
        hiddens.append(feature)
        return self.head(feature), hiddens


class VGG16BNBackbone:
    """Builds VGG16-BN; loads the conv stack from `pretrained_file` when given."""

    def __init__(self, params: VGG16BNParams):
        require_file(OWNER, params.pretrained_file)
        self.params = params

    def build(self, num_classes: int, in_channels: int, image_size: int) -> VGG16BN:
        check_build_args(OWNER, num_classes, in_channels, image_size)
        if image_size < _DOWNSAMPLING:
            raise WorkbenchError(
                f"{OWNER}: image_size must be at least {_DOWNSAMPLING} px, five 2× poolings (got {image_size}); "
                "use mcnn/scnn or a timm model for small images"
            )
        model = VGG16BN(num_classes, in_channels, image_size, self.params.feature_bn_shift)
        if self.params.pretrained_file is not None:
            self._load_features(model, self.params.pretrained_file)
        return model

    @staticmethod
    def _load_features(model: VGG16BN, path: Path) -> None:
        """Take the `features.*` entries (a torchvision checkpoint's classifier is ignored)."""
        state = read_state_dict(OWNER, path)
        features = {
            key.removeprefix("features."): value
            for key, value in state.items()
            if key.startswith("features.")
        }
        # A file saved from the conv stack alone has bare "0.weight" keys.
        load_checked(
            OWNER,
            path,
            model.features,
            features or state,
            what="VGG16-BN conv stack",
            key_prefix="features." if features else "",
        )

"""Built-in workbench plugin: backbones (kind `backbone`).

Each backbone's `build(num_classes, in_channels, image_size)` returns a module with
`forward(x) -> logits`, `forward_hidden(x) -> (logits, hiddens)` in one pass, `feature_dim` (size
of the penultimate feature, always the last hidden) and `hidden_names`.
"""

from __future__ import annotations

from workbench.api import hookimpl

from ._common import HiddenClassifier
from .face_ir import FaceNet, FaceNetBackbone, FaceNetParams
from .small_cnns import MCNN, SCNN, MCNNBackbone, MCNNParams, SCNNBackbone, SCNNParams
from .timm_backbone import TimmBackbone, TimmHidden, TimmParams
from .vgg import VGG16BN, VGG16BNBackbone, VGG16BNParams

__all__ = [
    "FaceNet",
    "FaceNetBackbone",
    "FaceNetParams",
    "MCNN",
    "SCNN",
    "VGG16BN",
    "HiddenClassifier",
    "TimmHidden",
    "MCNNBackbone",
    "SCNNBackbone",
    "VGG16BNBackbone",
    "TimmBackbone",
    "MCNNParams",
    "SCNNParams",
    "VGG16BNParams",
    "TimmParams",
]


@hookimpl
def register_backbones(register):
    register(
        "mcnn",
        MCNNBackbone,
        params=MCNNParams,
        summary="BiDO's MNIST target: 3 conv blocks, hiddens block1, block2, feature",
    )
    register(
        "scnn",
        SCNNBackbone,
        params=SCNNParams,
        summary="BiDO's MNIST evaluation CNN: 5 convs, hiddens block1-3, feature",
    )
    register(
        "vgg16-bn",
        VGG16BNBackbone,
        params=VGG16BNParams,
        summary="BiDO's CelebA target: VGG16-BN convs + BN'd feature, hiddens block1-4, feature",
    )
    register(
        "facenet",
        FaceNetBackbone,
        params=FaceNetParams,
        summary="BiDO's CelebA evaluation model: IR-50 face net (112 px), hiddens stage1-4, 512-d feature",
    )
    register(
        "timm",
        TimmBackbone,
        params=TimmParams,
        summary="any timm model (local weights only), hiddens from forward_intermediates + pre-logits",
    )

"""Built-in workbench plugin: datasets (kind `dataset`) and OOD sets (kind `ood_dataset`).

Embedded and offline: `digits` (scikit-learn's UCI digits, private 0-4 / public 5-9), and the
procedural OOD sets `letters`, `noise`, `shapes` plus `digits-public`. Real data is read from
local paths (`root`): `mnist`, `fashion-mnist`, `cifar10`, `image-folder`, `celeba`, and OOD
sets `svhn`, `celeba-identities`, `facescrub`, `ffhq`, `textures`, `lsun`, `isun`,
`places365`, `tinyimages-300k`. Nothing downloads unless `download = true`.

Every component offers `describe()` (a `DataDescription`: expected files, source, notes) and
`missing()`; OOD components also offer `check_disjoint(data)` so the runner can refuse an OOD
set that shares classes with the private data.
"""

from __future__ import annotations

from workbench.api import hookimpl

from .base import DataComponent, OODComponent
from .celeba import Celeba, CelebaIdentities
from .description import DataDescription, ExpectedFile
from .digits import Digits, DigitsPublic
from .folders import FOLDER_SETS, ImageFolder, TinyImages300k
from .procedural import Letters, Noise, Shapes
from .torchvision_sets import Cifar10, FashionMnist, Mnist, Svhn

DATASETS: tuple[type[DataComponent], ...] = (Digits, Mnist, FashionMnist, Cifar10, ImageFolder, Celeba)
OOD_DATASETS: tuple[type[OODComponent], ...] = (
    Letters,
    Noise,
    Shapes,
    DigitsPublic,
    Svhn,
    CelebaIdentities,
    *FOLDER_SETS,
    TinyImages300k,
)

__all__ = [
    "DATASETS",
    "OOD_DATASETS",
    "DataComponent",
    "DataDescription",
    "ExpectedFile",
    "OODComponent",
    "register_datasets",
    "register_ood_datasets",
]


@hookimpl
def register_datasets(register):
    for component in DATASETS:
        register(component.name, component, params=component.params_model, summary=component.summary)


@hookimpl
def register_ood_datasets(register):
    for component in OOD_DATASETS:
        register(component.name, component, params=component.params_model, summary=component.summary)

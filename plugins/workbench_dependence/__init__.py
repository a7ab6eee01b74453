"""Built-in workbench plugin: the kernel dependence measures BiDO uses (kind `dependency`).

`hsic` (BiDO's normalized HSIC), `hsic-biased` (Gretton's biased estimator) and `coco`.
See `workbench_dependence.measures` for the API every measure object offers.
"""

from __future__ import annotations

from workbench.api import hookimpl

from .kernels import KERNELS, KernelName
from .measures import (
    COCO,
    BiasedHSIC,
    DependenceParams,
    KernelDependence,
    NormalizedHSIC,
    NormalizedHSICParams,
    Prepared,
)

__all__ = [
    "COCO",
    "KERNELS",
    "BiasedHSIC",
    "DependenceParams",
    "KernelDependence",
    "KernelName",
    "NormalizedHSIC",
    "NormalizedHSICParams",
    "Prepared",
]


@hookimpl
def register_dependency_measures(register):
    register(
        "hsic",
        NormalizedHSIC,
        params=NormalizedHSICParams,
        summary="BiDO's normalized HSIC: tr(R_a R_b), R = K H (K H + ε m I)^-1",
    )
    register(
        "hsic-biased",
        BiasedHSIC,
        params=DependenceParams,
        summary="Gretton's biased HSIC estimator tr(K H L H) / (m-1)^2",
    )
    register(
        "coco",
        COCO,
        params=DependenceParams,
        summary="BiDO's COCO: sqrt(||H K H · H L H||_F) / m",
    )

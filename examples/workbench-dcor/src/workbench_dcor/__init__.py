"""workbench-dcor: distance correlation and LeNet-5 as workbench plugins."""

from __future__ import annotations

from workbench.api import hookimpl
from workbench_dcor.backbone import LeNet5, LeNet5Params
from workbench_dcor.measure import DCorParams, DistanceCorrelation

__all__ = ["DistanceCorrelation", "LeNet5"]


@hookimpl
def register_dependency_measures(register):
    register(
        "dcor",
        DistanceCorrelation,
        params=DCorParams,
        summary="Squared distance correlation dCor² (Székely et al. 2007), in [0, 1].",
    )


@hookimpl
def register_backbones(register):
    register("lenet5", LeNet5, params=LeNet5Params, summary="LeNet-5 with hiddens after each block.")

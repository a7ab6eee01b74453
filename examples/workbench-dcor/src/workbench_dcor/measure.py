"""Squared distance correlation as a dependency measure.

dCov²(a, b) = mean_ij(A_ij B_ij) with A, B the double-centred Euclidean distance matrices of
the two samples; dCor² = dCov²(a, b) / sqrt(dCov²(a, a) dCov²(b, b)), in [0, 1], 0 exactly
when the (population) variables are independent. Unlike HSIC it needs no kernel bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor

from workbench.api import StrictModel


class DCorParams(StrictModel):
    epsilon: float = Field(1e-2, gt=0)
    """Floor under squared distances before the square root. The gradient of a distance is
    1/(2·sqrt(d²)); when BiDO pulls same-class features together it explodes without a floor
    (1e-4 still collapsed training on digits; 1e-2 is negligible next to feature distances)."""


@dataclass
class CentredDistances:
    """One variable's double-centred distance matrix and its distance variance dCov²(t, t)."""

    matrix: Tensor
    variance: Tensor


class DistanceCorrelation:
    """`measure(a, b)` -> dCor²(a, b); `prepare`/`pair` let BiDO reuse each variable's matrix."""

    # Distance correlation has no kernel; BiDO passes kernel names, which are accepted and ignored.
    kernel_a = "distance"
    kernel_b = "distance"

    def __init__(self, params: DCorParams):
        self.params = params

    def prepare(self, t: Tensor, kernel: str | None = None) -> CentredDistances:
        t = t.flatten(1).float()
        squared = torch.cdist(t, t).pow(2) if t.shape[1] > 0 else torch.zeros(len(t), len(t), device=t.device)
        off_diagonal = ~torch.eye(len(t), dtype=torch.bool, device=t.device)
        distances = torch.where(
            off_diagonal, squared.clamp_min(self.params.epsilon).sqrt(), torch.zeros_like(squared)
        )
        centred = (
            distances - distances.mean(0, keepdim=True) - distances.mean(1, keepdim=True) + distances.mean()
        )
        return CentredDistances(centred, (centred * centred).mean())

    def prepare_many(self, tensors: list[Tensor], kernel: str | None = None) -> list[CentredDistances]:
        return [self.prepare(t, kernel) for t in tensors]

    def pair(self, pa: CentredDistances, pb: CentredDistances) -> Tensor:
        covariance = (pa.matrix * pb.matrix).mean()
        return covariance / (pa.variance * pb.variance).sqrt().clamp_min(self.params.epsilon)

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        with torch.autocast(a.device.type, enabled=False):
            return self.pair(self.prepare(a), self.prepare(b))

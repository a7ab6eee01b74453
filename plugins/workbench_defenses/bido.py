"""BiDO: bilateral dependency optimization (Peng et al., KDD 2022).

L = CE + λx Σ_j d(X, Z_j) − λy Σ_j d(Z_j, Y): weaken the dependence between inputs and hidden
representations (what an inverter exploits) while keeping the dependence on labels (utility).

Under data-parallel training the kernels are batch statistics of the *global* batch: X, each Z_j
and Y are all-gathered with autograd and the dependency terms computed identically on every
rank; the gather's backward and DDP's mean over ranks then give each parameter exactly the
single-process gradient (docs/distributed.md). CE stays a mean over the rank's own slice, which
DDP's mean turns into the global mean.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from workbench.api import (
    ComponentTable,
    Defense,
    LossOutput,
    StrictModel,
    cross_entropy,
    gather_with_grad,
    upcast,
)

DependencyTable = ComponentTable.of("dependency")


class BiDOParams(StrictModel):
    measure: DependencyTable = DependencyTable(use="hsic")
    """Dependency measure d (kind `dependency`): `hsic` (normalized, BiDO's), `coco`, `hsic-biased`."""
    lambda_x: float = Field(0.05, ge=0)
    """λx: weight of Σ d(X, Z_j), the input–hidden dependence to weaken."""
    lambda_y: float = Field(0.5, ge=0)
    """λy: weight of Σ d(Z_j, Y), the hidden–label dependence to keep."""
    layers: list[int] | None = None
    """Which hidden layers (indices into the backbone's hiddens, negative from the end); unset = all."""
    label_kernel: Literal["linear", "gaussian", "imq"] = "linear"
    """Kernel on the one-hot labels Y (BiDO: linear)."""


class BiDO(Defense):
    """BiDO's loss. X uses the measure's `kernel_a`, each Z_j its `kernel_b`, Y `label_kernel`."""

    def __init__(self, params: BiDOParams):
        self.params = params
        self.measure = params.measure.instance

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        p = self.params
        ce = cross_entropy(logits, y)
        chosen = list(hiddens) if p.layers is None else [hiddens[i] for i in p.layers]
        # The global batch under torchrun (the identity in one process); gathered before the
        # upcast, so bf16 activations travel at half the size.
        features = [upcast(gather_with_grad(h.flatten(1))) for h in chosen]
        one_hot = F.one_hot(gather_with_grad(y), logits.shape[1]).to(features[0].dtype)
        x = upcast(gather_with_grad(x))
        measure = self.measure
        # The input and label kernels once per batch, each layer's kernel once for both terms.
        if hasattr(measure, "prepare") and hasattr(measure, "pair"):
            prep_x = measure.prepare(x.flatten(1), measure.kernel_a)
            prep_y = measure.prepare(one_hot, p.label_kernel)
            if hasattr(measure, "prepare_many"):
                prep_z = measure.prepare_many(features, measure.kernel_b)
            else:
                prep_z = [measure.prepare(z, measure.kernel_b) for z in features]
            dep_x = [measure.pair(prep_x, pz) for pz in prep_z]
            dep_y = [measure.pair(pz, prep_y) for pz in prep_z]
        else:  # a third-party measure with only __call__
            dep_x = [measure(x.flatten(1), z) for z in features]
            dep_y = [measure(z, one_hot) for z in features]
        total = ce + p.lambda_x * torch.stack(dep_x).sum() - p.lambda_y * torch.stack(dep_y).sum()
        logs = {"ce": float(ce.detach())}
        for j, (dx, dy) in enumerate(zip(dep_x, dep_y, strict=True)):
            logs[f"dep_x/{j}"] = float(dx.detach())
            logs[f"dep_y/{j}"] = float(dy.detach())
        return LossOutput(total, logs)

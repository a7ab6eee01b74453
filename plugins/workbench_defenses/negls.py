"""Negative label smoothing (Struppek et al., *Be Careful What You Smooth For*, ICLR 2024).

Cross-entropy against the smoothed target `q = (1 − α)·onehot(y) + α/K`: α > 0 is ordinary label
smoothing (the paper shows it makes model inversion *stronger*), α < 0 pushes the other classes'
probabilities below zero in the target, which makes the model's confidence less informative to
an inverter at a small cost in accuracy. Reference code: `LukasStruppek/Plug-and-Play-Attacks`
(`train_target.py`, the scheduler there; the same schedule is in `JackywithaWhiteDog/Trap-MID`
`loss.py`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from workbench.api import Defense, LossOutput, StrictModel


class NegLSParams(StrictModel):
    alpha: float = Field(-0.05, gt=-1, lt=1)
    """Smoothing factor α: target `(1 − α)·onehot + α/K`. Paper and reference default −0.05
    (FaceScrub/CelebA targets); positive values are ordinary label smoothing (the paper's 0.1
    makes attacks stronger)."""
    schedule: Literal["auto", "ramp", "constant"] = "auto"
    """How α is brought in. `ramp`: 0 until `start`, then α·(e + 1 − s)/(E − s) for epochs e in
    [s, s + ramp), then α (the reference's scheduler, including its jump to α after the ramp).
    `constant`: α from the first epoch. `auto` (reference behaviour): `ramp` for α < 0,
    `constant` for α ≥ 0 (PPA's `train_target.py` schedules only negative factors)."""
    start: float = Field(0.5, ge=0, le=1)
    """First epoch of the ramp, as a fraction of the run's epochs (reference: epoch 50 of 100).
    Deviation: the reference hard-codes epoch numbers; a fraction gives the same schedule at
    100 epochs and a proportionate one at the digits tier's 20."""
    ramp: float = Field(0.25, ge=0, le=1)
    """Length of the ramp as a fraction of the run (reference: epochs 50–74 of 100, then α)."""


def smoothing_factor(alpha: float, schedule: str, start: float, ramp: float, epoch: int, epochs: int) -> float:
    """α in force at 0-based `epoch` of `epochs` (see `NegLSParams.schedule`)."""
    if schedule == "constant" or (schedule == "auto" and alpha >= 0):
        return alpha
    s = round(start * epochs)
    r = round(ramp * epochs)
    if epoch < s:
        return 0.0
    if epoch < s + r:
        return alpha * (epoch + 1 - s) / max(epochs - s, 1)
    return alpha


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mean over the batch of −Σ_k q_k log p_k with q = (1 − α)·onehot(y) + α/K (any sign of α)."""
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
    uniform = -logp.mean(dim=1)
    return ((1 - alpha) * nll + alpha * uniform).mean()


class NegLS(Defense):
    """Cross-entropy with (negative) label smoothing, α scheduled per epoch."""

    def __init__(self, params: NegLSParams):
        self.params = params
        self.alpha = 0.0 if params.schedule != "constant" and not (params.schedule == "auto" and params.alpha >= 0) \
            else params.alpha

    def start_epoch(self, epoch: int, epochs: int) -> None:
        p = self.params
        self.alpha = smoothing_factor(p.alpha, p.schedule, p.start, p.ramp, epoch, epochs)

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        loss = smoothed_cross_entropy(logits, y, self.alpha)
        return LossOutput(loss, {"ce": float(F.cross_entropy(logits.detach().float(), y)), "alpha": self.alpha})

"""OOD scores: per-sample confidence that an input is in-distribution (higher = more ID).

Each score is a small callable object `score(model, x) -> Tensor[batch]`; `model(x)` must return
logits `[batch, K]`. The scores never change the model's mode (train/eval) — the runner decides
that — and never leave gradients on its parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import StrictModel, WorkbenchError

# ---------------------------------------------------------------- pure functions on logits


def msp_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Maximum softmax probability at temperature T (Hendrycks & Gimpel 2017)."""
    return F.softmax(logits / temperature, dim=1).amax(dim=1)


def energy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy `T·logsumexp(logits/T)` (Liu et al. 2020): higher = more ID."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def max_logit_from_logits(logits: Tensor) -> Tensor:
    """The largest raw logit (Hendrycks et al. 2022, 'MaxLogit')."""
    return logits.amax(dim=1)


# ---------------------------------------------------------------- components


def _logits(model: nn.Module, x: Tensor, score_name: str) -> Tensor:
    """Call the model and check it returned `[batch, K]` logits, as the score contract requires."""
    logits = model(x)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise WorkbenchError(
            f"ood_score {score_name!r}: model(x) must return logits shaped [batch, classes] "
            f"for x of batch {x.shape[0]}, got {shape}"
        )
    return logits


class TemperatureParams(StrictModel):
    temperature: float = Field(1.0, gt=0)
    """Softmax temperature T; 1 is the plain score, larger T flattens the distribution."""


class MaxSoftmaxScore:
    """MSP: max softmax(logits / T). BiDO+'s default score."""

    def __init__(self, params: TemperatureParams | None = None):
        self.temperature = (params or TemperatureParams()).temperature

    @torch.no_grad()
    def __call__(self, model: nn.Module, x: Tensor) -> Tensor:
        return msp_from_logits(_logits(model, x, "msp"), self.temperature)

    score = __call__


class EnergyScore:
    """Energy: T·logsumexp(logits / T), the negative free energy."""

    def __init__(self, params: TemperatureParams | None = None):
        self.temperature = (params or TemperatureParams()).temperature

    @torch.no_grad()
    def __call__(self, model: nn.Module, x: Tensor) -> Tensor:
        return energy_from_logits(_logits(model, x, "energy"), self.temperature)

    score = __call__


class MaxLogitScore:
    """MaxLogit: the largest unnormalised logit."""

    def __init__(self, params: StrictModel | None = None):
        pass

    @torch.no_grad()
    def __call__(self, model: nn.Module, x: Tensor) -> Tensor:
        return max_logit_from_logits(_logits(model, x, "max-logit"))

    score = __call__


class ODINParams(StrictModel):
    temperature: float = Field(1000.0, gt=0)
    """Temperature scaling T (ODIN's default 1000)."""
    epsilon: float = Field(0.0014, ge=0)
    """Input perturbation size ε on [0, 1] images (0 turns ODIN into temperature-scaled MSP)."""


class ODINScore:
    """ODIN (Liang et al. 2018): temperature scaling plus a small input step that raises the MSP.

    `x' = x − ε·sign(∇x [−log max softmax(f(x)/T)])`, then MSP at T on `x'`. ID inputs gain more
    confidence from the step than OOD ones, which widens the gap. The step is taken in the
    model's input space ([0, 1] images here), without the per-channel std division the original
    code applied to normalised ImageNet inputs, and `x'` is not clamped (as in the original).
    """

    def __init__(self, params: ODINParams | None = None):
        params = params or ODINParams()
        self.temperature = params.temperature
        self.epsilon = params.epsilon

    def __call__(self, model: nn.Module, x: Tensor) -> Tensor:
        if self.epsilon > 0:
            # The runner scores under torch.no_grad(); ODIN needs d/dx, so re-enable grad locally.
            with torch.enable_grad():
                x_input = x.detach().clone().requires_grad_(True)
                logits = _logits(model, x_input, "odin")
                nll_of_top_class = -F.log_softmax(logits / self.temperature, dim=1).amax(dim=1).sum()
                # autograd.grad (not .backward) so the model's parameters never get .grad.
                (grad,) = torch.autograd.grad(nll_of_top_class, x_input)
            x = x.detach() - self.epsilon * grad.sign()
        with torch.no_grad():
            return msp_from_logits(_logits(model, x, "odin"), self.temperature)

    score = __call__

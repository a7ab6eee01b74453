"""MID: mutual-information regularisation through a variational information bottleneck
(Wang et al., AAAI 2021), the baseline BiDO compares against."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from workbench.api import Defense, LossOutput, StrictModel, cross_entropy


class MIDParams(StrictModel):
    beta: float = Field(0.003, ge=0)
    """β: weight of the KL term (authors' CelebA setting 0.003)."""
    bottleneck_dim: int = Field(0, ge=0)
    """Size of the stochastic code; 0 = half the backbone's feature size."""


class VIBClassifier(nn.Module):
    """A backbone whose penultimate feature passes through a Gaussian bottleneck before the head."""

    def __init__(self, backbone: nn.Module, num_classes: int, bottleneck_dim: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = bottleneck_dim
        self.hidden_names = [*getattr(backbone, "hidden_names", []), "bottleneck"]
        self.encode = nn.Linear(backbone.feature_dim, 2 * bottleneck_dim)
        self.head = nn.Linear(bottleneck_dim, num_classes)
        self.kl_per_sample: Tensor | None = None

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        _, hiddens = self.backbone.forward_hidden(x)
        stats = self.encode(hiddens[-1].flatten(1))
        mu, log_var = stats.chunk(2, dim=1)
        # The code is sampled while training and its mean is used for evaluation (as MID does).
        code = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        self.kl_per_sample = 0.5 * (mu.float().pow(2) + log_var.float().exp() - log_var.float() - 1).sum(1)
        return self.head(code), [*hiddens, code]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]


class MID(Defense):
    """Cross-entropy plus β times the KL divergence of the code from N(0, I)."""

    def __init__(self, params: MIDParams):
        self.params = params

    def prepare_model(self, model: nn.Module, num_classes: int, ctx=None) -> nn.Module:
        dim = self.params.bottleneck_dim or max(1, model.feature_dim // 2)
        return VIBClassifier(model, num_classes, dim)

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        ce = cross_entropy(logits, y)
        kl = model.kl_per_sample[: len(y)].mean()
        return LossOutput(ce + self.params.beta * kl, {"ce": float(ce.detach()), "kl": float(kl.detach())})

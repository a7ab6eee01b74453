"""The undefended baseline."""

from __future__ import annotations

from workbench.api import Defense, LossOutput, NoParams, cross_entropy


class NoDefense(Defense):
    """No defense: plain cross-entropy."""

    def __init__(self, params: NoParams):
        self.params = params

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        ce = cross_entropy(logits, y)
        return LossOutput(ce, {"ce": float(ce.detach())})

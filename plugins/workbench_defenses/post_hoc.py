"""What the post-hoc defenses share (Gaussian noise, Purifier): the target trains exactly as `none`
(plain cross-entropy), and the defense wraps the trained target in `finish_training`. They declare
`DefenseCapabilities(post_hoc=True)`, so results.json and every report mark their variants."""

from __future__ import annotations

from workbench.api import Defense, DefenseCapabilities, LossOutput, cross_entropy


class PostHocDefense(Defense):
    """Base of a defense that wraps the trained target: `none`'s loss during training, and the run's
    seed, data and event sink kept from `prepare_model`'s context for `finish_training`."""

    capabilities = DefenseCapabilities(post_hoc=True)

    def __init__(self, params):
        self.params = params
        self.seed = 0
        self.data = None
        self.emit = lambda *args, **kwargs: None

    def keep_context(self, ctx) -> None:
        """Keep what `finish_training` needs from `prepare_model`'s context (None when a test builds
        the model without one)."""
        if ctx is not None:
            self.seed, self.data, self.emit = ctx.seed, ctx.data, ctx.emit

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        ce = cross_entropy(logits, y)
        return LossOutput(ce, {"ce": float(ce.detach())})

    def announce(self, name: str, what: str) -> None:
        """The log line saying what now wraps the trained target (`name: post-hoc, what`)."""
        self.emit("log", level="info", message=f"{name}: post-hoc, {what}")

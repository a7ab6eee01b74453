"""Mean confidence on the private test split.

A workbench metric component, registered as `__NAME__` (package __DIST__).
"""

from __future__ import annotations

import torch
from workbench.api import EvalContext, Metric, hookimpl, iterate_batches


class ExampleMetric(Metric):
    """Mean max-softmax confidence on the private test split."""

    section = "utility"

    def __init__(self, params):
        self.params = params

    @torch.no_grad()
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        total, count = 0.0, 0
        for x, _ in iterate_batches(ctx.data.test, ctx.batch_size, shuffle=False):
            probs = ctx.model(x.to(ctx.device)).float().softmax(1)
            total += float(probs.max(1).values.sum())
            count += len(x)
        return {"__KEY__": total / max(count, 1)}


@hookimpl
def register_metrics(register):
    register("__NAME__", ExampleMetric,
             summary="Example metric: mean confidence on the test split.")

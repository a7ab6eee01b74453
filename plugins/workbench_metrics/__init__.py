"""Built-in utility metrics."""

from __future__ import annotations

from workbench.api import EvalContext, Metric, NoParams, accuracy, hookimpl


class TestAccuracy(Metric):
    """Top-1 accuracy of the target on the private test split (utility)."""

    section = "utility"

    def __init__(self, params: NoParams):
        self.params = params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        return {"test_accuracy": accuracy(ctx.model, ctx.data.test, ctx.device, ctx.batch_size)}


@hookimpl
def register_metrics(register):
    register("accuracy", TestAccuracy, summary="Top-1 accuracy on the private test split (utility).")

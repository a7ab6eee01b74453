"""Built-in OOD plugin: scores for OOD detection (`ood_score`), plus the metric and loss math.

The scores are components; `workbench_ood.metrics` (FPR95, AUROC, AUPR-In/Out in the BiDO+
convention) and `workbench_ood.losses` (BiDO+ phase-2 terms) are pure functions the runner and
trainer call directly.
"""

from __future__ import annotations

from workbench.api import hookimpl
from workbench_ood.scores import (
    EnergyScore,
    MaxLogitScore,
    MaxSoftmaxScore,
    ODINParams,
    ODINScore,
    TemperatureParams,
)


@hookimpl
def register_ood_scores(register):
    register(
        "msp",
        MaxSoftmaxScore,
        params=TemperatureParams,
        summary="Maximum softmax probability at temperature T (BiDO+'s default score).",
    )
    register(
        "energy",
        EnergyScore,
        params=TemperatureParams,
        summary="Negative free energy T·logsumexp(logits/T) (Liu et al. 2020).",
    )
    register("max-logit", MaxLogitScore, summary="The largest raw logit (MaxLogit, Hendrycks et al. 2022).")
    register(
        "odin",
        ODINScore,
        params=ODINParams,
        summary="ODIN: temperature scaling plus an input step that raises the MSP (Liang et al. 2018).",
    )

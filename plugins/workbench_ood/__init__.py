"""Built-in OOD plugin: scores for OOD detection (`ood_score`) and unknown-aware training losses
(`ood_loss`: BiDO+'s `entropy` and `energy`, and Hendrycks' `oe`)."""

from __future__ import annotations

from workbench.api import hookimpl
from workbench_ood.losses import (
    EnergyMarginLoss,
    EnergyParams,
    EntropyLoss,
    EntropyParams,
    OutlierExposureLoss,
    OutlierExposureParams,
)
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


@hookimpl
def register_ood_losses(register):
    register("entropy", EntropyLoss, params=EntropyParams,
             summary="BiDO+ default (CM): −γ · Σ entropy of the OOD softmax, summed over the OOD batch.")
    register("energy", EnergyMarginLoss, params=EnergyParams,
             summary="BiDO+ ER: squared hinges on the free energy around margins from the last warm-up epoch.")
    register("oe", OutlierExposureLoss, params=OutlierExposureParams,
             summary="Outlier exposure: cross-entropy from uniform to the OOD softmax (Hendrycks et al. 2019).")

"""Built-in workbench plugin: model-inversion attacks and the privacy metrics that judge them.

Attacks (kind `attack`): `gmi`, `kedmi`, `mi-face`, `lomma-gmi`, `lomma-kedmi`, `plg-mi`, `vmi`, `ppa`, `if-gmi`, `deepinversion`, `mirror-b`, `c2fmi`, `rlb-mi`, `brep-mi`, `lokt`. Privacy metrics (kind `metric`, section
`attacks`): `attack-accuracy`, `knn-dist`, `fid` (in E's feature space), `fid-inception`; judged by every
evaluator of the run: `agreed-accuracy`, `nearest-neighbour`, `prdc` (`evaluators_metrics`).
The metric math is in `workbench_attacks.privacy` as pure functions.
"""

from __future__ import annotations

from workbench.api import NoParams, hookimpl
from workbench_attacks.brepmi import BREPMI, BREPMIParams
from workbench_attacks.c2fmi import C2FMI, C2FMIParams
from workbench_attacks.deepinversion import DeepInversion, DeepInversionParams
from workbench_attacks.evaluators_metrics import (
    PRDC,
    AgreedAccuracy,
    NearestNeighbour,
    NearestNeighbourParams,
    PRDCParams,
)
from workbench_attacks.gmi import GMI, GMIParams
from workbench_attacks.ifgmi import IFGMI, IFGMIParams
from workbench_attacks.kedmi import KEDMI, KEDMIParams
from workbench_attacks.lokt import LOKT, LOKTParams
from workbench_attacks.lomma import LOMMAGMI, LOMMAKEDMI, LOMMAGMIParams, LOMMAKEDMIParams
from workbench_attacks.miface import MIFace, MIFaceParams
from workbench_attacks.mirror import MirrorB, MirrorBParams
from workbench_attacks.plgmi import PLGMI, PLGMIParams
from workbench_attacks.ppa import PPA, PPAParams
from workbench_attacks.privacy import (
    FID,
    AttackAccuracy,
    FIDParams,
    InceptionFID,
    InceptionFIDParams,
    KNNDistance,
)
from workbench_attacks.rlbmi import RLBMI, RLBMIParams
from workbench_attacks.vmi import VMI, VMIParams


@hookimpl
def register_attacks(register):
    register(
        "gmi",
        GMI,
        params=GMIParams,
        summary="GMI: WGAN-GP prior on public data, then a per-class latent search (Zhang et al. 2020).",
    )
    register(
        "kedmi",
        KEDMI,
        params=KEDMIParams,
        summary="KED-MI: target-aware K+1 GAN, then a per-class Gaussian latent search (Chen et al. 2021).",
    )
    register(
        "mi-face",
        MIFace,
        params=MIFaceParams,
        summary="MI-Face: gradient steps on the pixels toward the class, no prior data (Fredrikson et al. 2015).",
    )
    register(
        "lomma-gmi",
        LOMMAGMI,
        params=LOMMAGMIParams,
        summary="LOMMA on GMI: logit loss, feature regulariser, surrogates distilled from the target (Nguyen et al. 2023).",
    )
    register(
        "lomma-kedmi",
        LOMMAKEDMI,
        params=LOMMAKEDMIParams,
        summary="LOMMA on KED-MI: logit loss, feature regulariser, surrogates distilled from the target (Nguyen et al. 2023).",
    )
    register(
        "plg-mi",
        PLGMI,
        params=PLGMIParams,
        summary="PLG-MI: top-n pseudo-labels, a conditional GAN per target, max-margin inversion (Yuan et al. 2023).",
    )
    register(
        "ppa",
        PPA,
        params=PPAParams,
        summary="PPA: candidates by target confidence, Poincaré loss on augmented views, selection over transforms (Struppek et al. 2022).",
    )
    register(
        "if-gmi",
        IFGMI,
        params=IFGMIParams,
        summary="IF-GMI: PPA's candidates, then the generator's intermediate features optimised stage by stage in L1 balls (Qiu et al. 2024).",
    )
    register(
        "deepinversion",
        DeepInversion,
        params=DeepInversionParams,
        summary="DeepInversion: images optimised to match the target's BatchNorm statistics, no public data (Yin et al. 2020).",
    )
    register(
        "mirror-b",
        MirrorB,
        params=MirrorBParams,
        summary="Mirror (black-box): a genetic search over the GAN's latents scored by the target's confidence (An et al. 2022).",
    )
    register(
        "rlb-mi",
        RLBMI,
        params=RLBMIParams,
        summary="RLB-MI (black-box): a soft actor-critic agent per class searches the GAN's latents, rewarded by the target's probabilities (Han et al. 2023).",
    )
    register(
        "c2fmi",
        C2FMI,
        params=C2FMIParams,
        summary="C2FMI (black-box): an inverse network from the target's vectors to a public embedding gives coarse latents, then differential evolution on the target's confidence (Ye et al. 2023).",
    )
    register(
        "brep-mi",
        BREPMI,
        params=BREPMIParams,
        summary="BREP-MI (label-only): boundary repulsion on spheres in GMI's latent space, top-1 labels only (Kahla et al. 2022).",
    )
    register(
        "lokt",
        LOKT,
        params=LOKTParams,
        summary="LOKT (label-only): a T-ACGAN from the target's labels, surrogates on its samples, PLG-MI's inversion on them (Nguyen et al. 2023).",
    )
    register(
        "vmi",
        VMI,
        params=VMIParams,
        summary="VMI: a full-covariance Gaussian per class over GMI's generator latent, CE + KL (Wang et al. 2021).",
    )


@hookimpl
def register_metrics(register):
    register(
        "attack-accuracy",
        AttackAccuracy,
        params=NoParams,
        summary="Top-1/top-5 of the evaluation model E on the reconstructions, mean ± std over restarts.",
    )
    register(
        "knn-dist",
        KNNDistance,
        params=NoParams,
        summary="Mean smallest squared distance, in E's feature space, to a private image of the class.",
    )
    register(
        "fid",
        FID,
        params=FIDParams,
        summary="Fréchet distance to the private images in E's feature space (BiDO's convention).",
    )
    register(
        "fid-inception",
        InceptionFID,
        params=InceptionFIDParams,
        summary="Fréchet distance in Inception-v3 space (LOMMA / PLG-MI / PPA conventions), local weights only.",
    )
    register(
        "agreed-accuracy",
        AgreedAccuracy,
        params=NoParams,
        summary="Top-1/top-5 of every evaluator (top1@NAME) and agreed_top1: all evaluators say the target.",
    )
    register(
        "nearest-neighbour",
        NearestNeighbour,
        params=NearestNeighbourParams,
        summary="Nearest private/public image in pixel and each evaluator's feature space; false positives, PSNR, SSIM.",
    )
    register(
        "prdc",
        PRDC,
        params=PRDCParams,
        summary="Precision/recall/density/coverage (Naeem et al. 2020) against the private images, in an evaluator's features.",
    )

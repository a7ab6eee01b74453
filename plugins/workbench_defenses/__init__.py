"""Built-in defenses, all through the one trainer: no defense, BiDO, MID, and the baselines the
field compares BiDO against (negative label smoothing, TL-DMI, random erasing, Trap-MID, DP-SGD,
RoLSS, SCA, AT-AT) and two post-hoc ones that wrap a trained target (Gaussian noise, Purifier)."""

from __future__ import annotations

from workbench.api import hookimpl
from workbench_defenses.atat import ATAT, ATATParams
from workbench_defenses.bido import BiDO, BiDOParams
from workbench_defenses.dp import DPSGD, DPSGDParams
from workbench_defenses.erasing import RandomErasing, RandomErasingParams
from workbench_defenses.mid import MID, MIDParams
from workbench_defenses.negls import NegLS, NegLSParams
from workbench_defenses.noise import GaussianNoise, GaussianNoiseParams
from workbench_defenses.none import NoDefense
from workbench_defenses.purifier import Purifier, PurifierParams
from workbench_defenses.rolss import RoLSS, RoLSSParams
from workbench_defenses.sca import SCA, SCAParams
from workbench_defenses.tldmi import TLDMI, TLDMIParams
from workbench_defenses.trap import TrapMID, TrapMIDParams


@hookimpl
def register_defenses(register):
    register("none", NoDefense, summary="No defense: plain cross-entropy, through the same trainer.")
    register(
        "bido",
        BiDO,
        params=BiDOParams,
        summary="BiDO: CE + λx Σ d(X, Z_j) − λy Σ d(Z_j, Y) with a kernel dependency measure.",
    )
    register(
        "mid",
        MID,
        params=MIDParams,
        summary="MID: variational information bottleneck on the penultimate feature (CE + β·KL).",
    )
    register("negls", NegLS, params=NegLSParams,
             summary="Negative label smoothing (Struppek et al., ICLR 2024): CE against (1 − α)·onehot + α/K, α < 0.")
    register("random-erasing", RandomErasing, params=RandomErasingParams,
             summary="MIDRE (TMLR 2025): erase a random square of every training image; wraps any other defense.")
    register("trap-mid", TrapMID, params=TrapMIDParams,
             summary="Trap-MID (NeurIPS 2024): per-class triggers blended into a copy of each batch as trapdoors.")
    register("tl-dmi", TLDMI, params=TLDMIParams,
             summary="TL-DMI (CVPR 2024): pretrain on public data (cached) or load weights, freeze the first layers.")
    register("dp-sgd", DPSGD, params=DPSGDParams,
             summary="DP-SGD through Opacus: clipped per-sample gradients plus noise; ε into results.json.")
    register("rolss", RoLSS, params=RoLSSParams,
             summary="RoLSS (ECCV 2024): scale or remove the shortcuts of a ResNet's last stage (timm ResNet, facenet).")
    register("sca", SCA, params=SCAParams,
             summary="SCA (ECCV 2024): the first two convolutions become LCA sparse-coding layers (frozen random dictionary).")
    register("gaussian-noise", GaussianNoise, params=GaussianNoiseParams,
             summary="Post-hoc Gaussian noise on the trained target's penultimate feature (DaredEVAL: one fixed vector).")
    register("at-at", ATAT, params=ATATParams,
             summary="AT-AT (ICLR 2026): also train on tiny targeted PGD perturbations labelled with their targets.")
    register("purifier", Purifier, params=PurifierParams,
             summary="Post-hoc confidence purifier (Yang et al., AAAI 2023, as MIBench wraps it) fitted on the trained target.")

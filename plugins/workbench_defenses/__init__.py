"""Built-in defenses: no defense, BiDO and MID, all through the one trainer."""

from __future__ import annotations

from workbench.api import hookimpl
from workbench_defenses.bido import BiDO, BiDOParams
from workbench_defenses.mid import MID, MIDParams
from workbench_defenses.none import NoDefense


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

"""OOD in training and evaluation, as the runner uses it.

The math lives in the built-in `workbench_ood` plugin package (scores, metrics, losses); this
module is the runner's side: which loss a recipe's `ood_training.loss` means, and how energy
margins are estimated at the end of warm-up.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.device import autocast
from workbench.recipe import OODTrainingConfig
from workbench_ood.losses import (
    energy_margin_loss,
    entropy_loss,
    estimate_energy_margins,
    free_energy,
    outlier_exposure_loss,
)
from workbench_ood.metrics import CONVENTION, mean_over_sets, ood_metrics

__all__ = ["CONVENTION", "estimate_margins", "mean_over_sets", "ood_metrics", "ood_training_loss"]


def ood_training_loss(id_logits: Tensor, ood_logits: Tensor, config: OODTrainingConfig,
                      margins: dict[str, float]) -> Tensor:
    """The OOD term added to the defense's loss in phase 2 (signs already applied)."""
    if config.loss == "entropy":
        return entropy_loss(ood_logits, config.gamma)
    if config.loss == "energy":
        return energy_margin_loss(id_logits, ood_logits, margins["m_in"], margins["m_out"], config.energy_weight)
    return outlier_exposure_loss(ood_logits, config.oe_weight)


@torch.no_grad()
def estimate_margins(model: nn.Module, id_data: Dataset, ood_data: Dataset, device: torch.device,
                     batch_size: int = 256) -> tuple[float, float]:
    """(m_in, m_out): mean free energy of ID and auxiliary OOD data under the warmed-up model.

    The authors average the energies seen during the last warm-up epoch (training mode, while the
    weights still move); this evaluates the model as it stands at the end of warm-up instead,
    which is the same quantity without the drift within the epoch.
    """
    from workbench.batches import iterate_batches

    was_training = model.training
    model.eval()

    def energies(dataset: Dataset) -> list[Tensor]:
        out = []
        for x, _ in iterate_batches(dataset, batch_size, shuffle=False):
            with autocast(device):
                out.append(free_energy(model(x.to(device)).float()).cpu())
        return out

    margins = estimate_energy_margins(energies(id_data), energies(ood_data))
    model.train(was_training)
    return margins


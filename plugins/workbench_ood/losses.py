"""Unknown-aware training terms for BiDO+ phase 2: pure torch functions on logits.

Each returns a 0-d tensor to *add* to the training loss (signs are already applied), so the
trainer writes `loss = ce + bido + ood_term`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.api import WorkbenchError


def free_energy(logits: Tensor) -> Tensor:
    """Per-sample free energy `E(x) = −logsumexp(logits)`: low for ID, high for OOD."""
    return -torch.logsumexp(logits, dim=1)


def entropy_loss(ood_logits: Tensor, gamma: float = 1e-3) -> Tensor:
    """BiDO+ "CM" term: `−γ · Σ_batch H(softmax(ood_logits))`, summed (not averaged) over the batch.

    Minimising it maximises the predictive entropy on auxiliary OOD images. The sum follows the
    authors' code (`tmlr-group/BiDO_plus`, `Classifier.OE_fit`, strategy "CM"), so γ = 1e-3
    assumes their OOD batch size (half the ID batch); a bigger OOD batch means a stronger term.
    """
    log_probs = F.log_softmax(ood_logits, dim=1)
    entropy_per_sample = -(log_probs.exp() * log_probs).sum(dim=1)
    return -gamma * entropy_per_sample.sum()


def energy_margin_loss(
    id_logits: Tensor, ood_logits: Tensor, m_in: float, m_out: float, weight: float = 0.1
) -> Tensor:
    """BiDO+ "ER" term (Liu et al. 2020): squared hinges pushing E_in below m_in and E_out above m_out.

    `weight · (mean(relu(E_in − m_in)²) + mean(relu(m_out − E_out)²))` with `E = −logsumexp`.
    """
    in_hinge = F.relu(free_energy(id_logits) - m_in).pow(2).mean()
    out_hinge = F.relu(m_out - free_energy(ood_logits)).pow(2).mean()
    return weight * (in_hinge + out_hinge)


def _flat_energies(energies: Tensor | Iterable[Tensor], name: str) -> Tensor:
    """One flat float64 tensor from a tensor or from per-batch tensors collected over an epoch."""
    if isinstance(energies, Tensor):
        flat = energies.detach().reshape(-1)
    else:
        parts = [torch.as_tensor(e).detach().reshape(-1) for e in energies]
        flat = torch.cat(parts) if parts else torch.empty(0)
    flat = flat.to(torch.float64)
    if flat.numel() == 0:
        raise WorkbenchError(
            f"estimate_energy_margins: {name} is empty; run at least one warm-up batch with OOD data first"
        )
    if not torch.isfinite(flat).all():
        raise WorkbenchError(
            f"estimate_energy_margins: {name} holds NaN or infinite energies; the warm-up diverged"
        )
    return flat


def estimate_energy_margins(
    id_energies: Tensor | Iterable[Tensor], ood_energies: Tensor | Iterable[Tensor]
) -> tuple[float, float]:
    """`(m_in, m_out)`: the mean ID and mean OOD free energy seen during the last warm-up epoch.

    This is what the BiDO+ authors do (`Classifier.OE_fit`, strategy "ER"): during the warm-up
    epochs they keep batch-size-weighted running means of `E_in = −logsumexp(f(x_id))` and
    `E_out = −logsumexp(f(x_ood))` (reset every epoch) and, once fine-tuning starts, use the last
    epoch's means as fixed margins. (Their update reads the meter before adding the current
    batch, so the very last warm-up batch is left out; here every sample given counts.)
    Pass energies from `free_energy(logits)`, either whole or as a list of per-batch tensors.
    """
    return (
        float(_flat_energies(id_energies, "id_energies").mean()),
        float(_flat_energies(ood_energies, "ood_energies").mean()),
    )


def outlier_exposure_loss(ood_logits: Tensor, weight: float = 0.5) -> Tensor:
    """Outlier exposure (Hendrycks et al. 2019): `weight ·` cross-entropy from uniform to softmax.

    `weight · mean_batch(−mean_k log_softmax(ood_logits)_k)`; its minimum, `weight · log K`, is
    reached exactly when the OOD prediction is uniform.
    """
    return weight * (-F.log_softmax(ood_logits, dim=1).mean(dim=1)).mean()

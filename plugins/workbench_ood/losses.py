"""Unknown-aware training losses for BiDO+ phase 2 (kind `ood_loss`), and the torch math under them.

Each term is a 0-d tensor to *add* to the training loss (signs already applied), so the trainer
writes `loss = defense_loss + ood_term`. The components (`entropy`, `energy`, `oe`) wrap the pure
functions with their params; `energy` also estimates its margins (`observe` during warm-up,
`prepare` when OOD data joins, `restore` on resume).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.api import OODLossCapabilities, StrictModel, WorkbenchError, autocast, iterate_batches


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


# ------------------------------------------------------------------ components


class EntropyParams(StrictModel):
    gamma: PositiveFloat = 1e-3
    """Weight γ of the summed OOD entropy (BiDO+ "CM": 1e-3 at 64 px, 1e-4 at 224 px;
    `tmlr-group/BiDO_plus`, `low_resolution/models/classifier.py`, `OE_fit`)."""


class EntropyLoss:
    """BiDO+'s default: −γ · Σ entropy of the softmax over the OOD batch (summed, as the authors)."""

    def __init__(self, params: EntropyParams):
        self.params = params

    def __call__(self, id_logits: Tensor, ood_logits: Tensor) -> Tensor:
        return entropy_loss(ood_logits, self.params.gamma)


class EnergyParams(StrictModel):
    weight: PositiveFloat = 0.1
    """Weight of the two squared hinges (0.1 in `OE_fit`, strategy "ER")."""
    m_in: float | None = None
    """Energy margin for ID data; unset = the mean ID energy of the last warm-up epoch."""
    m_out: float | None = None
    """Energy margin for OOD data; unset = the mean OOD energy of the last warm-up epoch."""


class EnergyMarginLoss:
    """BiDO+ "ER" (Liu et al. 2020): squared hinges on the free energy around two margins.

    Margins as the authors estimate them: during the warm-up epochs the trainer shows each ID
    and OOD batch's logits (training mode, as the weights move) to `observe`; the running means
    of the batch-mean energies, weighted by batch size and reset every epoch, become the margins
    when OOD data joins. Like the reference, the mean is read before the epoch's last batch is
    added. Deviations, named: with no warm-up epoch (nothing observed) the reference uses 0 and 0;
    here the margins are estimated from the model as it stands (evaluation mode), unless both are
    set. The reference's BiDO branch forwards each ID batch twice during warm-up (once for the
    hiddens, once for the energies); here once, so BatchNorm sees each ID batch once.
    """

    capabilities = OODLossCapabilities(prepares=True, observes=True)

    def __init__(self, params: EnergyParams):
        self.params = params
        self.margins: dict[str, float] | None = None
        self._epoch: int | None = None
        self._sums = [0.0, 0.0]
        self._counts = [0, 0]
        self._means_before_last: tuple[float, float] | None = None

    def observe(self, id_logits: Tensor, ood_logits: Tensor, epoch: int) -> None:
        """One warm-up batch: update the epoch's running means of E_in and E_out."""
        if epoch != self._epoch:
            self._epoch, self._sums, self._counts, self._means_before_last = epoch, [0.0, 0.0], [0, 0], None
        if self._counts[0] and self._counts[1]:
            self._means_before_last = (self._sums[0] / self._counts[0], self._sums[1] / self._counts[1])
        for index, logits in enumerate((id_logits, ood_logits)):
            energies = free_energy(logits.detach().double())
            self._sums[index] += float(energies.mean()) * len(energies)
            self._counts[index] += len(energies)

    def prepare(self, model: nn.Module, id_data: Dataset, ood_data: Dataset, device: torch.device) -> dict[str, float]:
        """Fix the margins when OOD data joins: the recipe's, else the last warm-up epoch's means."""
        p = self.params
        if p.m_in is not None and p.m_out is not None:
            estimated = (p.m_in, p.m_out)
        elif self._means_before_last is not None:
            estimated = self._means_before_last
        elif self._counts[0] and self._counts[1]:  # a warm-up epoch of a single batch
            estimated = (self._sums[0] / self._counts[0], self._sums[1] / self._counts[1])
        else:
            estimated = _margins_in_eval_mode(model, id_data, ood_data, device)
        self.margins = {"m_in": p.m_in if p.m_in is not None else estimated[0],
                        "m_out": p.m_out if p.m_out is not None else estimated[1]}
        return dict(self.margins)

    def restore(self, state: dict[str, float]) -> None:
        self.margins = {"m_in": float(state["m_in"]), "m_out": float(state["m_out"])}

    def __call__(self, id_logits: Tensor, ood_logits: Tensor) -> Tensor:
        if self.margins is None:
            raise WorkbenchError("ood_loss 'energy': called before its margins were prepared")
        return energy_margin_loss(id_logits, ood_logits, self.margins["m_in"], self.margins["m_out"],
                                  self.params.weight)


@torch.no_grad()
def _margins_in_eval_mode(model: nn.Module, id_data: Dataset, ood_data: Dataset, device: torch.device,
                          batch_size: int = 256) -> tuple[float, float]:
    """Mean free energy of ID and OOD data under the model as it stands (no warm-up was observed)."""
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


class OutlierExposureParams(StrictModel):
    weight: float = Field(0.5, gt=0)
    """Weight λ of the cross-entropy to the uniform distribution (Hendrycks et al. 2019: 0.5)."""


class OutlierExposureLoss:
    """Outlier exposure: λ · cross-entropy from the uniform distribution to the OOD softmax."""

    def __init__(self, params: OutlierExposureParams):
        self.params = params

    def __call__(self, id_logits: Tensor, ood_logits: Tensor) -> Tensor:
        return outlier_exposure_loss(ood_logits, self.params.weight)

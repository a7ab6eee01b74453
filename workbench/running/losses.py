"""The trainer's reductions, shared with plugins through `workbench.api`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.running.batches import iterate_batches
from workbench.running.device import autocast


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """CE averaged over the batch, in float32 whatever the autocast dtype of the logits (float64
    logits stay float64: reference checks of the trainer run in double precision)."""
    return F.cross_entropy(upcast(logits), y)


def upcast(t: Tensor) -> Tensor:
    """float32 for half, bfloat16 (autocast) and integer tensors; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `dataset`."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in iterate_batches(dataset, batch_size, shuffle=False):
        with autocast(device):
            logits = model(x.to(device))
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)

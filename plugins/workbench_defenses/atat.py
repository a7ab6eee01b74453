"""AT-AT: anti-adversarial training (Torp, Smith, Breuer, ICLR 2026; reference code
`BreuerLabs/Anti-Adversarial-Training@ec6069a`, `configuration/classifier/defense/atat.yaml`,
`defenses/adversarial_train.py`).

`atat.yaml` runs the adversarial-training code (`name: "adversarial_training"`, `atat.yaml:1`) with a
targeted attack and a tiny radius: per batch, each image gets a random wrong class t, a 5-step L∞ PGD
moves it *towards* t within ε, and the model is trained to predict t on it, beside the clean loss:
`L = 1.0·CE(f(x), y) + 0.08·CE(f(x_adv), t)` (`adversarial_train.py:56-108`). The model learns to
follow imperceptible targeted perturbations — non-robust features — the opposite of adversarial
training, which makes gradient-based inversion land on them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import Defense, LossOutput, StrictModel


class ATATParams(StrictModel):
    epsilon: float = Field(2.5e-4, gt=0)
    """L∞ radius of the PGD perturbation in pixel units ([0, 1] images). Reference `pgd.epsilon` =
    5e-4 (`atat.yaml:11`) on images normalised to [−1, 1] (`data_augmentation.py:118-122`), i.e.
    2.5e-4 here."""
    step_size: float = Field(5e-5, gt=0)
    """PGD step α (signed gradient), pixel units: reference 1e-4 in [−1, 1] units (`atat.yaml:12`)."""
    iterations: int = Field(5, ge=1)
    """PGD steps (`atat.yaml:13`), after a uniform random start in [−ε, ε] (`random_start`, `:14`)."""
    weight_standard: float = Field(1.0, ge=0)
    """Weight of the clean cross-entropy (`loss_weighting.standard`, `atat.yaml:4`)."""
    weight_adversarial: float = Field(0.08, ge=0)
    """Weight of the cross-entropy of the perturbed images against their targets t
    (`loss_weighting.adversarial`, `atat.yaml:5`)."""
    targeted: bool = True
    """Targeted PGD towards a random wrong class (AT-AT, `atat.yaml:7`); false is the plain
    adversarial-training baseline's untargeted attack on y (`adversarial_train.yaml`)."""
    reduction: Literal["sum", "mean"] = "sum"
    """Cross-entropy reduction over the batch, both terms: `sum` as the reference (`get_loss` →
    `criterionSum`, `classifiers/abstract_classifier.py:21,194-195`); `mean` as the workbench's
    other defenses. With Adam the two train almost alike; with SGD `sum` scales the step by the
    batch size."""
    pixel_range: tuple[float, float] = (0.0, 1.0)
    """Clamp bounds of the perturbed images: the data's pixel range (the reference clamps to its
    normalised range [−1, 1], `adversarial_train.py:32-33,159,178`)."""


def pgd(model: nn.Module, x: Tensor, target: Tensor, *, epsilon: float, step_size: float, iterations: int,
        targeted: bool, low: float, high: float) -> Tensor:
    """L∞ PGD with a random start (`PGDAttack.__call__`, `adversarial_train.py:148-180`): targeted,
    steps *lower* CE(f(x'), t); untargeted, steps raise CE(f(x'), y). Gradients w.r.t. x' only; the
    model's mode is left as it is (the reference attacks the training-mode model)."""
    x = x.detach()
    adv = (x + torch.empty_like(x).uniform_(-epsilon, epsilon)).clamp(low, high)
    for _ in range(iterations):
        adv.requires_grad_(True)
        ce = F.cross_entropy(model(adv).float(), target)
        cost = -ce if targeted else ce
        grad, = torch.autograd.grad(cost, adv)
        adv = adv.detach() + step_size * grad.sign()
        adv = (x + (adv - x).clamp(-epsilon, epsilon)).clamp(low, high).detach()
    return adv


def wrong_classes(y: Tensor, num_classes: int) -> Tensor:
    """A random class per sample, moved to (t + 1) mod K where it equals y (`adversarial_train.py:66-72`;
    so y + 1 is drawn with probability 2/K, the others 1/K)."""
    t = torch.randint(0, num_classes, y.shape, device=y.device)
    same = t == y
    t[same] = (t[same] + 1) % num_classes
    return t


class ATAT(Defense):
    """Each batch doubled: the clean images, and their PGD perturbations towards random wrong classes
    labelled with those classes; `w_std·CE(clean) + w_adv·CE(perturbed)`."""

    report_keys = ("attack_success",)

    def __init__(self, params: ATATParams):
        self.params = params
        self.num_classes = 0

    def prepare_model(self, model, num_classes, ctx=None):
        self.num_classes = num_classes
        return model

    def transform(self, x, y, *, model, epoch, step):
        p = self.params
        target = wrong_classes(y, self.num_classes) if p.targeted else y
        adv = pgd(model, x, target, epsilon=p.epsilon, step_size=p.step_size, iterations=p.iterations,
                  targeted=p.targeted, low=p.pixel_range[0], high=p.pixel_range[1])
        return torch.cat([x, adv]), torch.cat([y, target])

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        p = self.params
        half = len(y) // 2
        clean = F.cross_entropy(logits[:half].float(), y[:half], reduction=p.reduction)
        adversarial = F.cross_entropy(logits[half:].float(), y[half:], reduction=p.reduction)
        predicted = logits[half:].detach().argmax(1)
        # Reference log (`:80-87`): targeted, share predicted as t; untargeted, share not predicted as y.
        success = (predicted == y[half:]) if p.targeted else (predicted != y[half:])
        return LossOutput(p.weight_standard * clean + p.weight_adversarial * adversarial,
                          {"ce": float(F.cross_entropy(logits[:half].detach().float(), y[:half])),
                           "adversarial_ce": float(F.cross_entropy(logits[half:].detach().float(), y[half:])),
                           "attack_success": float(success.float().mean())})

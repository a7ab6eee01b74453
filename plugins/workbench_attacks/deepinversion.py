"""DeepInversion (Yin et al., CVPR 2020, "Dreaming to Distill"), spec/attacks-white-box-2.md B.

No generator and no public data: a batch of images is optimised directly so that T classifies
them as the requested classes while, at every `BatchNorm2d` of T, the batch's mean and variance
of that layer's input match the layer's running statistics (the private training data's), with
total-variation and l2 image priors and random jitter. As the authors' ImageNet script runs it
(`NVlabs/DeepInversion@2413af1`, `deepinversion.py`, `utils/utils.py`):

    x̃ = flip?(roll(x, (δ₁, δ₂))),  δ ~ U{−J..J}, one shift for the whole batch per step (:256-269)
    L = m·CE(T(x̃), y) + α_f·Σ_l s_l (‖μ_l − running_mean_l‖₂ + ‖σ²_l − running_var_l‖₂)
        + α_tv2·TV2(x̃) + α_tv1·TV1(x̃) + α_l2·mean_b ‖x̃_b‖₂                  (:29-66,279-329)

with s_1 = `first_bn_multiplier` (10) and 1 for the later layers, σ² the biased variance of the
layer's input over (batch, H, W); Adam (betas (0.5, 0.9), eps 1e-8) under a cosine schedule with a
100-step linear warm-up (`utils/utils.py:75-85`); the pixels clipped to the valid box after every
step (`:351-353`); the result is the iterate after the step whose (pre-step) loss was lowest
(`:355-357`).

The running statistics describe the whole training mixture, so the batch must mix the attacked
classes in equal numbers (the authors' batches always mix classes): one joint batch of
`samples_per_class` images per class, classes interleaved; a restart is a new joint batch.
Not implemented: the multi-resolution setting 0 (2 000 steps at half size, then 1 000 at full)
and the Adaptive-DeepInversion competition term; docs/attacks/deepinversion.md says why.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import (
    AttackCapabilities,
    AttackContext,
    AttackResult,
    Count,
    Steps,
    StrictModel,
    WorkbenchError,
    bounded_int,
    seeds,
)
from workbench.attack_toolkit import check_finite, dtype_of, report_steps, resolve_classes

# ---------------------------------------------------------------- params


class DeepInversionParams(StrictModel):
    """DeepInversion's budget. Reference values: the README command (`README.md:48`) and
    `imagenet_inversion.py`'s argparse defaults at `NVlabs/DeepInversion@2413af1`; defaults fit the
    embedded digits (16 px) on a 2-core CPU (spec B7, §D)."""

    classes: list[int] | None = None
    """Private classes to attack (default: all of them)."""
    first_classes: Count | None = None
    """Attack only the first N private classes; ignored when `classes` is set."""
    samples_per_class: Count = 8
    """Images per class in the joint batch (reference: batch 84 = 42 classes x 2, `README.md:48`,
    `deepinversion.py:191-202`; the paper 152). Digits: 8 x 5 classes = 40."""
    restarts: Count = 1
    """Independent joint batches, each from a new random start (reported as restarts)."""
    iterations: Steps = 2000
    """Adam steps (reference setting 1: 2 000 at full resolution; setting 0, the default, 2 000 at
    half then 1 000 at full; setting 2: 20 000; `deepinversion.py:211-241`). Digits: 2 000."""
    lr: float = Field(0.25, gt=0)
    """Peak learning rate (reference README 0.25; argparse 0.2, `imagenet_inversion.py:203`)."""
    betas: tuple[float, float] = (0.5, 0.9)
    """Adam betas (reference (0.5, 0.9), eps 1e-8, settings 0/1: `deepinversion.py:217-241`;
    setting 2 (0.9, 0.999))."""
    warmup: bounded_int(0, 10_000_000, "a number of steps") = 100
    """Linear warm-up steps of the cosine schedule (reference 100, `deepinversion.py:248`,
    `utils/utils.py:75-85`)."""
    main_loss_multiplier: float = Field(1.0, ge=0)
    """Weight m of the cross-entropy (reference 1, `imagenet_inversion.py:205`)."""
    bn_weight: float = Field(0.01, ge=0)
    """α_f, weight of the BatchNorm-statistics term (reference README 0.01; argparse 0.05,
    `imagenet_inversion.py:199`; CIFAR-10 paper setting 10). Digits: 0.01 (spec §D: E top-1 0.975
    against 0.85-0.93 at 0.1 and 0.60 without the term)."""
    first_bn_multiplier: float = Field(10.0, ge=0)
    """Scale of the first BatchNorm layer's term (reference 10, `imagenet_inversion.py:200`)."""
    tv_l2: float = Field(1e-4, ge=0)
    """α_tv2: weight of the sum of the Frobenius norms of the four neighbour differences
    (reference 1e-4, `imagenet_inversion.py:201`, `deepinversion.py:55-66`)."""
    tv_l1: float = Field(0.0, ge=0)
    """α_tv1: weight of the sum of the mean absolute neighbour differences (reference 0)."""
    l2: float = Field(1e-5, ge=0)
    """α_l2: weight of the batch mean of each image's L2 norm (reference 1e-5,
    `imagenet_inversion.py:204`, `deepinversion.py:318`)."""
    jitter: bounded_int(0, 4096, "a shift in pixels") = 1
    """Largest random shift in pixels, by `roll` (reference 30 at 224 px, hard-coded,
    `imagenet_inversion.py:127`). Digits: 1 (spec §D)."""
    flip: bool = False
    """Random horizontal flip of the whole batch with probability 1/2 per step (reference
    `--do_flip`, on in the README command). Digits: off (digits are not mirror-symmetric)."""
    clip: bool = True
    """Clip the pixels to [0, 1] after every step (reference settings 0/1: to the normalised
    image box, `utils/utils.py:108-121`; setting 2: off)."""
    keep: Literal["best", "last"] = "best"
    """Which iterate is the result: `best` = after the step with the lowest total loss, as the
    reference (`deepinversion.py:355-357`); `last` = the final one."""
    init_mean: float = 0.5
    """Mean of the start, in [0, 1] pixels (see `init_std`)."""
    init_std: float = Field(0.2, gt=0)
    """The start x ~ N(init_mean, init_std²) in [0, 1] pixel space (reference N(0, 1) in
    ImageNet-normalised space, `deepinversion.py:204-208`, which [0, 1] pixels cannot hold; spec B7).
    """
    allow_no_bn: bool = False
    """A target without `BatchNorm2d` leaves nothing for the feature term: refuse (the authors'
    code crashes, MIBench refuses) unless this is set; then the attack runs without it and says so
    (figure `bn_layers` = 0)."""


# ---------------------------------------------------------------- the loss terms


class BatchNormStatistics:
    """Forward hooks on every `BatchNorm2d` of a module (in `modules()` order, as the reference,
    `deepinversion.py:168-173`); after a forward pass, `terms()` holds per layer
    ‖μ − running_mean‖₂ + ‖σ² − running_var‖₂ of that layer's input (`deepinversion.py:29-52`)."""

    def __init__(self, module: nn.Module):
        self.layers = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
        self._terms: list[Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, layer: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(dim=1, unbiased=False)
        self._terms.append(
            torch.norm(layer.running_var.detach() - var, 2) + torch.norm(layer.running_mean.detach() - mean, 2)
        )

    def take(self) -> list[Tensor]:
        terms, self._terms = self._terms, []
        return terms

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def total_variation(x: Tensor) -> tuple[Tensor, Tensor]:
    """(TV2, TV1) over the four neighbour differences (horizontal, vertical, both diagonals):
    TV2 = Σ ‖Δ‖_F over the whole batch, TV1 = Σ mean |Δ| (`deepinversion.py:55-66`)."""
    diffs = [
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    ]
    return sum(torch.norm(d) for d in diffs), sum(d.abs().mean() for d in diffs)  # type: ignore[return-value]


def cosine_lr(base: float, warmup: int, iterations: int, t: int) -> float:
    """`lr_cosine_policy` (`utils/utils.py:75-85`) at 0-based step t."""
    if t < warmup:
        return base * (t + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (t - warmup) / (iterations - warmup))) * base


def invert_batch(
    params: DeepInversionParams,
    target: nn.Module,
    x0: Tensor,
    y: Tensor,
    rng: torch.Generator,
    on_step=None,
) -> tuple[Tensor, int, float]:
    """Optimise the joint batch from `x0`; returns (result images, its step (1-based), its loss).
    Jitter shifts and flips are drawn from `rng` (on the CPU)."""
    p = params
    x = x0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=p.lr, betas=p.betas, eps=1e-8)
    statistics = BatchNormStatistics(target)
    scales = [p.first_bn_multiplier] + [1.0] * (len(statistics.layers) - 1)
    best, best_step, best_loss = x.detach().clone(), 0, math.inf
    try:
        for t in range(p.iterations):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(p.lr, p.warmup, p.iterations, t)
            shift = torch.randint(-p.jitter, p.jitter + 1, (2,), generator=rng).tolist()
            view = torch.roll(x, shifts=(shift[0], shift[1]), dims=(2, 3))
            flip = bool(torch.rand((), generator=rng) < 0.5)
            if p.flip and flip:
                view = view.flip(3)
            statistics.take()
            logits = target(view)
            loss = p.main_loss_multiplier * F.cross_entropy(logits, y)
            terms = statistics.take()
            if terms and p.bn_weight > 0:
                loss = loss + p.bn_weight * sum(s * r for s, r in zip(scales, terms, strict=True))
            tv2, tv1 = total_variation(view)
            loss = loss + p.tv_l2 * tv2 + p.tv_l1 * tv1 + p.l2 * view.flatten(1).norm(dim=1).mean()
            (grad,) = torch.autograd.grad(loss, [x])
            x.grad = grad
            optimizer.step()
            if p.clip:
                with torch.no_grad():
                    x.clamp_(0, 1)
            value = float(loss.detach())
            if value < best_loss:  # the post-step iterate of the lowest pre-step loss (:355-357)
                best, best_step, best_loss = x.detach().clone(), t + 1, value
            if on_step is not None:
                on_step(t + 1, loss.detach(), logits.detach(), y)
    finally:
        statistics.close()
    if p.keep == "last":
        return x.detach(), p.iterations, value
    return best, best_step, best_loss


# ---------------------------------------------------------------- the attack


class DeepInversion:
    """DeepInversion: a joint batch of images optimised against T's BatchNorm statistics."""

    name = "deepinversion"
    capabilities = AttackCapabilities()

    def __init__(self, params: DeepInversionParams):
        self.params = params

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        target = ctx.target
        assert target is not None  # white-box
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        bn_layers = sum(isinstance(m, nn.BatchNorm2d) for m in target.modules())
        if bn_layers == 0 and not p.allow_no_bn:
            raise WorkbenchError(
                f"attack {self.name!r}: the target has no BatchNorm2d layer, so there are no training "
                "statistics to invert; set allow_no_bn = true to run it without the feature term (CE + TV + l2 only)"
            )
        if bn_layers == 0:
            ctx.emit("log", level="warning", message="deepinversion: the target has no BatchNorm2d; running without the feature term")
        device, dtype = torch.device(ctx.device), dtype_of(target)
        shape = (ctx.data.in_channels, ctx.data.image_size, ctx.data.image_size)
        y = torch.tensor(classes * p.samples_per_class, device=device)  # interleaved, as the reference
        order = torch.cat([torch.nonzero(y.cpu() == c)[:, 0] for c in classes])  # back to class order
        stage = f"attack:{self.name}"
        reports = report_steps(p.iterations, p.restarts)
        images, targets, restarts, best_steps = [], [], [], []
        for restart in range(p.restarts):
            rng = seeds.generator(ctx.seed, "attack", self.name, "restart", restart)
            x0 = p.init_mean + p.init_std * torch.randn(len(y), *shape, generator=rng)

            def on_step(step: int, loss: Tensor, logits: Tensor, y: Tensor, restart: int = restart) -> None:
                if step in reports:
                    check_finite(loss, attack=self.name, stage=stage, what=f"the loss at step {step}",
                                 hint="the inversion diverged; lower lr")
                    confidence = logits.float().softmax(1).gather(1, y[:, None])[:, 0]
                    ctx.emit("progress", stage=stage, step=restart * p.iterations + step,
                             total=p.restarts * p.iterations, loss=float(loss), confidence=float(confidence.mean()))

            result, best_step, _ = invert_batch(p, target, x0.to(device, dtype), y, rng, on_step)
            check_finite(result, attack=self.name, stage=stage, what="a reconstruction")
            images.append(result.cpu()[order])
            targets.append(y.cpu()[order])
            restarts.append(torch.full((len(y),), restart))
            best_steps.append(best_step)
        images_all = torch.cat(images).float().clamp(0, 1)
        targets_all = torch.cat(targets)
        with torch.no_grad():
            probs = torch.cat([target(part.to(device, dtype)).float().softmax(1).cpu() for part in images_all.split(256)])
        confidences = probs.gather(1, targets_all[:, None])[:, 0]
        figures = {
            "target_confidence": float(confidences.mean()),
            "bn_layers": float(bn_layers),
            "kept_step": sum(best_steps) / len(best_steps),
        }
        return AttackResult(images=images_all, targets=targets_all, restarts=torch.cat(restarts),
                            figures=figures, confidences=confidences)

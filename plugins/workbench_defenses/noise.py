"""Gaussian noise on the penultimate feature, post-hoc, as DaredEVAL ships it
(`BreuerLabs/DaredEVAL@388a324` `defenses/gaussian_noise.py`, `configuration/classifier/defense/
gaussian_noise.yaml`, marked "work in progress" there; Dared cites Chaudhuri, Guo, Tygert 2024,
`facebookresearch/hcrbounds@b240d5b` `codes/testers.py`, for the idea).

The target trains exactly as `none` (Dared builds the noise layer with `stddev = 0`,
`gaussian_noise.py:31`); the noise is put into the model that is saved, and so into every
evaluation and attack (`:44-70`): `logits = W·(z + n) + b` (`:33-37`). Dared's `n` is one vector
drawn once, `randn(feature_dim)·stddev` (`:97-105`), stddev 0.1 (`gaussian_noise.yaml:3`) — a fixed
shift `W·n` of the logit bias, which leaves `∂logits/∂x` unchanged. `mode = "fresh"` is the cited
source's defense instead: new noise on every forward pass, σ relative to the features' RMS over
the data (`testers.py:588-609`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import StrictModel, WorkbenchError, iterate_batches, seeds
from workbench_defenses.post_hoc import PostHocDefense
from workbench_defenses.tldmi import find_head


class GaussianNoiseParams(StrictModel):
    sigma: float = Field(0.1, ge=0)
    """Standard deviation of the noise (Dared `gaussian_noise.yaml:3`: 0.1, absolute). With
    `relative`, a multiple of the features' RMS instead (HCR `sigma_scale`: 1 for its MNIST net,
    2 ResNet-18, 3 Swin-T, 5 CIFAR-10, `testers.py:110-170`)."""
    mode: Literal["fixed", "fresh"] = "fixed"
    """`fixed` (Dared): one vector `n ~ σ·N(0, I)` drawn once after training and added to every
    sample's feature (a constant logit shift `W·n`). `fresh` (HCR): new noise for every sample on
    every forward pass after training, so the target's outputs are random."""
    relative: bool = False
    """Scale σ by the RMS of the penultimate features over the training data, sqrt(mean z²), computed
    once after training (HCR `testers.py:588-595`). Dared: off (absolute σ)."""


class NoisyLinear(nn.Linear):
    """The head `W·(z + n + σ_f·ε) + b`: `noise` the fixed vector n, `fresh_std` σ_f for per-forward
    noise ε ~ N(0, I). Both are zero (the plain head) until `finish_training` sets them; they are
    buffers, so the saved target carries them (state-dict keys of the head plus these two)."""

    def __init__(self, head: nn.Linear):
        with torch.random.fork_rng(devices=[]):  # built without disturbing the run's random stream
            super().__init__(head.in_features, head.out_features, bias=head.bias is not None,
                             device=head.weight.device, dtype=head.weight.dtype)
        self.weight = head.weight
        self.bias = head.bias
        self.register_buffer("noise", torch.zeros(head.in_features, device=head.weight.device))
        self.register_buffer("fresh_std", torch.zeros((), device=head.weight.device))

    def forward(self, z: Tensor) -> Tensor:
        z = z + self.noise.to(z.dtype)
        if float(self.fresh_std) > 0:
            z = z + self.fresh_std.to(z.dtype) * torch.randn_like(z)
        return F.linear(z, self.weight, self.bias)


class GaussianNoise(PostHocDefense):
    """Post-hoc: train as `none`, then add Gaussian noise to the penultimate feature of the trained target."""

    def __init__(self, params: GaussianNoiseParams):
        super().__init__(params)
        self.head: NoisyLinear | None = None

    def prepare_model(self, model, num_classes, ctx=None):
        try:
            parent, attr, head = find_head(model, num_classes)
        except WorkbenchError:
            raise WorkbenchError(f"gaussian-noise: backbone {type(getattr(model, 'model', model)).__name__} has no "
                                 f"linear head with {num_classes} outputs on its penultimate feature to add the noise "
                                 "before; use a backbone whose logits come from one nn.Linear (mcnn, scnn, vgg16-bn, "
                                 "facenet, timm models with a linear classifier)") from None
        self.head = NoisyLinear(head)
        setattr(parent, attr, self.head)
        self.keep_context(ctx)
        return model

    def finish_training(self, model: nn.Module) -> None:
        p = self.params
        # The features' RMS, HCR's unit for σ; measured whenever the data is at hand, so an absolute
        # σ can be judged against it in the log.
        train = self.data.train if self.data is not None else None
        rms = feature_rms(model, train) if train is not None or p.relative else None
        scale = p.sigma * rms if p.relative else p.sigma
        device = self.head.weight.device
        if p.mode == "fixed":
            g = seeds.generator(self.seed, "gaussian-noise")
            self.head.noise.copy_((torch.randn(self.head.in_features, generator=g, dtype=torch.float64) * scale)
                                  .to(device, self.head.noise.dtype))
        else:
            self.head.fresh_std.fill_(scale)
        shown = f"σ = {p.sigma:g}" + (f" × feature RMS {rms:.4g} = {scale:.4g}" if p.relative
                                      else f", feature RMS {rms:.4g}" if rms is not None else "")
        self.announce("gaussian-noise", f"{'one fixed noise vector' if p.mode == 'fixed' else 'fresh noise per forward'}"
                      f" ({shown}) added to the penultimate feature of the trained target for evaluation and attacks")


@torch.no_grad()
def feature_rms(model: nn.Module, data) -> float:
    """sqrt(mean z²) of the penultimate feature over the data's training split (eval mode), HCR's scale."""
    if data is None:
        raise WorkbenchError("gaussian-noise: relative = true needs the training data to measure the features' RMS")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, _ in iterate_batches(data, 256, shuffle=False):
        feature = model.forward_hidden(x.to(device))[1][-1].double()
        total += float(feature.pow(2).sum())
        count += feature.numel()
    model.train(was_training)
    return (total / max(count, 1)) ** 0.5

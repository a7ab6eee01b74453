"""IF-GMI, intermediate-feature model inversion (Qiu et al., ECCV 2024), spec/attacks-white-box-2.md A.

IF-GMI is PPA (`ppa.py`: candidate selection by T's confidence, Adam with betas (0.1, 0.1) on the
Poincaré loss of a randomly resized crop) in which the single latent search becomes a sequence of
stages (`final-solution/IF-GMI@e792ef1`, `attacks/optimize.py:24-122`):

- stage 0 optimises the latent (the reference's W vector; here the DCGAN's z);
- stage k >= 1 cuts the generator before its k-th up-sampling block and optimises that block's
  input feature map φ_k directly, starting from (and centred on) the value the previous stage's
  final variable maps to; after every Adam step, φ_k − centre is projected onto an L1 ball of
  radius r_k, per sample (`attacks/optimize.py:82-90`, `utils/stylegan.py:105-119`);
- every stage has a fresh Adam (`optimize.py:57`); the image a stage records is the one computed in
  its last iteration, before the last update (`optimize.py:62-64,122`);
- no final selection (the released code returns every optimised candidate,
  `intermediate_attack.py:252-254`); PPA's selection is a switch (`final_selection`).

The workbench maps this onto its DCGAN prior (`networks.Generator`) as spec A5 describes: stage k's
variable is the input of the k-th `ConvTranspose2d` (the `to_image` layer is the last one), the
generator stays in eval mode, and since a DCGAN has no style vector, stages >= 1 optimise the
feature alone (the reference co-optimises W with φ_k). docs/attacks/ifgmi.md lists every deviation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from workbench.api import (
    AttackCapabilities,
    AttackContext,
    AttackResult,
    BatchSize,
    Count,
    Steps,
    WorkbenchError,
)
from workbench.attack_toolkit import (
    Generator,
    Group,
    check_finite,
    dtype_of,
    emit_progress,
    group_stream,
    report_steps,
    resize,
    resolve_classes,
)
from workbench_attacks.ppa import PPA, PPAParams, poincare_loss, random_resized_crop

# ---------------------------------------------------------------- params


class IFGMIParams(PPAParams):
    """IF-GMI's budget: PPA's fields (generator, candidates, Poincaré loss, crops, final selection)
    plus the stages. Reference values from `final-solution/IF-GMI@e792ef1` `configs/**/main-*.yaml`;
    defaults fit the embedded digits (16 px) on a 2-core CPU (spec A7, §D)."""

    search_space: Count = 1000
    """Latents drawn for the initial selection (reference `search_space_size` 2000 FaceScrub, 5000
    CelebA; `IF-GMI:attacks/initial_selection.py:40-42`). Digits: 1000."""
    num_candidates: Count = 16
    """Candidates per class, every one optimised and (without `final_selection`) returned
    (reference 50: `candidates.num_candidates`, `intermediate_attack.py:213-233`). Digits: 16."""
    samples_per_target: Count = 16
    """Kept per class when `final_selection` is on (reference: equal to `num_candidates`, so the
    selection is off, `IF-GMI@58ee187:configs/ffhq_facescrub/main-resnet.yaml:21,71`)."""
    iterations: Steps = 50
    """Adam steps of stage 0, the latent search (reference `steps[0]`: 50 FaceScrub, 70 CelebA,
    100 AFHQ; `configs/*/main-*.yaml`). Digits: 50."""
    feature_steps: list[int] = Field(default_factory=lambda: [10, 10])
    """Adam steps of stages 1, 2, ...: one entry per intermediate feature optimised, the k-th the
    input of the generator's k-th transposed convolution (reference `steps[1:]`: [10]x7 FaceScrub,
    [25]x4 CelebA DenseNet, `configs/*/main-*.yaml`). At most as many as the generator has
    up-sampling layers (2 at 16 px, 4 at 64 px). Digits: [10, 10]."""
    lr: float = Field(0.005, gt=0)
    """Adam learning rate of stage 0 (reference 0.005, AFHQ 0.01; `optimizer` in the configs,
    `attacks/optimize.py:57`)."""
    feature_lr: float | None = Field(0.05, gt=0)
    """Adam learning rate of the feature stages; None = `lr`, as the reference (one lr for all
    stages). Digits: 0.05 (a deviation: at 0.005 and 10 steps the features barely move, spec §D:
    E top-1 0.35 -> 0.53 against 0.30 -> 0.68 at 0.05)."""
    radii: list[float | None] = Field(default_factory=lambda: [0.25, 0.1])
    """L1-ball radius of each feature stage (one per `feature_steps` entry; None = no ball),
    centred on the stage's starting value (reference `max_radius_mid_vector` [1000, 2000, 3000,
    ...], indexed by stage so stage 1 uses 2000; `attacks/optimize.py:82-90`). Read per
    `radius_mode`. Digits: 0.25, 0.1 per coordinate = the reference's r/D for its first two
    feature stages (2000/8192, 3000/32768)."""
    radius_mode: Literal["per_coordinate", "absolute"] = "per_coordinate"
    """`per_coordinate`: the radius is ρ·D with D the feature's size per sample (StyleGAN's
    absolute radii are norms of its own activations and do not transfer, spec A5.4);
    `absolute`: the value itself, as the reference reads it."""
    loss_batch: BatchSize = 15
    """The summed per-candidate Poincaré losses are divided by this (the reference's batch mean
    over `batch_size` x #GPUs = 5 x 3, `intermediate_attack.py:41,84-85`; Adam's step hardly
    depends on it)."""
    final_selection: bool = False
    """PPA's final selection over random transforms (reference main configs: off)."""

    @model_validator(mode="after")
    def _one_radius_per_stage(self) -> IFGMIParams:
        if len(self.radii) != len(self.feature_steps):
            raise ValueError(
                f"radii has {len(self.radii)} entries but feature_steps has {len(self.feature_steps)}: "
                "give one radius (or null) per feature stage"
            )
        if any(n < 1 for n in self.feature_steps):
            raise ValueError(f"feature_steps = {self.feature_steps}: every stage needs at least 1 step")
        if any(r is not None and r <= 0 for r in self.radii):
            raise ValueError(f"radii = {self.radii}: a radius must be positive (or null for no ball)")
        return self


# ---------------------------------------------------------------- the generator, cut into layers


def generator_layers(generator: nn.Module) -> list[Callable[[Tensor], Tensor]]:
    """The generator as a chain f_0 ... f_L: f_0 maps z to the first 4x4 feature map, f_k
    (1 <= k <= L) is the k-th transposed-convolution layer (with its BN and ReLU), the last one
    `to_image` with the resize and sigmoid. Composing them is exactly `generator(z)`."""
    if not isinstance(generator, Generator):
        raise WorkbenchError(
            f"attack 'if-gmi': the generator is a {type(generator).__name__}; IF-GMI cuts the "
            "workbench's DCGAN generator (networks.Generator) into layers and knows no other"
        )
    g = generator

    def first(z: Tensor) -> Tensor:
        return g.project(z).view(z.shape[0], g.first, 4, 4)

    def last(h: Tensor) -> Tensor:
        return resize(g.to_image(h), g.image_size).sigmoid()

    modules = list(g.blocks)
    middle = [nn.Sequential(*modules[i : i + 3]) for i in range(0, len(modules), 3)]
    return [first, *middle, last]


def project_l1(delta: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Per row of `delta` (flattened), its Euclidean projection onto {‖δ‖₁ <= radius} by Duchi et
    al.'s sort method, as the reference (`IF-GMI:utils/stylegan.py:105-119`): rows inside the ball
    are kept; otherwise θ = (c_ρ − r)/ρ with c the cumulative sum of |δ| sorted descending and
    ρ = max{j : u_j·j > c_j − r}, and δ <- sign(δ)·max(|δ| − θ, 0). Returns (projected, which rows
    changed)."""
    flat = delta.flatten(1)
    outside = flat.abs().sum(dim=1) >= radius
    u = flat.abs().sort(dim=1, descending=True).values
    c = u.cumsum(dim=1)
    j = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    rho = ((u * j) > (c - radius)).to(torch.int64).cumsum(dim=1).argmax(dim=1)  # last True index
    theta = (c.gather(1, rho[:, None])[:, 0] - radius) / (rho + 1).to(flat.dtype)
    shrunk = flat.sign() * (flat.abs() - theta[:, None]).clamp(min=0)
    out = torch.where(outside[:, None], shrunk, flat)
    return out.view_as(delta), outside


# ---------------------------------------------------------------- the staged search


def staged_search(
    params: IFGMIParams,
    layers: list[Callable[[Tensor], Tensor]],
    target: nn.Module,
    z: Tensor,
    y: Tensor,
    streams: list[torch.Generator],
    on_step: Callable[[int, int, Tensor, Tensor], None] | None = None,
) -> tuple[list[Tensor], list[float]]:
    """Run every stage on the candidates `z` (one class segment of equal length per stream);
    returns (the image each stage records, the share of (step, row) pairs where each feature
    stage's ball changed the feature).

    `on_step(stage, step, per-row loss, per-row confidence)` reports progress."""
    p = params
    steps = [p.iterations, *p.feature_steps]
    lrs = [p.lr] + [p.feature_lr if p.feature_lr is not None else p.lr] * len(p.feature_steps)
    variable = z.detach().clone()
    recorded: list[Tensor] = []
    binding: list[float] = []
    segment = len(z) // len(streams)
    for stage, (n_steps, lr) in enumerate(zip(steps, lrs, strict=True)):
        centre = variable.detach().clone()
        leaf = centre.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([leaf], lr=lr, betas=p.betas, weight_decay=0.0)
        radius = None
        if stage > 0 and p.radii[stage - 1] is not None:
            r = float(p.radii[stage - 1])  # type: ignore[arg-type]
            radius = r * centre[0].numel() if p.radius_mode == "per_coordinate" else r
        changed = 0
        images = torch.empty(0)
        for step in range(1, n_steps + 1):
            h = leaf
            for layer in layers[stage:]:
                h = layer(h)
            images = h
            views = torch.cat(
                [
                    random_resized_crop(part, stream, p.train_crop_scale)
                    for part, stream in zip(images.split(segment), streams, strict=True)
                ]
            )
            logits = target(views)
            per_row = poincare_loss(logits, y)
            (grad,) = torch.autograd.grad(per_row.sum() / p.loss_batch, [leaf])
            leaf.grad = grad
            optimizer.step()
            if radius is not None:
                with torch.no_grad():
                    projected, outside = project_l1(leaf - centre, radius)
                    leaf.copy_(centre + projected)
                    changed += int(outside.sum())
            if on_step is not None:
                confidence = logits.detach().softmax(dim=1).gather(1, y[:, None])[:, 0]
                on_step(stage, step, per_row.detach(), confidence)
        recorded.append(images.detach())
        if stage > 0:
            binding.append(changed / (n_steps * len(z)))
        with torch.no_grad():  # hand-over: the next layer's input from this stage's final variable
            variable = layers[stage](leaf.detach()) if stage + 1 < len(steps) else leaf.detach()
    return recorded, binding


# ---------------------------------------------------------------- the attack


class IFGMI(PPA):
    """IF-GMI: PPA's candidates, then a latent stage and one stage per intermediate feature."""

    name = "if-gmi"
    capabilities = AttackCapabilities(prepares=True, seeded_prior=True)

    def __init__(self, params: IFGMIParams):
        self.params = params

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        generator, hit = self.generator_for(ctx)
        layers = generator_layers(generator)
        if len(p.feature_steps) > len(layers) - 1:
            raise WorkbenchError(
                f"attack 'if-gmi': feature_steps has {len(p.feature_steps)} stages but the generator at "
                f"{ctx.data.image_size} px has only {len(layers) - 1} up-sampling layers; give at most "
                f"{len(layers) - 1} entries (and as many radii)"
            )
        initial = self.candidates(ctx, generator, classes)
        device, dtype = torch.device(ctx.device), dtype_of(generator)
        stages = 1 + len(p.feature_steps)
        total_steps = p.iterations + sum(p.feature_steps)
        per_stage: list[list[Tensor]] = [[] for _ in range(stages)]
        binding_sums = [0.0] * (stages - 1)
        stage_name = f"attack:{self.name}"
        reports = report_steps(total_steps, 1)
        offsets = [0, p.iterations]  # steps before each stage
        for n in p.feature_steps[:-1]:
            offsets.append(offsets[-1] + n)
        for index, c in enumerate(classes):
            stream = group_stream(ctx.seed, self.name, Group(c, 0))
            y = torch.full((p.num_candidates,), c, device=device, dtype=torch.long)

            def on_step(stage: int, step: int, loss: Tensor, conf: Tensor, c: int = c, index: int = index) -> None:
                done = offsets[stage] + step
                if done in reports:
                    check_finite(loss, attack=self.name, stage=stage_name, what=f"the loss at stage {stage}, step {step}",
                                 hint="the search diverged; lower lr or feature_lr")
                    emit_progress(ctx, stage_name, step=index * total_steps + done, total=len(classes) * total_steps,
                                  chunk=[Group(c, 0)], group_loss=loss.mean()[None], group_confidence=conf.mean()[None])

            recorded, binding = staged_search(
                p, layers, ctx.target, initial[c].to(device, dtype), y, [stream], on_step
            )
            for k, images in enumerate(recorded):
                check_finite(images, attack=self.name, stage=stage_name, what=f"a stage-{k} reconstruction")
                per_stage[k].append(images.cpu().clamp(0, 1))
            for k, share in enumerate(binding):
                binding_sums[k] += share
        images_by_stage = [torch.cat(parts) for parts in per_stage]
        images = images_by_stage[-1]
        targets = torch.tensor([c for c in classes for _ in range(p.num_candidates)])
        figures: dict[str, float] = {"gan_cached": float(hit)}
        for k, stage_images in enumerate(images_by_stage):  # diagnostics, never the result (spec A6)
            for key, value in self.unselected_accuracy(ctx, stage_images, targets).items():
                figures[f"{key.removesuffix('_unselected')}_stage{k}"] = value
        for k, share in enumerate(binding_sums, start=1):
            figures[f"ball_binding_stage{k}"] = share / len(classes)
        if p.final_selection:
            keep = self.final_selection(ctx, images, targets)
            figures.update(self.unselected_accuracy(ctx, images, targets))
            images, targets = images[keep], targets[keep]
        confidences = self.target_confidence(ctx, images, targets)
        figures["target_confidence"] = float(confidences.mean())
        ctx.emit(
            "log",
            level="info",
            message=f"if-gmi: {p.num_candidates} candidates per class from {p.search_space} latents; stages "
            f"{[p.iterations, *p.feature_steps]} (z, then {len(p.feature_steps)} intermediate features)",
        )
        return AttackResult(images=images, targets=targets, restarts=None, figures=figures, confidences=confidences)

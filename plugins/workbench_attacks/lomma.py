"""LOMMA (Nguyen et al., CVPR 2023, "Re-thinking Model Inversion Attacks Against Deep Neural
Networks") on top of GMI and KED-MI.

LOMMA is not a new search: it replaces the identity term of the base attack and adds surrogate
("augmented") models. Per generated image x = G(z) of class y (spec/attacks.md B1.1):

    iden(x, y) = (1/K) Σ_k ℓ(M_k(x), y) + λ_reg · mean_d (f_T(x)_d − p_reg_d)²

with M_0 = T and M_1..M_{K−1} the surrogates, ℓ the *logit loss* −o[y] (the reference applies
`nn.NLLLoss` to raw logits) or cross-entropy, `p_reg` the mean penultimate feature of T over the
public images, and the total per latent `prior + λ · iden` (λ = 100), reduced exactly as the base
attack reduces it (GMI: Σ_latents / loss_batch; KED-MI: the mean of each class block).

The four variants of the paper (LOMMA `recovery.py:21-39`): `baseline` (CE, T alone), `L_aug`
(CE, T + surrogates), `L_logit` (logit loss + feature regulariser, T alone), `ours` (logit loss
+ regulariser + surrogates).

Stages: the base prior is the base attack's own (the GMI GAN is public-only and shared with
`prepare`; the KED-MI GAN is trained with T alone, as LOMMA does). The surrogates are distilled
from T on the public images (KL at temperature τ, no hard labels) once per target: a cached
stage keyed on T's weights, the public data, the surrogate specs, the distillation config and
the seed. `p_reg` is one forward pass of T over the public images, recomputed per run.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import (
    AttackContext,
    AttackResult,
    BatchSize,
    ComponentTable,
    Count,
    Epochs,
    StrictModel,
    WorkbenchError,
    average_gradients,
    seeds,
    split_forward,
    weights_fingerprint,
)
from workbench.attack_toolkit import (
    Chunk,
    Group,
    ImagePool,
    check_finite,
    dtype_of,
    freeze,
    make_groups,
    public_pool,
    resolve_classes,
    result,
    search,
    stage_cache,
)
from workbench_attacks.gmi import GMI, GMIParams, GMISearch
from workbench_attacks.kedmi import KEDMI, KEDMIParams, KEDMISearch, realness_logit

BackboneTable = ComponentTable.of("backbone")

Variant = Literal["baseline", "L_aug", "L_logit", "ours"]


# ---------------------------------------------------------------- params


class LOMMAFields(StrictModel):
    """What LOMMA adds to the base attack's params (spec/attacks.md B1, E2)."""

    variant: Variant = "ours"
    """Which of the paper's four attacks: `baseline` (cross-entropy on T alone), `L_aug`
    (cross-entropy on T and the surrogates), `L_logit` (logit loss −o_y plus the feature
    regulariser, T alone), `ours` (logit loss + regulariser + surrogates). Reference: LOMMA
    `recovery.py:21-39`; BiDO+ evaluates with the surrogates (`low_resolution/config/attacking/*.json`)."""
    feature_reg: float = Field(1.0, ge=0)
    """λ_reg, the weight of the regulariser mean_d (f_T(x) − p_reg)² (variants `L_logit` and
    `ours` only; 0 switches it off). Reference 1.0 (`lam`, LOMMA
    `config/celeba/attacking/*.json`; used in `attack.py:83-104`)."""
    p_reg_images: Count = 5000
    """Public images (in dataset order) whose mean target feature is p_reg. Reference ≈5000
    (batches of 50 while `batch_idx·50 ≤ 5000`, LOMMA `attack.py:64-81`); digits: all ≈900."""
    surrogate_1: BackboneTable | None = BackboneTable(use="mcnn", width=8)
    """First surrogate backbone (any registered backbone; None drops it). Reference:
    EfficientNet-B0 (LOMMA `models/classify.py:280-349`; a `timm` backbone on CelebA). Digits:
    MCNN width 8."""
    surrogate_2: BackboneTable | None = BackboneTable(use="scnn", width=8)
    """Second surrogate. Reference: EfficientNet-B1 (LOMMA `models/classify.py:280-349`). Digits:
    SCNN width 8."""
    surrogate_3: BackboneTable | None = BackboneTable(use="scnn", width=4)
    """Third surrogate. Reference: EfficientNet-B2 (LOMMA `models/classify.py:280-349`). Digits: SCNN width 4 (the spec's 2×256 MLP
    is not a registered backbone; a deviation)."""
    distill_epochs: Epochs = 20
    """Distillation epochs over the public images per surrogate. Reference 20 (LOMMA
    `config/celeba/training_augmodel/*.json`; BiDO+ loads the 50-epoch students `_kd_0_50`)."""
    distill_optimizer: Literal["sgd", "adam"] = "adam"
    """Optimizer of the distillation. Reference: SGD, momentum 0.9 (LOMMA `engine.py:353-442`).
    Digits: Adam (SGD from scratch on 14 batches an epoch leaves the surrogates far from T:
    agreement 0.41-0.78 vs 0.72-0.87, spec §D)."""
    distill_lr: float = Field(1e-3, gt=0)
    """Learning rate of the distillation. Reference 0.01 in the shipped config, 0.02 for the
    released students (folder `{T}_{S}_0.02_1.0`, LOMMA `engine.py:370`). Digits: 1e-3 (Adam)."""
    distill_weight_decay: float = Field(0.0, ge=0)
    """Weight decay of the distillation optimizer. Reference 1e-4 (LOMMA `engine.py:353-442`,
    with SGD). Digits: 0 (with Adam)."""
    distill_step: Epochs = 20
    """StepLR period in epochs (reference 20, γ = `distill_gamma`: LOMMA `engine.py:353-442`)."""
    distill_gamma: float = Field(0.5, gt=0, le=1)
    """StepLR factor (reference 0.5, LOMMA `engine.py:353-442`)."""
    distill_batch_size: BatchSize = 64
    """Public images per distillation step (reference 64, `training_augmodel/*.json`)."""
    distill_temperature: float = Field(1.0, gt=0)
    """Temperature τ of KL(softmax(T/τ) ‖ softmax(S/τ)), divided by τ² and the batch (as the
    reference does; common KD multiplies by τ²). Reference 1.0 (LOMMA `engine.py:353-442`,
    folder `..._1.0`)."""

    @property
    def logit_loss(self) -> bool:
        return self.variant in ("L_logit", "ours")

    @property
    def augment(self) -> bool:
        return self.variant in ("L_aug", "ours")

    def surrogate_tables(self) -> list[ComponentTable]:
        tables = [self.surrogate_1, self.surrogate_2, self.surrogate_3]
        return [t for t in tables if t is not None]


DISTILL_FIELDS = (
    "distill_epochs",
    "distill_optimizer",
    "distill_lr",
    "distill_weight_decay",
    "distill_step",
    "distill_gamma",
    "distill_batch_size",
    "distill_temperature",
)


class LOMMAGMIParams(GMIParams, LOMMAFields):
    """LOMMA on GMI: GMI's budget (its field docs) plus LOMMA's loss and surrogates. Reference
    search on CelebA (LOMMA `attack.py:188-264`): lr 0.02, 2400 iterations, 5 restarts, B = 60."""


class LOMMAKEDMIParams(KEDMIParams, LOMMAFields):
    """LOMMA on KED-MI: KED-MI's budget (its field docs) plus LOMMA's loss and surrogates.
    Reference search (LOMMA `attack.py:108-186`): Adam 0.02, 2400 iterations, μ = 0, log σ² = 1,
    z clamped to [−1, 1] before G."""

    init_log_var: float = Field(1.0)
    """Initial log σ² of every class's Gaussian (μ starts at 0). Reference 1 (LOMMA
    `attack.py:122-123`, as the KED-MI authors); BiDO's evaluation uses 0."""
    clip_z: bool = True
    """Clamp z = μ + σ·ε to [−1, 1] before G (reference True: LOMMA `attack.py:136-138`)."""


# ---------------------------------------------------------------- the objective


def logit_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per row −o[b, y_b]: `nn.NLLLoss` on raw logits, as LOMMA applies it (`attack.py:52-62`)."""
    return -logits.gather(1, y[:, None])[:, 0]


def feature_regulariser(features: Tensor, p_reg: Tensor) -> Tensor:
    """Per row mean_d (f[b, d] − p_reg[d])² (LOMMA `attack.py:12-18`, the mean feature, not a draw)."""
    return (features.flatten(1) - p_reg).pow(2).mean(dim=1)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """`KLDiv(sum)(log_softmax(S/τ), softmax(T/τ)) / τ² / batch` (LOMMA `engine.py:353-442`)."""
    log_p = (student_logits / temperature).log_softmax(dim=1)
    q = (teacher_logits / temperature).softmax(dim=1)
    kl = F.kl_div(log_p, q, reduction="sum")
    return kl / temperature**2 / student_logits.shape[0]


class Identity:
    """LOMMA's identity term per image: (1/K) Σ_k ℓ(M_k(x), y) [+ λ_reg · reg on T's feature]."""

    def __init__(
        self,
        target: nn.Module,
        surrogates: list[nn.Module],
        *,
        logit: bool,
        feature_reg: float,
        p_reg: Tensor | None,
    ):
        self.target, self.surrogates = target, surrogates
        self.logit, self.feature_reg, self.p_reg = logit, feature_reg, p_reg

    @property
    def uses_features(self) -> bool:
        return self.logit and self.feature_reg > 0

    def __call__(self, images: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(per-row identity loss, T's logits)."""
        if self.uses_features:
            logits, hiddens = self.target.forward_hidden(images)
        else:
            logits = self.target(images)

        def loss(o: Tensor) -> Tensor:
            return logit_loss(o, y) if self.logit else F.cross_entropy(o, y, reduction="none")

        terms = [loss(logits)] + [loss(s(images)) for s in self.surrogates]
        identity = torch.stack(terms).mean(dim=0)
        if self.uses_features:
            identity = identity + self.feature_reg * feature_regulariser(hiddens[-1], self.p_reg)
        return identity, logits


# ---------------------------------------------------------------- stages


def public_images(pool: ImagePool, limit: int | None = None) -> Tensor:
    """The first `limit` public images in dataset order, as one CPU tensor."""
    n = pool.length if limit is None else min(limit, pool.length)
    if pool.images is not None:
        return pool.images[:n]
    return torch.stack([pool._image(i) for i in range(n)])


@torch.no_grad()
def feature_mean(target: nn.Module, images: Tensor, device: torch.device, batch: int = 50) -> Tensor:
    """p_reg: T's mean penultimate feature (its last hidden) over `images`, in batches of 50."""
    dtype = dtype_of(target)
    total, count = None, 0
    for start in range(0, len(images), batch):
        _, hiddens = target.forward_hidden(images[start : start + batch].to(device, dtype))
        f = hiddens[-1].flatten(1).double()
        total = f.sum(0) if total is None else total + f.sum(0)
        count += len(f)
    return (total / count).to(dtype)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    images: Tensor,
    p: LOMMAFields,
    *,
    device: torch.device,
    rng: torch.Generator,
) -> float:
    """Train `student` in place to match T's softened outputs on `images`; last loss out."""
    params = list(student.parameters())
    if p.distill_optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=p.distill_lr, momentum=0.9, weight_decay=p.distill_weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=p.distill_lr, weight_decay=p.distill_weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=p.distill_step, gamma=p.distill_gamma)
    dtype = dtype_of(teacher)

    def teacher_logits_of(x: Tensor) -> Tensor:
        with torch.no_grad():
            return teacher(x)

    student.train()
    loss = torch.zeros(())
    for _epoch in range(p.distill_epochs):
        order = torch.randperm(len(images), generator=rng)
        for start in range(0, len(images), p.distill_batch_size):
            x = images[order[start : start + p.distill_batch_size]].to(device, dtype)
            student_logits, teacher_logits = split_forward(lambda x: (student(x), teacher_logits_of(x)), x)
            loss = distillation_loss(student_logits, teacher_logits, p.distill_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(student)  # under torchrun: every rank took a slice of the batch
            opt.step()
        schedule.step()
    student.eval()
    return float(loss.detach())


class LOMMAMixin:
    """The target-dependent LOMMA stages a base attack class (GMI, KED-MI) gains."""

    name: str
    params: LOMMAFields

    def surrogates(self, ctx: AttackContext, pool: ImagePool) -> tuple[list[nn.Module], bool]:
        """The distilled surrogates (cached per target), frozen; and whether the cache hit."""
        p = self.params
        if not p.augment:
            return [], False
        tables = p.surrogate_tables()
        if not tables:
            raise WorkbenchError(
                f"attack {self.name!r}: variant {p.variant!r} needs surrogates, but surrogate_1..3 are all unset"
            )
        device = torch.device(ctx.device)
        dtype = dtype_of(ctx.target)
        students: dict[str, nn.Module] = {}
        with seeds.seeded(ctx.seed, "attack", "lomma", "surrogates", "init", device=device):
            for i, table in enumerate(tables):
                try:
                    backbone = table.instance
                except RuntimeError:
                    raise WorkbenchError(
                        f"attack {self.name!r}: surrogate {table.use!r} was not built; create the attack "
                        "through the registry"
                    ) from None
                model = backbone.build(ctx.data.num_classes, ctx.data.in_channels, ctx.data.image_size)
                students[f"s{i}"] = model.to(device, dtype)
        key = {
            "target": weights_fingerprint(ctx.target),
            "public": pool.fingerprint(),
            "surrogates": [
                {"use": t.use, **(t.config.model_dump(mode="json") if t.config is not None else t.params)}
                for t in tables
            ],
            "distill": {k: getattr(p, k) for k in DISTILL_FIELDS},
            "num_classes": ctx.data.num_classes,
            "seed": ctx.seed,
        }

        def compute() -> dict:
            images = public_images(pool)
            losses = {}
            for index, (prefix, student) in enumerate(students.items()):
                rng = seeds.generator(ctx.seed, "attack", "lomma", "surrogates", index)
                losses[prefix] = distill(student, ctx.target, images, p, device=device, rng=rng)
                ctx.emit(
                    "progress",
                    stage=f"attack:{self.name}:surrogates",
                    step=index + 1,
                    total=len(students),
                    loss=losses[prefix],
                )
            return {"figures": losses}

        _meta, hit = stage_cache(ctx).load_or_compute(
            "lomma-surrogates", key, students, compute, what=f"attack {self.name!r}: the surrogates"
        )
        freeze(*students.values())
        return list(students.values()), hit

    def identity(self, ctx: AttackContext, pool: ImagePool) -> tuple[Identity, bool]:
        p = self.params
        surrogates, hit = self.surrogates(ctx, pool)
        p_reg = None
        if p.logit_loss and p.feature_reg > 0:
            if not hasattr(ctx.target, "forward_hidden"):
                raise WorkbenchError(
                    f"attack {self.name!r}: the feature regulariser needs the target's forward_hidden; "
                    "set feature_reg = 0 or use a workbench backbone"
                )
            p_reg = feature_mean(ctx.target, public_images(pool, p.p_reg_images), torch.device(ctx.device))
            check_finite(p_reg, attack=self.name, stage=f"attack:{self.name}", what="p_reg")
        return (
            Identity(ctx.target, surrogates, logit=p.logit_loss, feature_reg=p.feature_reg, p_reg=p_reg),
            hit,
        )


# ---------------------------------------------------------------- LOMMA on GMI


class LOMMAGMISearch(GMISearch):
    """GMI's search (SGD-Nesterov, clamp, Σ / loss_batch) with LOMMA's identity term."""

    def __init__(self, params: LOMMAGMIParams, generator, critic, identity: Identity):
        super().__init__(params, generator, critic, identity.target)
        self.identity = identity

    def loss(self, leaves: list[Tensor], chunk: Chunk, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fake = self.generator(leaves[0])
        identity, logits = self.identity(fake, y)
        per_latent = -self.critic(fake) + self.p.lambda_id * identity
        confidence = logits.detach().softmax(dim=1).gather(1, y[:, None])[:, 0]
        return per_latent.sum() / self.p.loss_batch, per_latent, confidence


class LOMMAGMI(LOMMAMixin, GMI):
    """LOMMA on GMI: GMI's public WGAN-GP prior (shared through `prepare`), LOMMA's identity term."""

    name = "lomma-gmi"

    def __init__(self, params: LOMMAGMIParams):
        self.params = params

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        pool = public_pool(ctx, self.name)
        generator, critic, gan_hit = self.prior(ctx, pool)
        identity, surrogates_hit = self.identity(ctx, pool)
        units: list[list[Group]] = [[g] for g in make_groups(classes, p.restarts)]
        problem = LOMMAGMISearch(p, generator, critic, identity)
        images, targets, restarts, confidence = search(
            ctx, problem, units, attack=self.name, iterations=p.iterations, max_batch=p.max_batch
        )
        return result(
            images,
            targets,
            restarts,
            confidence,
            gan_cached=float(gan_hit),
            surrogates_cached=float(surrogates_hit),
        )


# ---------------------------------------------------------------- LOMMA on KED-MI


class LOMMAKEDMISearch(KEDMISearch):
    """KED-MI's distributional search (Adam on μ, log σ²; block means) with LOMMA's identity term."""

    def __init__(self, params: LOMMAKEDMIParams, generator, discriminator, identity: Identity):
        super().__init__(params, generator, discriminator, identity.target)
        self.identity = identity

    def loss(self, leaves: list[Tensor], chunk: Chunk, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_var = leaves
        eps = torch.cat([torch.randn(1, self.p.z_dim, generator=s) for s in chunk.streams]).to(mu)
        fake = self.generator(self.latents(mu, log_var, eps))
        _, class_logits = self.discriminator(fake, blocks=chunk.blocks)
        identity, logits = self.identity(fake, y)
        per_latent = F.softplus(-realness_logit(class_logits)) + self.p.lambda_id * identity
        # Each block's loss is its mean (the reference's batch mean), summed over the blocks;
        # the weights in the losses' dtype (a float32 1/b would cost float64 tests 3e-8).
        weights = torch.cat(
            [
                torch.full((b,), 1.0 / b, dtype=per_latent.dtype, device=per_latent.device)
                for b in chunk.blocks
            ]
        )
        confidence = logits.detach().softmax(dim=1).gather(1, y[:, None])[:, 0]
        return (per_latent * weights).sum(), per_latent, confidence


class LOMMAKEDMI(LOMMAMixin, KEDMI):
    """LOMMA on KED-MI: the K+1 GAN trained with T alone, LOMMA's identity term in the search."""

    name = "lomma-kedmi"

    def __init__(self, params: LOMMAKEDMIParams):
        self.params = params

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        pool = public_pool(ctx, self.name)
        generator, discriminator, gan_hit = self.prior(ctx, pool)
        identity, surrogates_hit = self.identity(ctx, pool)
        problem = LOMMAKEDMISearch(p, generator, discriminator, identity)
        images, targets, restarts, confidence = search(
            ctx,
            problem,
            self.units(classes),
            attack=self.name,
            iterations=p.iterations,
            max_batch=p.max_batch,
        )
        return result(
            images,
            targets,
            restarts,
            confidence,
            gan_cached=float(gan_hit),
            surrogates_cached=float(surrogates_hit),
            draws_per_fit=float(p.samples_per_class),
        )

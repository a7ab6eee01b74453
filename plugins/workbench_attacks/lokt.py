"""LOKT, label-only model inversion via knowledge transfer (Nguyen et al., NeurIPS 2023),
spec/attacks-label-only.md B.

The attack sees the target only through its label oracle (`oracle.labels`), as the authors' code
queries it (`ngoc-nguyen-0/LOKT_neurips2023@b751417`; cited as `file:line` below). Four stages, the
authors' four scripts (`README.md:30-97`):

1. T-ACGAN (`train_tacgan.py:231-300`): a conditional generator G(z, ỹ) and a discriminator with a
   realness head (sigmoid, BCE) and a class head. After `warmup_steps` unconditional iterations, every
   D step labels a fresh fake batch with T (the only use of T) and D's class head learns those labels
   with weight α; G's loss adds α · CE(D_class(G(z, ỹ)), ỹ), its own condition.
2. Data set (`create_dataset.py:113-144`): `data_per_class` latents per class conditioned on it, each
   labelled by T; the label may differ from the condition.
3. Surrogates (`train_surrogate_model.py:60-100`): each trained on G's images of those latents with
   0.5 · CE(S(x), t) + 0.5 · CE(S(aug(x)), t), T's label t.
4. White-box attack on the surrogates (`plg_tacgan.py:47-126`): PLG-MI's max-margin inversion with T
   replaced by the surrogates, (1/K) Σ_k [margin(S_k(aug₁ G(z, y)), y) + margin(S_k(aug₂ G(z, y)), y)];
   the toolkit's `search` runs it (`PLGMISearch` with the surrogates). T is not queried in this stage.

Label queries: `gan_steps · critic_iters · gan_batch_size` (T-ACGAN) + `data_per_class · K` (data set).

The digits tier uses PLG-MI's workbench networks (as the reference's G is PLG-MI's): its conditional
generator (sigmoid, not tanh) and its spectral-norm trunk with sum pooling for D, with the two plain
heads of the reference. The per-target stages are not cached: a label-only attack cannot fingerprint
the target's weights, and a cache keyed on anything less could hand one target's GAN to another.
docs/attacks/lokt.md lists every deviation.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import (
    AttackCapabilities,
    AttackContext,
    AttackResult,
    BatchSize,
    ComponentTable,
    Count,
    Epochs,
    QueryBudget,
    Steps,
    Width,
    WorkbenchError,
    bounded_int,
    seeds,
)
from workbench.attack_toolkit import (
    GAN_MEMORY_FORMAT,
    Chunk,
    GANBudget,
    ImagePool,
    dtype_of,
    freeze,
    make_groups,
    public_pool,
    require_oracle,
    resolve_classes,
    search,
    train_gan,
)
from workbench_attacks.plgmi import (
    IDENTITY_LOSSES,
    ConditionalGenerator,
    PLGMISearch,
    ProjectionDiscriminator,
    augment,
)

REFERENCE = "ngoc-nguyen-0/LOKT_neurips2023@b751417"

BackboneTable = ComponentTable.of("backbone")

# ---------------------------------------------------------------- params


class LOKTParams(GANBudget, QueryBudget):
    """LOKT's budget. Reference values: the README's commands (`README.md:40-85`) and the scripts'
    argparse defaults; digits values are CPU deviations, each named (docs/attacks/lokt.md)."""

    classes: list[int] | None = None
    """Private classes to attack (default: all of them)."""
    first_classes: Count | None = None
    """Attack only the first N private classes. Reference 300 on CelebA: 5 blocks of 60 identities
    (`plg_tacgan.py:275-281`)."""
    # T-ACGAN (stage 1)
    z_dim: Width = 64
    """Latent size of the conditional generator. Reference 128 (`gen_dim_z`, `train_tacgan.py:62-65`).
    Digits: 64 (a CPU deviation, as PLG-MI's digits tier)."""
    gan_width: bounded_int(4, 65_536, "a width") = 16
    """Channels of G and D at full resolution (reference 64: `gen_num_features`, `dis_num_features`,
    `train_tacgan.py:60-72`). Digits: 16 (a CPU deviation)."""
    warmup_steps: bounded_int(0, 10_000_000, "a number of steps") = 100
    """Unconditional T-ACGAN iterations first: no class terms and no T queries (reference `n_uncond`
    1000 for public CelebA, 2000 FFHQ, 3000 FaceScrub, 6000 PubFig: `train_tacgan.py:198-207`;
    class terms from `n_iter > n_uncond`, `:258,277,294`). Digits: 100."""
    gan_steps: Steps = 400
    """Conditional T-ACGAN iterations (one G step and `critic_iters` D steps each) after the warm-up
    (reference 19 000: `--max_iteration`, `train_tacgan.py:84-85`, to which `n_uncond` is added, `:207`).
    Digits: 400 (a CPU deviation; PLG-MI's digits cGAN works at 400)."""
    gan_batch_size: bounded_int(2, 65_536, "a batch size") = 64
    """Fakes (and public images) per T-ACGAN step, each fake batch labelled by T in a conditional D step
    (reference 128: `--batch_size`, `train_tacgan.py:57-58`). Digits: 64."""
    gan_lr: float = Field(2e-4, gt=0)
    """Adam learning rate of G and D (reference 2e-4: `train_tacgan.py:75-76,183-184`)."""
    gan_betas: tuple[float, float] = (0.0, 0.9)
    """Adam betas of G and D (reference (0.0, 0.9): `train_tacgan.py:77-80,183-184`)."""
    critic_iters: Steps = 5
    """D steps per G step (reference 5: `--n_dis`, `train_tacgan.py:86-87,249`)."""
    alpha: float = Field(1.5, ge=0)
    """Weight α of the class terms in G's and D's losses (reference 1.5: the README's `--alpha=1.5`,
    `README.md:41`, and every checkpoint folder `tacgan_1.5_wgan`; the argparse default 0.2,
    `train_tacgan.py:104`, is PLG-MI's and is not what the authors ran)."""
    # Data set (stage 2)
    data_per_class: Count = 500
    """Latents per class conditioned on it and labelled by T: T label queries (reference 500: `max_iter` 2
    × `batch_size` 250, `create_dataset.py:52-54,113-124`)."""
    # Surrogates (stage 3)
    surrogate_1: BackboneTable | None = BackboneTable(use="mcnn", width=8)
    """First surrogate (any registered backbone; None drops it). Reference DenseNet-121 (ImageNet-
    pretrained trunk, `--surrogate_model_id 0`, `README.md:58-67`). Digits: MCNN width 8 (the digits
    target is MCNN width 16: a narrower copy of its family, as LOMMA's digits surrogates)."""
    surrogate_2: BackboneTable | None = BackboneTable(use="scnn", width=8)
    """Second surrogate. Reference DenseNet-161 (`README.md:64-67`). Digits: SCNN width 8."""
    surrogate_3: BackboneTable | None = BackboneTable(use="scnn", width=4)
    """Third surrogate. Reference DenseNet-169 (`README.md:64-67`). Digits: SCNN width 4 (a 2×256
    MLP would differ more from T, but is not a registered backbone)."""
    surrogate_optimizer: Literal["sgd", "adam"] = "adam"
    """Optimiser of the surrogates. Reference SGD, momentum 0.9 (`train_surrogate_model.py:208-209`).
    Digits: Adam (small nets from scratch on 2500 images; SGD from scratch served LOMMA's digits surrogates poorly)."""
    surrogate_lr: float = Field(1e-3, gt=0)
    """Learning rate of the surrogates (reference 0.1: `--lr`, `train_surrogate_model.py:131`; the README
    does not override it). Digits: 1e-3 (Adam)."""
    surrogate_weight_decay: float = Field(0.0, ge=0)
    """Weight decay of the surrogates' optimiser (reference 5e-4: `train_surrogate_model.py:208-209`).
    Digits: 0 (Adam)."""
    surrogate_cosine: bool = False
    """Cosine-anneal the surrogates' learning rate to 0 over `surrogate_epochs`, stepped per epoch
    (reference: `CosineAnnealingLR(T_max=max_epochs)`, `train_surrogate_model.py:210,261`). Digits: off
    (a constant Adam rate)."""
    surrogate_epochs: Epochs = 30
    """Epochs per surrogate (reference 200: `--max_epochs`, `train_surrogate_model.py:132`). Digits: 30."""
    surrogate_epoch_steps: Steps | None = None
    """Steps per epoch. Reference 117 = int(30000 / 256), hard-coded (`train_surrogate_model.py:79`: the
    size of the public CelebA list, not of the 500 000-latent data set). Unset: one pass over the data
    set (digits: ⌈2500 / 64⌉ = 40)."""
    surrogate_batch_size: BatchSize = 64
    """Latents per surrogate step, drawn by an endless shuffled sampler (reference 256: `--batch_size`,
    `train_surrogate_model.py:134,225-229`). Digits: 64."""
    # Attack (stage 4)
    iterations: Steps = 200
    """Adam steps of the inversion on the surrogates (reference 600: `--iter_times`, `plg_tacgan.py:183`).
    Digits: 200 (PLG-MI's digits tier)."""
    lr: float = Field(0.1, gt=0)
    """Adam learning rate of the inversion (reference 0.1: `--lr`, `plg_tacgan.py:182,92`)."""
    restarts: Count = 5
    """Independent restarts (seeds) per class, every one evaluated (reference 5 seeds:
    `plg_tacgan.py:78-84,302`)."""
    samples_per_class: Count = 8
    """Latents per class and restart. Reference 1 per identity per seed (`plg_tacgan.py:86-88`). Digits: 8."""
    inv_loss: Literal["margin", "ce", "poincare"] = "margin"
    """The identity loss on the surrogates' logits (reference `margin`: `--inv_loss_type=margin`,
    `README.md:81`; `plg_tacgan.py:104-109`, functions `losses.py:7-40`)."""
    crop_scale: tuple[float, float] = (0.8, 1.0)
    """RandomResizedCrop scale range, ratio 1, in the surrogates' training and the inversion (reference
    (0.8, 1.0): `train_surrogate_model.py:69-74`, `plg_tacgan.py:69-74`)."""
    rotation: float = Field(5.0, ge=0)
    """Largest rotation in degrees (reference 5: `RandomRotation(5)`, same lines)."""
    augment: Literal["digits", "reference"] = "digits"
    """`reference`: the reference's set (crop, ColorJitter(0.2, 0.2) with p 0.5 in the surrogates'
    training and p 1 in the inversion, horizontal flip p 0.5, rotation p 0.5; `train_surrogate_model.py:69-74`,
    `plg_tacgan.py:69-74`). `digits`: crop and rotation only, the rotation always applied (digits are
    not mirror-symmetric; a deviation for the digits tier, as PLG-MI's)."""
    max_batch: BatchSize = 256
    """Latents per forward pass of the inversion and the data set (results do not depend on it)."""


SURROGATE_FIELDS = (
    "surrogate_optimizer", "surrogate_lr", "surrogate_weight_decay", "surrogate_cosine",
    "surrogate_epochs", "surrogate_epoch_steps", "surrogate_batch_size",
)

# ---------------------------------------------------------------- losses


def tacgan_d_loss(real_logit: Tensor, fake_logit: Tensor, fake_classes: Tensor, t: Tensor | None,
                  alpha: float) -> Tensor:
    """D's loss: BCE(σ(D_s(fake)), 0) + BCE(σ(D_s(real)), 1) [+ α · CE(D_c(fake), t)], batch means,
    t = T's labels of the fakes; `t` None in the warm-up (`train_tacgan.py:288-296`, `BCELoss()` at `:192`,
    CE `losses.py:16-17`). On realness logits: the same loss as sigmoid then BCELoss, without its log clamp."""
    loss = (F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
            + F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)))
    if t is not None:
        loss = loss + alpha * F.cross_entropy(fake_classes, t)
    return loss


def tacgan_g_loss(fake_logit: Tensor, fake_classes: Tensor, condition: Tensor, conditional: bool,
                  alpha: float) -> Tensor:
    """G's loss: BCE(σ(D_s(G(z, ỹ))), 1) [+ α · CE(D_c(G(z, ỹ)), ỹ)] with G's own condition ỹ
    (`train_tacgan.py:250-266`)."""
    loss = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
    if conditional:
        loss = loss + alpha * F.cross_entropy(fake_classes, condition)
    return loss


def surrogate_loss(clean_logits: Tensor, augmented_logits: Tensor, t: Tensor) -> Tensor:
    """0.5 · CE(S(x), t) + 0.5 · CE(S(aug(x)), t), batch means (`train_surrogate_model.py:78,95-97`)."""
    return 0.5 * F.cross_entropy(clean_logits, t) + 0.5 * F.cross_entropy(augmented_logits, t)


def inversion_rows(views: list[tuple[Tensor, Tensor]], y: Tensor, inv_loss: str) -> Tensor:
    """Per latent (1/K) Σ_k [ℓ(S_k(aug₁ x), y) + ℓ(S_k(aug₂ x), y)] for the K surrogates' two views each
    (`plg_tacgan.py:95-110`; its batch mean is the reference's loss, which Adam steps alike)."""
    identity = IDENTITY_LOSSES[inv_loss]
    return torch.stack([identity(first, y) + identity(second, y) for first, second in views]).mean(dim=0)


# ---------------------------------------------------------------- networks


class TACGANDiscriminator(nn.Module):
    """x -> (realness logit [n], class logits [n, K]): PLG-MI's spectral-norm trunk with global sum
    pooling (`ProjectionDiscriminator`; the reference's `SNResNetConditionalDiscriminator` is an SN-ResNet
    trunk with sum pooling, `models/discriminators/snresnet64.py:121-164`), then the reference's two plain
    heads, no spectral norm, Xavier-uniform weights: `l6 = Linear(c, 1)` + sigmoid (here in the loss) and
    `l_y = Linear(c, K)` (`snresnet64.py:138-149,152-164`)."""

    def __init__(self, in_channels: int, image_size: int, width: int, num_classes: int):
        super().__init__()
        base = ProjectionDiscriminator(in_channels, image_size, width, num_classes)
        self.size, self.trunk = base.size, base.trunk  # its projection heads are not used
        channels = [m for m in self.trunk if isinstance(m, nn.Conv2d)][-1].out_channels
        self.realness, self.classes = nn.Linear(channels, 1), nn.Linear(channels, num_classes)
        nn.init.xavier_uniform_(self.realness.weight)
        nn.init.xavier_uniform_(self.classes.weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        h = self.trunk(x).sum(dim=(2, 3))
        return self.realness(h)[:, 0], self.classes(h)


class SurrogateEnsemble(nn.Module):
    """The surrogates' mean logits: the white-box stand-in for T whose softmax the search reports as
    `surrogate_confidence` (the attacker's own models; T is never differentiated)."""

    def __init__(self, surrogates: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(surrogates)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([s(x) for s in self.members]).mean(dim=0)


class LOKTSearch(PLGMISearch):
    """PLG-MI's inversion (Adam on z ~ N(0, I), no clipping) with T replaced by the surrogates: each
    surrogate gets its own two augmented views, losses averaged over the surrogates (`plg_tacgan.py:94-116`)."""

    def __init__(self, params: LOKTParams, generator: nn.Module, surrogates: list[nn.Module]):
        super().__init__(params, generator, SurrogateEnsemble(surrogates))  # type: ignore[arg-type]
        self.surrogates = surrogates

    def loss(self, leaves: list[Tensor], chunk: Chunk, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fake = self.generator(leaves[0], y)
        views = [(s(self.views(fake, chunk)), s(self.views(fake, chunk))) for s in self.surrogates]
        per_latent = inversion_rows(views, y, self.p.inv_loss)
        mean_logits = torch.stack([first.detach() for first, _ in views]).mean(dim=0)
        confidence = mean_logits.softmax(dim=1).gather(1, y[:, None])[:, 0]
        # Adam: the scale of the summed loss does not change the step (the reference's batch mean).
        return per_latent.sum(), per_latent, confidence


# ---------------------------------------------------------------- stages


def train_tacgan(generator: nn.Module, discriminator: TACGANDiscriminator, labels, pool: ImagePool,
                 p: LOKTParams, num_classes: int, *, device: torch.device, rng: torch.Generator,
                 on_progress=None) -> dict[str, float]:
    """The T-ACGAN, in place (`train_tacgan.py:231-300`). `labels(x)` is T's label oracle, called only
    on the conditional phase's fakes. The toolkit's `train_gan` runs each iteration's `critic_iters` D
    steps before its G step (the reference: G first); the class terms start after `warmup_steps`
    iterations for both players."""
    n, dtype = p.gan_batch_size, dtype_of(generator)
    iteration = {"d": 0, "g": 0}

    def latents() -> tuple[Tensor, Tensor]:
        z = torch.randn(n, p.z_dim, generator=rng).to(device, dtype)
        return z, torch.randint(num_classes, (n,), generator=rng).to(device)

    def d_loss() -> Tensor:
        iteration["d"] += 1
        conditional = (iteration["d"] - 1) // p.critic_iters + 1 > p.warmup_steps
        real = pool.sample(n, rng, device).to(dtype)
        with torch.no_grad():
            fake = generator(*latents())
            t = labels(fake).to(device) if conditional else None
        real_logit, _ = discriminator(real)
        fake_logit, fake_classes = discriminator(fake)
        return tacgan_d_loss(real_logit, fake_logit, fake_classes, t, p.alpha)

    def g_loss() -> Tensor:
        iteration["g"] += 1
        z, condition = latents()
        fake_logit, fake_classes = discriminator(generator(z, condition))
        return tacgan_g_loss(fake_logit, fake_classes, condition, iteration["g"] > p.warmup_steps, p.alpha)

    total = p.model_copy(update={"gan_steps": p.warmup_steps + p.gan_steps})
    return train_gan(generator, discriminator, total, d_loss=d_loss, g_loss=g_loss, attack="lokt",
                     stage="attack:lokt:gan", on_progress=on_progress, betas=p.gan_betas)


KEPT_IMAGES_BYTES = 256 * 2**20
"""The largest data set of G's images `label_dataset` keeps for the surrogates' training (digits: 2.5 MB);
above it each batch is regenerated from (z, ỹ), as the reference does (it stores z only; 150 000 CelebA
images at 64×64 would take 7.4 GB). G is frozen and in eval mode, so both give the same images."""


class LabelledLatents(NamedTuple):
    """The attack's data set (`create_dataset.py:113-144`): latents, their conditions ỹ, T's labels t and,
    when they fit in `KEPT_IMAGES_BYTES`, G's images of them (computed once for the labels)."""

    z: Tensor
    condition: Tensor
    labels: Tensor
    images: Tensor | None = None

    def batch(self, pick: Tensor, generator: nn.Module, device: torch.device) -> Tensor:
        """G's images of the latents `pick`, kept or regenerated."""
        if self.images is not None:
            return self.images[pick].to(device)
        return generator(self.z[pick].to(device, dtype_of(generator)), self.condition[pick].to(device))


def label_dataset(generator: nn.Module, labels, p: LOKTParams, num_classes: int, *, device: torch.device,
                  rng: torch.Generator) -> LabelledLatents:
    """`data_per_class` latents per class labelled by T (`create_dataset.py:113-144`), G in eval mode; the
    images are kept when they fit in `KEPT_IMAGES_BYTES`, else regenerated from (z, ỹ) when needed."""
    dtype = dtype_of(generator)
    z = torch.randn(num_classes * p.data_per_class, p.z_dim, generator=rng)
    condition = torch.arange(num_classes).repeat_interleave(p.data_per_class)
    out, images, keep = [], [], None
    with torch.no_grad():
        for zs, ys in zip(z.split(p.max_batch), condition.split(p.max_batch), strict=True):
            x = generator(zs.to(device, dtype), ys.to(device))
            out.append(labels(x).cpu())
            if keep is None:  # decided on the first batch, which gives the image size
                keep = len(z) * x[0].numel() * x.element_size() <= KEPT_IMAGES_BYTES
            if keep:
                images.append(x)
    return LabelledLatents(z, condition, torch.cat(out), torch.cat(images) if images else None)


def endless_batches(size: int, batch: int, rng: torch.Generator):
    """Index batches of `batch` from reshuffled passes over `size` items, batches running across
    passes (the reference's `InfiniteSamplerWrapper` with `drop_last`, `dataset.py:239-262`)."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch:
            pending = torch.cat([pending, torch.randperm(size, generator=rng)])
        yield pending[:batch]
        pending = pending[batch:]


def train_surrogate(surrogate: nn.Module, generator: nn.Module, data: LabelledLatents, p: LOKTParams, *,
                    device: torch.device, rng: torch.Generator) -> float:
    """One surrogate, in place, on G's images of the labelled latents (`train_surrogate_model.py:60-100,
    205-262`); returns its final agreement with T's labels over the data set (no private data)."""
    z, t = data.z, data.labels
    if p.surrogate_optimizer == "sgd":
        opt = torch.optim.SGD(surrogate.parameters(), lr=p.surrogate_lr, momentum=0.9,
                              weight_decay=p.surrogate_weight_decay)
    else:
        opt = torch.optim.Adam(surrogate.parameters(), lr=p.surrogate_lr, weight_decay=p.surrogate_weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.surrogate_epochs) if p.surrogate_cosine else None
    steps = p.surrogate_epoch_steps or -(-len(z) // p.surrogate_batch_size)
    batches = endless_batches(len(z), p.surrogate_batch_size, rng)
    surrogate.train()
    for _epoch in range(p.surrogate_epochs):
        for _ in range(steps):
            pick = next(batches)
            with torch.no_grad():
                x = data.batch(pick, generator, device)
                x_aug = augment(x, rng, p.crop_scale, p.rotation, reference=p.augment == "reference", jitter_p=0.5)
            loss = surrogate_loss(surrogate(x), surrogate(x_aug), t[pick].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if schedule is not None:
            schedule.step()
    freeze(surrogate)
    agree = 0
    with torch.no_grad():
        for pick in torch.arange(len(z)).split(p.max_batch):
            agree += int((surrogate(data.batch(pick, generator, device)).argmax(1).cpu() == t[pick]).sum())
    return agree / len(z)


class LOKT:
    """LOKT: a T-ACGAN from T's labels, surrogates on its labelled samples, a white-box attack on them."""

    name = "lokt"
    capabilities = AttackCapabilities(access="label-only")

    def __init__(self, params: LOKTParams):
        self.params = params

    def surrogate_models(self, ctx: AttackContext) -> list[nn.Module]:
        """The untrained surrogate backbones, seeded."""
        p = self.params
        tables = [t for t in (p.surrogate_1, p.surrogate_2, p.surrogate_3) if t is not None]
        if not tables:
            raise WorkbenchError(f"attack {self.name!r} needs at least one surrogate; surrogate_1..3 are all unset")
        models = []
        with seeds.seeded(ctx.seed, "attack", self.name, "surrogates", "init", device=torch.device(ctx.device)):
            for table in tables:
                try:
                    backbone = table.instance
                except RuntimeError:
                    raise WorkbenchError(f"attack {self.name!r}: surrogate {table.use!r} was not built; create "
                                         "the attack through the registry") from None
                models.append(backbone.build(ctx.data.num_classes, ctx.data.in_channels, ctx.data.image_size))
        return models

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        require_oracle(ctx, self)
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        pool = public_pool(ctx, self.name)
        device, k = torch.device(ctx.device), ctx.oracle.num_classes
        with seeds.seeded(ctx.seed, "attack", self.name, "init", device=device):
            generator = ConditionalGenerator(p.z_dim, k, ctx.data.in_channels, ctx.data.image_size, p.gan_width)
            discriminator = TACGANDiscriminator(ctx.data.in_channels, ctx.data.image_size, p.gan_width, k)
        generator.to(device, memory_format=GAN_MEMORY_FORMAT)  # as GMI's and KED-MI's: 11 % faster on the CPU
        discriminator.to(device, memory_format=GAN_MEMORY_FORMAT)

        gan = train_tacgan(generator, discriminator, ctx.oracle.labels, pool, p, k, device=device,
                           rng=seeds.generator(ctx.seed, "attack", self.name, "gan"),
                           on_progress=lambda **f: ctx.emit("progress", stage=f"attack:{self.name}:gan", **f))
        freeze(generator, discriminator)
        gan_queries = ctx.oracle.queries
        data = label_dataset(generator, ctx.oracle.labels, p, k, device=device,
                             rng=seeds.generator(ctx.seed, "attack", self.name, "data"))
        label_queries = ctx.oracle.queries

        surrogates = [s.to(device, memory_format=GAN_MEMORY_FORMAT) for s in self.surrogate_models(ctx)]
        agreement = []
        for index, surrogate in enumerate(surrogates):
            agreement.append(train_surrogate(surrogate, generator, data, p, device=device,
                                             rng=seeds.generator(ctx.seed, "attack", self.name, "surrogate", index)))
            ctx.emit("progress", stage=f"attack:{self.name}:surrogates", step=index + 1, total=len(surrogates),
                     confidence=agreement[-1])

        # The search reports the final confidence of its context's `target`: here the surrogates, not T.
        search_ctx = dataclasses.replace(ctx, target=SurrogateEnsemble(surrogates), shard=None)
        images, targets, restarts, confidence = search(
            search_ctx, LOKTSearch(p, generator, surrogates), [[g] for g in make_groups(classes, p.restarts)],
            attack=self.name, iterations=p.iterations, max_batch=p.max_batch)
        figures = {
            "surrogate_confidence": float(confidence.mean()),
            "gan_queries": float(gan_queries),
            "dataset_queries": float(label_queries - gan_queries),
            "condition_agreement": float((data.labels == data.condition).double().mean()),
            "surrogate_agreement": sum(agreement) / len(agreement),
            "gan_loss_d": gan["loss_d"],
            "gan_loss_g": gan["loss_g"],
        }
        ctx.emit("log", level="info", message=f"{self.name}: T-ACGAN {p.warmup_steps}+{p.gan_steps} steps, "
                 f"{len(data.z):,} labelled latents, surrogates agree with T on {figures['surrogate_agreement']:.3f} "
                 f"of them; {ctx.oracle.queries:,} label queries")
        return AttackResult(images=images, targets=targets, restarts=restarts, figures=figures)

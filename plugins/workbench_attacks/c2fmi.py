"""C2FMI, the coarse-to-fine black-box attack (Ye et al., IEEE TDSC 2023).

As the authors' code runs it (`MiLabHITSZ/2022YeC2FMI@ca5142a`, `main_attack.py`, `utils/DE.py`,
`models/predict2feature.py`, `utils/train_inv.py`), with T seen only through the run's oracle:

0. Attacker-side networks, trained once: an *embedding* classifier on the public data (the authors'
   CASIA-WebFace FaceNet; `main_attack.py:124-125,157-160`) and the *inverse network* p2f, an MLP
   from T's probability vector (log-transformed, L2-normalised) to the embedding's logits, fitted
   with MSE on the public images (`models/predict2feature.py:5-34`, `utils/train_inv.py:12-58`).
   T's vectors for the public images are one oracle pass per run (counted).
1. Coarse (white-box on the attacker's own networks, no query): per class y, 16 latents (each the
   mean of 2 prior samples) take 20 Adam steps on MSE(embed(G(z)), p2f(v)), v a fresh "maximally
   confident" pseudo-prediction for y each step (`main_attack.py:36-107,183-190`); at the last step
   the batch is scored by T (16 queries) and the 10 most confident latents go on.
2. Fine (black-box): differential evolution on p_y over a population of 32 (the 10 extended with
   mixtures), 500 generations, greedy replacement (`utils/DE.py:170-265`); the best member's image
   is the class's reconstruction (one per class and restart).

The workbench's GAN prior (GMI's DCGAN on the public data, z in R^z_dim) stands in for the authors'
StyleGAN2 (W space, noise inputs re-drawn every forward): a "W sample" is z ~ N(0, I). Every other
deviation is named in the field docs and docs/attacks/c2fmi.md.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
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
    GANBudget,
    ImagePool,
    check_finite,
    dtype_of,
    load_or_train,
    public_pool,
)
from workbench_attacks.gmi import OnGMIPrior

BackboneTable = ComponentTable.of("backbone")

REFERENCE = "MiLabHITSZ/2022YeC2FMI@ca5142a"

# The β schedule of `utils/DE.py:202-206` over the reference's 500 generations: 0.1 until the last
# 30, then 0.1·(500 − g)/50. Kept as fractions of `generations` (30/500, 50/500) so a shorter run
# decays over the same share of its generations.
DECAY_WINDOW = 30 / 500
DECAY_DIVISOR = 50 / 500


class C2FMIParams(GANBudget, QueryBudget):
    """C2FMI's budget. Reference values: `MiLabHITSZ/2022YeC2FMI@ca5142a` (`main_attack.py`,
    `utils/DE.py`, `utils/train_inv.py`, `models/predict2feature.py`); see docs/attacks/c2fmi.md."""

    prior_seed: int | None = None
    """Seed of GMI's prior and of the embedding model (unset = the run's seed); the same value shares
    GMI's cached prior."""
    gp_weight: float = Field(10.0, ge=0)
    """WGAN-GP gradient-penalty weight of GMI's prior (part of its cache key, as in `gmi`)."""
    classes: list[int] | None = None
    """Private classes to attack (default: all of them)."""
    first_classes: Count | None = None
    """Attack only the first N private classes; ignored when `classes` is set."""

    # ---------------------------------------------------------------- the embedding model
    embed_backbone: BackboneTable = BackboneTable(use="mcnn", width=16)
    """The attacker's embedding classifier, trained on the public data only. Reference: FaceNet
    (InceptionResNetV1) on CASIA-WebFace, 10,575 identities (`main_attack.py:124-125,134,157-160`).
    Digits: MCNN width 16 on public digits 5-9."""
    embed_labels: Literal["public", "target"] = "public"
    """Labels the embedding model learns. `public`: the public split's own labels (reference: CASIA's
    identities). `target`: T's top-1 labels on the public images (from the same oracle pass; for a
    public split without labels, e.g. CelebA here, whose public faces carry label −1): a deviation,
    the embedding then imitates T instead of being independent of it."""
    embed_epochs: Epochs = 15
    """Epochs of the embedding model. Reference: 10 epochs of triplet + cross-entropy on CASIA
    (`utils/train_facenet.py:89-121`, `utils/update_one_epoch_facenet.py:44-46`; its stage 2 is
    switched off, `:124`). Digits: 15 epochs of cross-entropy (no triplet loss, a deviation)."""
    embed_lr: float = Field(1e-3, gt=0)
    """Adam learning rate of the embedding model (reference 1e-3, `utils/train_facenet.py:91,99`)."""
    embed_gamma: float = Field(0.94, gt=0, le=1)
    """Per-epoch StepLR factor of the embedding model (reference 0.94, `utils/train_facenet.py:100`)."""
    embed_batch: BatchSize = 64
    """Batch of the embedding model (reference 64, `utils/train_facenet.py:92`)."""
    embed_target: Literal["logits", "feature"] = "logits"
    """What p2f maps to and stage I matches: the embedding's logits (reference,
    `utils/train_inv.py:24-29`, `main_attack.py:83-84`) or its penultimate feature (the commented-out
    alternative, `utils/train_inv.py:28`; there the L2-normalised 128-d feature)."""
    public_limit: bounded_int(1, 10_000_000) | None = None
    """Use only the first N public images (dataset order) for the embedding and p2f (and the oracle
    pass). Reference: 160,000 (150,000 train + 10,000 test paths, `utils/train_inv.py:115-116`)."""

    # ---------------------------------------------------------------- the inverse network p2f
    inv_hidden: Width = 512
    """Width of p2f's two hidden layers. Reference 4096 (`models/predict2feature.py:9-11`). Digits:
    512 (the 4096×4096 layer dominates and a 5-entry input has no use for it)."""
    inv_dropout: float = Field(0.25, ge=0, lt=1)
    """Dropout before p2f's last layer (reference 0.25, `models/predict2feature.py:15`)."""
    inv_trunc: Count | None = None
    """Entries of T's vector p2f keeps (top-k, the rest 0): None = all K, as the attack's checkpoint
    (`predict2feature(tar_classes, tar_classes)`, `main_attack.py:162`); 1 = `train_inv.py:89`'s
    default (label-only); 100 = the anti-defense variant (`main_attack_antidefense.py:114`)."""
    inv_epochs: Epochs = 20
    """Epochs of p2f (reference 20, `utils/train_inv.py:70`; the attack loads a 90-epoch checkpoint,
    `main_attack.py:128`, that the script does not produce as configured)."""
    inv_lr: float = Field(1e-3, gt=0)
    """Adam learning rate of p2f, weight decay 0 (reference 1e-3, `utils/train_inv.py:67,108`)."""
    inv_batch: BatchSize = 128
    """Batch of p2f, incomplete last batch dropped (reference 128, `drop_last`, `utils/train_inv.py:68,125-129`)."""
    inv_step: Epochs = 2
    """StepLR period of p2f in epochs (reference 2, `utils/train_inv.py:109`)."""
    inv_gamma: float = Field(0.8, gt=0, le=1)
    """StepLR factor of p2f (reference 0.8, `utils/train_inv.py:109`)."""

    # ---------------------------------------------------------------- stage I (coarse)
    stage1_batch: BatchSize = 16
    """Latents per class in stage I (reference 16, `main_attack.py:142`)."""
    stage1_steps: Steps = 20
    """Adam steps of stage I (reference 20, `step`, `main_attack.py:140`)."""
    stage1_lr: float = Field(0.02, gt=0)
    """Adam learning rate of stage I (reference 0.02, `main_attack.py:137,189`)."""
    stage1_step: Steps = 20
    """StepLR period of stage I in steps (reference 20, γ `stage1_gamma`: `main_attack.py:190`; with
    20 steps it never fires)."""
    stage1_gamma: float = Field(0.95, gt=0, le=1)
    """StepLR factor of stage I (reference 0.95, `main_attack.py:190`)."""
    stage1_keep: Count = 10
    """Stage-I latents handed to the search, the most confident under T (reference 10,
    `main_attack.py:74-78`)."""
    init_mix: Count = 2
    """Prior samples averaged into one initial latent (reference 2 W samples, `main_attack.py:185-186`)."""
    rand_mix: Count = 3
    """Prior samples averaged into the random part of a population extension (reference 3 W samples,
    `utils/DE.py:24-28`)."""

    # ---------------------------------------------------------------- stage II (fine)
    popsize: bounded_int(2, 1_000_000) = 32
    """Population of the differential evolution (reference 32, `utils/DE.py:171`)."""
    generations: bounded_int(0, 10_000_000, "a number of generations") = 500
    """Generations (reference 500, `max_gen`, `main_attack.py:25`)."""
    nv: Count = 4
    """Difference vectors per child (reference 4, hard-coded, `utils/DE.py:202`)."""
    beta: float = Field(0.1, ge=0)
    """Scale of the difference vectors (reference 0.1, `utils/DE.py:204`), decayed as
    β·(G − g)/(0.1·G) over the last 6 % of the G generations (`:203-206`: the last 30 of 500, /50)."""
    pull: float = Field(0.02, ge=0)
    """Pull of each child toward the best member (reference 0.02, `utils/DE.py:238`; its comment says
    0.04 for FaceScrub, the value run is 0.02)."""
    cross_prob: float = Field(0.5, ge=0, le=1)
    """Binomial crossover: a gene stays the parent's when U(0, 1) ≤ this (reference `pr` 0.5,
    `utils/DE.py:229-235`; no forced gene)."""
    clamp_z: float | None = Field(None, gt=0)
    """Clamp latents to [−c, c] after each search step (None = never, as the reference)."""
    restarts: Count = 1
    """Independent coarse-to-fine runs per class, each returning its best member (reference 1)."""
    max_batch: BatchSize = 1000
    """Images per generator pass (results do not depend on it)."""

    @model_validator(mode="after")
    def _sizes_fit(self) -> C2FMIParams:
        if self.stage1_keep > self.stage1_batch:
            raise ValueError(f"stage1_keep = {self.stage1_keep} exceeds stage1_batch = {self.stage1_batch}")
        if self.stage1_keep > self.popsize:
            raise ValueError(f"stage1_keep = {self.stage1_keep} exceeds popsize = {self.popsize}")
        if self.stage1_keep < 3 and self.stage1_keep < self.popsize:
            raise ValueError(
                "the population extension mixes 3 distinct stage-I latents: stage1_keep must be >= 3 "
                "or equal popsize"
            )
        return self


# ---------------------------------------------------------------- the inverse network


def p2f_input(probs: Tensor, trunc: int) -> Tensor:
    """T's vector as p2f reads it (`models/predict2feature.py:24-31`): the top-`trunc` entries as
    max(log p, −1000) + 50, shifted up so the smallest kept entry is ≥ 0, the rest 0; L2-normalised."""
    top, index = torch.topk(probs, trunc, dim=1)
    top = torch.clamp(torch.log(top), min=-1000) + 50.0
    top = top + F.relu(-top.min(dim=1, keepdim=True).values)
    return F.normalize(torch.zeros_like(probs).scatter(1, index, top), p=2, dim=1)


class InverseNetwork(nn.Module):
    """p2f: T's probability vector → the embedding model's output (`models/predict2feature.py:5-34`):
    Linear(K→h), LeakyReLU(0.2), Linear(h→h), LeakyReLU(0.2), Dropout, Linear(h→E)."""

    def __init__(self, num_classes: int, hidden: int, out_dim: int, dropout: float, trunc: int | None):
        super().__init__()
        self.trunc = num_classes if trunc is None else min(trunc, num_classes)
        self.map = nn.Sequential(
            nn.Linear(num_classes, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, probs: Tensor) -> Tensor:
        return self.map(p2f_input(probs, self.trunc))


def inverse_loss(p2f: nn.Module, probs: Tensor, embedding: Tensor) -> Tensor:
    """p2f's training loss: MSE(p2f(p), embed(x)), the mean over batch × outputs (`utils/train_inv.py:27-29`)."""
    return F.mse_loss(p2f(probs), embedding)


def pseudo_prediction(batch: int, num_classes: int, y: int, rng: torch.Generator) -> Tensor:
    """Stage I's target vector (`main_attack.py:86-88`): |N(0, I_K)| with entry y = 1e18,
    L2-normalised; one fresh draw per latent and step."""
    v = torch.randn(batch, num_classes, generator=rng).abs()
    v[:, y] = 1e18
    return F.normalize(v, p=2, dim=1)


def coarse_loss(embedding: Tensor, p2f: nn.Module, pseudo: Tensor) -> Tensor:
    """Stage I's loss: MSE(embed(G(z)), p2f(v)), the mean over latents × outputs (`main_attack.py:83-91`)."""
    return F.mse_loss(embedding, p2f(pseudo))


# ---------------------------------------------------------------- stage II: differential evolution


def beta_at(generation: int, generations: int, beta: float) -> float:
    """β of generation g (`utils/DE.py:202-206`), the decay window scaled to `generations`."""
    if generation < generations - round(DECAY_WINDOW * generations):
        return beta
    return beta * (generations - generation) / (DECAY_DIVISOR * generations)


def extend_population(pop: Tensor, popsize: int, rand_w, rng: torch.Generator) -> Tensor:
    """Grow the stage-I latents to `popsize` (`utils/DE.py:182-197`): each new member is
    0.7·(0.5·(0.5·(x_a + x_b) + x_c)) + 0.3·w_rand, a, b, c distinct; `rand_w()` draws w_rand."""
    keep = len(pop)
    new = []
    for _ in range(popsize - keep):
        a, b, c = torch.randperm(keep, generator=rng)[:3].tolist()
        u = 0.5 * (0.5 * (pop[a] + pop[b]) + pop[c])
        new.append(0.7 * u + 0.3 * rand_w())
    return torch.cat([pop, torch.stack(new)]) if new else pop


def trial_population(
    pop: Tensor, fitness: Tensor, beta: float, p: C2FMIParams, rng: torch.Generator
) -> Tensor:
    """One generation's trial vectors (`utils/DE.py:207-217,229-244`): per member i,
    v_i = x_i + pull·(x_best − x_i) + β·Σ_{k<nv} (x_{r1k} − x_{r2k}) (r uniform with replacement),
    then gene j is v_ij where U > cross_prob, else x_ij."""
    n, dim = pop.shape
    best = pop[int(fitness.argmax())]
    pairs = torch.randint(n, (n, p.nv, 2), generator=rng)
    differences = (pop[pairs[..., 0]] - pop[pairs[..., 1]]).sum(dim=1)
    mutant = pop + p.pull * (best - pop) + beta * differences
    take = torch.rand(n, dim, generator=rng, dtype=pop.dtype) > p.cross_prob
    trial = torch.where(take, mutant, pop)
    return trial if p.clamp_z is None else trial.clamp(-p.clamp_z, p.clamp_z)


def select(pop: Tensor, fitness: Tensor, trial: Tensor, trial_fitness: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy replacement: a trial replaces its parent when strictly fitter (`utils/DE.py:220-226`)."""
    better = trial_fitness > fitness
    return torch.where(better[:, None], trial, pop), torch.where(better, trial_fitness, fitness)


# ---------------------------------------------------------------- helpers


def public_images(pool: ImagePool, indices: Tensor) -> Tensor:
    """The public images at `indices`, as one CPU tensor."""
    if pool.images is not None:
        return pool.images[indices]
    return torch.stack([pool._image(int(i)) for i in indices])


def public_labels(dataset, n: int) -> Tensor:
    """The first `n` labels of the public split (negative or absent: unlabelled)."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) > 1:
        return torch.as_tensor(tensors[1][:n]).long()
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)[:n].long()
    items = [dataset[i] for i in range(n)]
    if not all(isinstance(item, (tuple, list)) and len(item) > 1 for item in items):
        return torch.full((n,), -1, dtype=torch.long)
    return torch.as_tensor([int(item[1]) for item in items])


def fingerprint(tensor: Tensor) -> str:
    """A short hash of T's answers: the p2f cache key, so a hit needs the same answers (no peek at T)."""
    return hashlib.sha256(tensor.float().contiguous().numpy().tobytes()).hexdigest()[:16]


def epoch_done(ctx: AttackContext, attack: str, part: str, what: str, epoch: int, epochs: int,
               loss: Tensor) -> None:
    """The end of a training epoch of an attacker-side network: its loss checked, and one progress event."""
    stage = f"attack:{attack}:{part}"
    check_finite(loss.detach(), attack=attack, stage=stage, what=f"{what} in epoch {epoch + 1}")
    ctx.emit("progress", stage=stage, step=epoch + 1, total=epochs, loss=float(loss.detach()))


class Embedding(nn.Module):
    """The embedding model's output p2f maps to: its logits or its penultimate feature."""

    def __init__(self, model: nn.Module, target: str):
        super().__init__()
        self.model, self.target = model, target

    def forward(self, x: Tensor) -> Tensor:
        if self.target == "logits":
            return self.model(x)
        _, hiddens = self.model.forward_hidden(x)
        return hiddens[-1].flatten(1)


# ---------------------------------------------------------------- the attack


class C2FMI(OnGMIPrior):
    """C2FMI: coarse latents from an inverse network on public data, then black-box differential evolution."""

    name = "c2fmi"
    capabilities = AttackCapabilities(access="black-box", prepares=True, seeded_prior=True)

    def __init__(self, params: C2FMIParams):
        self.params = params

    # -------------------------------------------------------------- queries

    def probabilities(self, ctx: AttackContext, images: Tensor) -> Tensor:
        """T's vectors `[n, K]` (float64, CPU) through the oracle, `max_batch` images at a time."""
        out = [
            ctx.oracle.probabilities(part.to(ctx.device)).double().cpu()
            for part in images.split(self.params.max_batch)
        ]
        return torch.cat(out)

    def fitness(self, ctx: AttackContext, generator: nn.Module, z: Tensor, y: int) -> Tensor:
        """p_y of the images of latents `z` (`utils/DE.py:61-69`), float64 on the CPU; len(z) queries."""
        with torch.no_grad():
            images = torch.cat(
                [
                    generator(part.to(ctx.device, dtype_of(generator))).clamp(0, 1)
                    for part in z.split(self.params.max_batch)
                ]
            )
        return self.probabilities(ctx, images)[:, y]

    # -------------------------------------------------------------- attacker-side networks

    def public_answers(self, ctx: AttackContext, pool: ImagePool) -> tuple[Tensor, Tensor]:
        """(the public indices used, T's vectors for them): one oracle pass."""
        n = pool.length if self.params.public_limit is None else min(self.params.public_limit, pool.length)
        indices = torch.arange(n)
        probs = torch.cat(
            [self.probabilities(ctx, public_images(pool, part)) for part in indices.split(4096)]
        )
        check_finite(probs, attack=self.name, stage=f"attack:{self.name}:public", what="T's probabilities")
        return indices, probs

    def embedding(
        self, ctx: AttackContext, pool: ImagePool, indices: Tensor, probs: Tensor
    ) -> tuple[Embedding, dict]:
        """The embedding model (cached by its config and the public data; with `embed_labels =
        "target"` also by T's answers), frozen; and its cache key."""
        p = self.params
        seed = ctx.seed if p.prior_seed is None else p.prior_seed
        if p.embed_labels == "public":
            labels = public_labels(ctx.data.public, len(indices))
            if bool((labels < 0).any()):
                raise WorkbenchError(
                    f"attack {self.name!r}: embed_labels = 'public' needs labelled public images, but the dataset's "
                    "public split is unlabelled (label -1); set embed_labels = 'target' (T's top-1 labels, a deviation)"
                )
        else:
            labels = probs.argmax(dim=1)
        classes, labels = torch.unique(labels, return_inverse=True)
        try:
            backbone = p.embed_backbone.instance
        except RuntimeError:
            raise WorkbenchError(
                f"attack {self.name!r}: embed_backbone {p.embed_backbone.use!r} was not built; "
                "create the attack through the registry"
            ) from None
        device = torch.device(ctx.device)
        with seeds.seeded(seed, "attack", self.name, "embed", "init", device=device):
            model = backbone.build(len(classes), ctx.data.in_channels, ctx.data.image_size).to(device)
        if p.embed_target == "feature" and not hasattr(model, "forward_hidden"):
            raise WorkbenchError(
                f"attack {self.name!r}: embed_target = 'feature' needs a backbone with forward_hidden; "
                f"{p.embed_backbone.use!r} has none, use embed_target = 'logits'"
            )
        table = p.embed_backbone
        key = {
            "backbone": {
                "use": table.use,
                **(table.config.model_dump(mode="json") if table.config is not None else table.params),
            },
            "labels": p.embed_labels if p.embed_labels == "public" else fingerprint(probs),
            "classes": classes.tolist(),
            "train": {
                k: getattr(p, k)
                for k in ("embed_epochs", "embed_lr", "embed_gamma", "embed_batch", "public_limit")
            },
            "public": pool.fingerprint(),
            "seed": seed,
        }

        def train() -> dict[str, float]:
            rng = seeds.generator(seed, "attack", self.name, "embed")
            opt = torch.optim.Adam(model.parameters(), lr=p.embed_lr)
            schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=p.embed_gamma)
            model.train()
            loss = torch.zeros(())
            for epoch in range(p.embed_epochs):
                order = torch.randperm(len(indices), generator=rng)
                for part in order.split(p.embed_batch):
                    x = public_images(pool, indices[part]).to(device)
                    loss = F.cross_entropy(model(x), labels[part].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                schedule.step()
                epoch_done(ctx, self.name, "embed", "the embedding model's loss", epoch, p.embed_epochs, loss)
            model.eval()
            return {"loss": float(loss.detach())}

        load_or_train(ctx, self.name, "c2fmi-embed", key, {"embed": model}, train)
        return Embedding(model, p.embed_target).eval(), key

    def inverse(
        self,
        ctx: AttackContext,
        pool: ImagePool,
        indices: Tensor,
        probs: Tensor,
        embed: Embedding,
        embed_key: dict,
    ) -> InverseNetwork:
        """p2f fitted to T's answers on the public images (`utils/train_inv.py:12-58,104-139`),
        cached by the embedding's key, a hash of the answers and its own config; frozen."""
        p = self.params
        device = torch.device(ctx.device)
        with torch.no_grad():
            targets = torch.cat(
                [embed(public_images(pool, part).to(device)).cpu() for part in indices.split(1024)]
            )
        seed = ctx.seed
        with seeds.seeded(seed, "attack", self.name, "p2f", "init", device=device):
            p2f = InverseNetwork(
                probs.shape[1], p.inv_hidden, targets.shape[1], p.inv_dropout, p.inv_trunc
            ).to(device)
        key = {
            "embed": embed_key,
            "embed_target": p.embed_target,
            "answers": fingerprint(probs),
            "p2f": {
                k: getattr(p, k)
                for k in (
                    "inv_hidden",
                    "inv_dropout",
                    "inv_trunc",
                    "inv_epochs",
                    "inv_lr",
                    "inv_batch",
                    "inv_step",
                    "inv_gamma",
                )
            },
            "seed": seed,
        }
        answers = probs.float()

        def train() -> dict[str, float]:
            rng = seeds.generator(seed, "attack", self.name, "p2f")
            opt = torch.optim.Adam(p2f.parameters(), lr=p.inv_lr, weight_decay=0.0)
            schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=p.inv_step, gamma=p.inv_gamma)
            batches = max(1, len(indices) // p.inv_batch)  # drop_last, but never nothing
            loss = torch.zeros(())
            for epoch in range(p.inv_epochs):
                p2f.train()
                order = torch.randperm(len(indices), generator=rng)
                for b in range(batches):
                    part = order[b * p.inv_batch : (b + 1) * p.inv_batch]
                    loss = inverse_loss(p2f, answers[part].to(device), targets[part].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                schedule.step()
                epoch_done(ctx, self.name, "p2f", "the inverse network's loss", epoch, p.inv_epochs, loss)
            p2f.eval()
            return {"loss": float(loss.detach())}

        load_or_train(ctx, self.name, "c2fmi-p2f", key, {"p2f": p2f}, train)
        return p2f.eval()

    # -------------------------------------------------------------- the two stages

    def coarse(
        self,
        ctx: AttackContext,
        generator: nn.Module,
        embed: Embedding,
        p2f: InverseNetwork,
        y: int,
        rng: torch.Generator,
    ) -> Tensor:
        """Stage I (`main_attack.py:36-107,183-190`): the `stage1_keep` latents (float64, CPU) ranked by
        T on the batch generated before the last Adam step, as the reference ranks it."""
        p = self.params
        device, dtype = torch.device(ctx.device), dtype_of(generator)
        start = torch.randn(p.stage1_batch, p.init_mix, p.z_dim, generator=rng, dtype=torch.float64).mean(
            dim=1
        )
        latents = start.to(device, dtype).requires_grad_(True)
        opt = torch.optim.Adam([latents], lr=p.stage1_lr)
        schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=p.stage1_step, gamma=p.stage1_gamma)
        num_classes = ctx.oracle.num_classes
        keep = None
        for step in range(p.stage1_steps):
            images = generator(latents).clamp(0, 1)
            if step == p.stage1_steps - 1:
                confidence = self.probabilities(ctx, images.detach())[:, y]
                keep = confidence.argsort(descending=True, stable=True)[: p.stage1_keep]
            pseudo = pseudo_prediction(p.stage1_batch, num_classes, y, rng).to(device, dtype)
            loss = coarse_loss(embed(images), p2f, pseudo)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            if p.clamp_z is not None:
                with torch.no_grad():
                    latents.clamp_(-p.clamp_z, p.clamp_z)
        check_finite(
            latents.detach(),
            attack=self.name,
            stage=f"attack:{self.name}:coarse",
            what="the latents",
            hint="stage I diverged; lower stage1_lr",
        )
        return latents.detach().double().cpu()[keep]

    def fine(
        self, ctx: AttackContext, generator: nn.Module, start: Tensor, y: int, rng: torch.Generator
    ) -> tuple[Tensor, float]:
        """Stage II (`utils/DE.py:170-265`): (the best latent, its p_y). The parents' scores are kept
        from the generation before (G and T are deterministic here), so each generation sends only the
        children: half the reference's queries, the same search."""
        p = self.params

        def rand_w() -> Tensor:
            return torch.randn(p.rand_mix, p.z_dim, generator=rng, dtype=torch.float64).mean(dim=0)

        pop = extend_population(start, p.popsize, rand_w, rng)
        fitness = self.fitness(ctx, generator, pop, y)
        for g in range(p.generations):
            trial = trial_population(pop, fitness, beta_at(g, p.generations, p.beta), p, rng)
            pop, fitness = select(pop, fitness, trial, self.fitness(ctx, generator, trial, y))
        best = int(fitness.argmax())
        return pop[best], float(fitness[best])

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes, generator, hit = self.oracle_start(ctx)
        pool = public_pool(ctx, self.name)
        indices, probs = self.public_answers(ctx, pool)
        embed, embed_key = self.embedding(ctx, pool, indices, probs)
        p2f = self.inverse(ctx, pool, indices, probs, embed, embed_key)
        for network in (embed, p2f):
            network.requires_grad_(False)
        best, targets, restarts, confidences = [], [], [], []
        for c in classes:
            for restart in range(p.restarts):
                rng = seeds.generator(ctx.seed, "attack", self.name, "search", c, restart)
                start = self.coarse(ctx, generator, embed, p2f, c, rng)
                latent, confidence = self.fine(ctx, generator, start, c, rng)
                best.append(latent)
                confidences.append(confidence)
                targets.append(c)
                restarts.append(restart)
            ctx.emit(
                "progress",
                stage=f"attack:{self.name}",
                step=classes.index(c) + 1,
                total=len(classes),
                target_class=c,
                confidence=confidences[-1],
            )
        with torch.no_grad():
            latents = torch.stack(best)
            images = (
                torch.cat(
                    [
                        generator(part.to(ctx.device, dtype_of(generator))).cpu()
                        for part in latents.split(p.max_batch)
                    ]
                )
                .float()
                .clamp(0, 1)
            )
        check_finite(images, attack=self.name, stage=f"attack:{self.name}", what="a reconstruction")
        runs = len(targets)
        # The reference per run: stage I's ranking batch, parents and children per generation, a final
        # scoring (`main_attack.py:62-78`, `utils/DE.py:207,218,262`).
        per_run = p.stage1_batch + p.generations * 2 * p.popsize + p.popsize
        figures = {
            "target_confidence": sum(confidences) / runs,
            "gan_cached": float(hit),
            "public_queries": float(len(indices)),
            "queries_reference": float(p.inv_epochs * len(indices) + runs * per_run),
        }
        ctx.emit(
            "log",
            level="info",
            message=f"c2fmi: {len(indices):,} public images, {runs} searches of "
            f"{p.generations} generations; {ctx.oracle.queries:,} queries",
        )
        return AttackResult(
            images=images,
            targets=torch.tensor(targets),
            restarts=torch.tensor(restarts),
            figures=figures,
            confidences=torch.tensor(confidences),
        )

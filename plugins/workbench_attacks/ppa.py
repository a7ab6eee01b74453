"""PPA, the Plug & Play model-inversion attack (Struppek et al., ICML 2022), spec/attacks.md B4.

PPA trains nothing: it searches the latent space of a pretrained generator G.

1. Initial candidates (PPA `attacks/initial_selection.py`): draw `search_space` latents, score
   each by T's softmax on its image (averaged with the mirrored image when `hflip`), and keep
   per class the `num_candidates` latents with the highest confidence for that class (the
   reference repeats "take the best, set its score to −1" per class; a latent may serve several
   classes).
2. Optimisation (PPA `attacks/optimize.py`, `losses/poincare.py`): Adam with betas (0.1, 0.1)
   on every candidate, minimising the Poincaré distance between T's L1-normalised logits on a
   randomly resized crop of G(w) and the one-hot target (ξ = 1e-4); no image prior in the loop.
3. Final selection (PPA `attacks/final_selection.py`): score every optimised latent by T's
   probability of its class averaged over `select_iterations` random transforms, keep the
   `samples_per_target` best per class. The result's images are that selected set (so the
   `attack-accuracy` metric's `top1` is the selected set's, as PPA reports it); the attack's own
   figures add E's accuracy on the unselected set (`top1_unselected`, `top5_unselected`).

The generator is any the workbench has: GMI's public-data GAN (trained once, cached and shared
with `gmi`), or a DCGAN-style generator (`networks.Generator`) read from a local `.safetensors`
file. Nothing is ever unpickled. The workbench has no StyleGAN2 synthesis network, so the
reference's 224 px setting (StyleGAN2-ADA FFHQ) is out of reach; docs/attacks/ppa.md says what
it would take.

Per-image transforms: torchvision applies one crop to a whole batch tensor; here every image gets
its own crop from its class's random stream, so a class's result does not depend on batching.
"""

from __future__ import annotations

import math
from pathlib import Path
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
    Count,
    Steps,
    WorkbenchError,
    seeds,
    tensors_with_prefix,
)
from workbench.attack_toolkit import (
    Chunk,
    GANBudget,
    Generator,
    Group,
    SearchProblem,
    check_finite,
    dtype_of,
    make_groups,
    resolve_classes,
    search,
)
from workbench_attacks.gmi import OnGMIPrior
from workbench_attacks.privacy import accuracy_over_restarts, model_outputs, topk_hits

POINCARE_XI = 1e-4
"""ξ subtracted from the one-hot target before clipping to [0, 1] (PPA `losses/poincare.py`)."""

RRC_ATTEMPTS = 10
"""Draws torchvision's RandomResizedCrop makes for a crop inside the image before it falls back
to a centre crop (`RandomResizedCrop.get_params`)."""

# ---------------------------------------------------------------- params


class PPAParams(GANBudget):
    """PPA's budget. Defaults fit the embedded digits (16 px) on a 2-core CPU; each field doc
    gives the reference value and its file (`LukasStruppek/Plug-and-Play-Attacks`, configs
    `configs/attacking/default_attacking_local.yaml` and `CelebA_FFHQ.yaml`, the one BiDO+ runs);
    see docs/attacks/ppa.md."""

    generator: Literal["gmi", "file"] = "gmi"
    """Which generator to invert through: `gmi` = GMI's WGAN-GP trained on the public data (the
    GAN fields below; cached and shared with the `gmi` attack of the same settings), `file` = a
    generator read from `generator_file`. Reference: StyleGAN2-ADA FFHQ 1024 px loaded from a
    pickle (`utils/stylegan.py`); the workbench has no StyleGAN2 network and never unpickles (a
    deviation; see docs/attacks/ppa.md)."""
    generator_file: Path | None = None
    """For `generator = "file"`: a local `.safetensors` holding the state dict of
    `generator_architecture` (bare keys, or keys under `generator.` as the workbench's GMI stage
    cache writes them). Its latent size and width are `z_dim` and `gan_width`; a file that does
    not fit is one clear error. Never downloaded, never a pickle."""
    generator_architecture: Literal["dcgan"] = "dcgan"
    """Network the file's weights are loaded into: `dcgan` = GMI's generator
    (`workbench.attack_toolkit.Generator`: z [n, z_dim] -> images in [0, 1] at the data's size;
    DefendMI `GMI/generator.py` layer for layer at 64 px RGB / 32 px grey, checked in
    `tests/test_attack_reference_networks.py`), the prior of GMI and KED-MI. The only one the
    workbench has; PPA's own is StyleGAN2-ADA, which it has not."""
    prior_seed: int | None = None
    """Seed of GMI's prior when `generator = "gmi"` (unset = the run's seed), as GMI's own
    `prior_seed`: the same value shares one cached prior with `gmi`."""
    gp_weight: float = Field(10.0, ge=0)
    """WGAN-GP gradient-penalty weight of GMI's prior (reference 10, DefendMI `GMI/train_gan.py`);
    part of the prior's cache key, as in `gmi`."""
    classes: list[int] | None = None
    """Private classes to attack (default: all of them; the reference's `targets: all`)."""
    first_classes: Count | None = None
    """Attack only the first N private classes; ignored when `classes` is set."""
    max_batch: BatchSize = 256
    """Latents per forward pass. Results do not depend on it (every image draws its transforms
    from its class's stream; Adam's step does not depend on the other rows)."""
    search_space: Count = 2000
    """Latents drawn for the initial selection (reference `search_space_size` 2000 in the default
    config, 5000 in `CelebA_FFHQ.yaml`; PPA `attacks/initial_selection.py`). Digits: 2000."""
    latent_clip: float | None = Field(1.0, gt=0)
    """The drawn latents are clamped to [−latent_clip, latent_clip] (None: unclamped). The
    reference truncates StyleGAN's w (ψ 0.5, cutoff 8; `truncation_psi`, `truncation_cutoff`); a
    DCGAN has no mapping network, so GMI's latent range [−1, 1] (GMI `Celeba/attack.py:56`)
    stands in for the truncation (spec B4.7, a deviation)."""
    num_candidates: Count = 32
    """Latents kept (and optimised) per class after the initial selection (reference 200:
    `candidates.num_candidates`). Digits: 32 (a CPU deviation)."""
    iterations: Steps = 70
    """Adam steps per candidate (reference `num_epochs`: 50 in the default config, 70 in
    `CelebA_FFHQ.yaml` at 224 px). Digits: 70 (spec §D: 200 steps at a larger lr collapsed
    accuracy; without an image prior the step budget must stay short)."""
    lr: float = Field(0.005, gt=0)
    """Adam learning rate on the latents (reference 0.005, both configs)."""
    betas: tuple[float, float] = (0.1, 0.1)
    """Adam betas (reference (0.1, 0.1), both configs; weight decay 0). The default config also has
    MultiStepLR([30, 40], 0.1); `CelebA_FFHQ.yaml`, which BiDO+ runs, has none, and neither here."""
    loss_batch: BatchSize = 25
    """The reference batch the summed per-latent Poincaré losses are divided by (reference
    `attack.batch_size` 25, a batch mean). Adam's step hardly depends on it (only through its ε)."""
    train_crop_scale: tuple[float, float] = (0.9, 1.0)
    """Area range of the RandomResizedCrop applied to G(w) before T at every step, ratio 1
    (reference scale (0.9, 1.0), ratio (1, 1): `attack.transformations`, after CenterCrop(800)
    and Resize(224), which a generator at the data's size does not need)."""
    select_iterations: Count = 100
    """Random transforms per optimised latent in the final selection (reference 100:
    `final_selection.iterations`, PPA `attacks/final_selection.py`)."""
    select_crop_scale: tuple[float, float] = (0.5, 0.9)
    """Area range of the final selection's RandomResizedCrop (reference (0.5, 0.9))."""
    select_crop_ratio: tuple[float, float] = (0.8, 1.2)
    """Aspect-ratio range of the final selection's RandomResizedCrop (reference (0.8, 1.2))."""
    samples_per_target: Count = 8
    """Optimised latents kept per class by the final selection (reference 50 of 200:
    `final_selection.samples_per_target`). Digits: 8 of 32 (the same quarter)."""
    hflip: bool = False
    """Horizontal flips: the mirrored image joins the initial scoring and the final selection's
    transforms flip with probability 0.5 (reference true: `candidate_search.horizontal_flip`,
    `RandomHorizontalFlip(0.5)`). Digits: false (digits are not mirror-symmetric; a deviation)."""

    @model_validator(mode="after")
    def _file_named_when_used(self) -> PPAParams:
        if self.generator == "file" and self.generator_file is None:
            raise ValueError("generator = 'file' needs generator_file (a local .safetensors)")
        for name in ("train_crop_scale", "select_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(
                    f"{name} = ({lo}, {hi}): areas are fractions of the image, 0 < low <= high <= 1"
                )
        lo, hi = self.select_crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"select_crop_ratio = ({lo}, {hi}): aspect ratios need 0 < low <= high")
        if self.num_candidates > self.search_space:
            raise ValueError(
                f"num_candidates ({self.num_candidates}) cannot exceed search_space ({self.search_space}): "
                "the candidates are picked from the search space"
            )
        if self.samples_per_target > self.num_candidates:
            raise ValueError(
                f"samples_per_target ({self.samples_per_target}) cannot exceed num_candidates "
                f"({self.num_candidates}): the final selection keeps some of the optimised candidates"
            )
        return self


# ---------------------------------------------------------------- objective and transforms


def poincare_loss(logits: Tensor, y: Tensor, xi: float = POINCARE_XI) -> Tensor:
    """Per row arccosh(1 + 2‖u − v‖² / ((1 − ‖u‖²)(1 − ‖v‖²))) with u = o / ‖o‖₁ and
    v = clip(onehot(y) − ξ, 0, 1) (PPA `losses/poincare.py`, spec B4.1)."""
    u = logits / logits.norm(p=1, dim=1, keepdim=True)
    v = (F.one_hot(y, logits.shape[1]).to(u) - xi).clamp(0, 1)
    u_sq, v_sq = u.pow(2).sum(dim=1), v.pow(2).sum(dim=1)
    delta = 2 * (u - v).pow(2).sum(dim=1) / ((1 - u_sq) * (1 - v_sq))
    return torch.arccosh(1 + delta)


def random_resized_crop(
    images: Tensor,
    rng: torch.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (1.0, 1.0),
    hflip: bool = False,
) -> Tensor:
    """torchvision's RandomResizedCrop (then RandomHorizontalFlip(0.5) when `hflip`), one crop
    per image, resized back to the input size by bilinear sampling of a continuous crop window.

    As `get_params`: area ~ U(scale) of the image, log aspect ~ U(log ratio); up to 10 draws for
    a window inside the image, else the largest centred window with an allowed aspect. Draws come
    from `rng` (on the CPU).
    """
    n = images.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, RRC_ATTEMPTS, generator=rng, dtype=torch.float64)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = (
        log_lo + (log_hi - log_lo) * torch.rand(n, RRC_ATTEMPTS, generator=rng, dtype=torch.float64)
    ).exp()
    width, height = (area * aspect).sqrt(), (area / aspect).sqrt()  # fractions of the side
    fits = (width <= 1) & (height <= 1)
    first = fits.to(torch.int64).argmax(dim=1)
    width, height = width.gather(1, first[:, None])[:, 0], height.gather(1, first[:, None])[:, 0]
    fallback_w = ratio[1] if ratio[1] < 1 else 1.0  # the image is square: its aspect is 1
    fallback_h = 1 / ratio[0] if ratio[0] > 1 else 1.0
    none_fit = ~fits.any(dim=1)
    width = torch.where(none_fit, torch.full_like(width, fallback_w), width)
    height = torch.where(none_fit, torch.full_like(height, fallback_h), height)
    left = torch.rand(n, generator=rng, dtype=torch.float64) * (1 - width)
    top = torch.rand(n, generator=rng, dtype=torch.float64) * (1 - height)
    left = torch.where(none_fit, (1 - width) / 2, left)
    top = torch.where(none_fit, (1 - height) / 2, top)
    flip = torch.ones(n, dtype=torch.float64)
    if hflip:
        flip = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0).to(torch.float64)
    zero = torch.zeros(n, dtype=torch.float64)
    # Output x in [−1, 1] samples input x = centre + half-width · x (normalised coordinates).
    theta = torch.stack(
        [
            torch.stack([width * flip, zero, 2 * left + width - 1], dim=1),
            torch.stack([zero, height, 2 * top + height - 1], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def select_top(scores: Tensor, per_class: int) -> Tensor:
    """Row indices of the `per_class` highest scores in each column, best first: `[classes, k]`.

    PPA's rule (`attacks/initial_selection.py`): per class, repeatedly take the row with the
    highest score and set its score to −1; a row may be chosen for several classes.
    """
    return scores.topk(min(per_class, scores.shape[0]), dim=0).indices.T


@torch.no_grad()
def transform_confidence(
    target: nn.Module,
    images: Tensor,
    y: Tensor,
    streams: list[torch.Generator],
    iterations: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool,
    max_batch: int = 256,
) -> Tensor:
    """Per image, T's softmax probability of its class averaged over `iterations` random
    RandomResizedCrop (+ flip) transforms (PPA `attacks/final_selection.py`).

    `images` are consecutive segments of equal length, one per stream (one per class): each draws
    its crops from its own stream, and T sees all of them in forward passes of `max_batch`.
    """
    segments = len(images) // len(streams)
    total = torch.zeros(len(images), dtype=torch.float64)
    for _ in range(iterations):
        views = torch.cat(
            [
                random_resized_crop(part, stream, scale, ratio, hflip)
                for part, stream in zip(images.split(segments), streams, strict=True)
            ]
        )
        probs = torch.cat([target(v).float().softmax(dim=1) for v in views.split(max_batch)])
        total += probs.gather(1, y[:, None].to(probs.device))[:, 0].double().cpu()
    return total / iterations


# ---------------------------------------------------------------- generators


def load_generator_file(
    path: Path, architecture: str, z_dim: int, width: int, in_channels: int, image_size: int
) -> Generator:
    """The generator in `path` (safetensors only), frozen; every problem is one clear line."""
    path = Path(path).expanduser()
    where = f"attack 'ppa': generator_file {str(path)!r}"
    if not path.is_file():
        raise WorkbenchError(f"{where} does not exist; give a local .safetensors file (never downloaded)")
    if path.suffix != ".safetensors":
        raise WorkbenchError(
            f"{where} is not a .safetensors file; pickles are never loaded: convert the state dict "
            "with safetensors.torch.save_file (docs/attacks/ppa.md)"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WorkbenchError(f"{where} cannot be read as safetensors ({reason})") from None
    state = tensors_with_prefix(tensors, "generator") or tensors
    with seeds.seeded(0, "attack", "ppa", "generator-file"):
        generator = Generator(z_dim, in_channels, image_size, width)
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WorkbenchError(
            f"{where} does not hold a {architecture!r} generator: key {missing[0]!r} is missing "
            f"({len(missing)} of {len(expected)} missing)"
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise WorkbenchError(f"{where}: key {unexpected[0]!r} is not part of a {architecture!r} generator")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise WorkbenchError(
                f"{where}: {key} is shaped {list(state[key].shape)}, but z_dim = {z_dim}, "
                f"gan_width = {width} at {image_size} px with {in_channels} channel(s) need "
                f"{list(value.shape)}; set z_dim / gan_width to the file's"
            )
    generator.load_state_dict(state)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WorkbenchError(f"{where}: {bad[0]} holds NaN or inf")
    generator.eval().requires_grad_(False)
    return generator


# ---------------------------------------------------------------- the search


class PPASearch(SearchProblem):
    """Adam (betas (0.1, 0.1)) on each class's selected candidates; mean Poincaré loss on one
    random resized crop of each image per step."""

    def __init__(
        self, params: PPAParams, generator: nn.Module, target: nn.Module, initial: dict[int, Tensor]
    ):
        self.p, self.generator, self.target, self.initial = params, generator, target, initial
        self.samples = params.num_candidates

    def start(self, chunk: Chunk, device: torch.device) -> list[Tensor]:
        z = torch.cat([self.initial[g.target_class] for g in chunk.groups])
        return [z.to(device, dtype_of(self.generator)).clone().requires_grad_(True)]

    def optimizer(self, leaves: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(leaves, lr=self.p.lr, betas=self.p.betas, weight_decay=0.0)

    def loss(self, leaves: list[Tensor], chunk: Chunk, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        images = self.generator(leaves[0])
        views = torch.cat(
            [
                random_resized_crop(part, stream, self.p.train_crop_scale)
                for part, stream in zip(images.split(self.samples), chunk.streams, strict=True)
            ]
        )
        logits = self.target(views)
        per_latent = poincare_loss(logits, y)
        confidence = logits.detach().softmax(dim=1).gather(1, y[:, None])[:, 0]
        return per_latent.sum() / self.p.loss_batch, per_latent, confidence

    def finish(
        self, leaves: list[Tensor], chunk: Chunk, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor]:
        targets = torch.tensor([g.target_class for g in chunk.groups for _ in range(self.samples)])
        return self.generator(leaves[0]), targets, torch.zeros_like(targets)


# ---------------------------------------------------------------- the attack


class PPA(OnGMIPrior):
    """PPA: candidates by T's confidence, Poincaré-loss optimisation, selection over transforms.

    With `generator = "gmi"` it searches GMI's prior (`OnGMIPrior`: the same cache entry as `gmi`)."""

    name = "ppa"
    capabilities = AttackCapabilities(prepares=True, seeded_prior=True)

    def __init__(self, params: PPAParams):
        self.params = params

    def generator_for(self, ctx: AttackContext) -> tuple[nn.Module, bool]:
        """(frozen generator on the context's device, whether it came from the stage cache)."""
        p = self.params
        if p.generator == "file":
            assert p.generator_file is not None  # the params validator insists
            generator = load_generator_file(
                p.generator_file,
                p.generator_architecture,
                p.z_dim,
                p.gan_width,
                ctx.data.in_channels,
                ctx.data.image_size,
            )
            return generator.to(torch.device(ctx.device)), False
        generator, _critic, hit = self.prior(ctx)
        return generator, hit

    def prepare(self, ctx: AttackContext) -> None:
        """Train (or load) GMI's prior once before the variants, or check the generator file."""
        self.generator_for(ctx)

    @torch.no_grad()
    def candidates(self, ctx: AttackContext, generator: nn.Module, classes: list[int]) -> dict[int, Tensor]:
        """Per class, the `num_candidates` latents of the search space T is most confident of."""
        p = self.params
        device, dtype = torch.device(ctx.device), dtype_of(generator)
        z = torch.randn(
            p.search_space, p.z_dim, generator=seeds.generator(ctx.seed, "attack", self.name, "space")
        )
        if p.latent_clip is not None:
            z = z.clamp(-p.latent_clip, p.latent_clip)
        scores = []
        for part in z.split(p.max_batch):
            images = generator(part.to(device, dtype))
            views = [images, images.flip(-1)] if p.hflip else [images]
            scores.append(sum(ctx.target(v).float().softmax(dim=1) for v in views).cpu() / len(views))
        confidence = torch.cat(scores)
        check_finite(confidence, attack=self.name, stage="attack:ppa:candidates", what="T's confidence")
        chosen = select_top(confidence[:, classes], p.num_candidates)
        return {c: z[chosen[i]] for i, c in enumerate(classes)}

    def final_selection(self, ctx: AttackContext, images: Tensor, targets: Tensor) -> Tensor:
        """Indices of the kept images, per class the best `samples_per_target`, best first."""
        p = self.params
        classes = torch.unique(targets).tolist()
        rows = [torch.nonzero(targets == c)[:, 0] for c in classes]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("the final selection expects the same number of candidates per class")
        order = torch.cat(rows)
        score = transform_confidence(
            ctx.target,
            images[order].to(ctx.device, dtype_of(ctx.target)),
            targets[order],
            [seeds.generator(ctx.seed, "attack", self.name, "select", c) for c in classes],
            p.select_iterations,
            p.select_crop_scale,
            p.select_crop_ratio,
            p.hflip,
            p.max_batch,
        )
        kept = [
            mine[part.argsort(descending=True, stable=True)[: p.samples_per_target]]
            for mine, part in zip(rows, score.split(len(rows[0])), strict=True)
        ]
        return torch.cat(kept)

    def run(self, ctx: AttackContext) -> AttackResult:
        p = self.params
        classes = resolve_classes(p.classes, ctx.data.num_classes, self.name, p.first_classes)
        generator, hit = self.generator_for(ctx)
        initial = self.candidates(ctx, generator, classes)
        units: list[list[Group]] = [[g] for g in make_groups(classes, 1)]
        images, targets, _restarts, unselected_confidence = search(
            ctx,
            PPASearch(p, generator, ctx.target, initial),
            units,
            attack=self.name,
            iterations=p.iterations,
            max_batch=p.max_batch,
        )
        keep = self.final_selection(ctx, images, targets)
        ctx.emit(
            "log",
            level="info",
            message=f"ppa: {p.num_candidates} candidates per class from {p.search_space} latents, optimised "
            f"{p.iterations} steps; kept the {p.samples_per_target} per class T is surest of over "
            f"{p.select_iterations} random transforms",
        )
        figures = {
            # `target_confidence` is the selected set's (the images returned), as for every attack.
            "target_confidence": float(self.target_confidence(ctx, images[keep], targets[keep]).mean()),
            "target_confidence_unselected": float(
                torch.as_tensor(unselected_confidence, dtype=torch.float64).mean()
            ),
            "gan_cached": float(hit),
            **self.unselected_accuracy(ctx, images, targets),
        }
        return AttackResult(images=images[keep], targets=targets[keep], restarts=None, figures=figures)

    @staticmethod
    @torch.no_grad()
    def target_confidence(ctx: AttackContext, images: Tensor, targets: Tensor) -> Tensor:
        """T's softmax probability of each image's class (on the plain image)."""
        dtype = dtype_of(ctx.target)
        probs = torch.cat(
            [
                ctx.target(part.to(ctx.device, dtype)).float().softmax(dim=1).cpu()
                for part in images.split(256)
            ]
        )
        return probs.gather(1, targets[:, None])[:, 0]

    @staticmethod
    def unselected_accuracy(ctx: AttackContext, images: Tensor, targets: Tensor) -> dict[str, float]:
        """E's top-1/top-5 on every optimised latent, before the final selection (PPA reports
        both: `attack.py`, "Unfiltered Evaluation"); empty without an evaluation model."""
        if ctx.evaluation_model is None:
            return {}
        logits, _ = model_outputs(ctx.evaluation_model, images, torch.device(ctx.device), 256, features=False)
        top1, _ = accuracy_over_restarts(topk_hits(logits, targets, 1), None)
        top5, _ = accuracy_over_restarts(topk_hits(logits, targets, 5), None)
        return {"top1_unselected": top1, "top5_unselected": top5}

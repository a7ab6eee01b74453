"""Privacy judged by more than one evaluation model, and by evidence that needs none (issue 27).

Three attack metrics, each reading every evaluator of the run (`EvalContext.evaluators`: E as
`E`, then the recipe's `[evaluators.<name>]`):

- `agreed-accuracy`: top-1/top-5 per evaluator (`top1@<name>`) and `agreed_top1`, the share of
  reconstructions that every evaluator assigns to the target (never above any one's top-1).
- `nearest-neighbour`: the nearest image of each reconstruction among the private training
  images of every class and the public images, in pixel space and in each evaluator's feature
  space: `nn_top1@<space>` (nearest is a private image of the target class) and `looks_public@<space>`
  (nearest is public); `false_positive@<name>`, the share of an evaluator's hits whose pixel-space
  nearest image is not of the target class; `psnr` and `ssim` of each reconstruction against its
  nearest private image of the target class (scikit-image).
- `prdc`: precision, recall, density and coverage (Naeem et al. 2020, the `prdc` package) between
  the reconstructions and the attacked classes' private training images in an evaluator's features.

Figure names and when to trust which: docs/attacks.md, "Several evaluators".
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import Tensor, nn

from workbench.api import (
    Count,
    EvalContext,
    Metric,
    StrictModel,
    WorkbenchError,
    collect_images,
    nearest_indices,
)
from workbench_attacks.privacy import accuracy_over_restarts, model_outputs, topk_hits

PIXEL = "pixel"


def evaluators_of(ctx: EvalContext, metric: str) -> dict[str, nn.Module]:
    """The run's evaluators by name (E alone when the runner passed only `evaluation_model`)."""
    if ctx.attack is None:
        raise WorkbenchError(
            f"metric {metric!r} judges an attack's reconstructions; list it under the attacks' metrics"
        )
    evaluators = dict(ctx.evaluators) or (
        {"E": ctx.evaluation_model} if ctx.evaluation_model is not None else {}
    )
    if not evaluators:
        raise WorkbenchError(f"metric {metric!r} needs the evaluation model E; the recipe must configure one")
    return evaluators


def logits_and_features(
    model: nn.Module, images: Tensor, device: torch.device, batch_size: int
) -> tuple[Tensor, Tensor]:
    """(logits, penultimate features) of `images` on CPU in float, shared with the other metrics
    (`model_outputs`)."""
    if not hasattr(model, "forward_hidden"):
        raise WorkbenchError(
            "an evaluator has no forward_hidden(x) (its penultimate feature); use a workbench backbone"
        )
    return model_outputs(model, images, device, batch_size)


# ---------------------------------------------------------------- pure math


def agreed_hits(logits_by_evaluator: dict[str, Tensor], targets: Tensor) -> Tensor:
    """Whether every evaluator's top-1 is the target, per reconstruction."""
    hits = [logits.argmax(dim=1) == targets for logits in logits_by_evaluator.values()]
    return torch.stack(hits).all(dim=0)


def nearest_neighbour_shares(
    nearest_labels: Tensor, nearest_public: Tensor, targets: Tensor
) -> tuple[float, float]:
    """(share whose nearest image is a private image of the target class, share whose nearest is public)."""
    correct = (~nearest_public) & (nearest_labels == targets)
    return float(correct.double().mean()), float(nearest_public.double().mean())


def false_positive_share(evaluator_hits: Tensor, nearest_is_target: Tensor) -> float | None:
    """Among the reconstructions an evaluator counts correct, the share whose nearest image is not
    a private image of the target class; None when the evaluator counts none correct."""
    if not bool(evaluator_hits.any()):
        return None
    return float((~nearest_is_target[evaluator_hits]).double().mean())


def psnr_ssim(reconstructions: Tensor, references: Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of each reconstruction against its reference, images in [0, 1]
    (scikit-image, data range 1). SSIM as Wang et al. 2004 (Gaussian window σ 1.5, population
    covariances) where the image is at least 11 px; smaller images use a uniform window of the
    largest odd side that fits (at least 3). An identical pair has an infinite PSNR: 100 dB is
    reported for it so that a mean stays finite."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnrs, ssims = [], []
    for fake, real in zip(
        reconstructions.double().cpu().numpy(), references.double().cpu().numpy(), strict=True
    ):
        mse = float(np.mean((fake - real) ** 2))
        psnrs.append(100.0 if mse == 0 else float(peak_signal_noise_ratio(real, fake, data_range=1.0)))
        side = min(fake.shape[-2:])
        if side >= 11:
            options = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
        else:
            options = {"win_size": max(3, side if side % 2 else side - 1)}
        ssims.append(float(structural_similarity(real, fake, data_range=1.0, channel_axis=0, **options)))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def prdc_figures(real: Tensor, fake: Tensor, nearest_k: int) -> dict[str, float]:
    """Precision, recall, density, coverage from the `prdc` package (its progress print silenced).

    The package asks scikit-learn for its distances with `n_jobs=8`: eight threads on a small
    matrix in the main process (28 s of joblib polling in a profiled in-process job on 2 cores),
    and in a worker process a UserWarning per call before it falls back to one. One job here
    computes them as a worker does, without the warning."""
    from joblib import parallel_config
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()), parallel_config(backend="sequential"):
        values = compute_prdc(
            real_features=real.double().numpy(), fake_features=fake.double().numpy(), nearest_k=nearest_k
        )
    return {name: float(values[name]) for name in ("precision", "recall", "density", "coverage")}


# ---------------------------------------------------------------- metrics


class AgreedAccuracy(Metric):
    """Top-1/top-5 of every evaluator and the agreed top-1 (all evaluators say the target), each
    the mean over restarts as `attack-accuracy` reports E's."""

    section = "attacks"

    def __init__(self, params=None):
        self.params = params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        evaluators = evaluators_of(ctx, "agreed-accuracy")
        attack = ctx.attack
        targets = attack.targets.cpu().long()
        draws = int(attack.figures.get("draws_per_fit", 0)) or None  # KED-MI's fits, as attack-accuracy
        figures: dict[str, float] = {}
        logits = {}
        for name, model in evaluators.items():
            logits[name], _ = logits_and_features(model, attack.images, ctx.device, ctx.batch_size)
            figures[f"top1@{name}"] = accuracy_over_restarts(
                topk_hits(logits[name], targets, 1), attack.restarts, draws
            )[0]
            figures[f"top5@{name}"] = accuracy_over_restarts(
                topk_hits(logits[name], targets, 5), attack.restarts, draws
            )[0]
        agreed, agreed_std = accuracy_over_restarts(agreed_hits(logits, targets), attack.restarts, draws)
        return {"agreed_top1": agreed, "agreed_top1_std": agreed_std, **figures}


class NearestNeighbourParams(StrictModel):
    bank_limit: Count | None = 20000
    """At most this many private training images and this many public images (the first in
    dataset order) are searched; unset = all. The digits have 1,617 in all."""


class NearestNeighbour(Metric):
    """Nearest images in pixel and feature space, the evaluators' false positives, PSNR and SSIM."""

    section = "attacks"

    def __init__(self, params: NearestNeighbourParams | None = None):
        self.params = params if params is not None else NearestNeighbourParams()
        self._bank: tuple[Tensor, Tensor, Tensor] | None = None

    def bank(self, ctx: EvalContext) -> tuple[Tensor, Tensor, Tensor]:
        """(images, labels, is_public): the private training images, then the public ones (label -1)."""
        if self._bank is None:
            private_x, private_y = collect_images(ctx.data.train, self.params.bank_limit)
            public_x, _ = collect_images(ctx.data.public, self.params.bank_limit)
            images = torch.cat([private_x, public_x]) if len(public_x) else private_x
            labels = torch.cat([private_y, torch.full((len(public_x),), -1, dtype=torch.long)])
            is_public = torch.cat(
                [torch.zeros(len(private_x), dtype=torch.bool), torch.ones(len(public_x), dtype=torch.bool)]
            )
            self._bank = images, labels, is_public
        return self._bank

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        evaluators = evaluators_of(ctx, "nearest-neighbour")
        attack = ctx.attack
        images, targets = attack.images.cpu().float(), attack.targets.cpu().long()
        bank_x, bank_y, bank_public = self.bank(ctx)
        missing = sorted(set(targets.tolist()) - set(bank_y.tolist()))
        if missing:
            raise WorkbenchError(
                f"metric 'nearest-neighbour': no private training image of attacked classes {missing}"
            )
        figures: dict[str, float] = {}
        pixel = nearest_indices(images, bank_x)
        figures[f"nn_top1@{PIXEL}"], figures[f"looks_public@{PIXEL}"] = nearest_neighbour_shares(
            bank_y[pixel], bank_public[pixel], targets
        )
        pixel_is_target = (~bank_public[pixel]) & (bank_y[pixel] == targets)
        for name, model in evaluators.items():
            logits, features = logits_and_features(model, images, ctx.device, ctx.batch_size)
            near = nearest_indices(features, logits_and_features(model, bank_x, ctx.device, ctx.batch_size)[1])
            figures[f"nn_top1@{name}"], figures[f"looks_public@{name}"] = nearest_neighbour_shares(
                bank_y[near], bank_public[near], targets
            )
            share = false_positive_share(logits.argmax(dim=1) == targets, pixel_is_target)
            if share is not None:  # no hit, no false positive to estimate
                figures[f"false_positive@{name}"] = share
        # PSNR / SSIM against the nearest private image of the target class (nearest in pixel space).
        references = torch.empty_like(images)
        for cls in torch.unique(targets):
            rows = targets == cls
            same = bank_x[(bank_y == cls) & ~bank_public]
            references[rows] = same[nearest_indices(images[rows], same)].float()
        figures["psnr"], figures["ssim"] = psnr_ssim(images, references)
        return figures


class PRDCParams(StrictModel):
    nearest_k: Count = 5
    """k of the k-nearest-neighbour balls (Naeem et al. 2020 recommend 5); each side needs more
    than k images."""
    evaluator: str = "E"
    """Whose penultimate features: `E` or a name from the recipe's `evaluators`."""
    private_per_class: Count | None = None
    """Real side: at most this many private training images per attacked class (default: all)."""


class PRDC(Metric):
    """Precision/recall/density/coverage of the reconstructions against the attacked classes' private
    training images, in one evaluator's feature space (all attacked classes pooled)."""

    section = "attacks"

    def __init__(self, params: PRDCParams | None = None):
        self.params = params if params is not None else PRDCParams()

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        evaluators = evaluators_of(ctx, "prdc")
        p = self.params
        if p.evaluator not in evaluators:
            raise WorkbenchError(
                f"metric 'prdc': evaluator {p.evaluator!r} is not one of this run's "
                f"({', '.join(evaluators)}); set `evaluator` to one of them"
            )
        model, attack = evaluators[p.evaluator], ctx.attack
        classes = set(attack.targets.cpu().long().tolist())
        private_x, private_y = collect_images(ctx.data.train)
        keep = torch.zeros(len(private_y), dtype=torch.bool)
        for cls in classes:
            rows = torch.nonzero(private_y == cls).flatten()
            keep[rows[: p.private_per_class] if p.private_per_class else rows] = True
        real = logits_and_features(model, private_x[keep], ctx.device, ctx.batch_size)[1]
        fake = logits_and_features(model, attack.images.cpu().float(), ctx.device, ctx.batch_size)[1]
        if min(len(real), len(fake)) <= p.nearest_k:
            raise WorkbenchError(
                f"metric 'prdc': nearest_k {p.nearest_k} needs more than {p.nearest_k} private images "
                f"and reconstructions (got {len(real)} and {len(fake)}); lower nearest_k"
            )
        return {
            f"{name}@{p.evaluator}": value for name, value in prdc_figures(real, fake, p.nearest_k).items()
        }

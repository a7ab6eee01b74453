"""Privacy metrics: how much of the private data the reconstructions reveal, judged by E.

The math lives in pure functions (tested against hand-worked values); the metric components
only gather features from the evaluation model E and call them. E is the separately trained
evaluation classifier: `forward_hidden(x) -> (logits, hiddens)`, `hiddens[-1]` its penultimate
feature. Private class k is E's class k.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from workbench.api import AttackResult, EvalContext, Metric, StrictModel, WorkbenchError

# ---------------------------------------------------------------- pure math


def topk_hits(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """Whether each row's target is among its `k` highest logits (k is capped at the class count)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1)


def accuracy_over_restarts(
    hits: Tensor, restarts: Tensor | None, draws_per_fit: int | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of the per-restart accuracy.

    The std is the sample std (n - 1), as the GMI/KED-MI scripts report it; 0 for one restart.
    With `draws_per_fit` (KED-MI's several fits: `restarts` = fit · draws_per_fit + draw), each
    fit's mean and std over its draws, then the mean over fits of both, as DefendMI reports
    `fits > 1` (`DMI/recovery.py:166-185`: `np.array(res_all).mean(0)`): the std is the spread
    of one fit's draws, not of the fits, and pooling the fits under each draw index (which
    averages out the fit-to-fit differences) would understate it.
    """
    hits = hits.double()
    if restarts is None:
        return float(hits.mean()), 0.0
    if draws_per_fit:
        fits = torch.div(restarts, draws_per_fit, rounding_mode="floor")
        per_fit = [accuracy_over_restarts(hits[fits == f], restarts[fits == f]) for f in torch.unique(fits)]
        return sum(m for m, _ in per_fit) / len(per_fit), sum(s for _, s in per_fit) / len(per_fit)
    per_restart = torch.stack([hits[restarts == r].mean() for r in torch.unique(restarts)])
    std = float(per_restart.std(unbiased=True)) if len(per_restart) > 1 else 0.0
    return float(per_restart.mean()), std


def knn_distance(
    recon_feats: Tensor, recon_targets: Tensor, private_feats: Tensor, private_labels: Tensor
) -> float:
    """Mean over reconstructions of the smallest squared L2 distance to a private sample of its class."""
    recon = recon_feats.double().flatten(1)
    private = private_feats.double().flatten(1)
    nearest = torch.empty(len(recon), dtype=torch.float64)
    for target in torch.unique(recon_targets):
        rows = recon_targets == target
        same = private[private_labels == target]
        if len(same) == 0:
            raise ValueError(f"no private sample of class {int(target)} to compare with")
        nearest[rows.cpu()] = torch.cdist(recon[rows], same).pow(2).min(dim=1).values.cpu()
    return float(nearest.mean())


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (n - 1 normalised) in float64; needs at least two samples."""
    array = np.asarray(
        features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64
    )
    array = array.reshape(len(array), -1)
    if len(array) < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {len(array)}")
    with blas_threads_as_torch():
        return array.mean(axis=0), np.atleast_2d(np.cov(array, rowvar=False))


def _clean_spectrum(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise (|λ| below n·eps·max|λ|) set to 0.

    A singular covariance has exact zeros that come out as ±1e-16; their square roots
    (1e-8 each) would otherwise add up to a visible bias.
    """
    cutoff = len(values) * np.finfo(np.float64).eps * max(float(np.abs(values).max(initial=0.0)), 1e-300)
    return np.where(values > cutoff, values, 0.0)


def blas_threads_as_torch():
    """numpy's BLAS (OpenBLAS) limited to the threads torch was given for this job.

    Left alone it starts one thread per core in every worker process; two workers on two cores
    then run four BLAS threads that spin while waiting for each other: one 256-wide `eigh` took
    1.06 s of CPU with 2 threads on a busy 2-core machine and 0.007 s with 1
    (benchmarks/profile_main_job.py found FID's eigendecompositions at a fifth of the job). It also
    makes the distance's last bits independent of the machine's core count, as torch's are."""
    return threadpool_limits(limits=torch.get_num_threads(), user_api="blas")


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_clean_spectrum(values))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½ between two Gaussians.

    tr (Σ1 Σ2)^½ is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix Σ1^½ Σ2 Σ1^½ (same spectrum as Σ1 Σ2), so it stays real and stable for singular
    covariances (fewer samples than dimensions), where scipy's sqrtm can return junk.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    with blas_threads_as_torch():
        root1 = _psd_sqrt(sigma1)
        middle = root1 @ sigma2 @ root1
        eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(_clean_spectrum(eigenvalues)).sum()
    distance = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)
    return max(distance, 0.0)  # rounding can leave -1e-12 for identical sets


# ---------------------------------------------------------------- gathering features


def _require_attack(ctx: EvalContext, metric: str) -> AttackResult:
    if ctx.attack is None:
        raise WorkbenchError(
            f"metric {metric!r} judges an attack's reconstructions; list it under the attacks' metrics"
        )
    return ctx.attack


def _require_evaluation_model(ctx: EvalContext, metric: str) -> nn.Module:
    model = ctx.evaluation_model
    if model is None:
        raise WorkbenchError(f"metric {metric!r} needs the evaluation model E; the recipe must configure one")
    if not hasattr(model, "forward_hidden"):
        raise WorkbenchError(
            f"metric {metric!r}: the evaluation model has no forward_hidden(x); use a workbench backbone"
        )
    return model


# Otherwise each evaluator sees the same private images once per metric and per attack: the main job's
# 12 judgements computed the features of every private digit about 40 times, about half their time.
_OUTPUTS: OrderedDict[tuple, tuple[weakref.ref, Tensor, Tensor]] = OrderedDict()
_OUTPUTS_BYTES = 1 << 30
"""The most the shared outputs hold; the least recently used go first (a CelebA bank's 1000-class
logits are about 160 MB per evaluator)."""


def _state_version(model: nn.Module) -> int:
    """Changes whenever a parameter or buffer of `model` is modified in place (an optimizer step)."""
    return sum(t._version for t in (*model.parameters(), *model.buffers()))


def _images_digest(images: Tensor) -> str:
    x = images.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(f"{x.dtype}{tuple(x.shape)}".encode(), digest_size=16)
    digest.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def model_outputs(
    model: nn.Module, images: Tensor, device: torch.device, batch_size: int, features: bool = True
) -> tuple[Tensor, Tensor]:
    """(logits, penultimate features or empty) of `images` in batches of `batch_size`, on CPU in float;
    the model's mode is restored. The metrics of a process share the answers: the same model (object
    and weights) on the same images (by content) is run once, so the figures are those of one pass."""
    key = (id(model), _state_version(model), _images_digest(images), str(device), batch_size, features)
    found = _OUTPUTS.get(key)
    if found is not None and found[0]() is model:
        _OUTPUTS.move_to_end(key)
        return found[1].clone(), found[2].clone()
    was_training = model.training
    model.eval()
    all_logits, all_feats = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            if features:
                logits, hiddens = model.forward_hidden(x)
                all_feats.append(hiddens[-1].flatten(1).float().cpu())
            else:
                logits = model(x)
            all_logits.append(logits.float().cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(all_logits) if all_logits else torch.empty(0)
    feats = torch.cat(all_feats) if all_feats else torch.empty(0)
    _OUTPUTS[key] = (weakref.ref(model), logits, feats)
    while sum(_nbytes(entry) for entry in _OUTPUTS.values()) > _OUTPUTS_BYTES and len(_OUTPUTS) > 1:
        _OUTPUTS.popitem(last=False)
    return logits.clone(), feats.clone()


def _nbytes(entry: tuple[weakref.ref, Tensor, Tensor]) -> int:
    return entry[1].nbytes + entry[2].nbytes


def private_images(
    dataset: Dataset, classes: Tensor, batch_size: int, per_class: int | None = None
) -> tuple[Tensor, Tensor]:
    """Private training images (and labels) of the given classes, stacked on CPU; with
    `per_class`, only the first that many of each class in dataset order."""
    wanted = set(int(c) for c in classes)
    taken: dict[int, int] = {}
    images, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        y = torch.as_tensor(y)
        keep = []
        for v in y.tolist():
            v = int(v)
            ok = v in wanted and (per_class is None or taken.get(v, 0) < per_class)
            if ok:
                taken[v] = taken.get(v, 0) + 1
            keep.append(ok)
        mask = torch.tensor(keep, dtype=torch.bool)
        images.append(x[mask])
        labels.append(y[mask])
    return torch.cat(images), torch.cat(labels).long()


# ---------------------------------------------------------------- metrics


class AttackAccuracy(Metric):
    """Top-1/top-5 of E on the reconstructions w.r.t. their target class, mean ± std over restarts.

    What the std is over, per attack: GMI, LOMMA, PLG-MI, MI-Face: independent restarts (each a
    search of every attacked class); KED-MI (and LOMMA on KED-MI): the draws of one fit, averaged
    over fits; VMI: the draws from each class's fitted q; PPA: none (0, its selection keeps the
    best candidates)."""

    section = "attacks"

    def __init__(self, params=None):
        self.params = params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        attack = _require_attack(ctx, "attack-accuracy")
        model = ctx.evaluation_model
        if model is None:
            raise WorkbenchError(
                "metric 'attack-accuracy' needs the evaluation model E; the recipe must configure one"
            )
        logits, _ = model_outputs(model, attack.images, ctx.device, ctx.batch_size, features=False)
        targets = attack.targets.cpu()
        # KED-MI's fits: per fit over its draws, then the mean over fits (`accuracy_over_restarts`).
        draws = int(attack.figures.get("draws_per_fit", 0)) or None
        top1, top1_std = accuracy_over_restarts(topk_hits(logits, targets, 1), attack.restarts, draws)
        top5, top5_std = accuracy_over_restarts(topk_hits(logits, targets, 5), attack.restarts, draws)
        return {"top1": top1, "top5": top5, "top1_std": top1_std, "top5_std": top5_std}


def _features_for(
    ctx: EvalContext,
    metric: str,
    model: nn.Module | None = None,
    *,
    private_per_class: int | None = None,
    successful_only: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(recon features, recon targets, private features, private labels) for the attacked classes.

    `private_per_class` caps the private images per class (the first ones); `successful_only`
    keeps only the reconstructions E classifies as their target (top-1).
    """
    attack = _require_attack(ctx, metric)
    extractor = model if model is not None else _require_evaluation_model(ctx, metric)
    targets = attack.targets.cpu().long()
    recon_images = attack.images
    if successful_only:
        judge = _require_evaluation_model(ctx, metric)
        logits, _ = model_outputs(judge, recon_images, ctx.device, ctx.batch_size, features=False)
        hit = logits.argmax(dim=1) == targets
        recon_images, targets = recon_images[hit], targets[hit]
        if len(targets) == 0:
            return torch.empty(0), targets, torch.empty(0), torch.empty(0, dtype=torch.long)
    images, labels = private_images(ctx.data.train, torch.unique(targets), ctx.batch_size, private_per_class)
    missing = sorted(set(int(t) for t in torch.unique(targets)) - set(int(v) for v in torch.unique(labels)))
    if missing:
        raise WorkbenchError(
            f"metric {metric!r}: the private training split has no image of attacked classes {missing}"
        )
    _, recon_feats = model_outputs(extractor, recon_images, ctx.device, ctx.batch_size)
    _, private_feats = model_outputs(extractor, images, ctx.device, ctx.batch_size)
    return recon_feats, targets, private_feats, labels


class KNNDistance(Metric):
    """Mean smallest squared L2 distance in E's feature space to a private image of the target class."""

    section = "attacks"

    def __init__(self, params=None):
        self.params = params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        recon, targets, private, labels = _features_for(ctx, "knn-dist")
        return {"knn_dist": knn_distance(recon, targets, private, labels)}


def _fid(metric: str, recon: Tensor, private: Tensor) -> float:
    if len(recon) < 2 or len(private) < 2:
        raise WorkbenchError(
            f"metric {metric!r} needs at least 2 reconstructions and 2 private images "
            f"(got {len(recon)} and {len(private)}); raise the attack's samples_per_class or restarts"
        )
    return frechet_distance(*feature_statistics(recon), *feature_statistics(private))


Convention = Literal["bido", "pytorch-fid", "lomma", "plgmi"]

CONVENTIONS: dict[str, dict] = {
    "bido": {"features": "E", "successful_only": False, "uint8": False},
    "pytorch-fid": {"features": "FID Inception", "successful_only": False, "uint8": False},
    "lomma": {"features": "FID Inception", "successful_only": True, "uint8": True},
    "plgmi": {"features": "FID Inception", "successful_only": True, "uint8": False},
}
"""The FID conventions of the field, as the papers compute them (docs/attacks/gmi.md):
`bido`        E's penultimate features, all reconstructions vs ≤ N private training images per
              class (DefendMI `DMI/fid_score.py:282-330`; N = 5 on CelebA, 100 on MNIST);
`pytorch-fid` pytorch-fid's FID Inception on float images in [0, 1], all (final) reconstructions
              (PPA `metrics/fid_score.py:36-47`: `InceptionV3([block_idx])`, pytorch-fid's
              `calculate_frechet_distance`);
`lomma`       the FID Inception after quantising to uint8, only the reconstructions E classifies
              correctly (LOMMA `metrics/fid.py:24-26,44-64,247-264`);
`plgmi`       the FID Inception, successful reconstructions only (PLG `evaluation.py:20-62`; its
              network is torchvision's ImageNet Inception, a deviation named in the docs)."""

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
"""pytorch-fid's port of the TensorFlow FID Inception graph (its `FID_WEIGHTS_URL`): fetch it once
yourself; the workbench never downloads it."""
FID_INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
"""Its SHA-256 (the first 8 digits are the file name's, as torch hub names files)."""


class FIDParams(StrictModel):
    convention: Literal["bido"] = "bido"
    """`bido`: Fréchet distance in E's feature space over all reconstructions (DefendMI
    `DMI/fid_score.py:282-330`). The Inception conventions (`lomma`, `plgmi`, `ppa`) are the
    `fid-inception` metric's."""
    private_per_class: int | None = Field(None, ge=2)
    """Private training images per attacked class on the real side, the first ones in dataset
    order (default: all). BiDO: 5 on CelebA, 100 on MNIST (DefendMI
    `attack_res/{celeba,mnist}/private_domain.py`)."""
    successful_only: bool = False
    """Only the reconstructions E classifies as their target class (top-1) on the fake side
    (False in BiDO's convention)."""


def _fid_or_nothing(metric: str, key: str, recon: Tensor, private: Tensor, successful_only: bool) -> dict:
    if successful_only and len(recon) < 2:
        # Fewer than two successful reconstructions: no distance to report (a strong defense).
        return {f"{key}_successes": float(len(recon))}
    figures = {key: _fid(metric, recon, private)}
    if successful_only:
        figures[f"{key}_successes"] = float(len(recon))
    return figures


class FID(Metric):
    """Fréchet distance in E's feature space between reconstructions and private images
    (BiDO's convention; `private_per_class` caps the private side as BiDO does)."""

    section = "attacks"

    def __init__(self, params: FIDParams | None = None):
        self.params = params if params is not None else FIDParams()

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        p = self.params
        recon, _, private, _ = _features_for(
            ctx, "fid", private_per_class=p.private_per_class, successful_only=p.successful_only
        )
        return _fid_or_nothing("fid", "fid", recon, private, p.successful_only)


class InceptionFIDParams(StrictModel):
    weights_file: Path
    """The FID Inception's weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a torch state dict, read
    with `weights_only`; or the same tensors as `.safetensors`). Never downloaded: fetch it once from
    pytorch-fid's release yourself. A missing file, or one whose SHA-256 is not `sha256`, is one
    line when the recipe is built, before any training."""
    sha256: str | None = FID_INCEPTION_SHA256
    """The SHA-256 the file must have (default: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`);
    None skips the check (a converted copy, or random weights in tests)."""
    image_size: int = Field(299, ge=75)
    """Images are resized to this square size (bilinear) before Inception; 299 is what pytorch-fid
    and the papers do (`resize_input=True`); smaller is only for quick tests."""
    convention: Literal["pytorch-fid", "lomma", "plgmi"] = "pytorch-fid"
    """`pytorch-fid` (PPA): all reconstructions, float images (PPA `metrics/fid_score.py:36-70`);
    `lomma`: quantised to uint8 first, only those E classifies as their target (LOMMA
    `metrics/fid.py:24-26,247-264`); `plgmi`: only those E classifies as their target (PLG
    `reconstruct.py:252-255`, `evaluation.py:20-62`). Sets `successful_only` unless that is given."""
    private_per_class: int | None = Field(None, ge=2)
    """Private training images per attacked class on the real side, the first ones (default: all)."""
    successful_only: bool | None = None
    """Only reconstructions E classifies as their target (default: as `convention` says)."""


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_inception_file(path: Path, sha256: str | None) -> None:
    """One line naming the file and the SHA-256 it must have, when it is missing or another file."""
    local = Path(path).expanduser()
    expected = f"pytorch-fid's {FID_INCEPTION_FILE}" + (f" (SHA-256 {sha256})" if sha256 else "")
    if not local.is_file():
        raise WorkbenchError(
            f"metric 'fid-inception': weights_file {str(path)!r} does not exist; it must be {expected}, "
            "fetched once yourself (it is never downloaded at run time)"
        )
    if sha256 is not None and (found := file_sha256(local)) != sha256.lower():
        raise WorkbenchError(
            f"metric 'fid-inception': weights_file {str(path)!r} has SHA-256 {found}, not {expected}; "
            "give the FID Inception weights (or set sha256 for a converted copy)"
        )


def fid_inception(state: dict[str, Tensor]) -> nn.Module:
    """pytorch-fid's `InceptionV3` up to the 2048-d pool (the FID Inception: its patched
    `FIDInceptionA/C/E` blocks, `pytorch_fid/inception.py:197-221`) with `state` loaded instead of
    the weights it would download: its loader is pointed at `state` while it builds."""
    from pytorch_fid import inception as package

    fetch = package.load_state_dict_from_url
    package.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        return package.InceptionV3([package.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    finally:
        package.load_state_dict_from_url = fetch


class InceptionFeatures(nn.Module):
    """The FID Inception's 2048-d pool features of images in [0, 1] (grey repeated to RGB).

    As pytorch-fid's `InceptionV3.forward`: bilinear resize to `image_size` (299: its
    `resize_input`), then `2x − 1` (its `normalize_input`). `uint8`: LOMMA's step first, images
    truncated to 8 bits (`(x · 255).to(torch.uint8)`, LOMMA `metrics/fid.py:24-26`).
    """

    def __init__(self, weights_file: Path, image_size: int = 299, uint8: bool = False):
        super().__init__()
        path = Path(weights_file).expanduser()
        state = _load_state_dict(path)
        try:
            net = fid_inception(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise WorkbenchError(
                f"metric 'fid-inception': {path} is not the FID Inception's state dict ({first})"
            ) from None
        net.resize_input = False  # resized here, to `image_size` (299 = the package's own)
        self.net = net.eval()
        self.image_size = image_size
        self.uint8 = uint8

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.uint8:
            x = (x * 255).to(torch.uint8).to(x.dtype) / 255
        x = nn.functional.interpolate(
            x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        features = self.net(x)[0].flatten(1)
        return features, [features]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WorkbenchError(
            f"metric 'fid-inception': cannot read weights_file {str(path)!r} ({exc})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WorkbenchError(f"metric 'fid-inception': {path} holds no state dict")
    return state


class InceptionFID(Metric):
    """Fréchet distance in the FID Inception's feature space (pytorch-fid's network, local weights)."""

    section = "attacks"

    def __init__(self, params: InceptionFIDParams):
        self.params = params
        self._model: InceptionFeatures | None = None
        # Fail when the recipe is built, not after hours of training.
        check_inception_file(params.weights_file, params.sha256)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        if self._model is None:
            uint8 = CONVENTIONS[self.params.convention]["uint8"]
            self._model = InceptionFeatures(self.params.weights_file, self.params.image_size, uint8).to(ctx.device)
        p = self.params
        successful = p.successful_only
        if successful is None:
            successful = CONVENTIONS[p.convention]["successful_only"]
        recon, _, private, _ = _features_for(
            ctx,
            "fid-inception",
            self._model,
            private_per_class=p.private_per_class,
            successful_only=successful,
        )
        return _fid_or_nothing("fid-inception", "fid_inception", recon, private, successful)

"""SCA: sparse-coding architectures, convolutions replaced by LCA layers (Dibbo, Breuer, Moore,
Teti, *Improving Robustness to Model Inversion Attacks via Sparse Coding Architectures*, ECCV 2024;
reference code `SayantonDibbo/SCA@7a33086`, the LCA solver vendored as `Sparse Coding/lcapt/`, a copy
of LANL's `lca-pytorch`, which is not on PyPI: the layer here is written from its equations).

An LCA layer replaces a convolution by the sparse code of its input in a fixed random dictionary Φ:
the membrane potentials `u` integrate the drive `b = Φ ⋆ s` minus the lateral inhibition of the
active atoms, `u ← u + (b − u − G ∗ a)/τ`, `a = relu(u − λ)`, for T steps (`lca.py:264-279`). SCA
(`README.md:25`, the `*_lca2.py` scripts) replaces a network's first two convolutions by LCA
layers; Dared's `sparse` (its README's "Sparse-Standard", Teti et al. 2022) prepends one LCA layer
with as many codes as input channels (`DaredEVAL@388a324` `defenses/sparse.py:15-40`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from workbench.api import Defense, LossOutput, StrictModel, WorkbenchError, cross_entropy, seeds

# Per mode: (λ, kernel size) of the reference. SCA: kernel 5 in every `*_lca2.py`; λ 0.5 in the
# MNIST/FMNIST scripts (`Pnp_stylegan3/mnist_pnp_lca2.py:229,236`, `MNIST/mnist_etn_lca2.py:52,60`).
# Front (Dared's Sparse-Standard): `sparse.yaml:7-17` kernel 7, λ 0.25.
_MODE_DEFAULTS = {"replace": (0.5, 5), "front": (0.25, 7)}


class SCAParams(StrictModel):
    mode: Literal["replace", "front"] = "replace"
    """`replace` (SCA): the backbone's first two convolutions become LCA layers with their output
    channels (mcnn/scnn: blocks 1 and 2, keeping their BatchNorm, LeakyReLU and pooling; vgg16-bn:
    its first two convs). With mcnn width 16 that is LCA 1→16 and 16→32, the authors' CelebA/CIFAR
    channel counts (`Pnp_stylegan3/celeba_pnp_lca2.py:299-363`). `front` (Dared's Sparse-Standard,
    not SCA): one LCA layer with as many codes as image channels in front of any backbone, which
    sees the non-negative codes (`sparse.py:37-40`)."""
    lam: float | None = Field(None, gt=0)
    """λ, the soft threshold `a = relu(u − λ)`, in units of the per-sample standardised drive.
    Unset: 0.5 for `replace` (the authors' MNIST/FMNIST value; CelebA/CIFAR PnP use 0.1, ETN CelebA
    1.5), 0.25 for `front` (Dared `sparse.yaml`)."""
    kernel_size: int | None = Field(None, ge=1)
    """Odd side of the dictionary's atoms ("same" padding). Unset: 5 for `replace` (authors), 7 for
    `front` (Dared)."""
    tau: float = Field(4.0, ge=1)
    """τ, the time constant of `u ← u + (b − u − G∗a)/τ`. Reference 100 (`lca.py:43`) with T = 500
    (SCA scripts; lcapt default 1000). Digits deviation: τ = 4, T = 20 keeps T/τ = 5 of the
    reference's 500/100 at 1/25 of the cost (codes 1.7 % from T=500/τ=100 in relative L2, measured in
    float64; τ = 10, T = 50: 0.6 %); τ below ~3 with T/τ = 5 is an unstable Euler step."""
    iterations: int = Field(20, ge=1)
    """T, the LCA steps per forward pass; every step is unrolled for autograd, so training and every
    white-box attack step cost ≈ T convolution pairs per LCA layer. Reference 500 (see `tau`)."""

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, as lcapt requires (got {self.kernel_size})")
        return self

    def resolved(self) -> tuple[float, int]:
        lam, kernel = _MODE_DEFAULTS[self.mode]
        return (self.lam if self.lam is not None else lam, self.kernel_size or kernel)


def standardise(x: Tensor) -> Tensor:
    """Per sample over (C, H, W): zero mean, then divide by the unbiased std + 1e-12
    (lcapt `preproc.py:7-18`, on by default, `lca.py:64-65,324-327`)."""
    dims = tuple(range(1, x.dim()))
    x = x - x.mean(dim=dims, keepdim=True)
    return x / (x.std(dim=dims, keepdim=True) + 1e-12)


def random_dictionary(atoms: int, channels: int, kernel: int, generator: torch.Generator) -> Tensor:
    """Φ [atoms, channels, k, k]: truncated normal (mean 0, std 1, cut at ±2), each atom scaled to unit
    L2 norm (`lca.py:782-791` with `normalize_weights`, `:370-375`)."""
    phi = torch.empty(atoms, channels, kernel, kernel)
    torch.nn.init.trunc_normal_(phi, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=generator)
    return phi / (phi.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)


def lateral_inhibition(a: Tensor, phi: Tensor) -> Tensor:
    """`G ∗ a` with `G = Φ ⋆ Φ` minus each atom's self-overlap at zero offset (`lca.py:129-138,201-210,
    367-368`), computed as the full reconstruction `Φᵀa` correlated back with Φ (stride 1): the same
    sum with k² instead of (2k − 1)²·K products per output."""
    reconstruction = F.conv_transpose2d(a, phi)  # [B, C, H + k − 1, W + k − 1], no cropping
    return F.conv2d(reconstruction, phi) - phi.flatten(1).pow(2).sum(1).view(1, -1, 1, 1) * a


class LCAConv2d(nn.Module):
    """A locally competitive algorithm layer: the sparse code of its (standardised) input in a frozen
    random dictionary, after `iterations` Euler steps; stride 1, "same" padding.

    The dictionary is a buffer: SCA never learns it (lcapt's Hebbian `update_weights`, `lca.py:414-430`,
    is called in no SCA or Dared script, and `req_grad` stays False, `lca.py:69,790`). Gradients still
    flow through the unrolled steps to the input, so layers before it train and attacks reach pixels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, lam: float, tau: float,
                 iterations: int, generator: torch.Generator):
        super().__init__()
        self.lam, self.tau, self.iterations = lam, tau, iterations
        self.register_buffer("dictionary", random_dictionary(out_channels, in_channels, kernel_size, generator))

    def forward(self, x: Tensor) -> Tensor:
        phi = self.dictionary.to(x.dtype)
        drive = F.conv2d(standardise(x), phi, padding=phi.shape[-1] // 2)
        u = torch.zeros_like(drive)
        a = F.relu(u - self.lam)
        # lcapt returns the code computed from u after T − 1 updates (`lca.py:276-295`).
        for step in range(self.iterations - 1):
            inhibition = lateral_inhibition(a, phi) if step else 0.0  # nothing is active at u = 0
            u = u + (drive - u - inhibition) / self.tau
            a = F.relu(u - self.lam)
        return a

    def extra_repr(self) -> str:
        k, c = self.dictionary.shape[0], self.dictionary.shape[1]
        return f"{c}→{k}, kernel={self.dictionary.shape[-1]}, λ={self.lam}, τ={self.tau}, T={self.iterations}"


class SparseFront(nn.Module):
    """A backbone behind one LCA layer (Dared's Sparse-Standard); hiddens and feature are the backbone's."""

    def __init__(self, lca: LCAConv2d, backbone: nn.Module):
        super().__init__()
        self.lca = lca
        self.backbone = backbone
        self.feature_dim = backbone.feature_dim
        self.hidden_names = list(getattr(backbone, "hidden_names", []))

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.backbone.forward_hidden(self.lca(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]


def first_two_convs(model: nn.Module) -> list[tuple[nn.Module, str | int, nn.Conv2d]]:
    """(parent, key, conv) of the first two convolutions of a plain conv stack: mcnn/scnn's blocks 1
    and 2, vgg16-bn's `features`; refuses every other backbone in one line."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) >= 2 and all(isinstance(b, nn.Sequential) for b in blocks[:2]) \
            and all(isinstance(b[0], nn.Conv2d) for b in blocks[:2]):
        return [(blocks[0], 0, blocks[0][0]), (blocks[1], 0, blocks[1][0])]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        convs = [(features, i, m) for i, m in enumerate(features) if isinstance(m, nn.Conv2d)][:2]
        if len(convs) == 2:
            return convs
    name = type(getattr(model, "model", model)).__name__
    raise WorkbenchError(f"sca: mode 'replace' needs a backbone whose first two layers are plain convolutions "
                         f"(mcnn, scnn, vgg16-bn); backbone {name} has none; use mode = 'front'")


class SCA(Defense):
    """LCA layers with a frozen random dictionary in place of the first convolutions (or in front of
    the backbone); cross-entropy as for `none`."""

    def __init__(self, params: SCAParams):
        self.params = params

    def prepare_model(self, model, num_classes, ctx=None):
        p = self.params
        lam, kernel = p.resolved()
        seed = ctx.seed if ctx is not None else 0

        def lca(index: int, c_in: int, c_out: int) -> LCAConv2d:
            return LCAConv2d(c_in, c_out, kernel, lam, p.tau, p.iterations, seeds.generator(seed, "sca", index))

        if p.mode == "front":
            channels = _input_channels(model)
            layers = [lca(0, channels, channels)]
            model = SparseFront(layers[0], model)
        else:
            layers = []
            for index, (parent, key, conv) in enumerate(first_two_convs(model)):
                if conv.stride != (1, 1) or conv.groups != 1:
                    raise WorkbenchError(f"sca: convolution {index + 1} has stride {conv.stride} / groups {conv.groups};"
                                         " LCA layers here are stride 1, ungrouped")
                layers.append(lca(index, conv.in_channels, conv.out_channels))
                parent[key] = layers[-1]
        if ctx is not None:
            ctx.emit("log", level="info", message=f"sca ({p.mode}): " + "; ".join(layer.extra_repr() for layer in layers))
        return model

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        ce = cross_entropy(logits, y)
        return LossOutput(ce, {"ce": float(ce.detach())})


def _input_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise WorkbenchError(f"sca: backbone {type(model).__name__} has no convolution to read its input channels from")
    return first.in_channels

"""Kernel matrices for the dependence measures, batched over variables ("layers").

Every measure here only ever uses a kernel matrix through its centred form (`K H` or
`H K H`), and centring removes any constant added to the whole matrix. The Gaussian kernel
is therefore returned shifted by -1 (`expm1` instead of `exp`): with BiDO's wide bandwidth
(σ·√d, σ = 5) all entries sit within ~1e-3 of 1, and `exp` would round away the very
variations the measures look at, while `expm1` keeps them to full float32 precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

KernelName = Literal["gaussian", "linear", "imq"]
KERNELS: tuple[str, ...] = get_args(KernelName)


def as_samples(t: Tensor) -> Tensor:
    """`[m, ...]` -> `[m, d]` in a precision fit for kernel algebra.

    Half, bfloat16 and integer inputs (autocast activations, one-hot labels) are upcast to
    float32; float64 stays float64 so reference checks can run in double precision.
    """
    if t.dim() == 0:
        raise ValueError("a dependence measure needs a batch [m, ...], got a 0-d tensor")
    t = t.reshape(t.shape[0], -1) if t.dim() != 2 else t
    if t.dtype != torch.float64:
        t = t.float()
    return t


class _SquaredDistances(torch.autograd.Function):
    """`D_ij = ‖t_i − t_j‖²` with a hand-written backward: one matmul instead of autograd's two
    plus half a dozen elementwise passes over the `[m, d]` activations (the bulk of a BiDO step
    on wide layers)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        # Centred rows (distances do not change) keep the norms small, so the
        # ‖a‖² + ‖b‖² − 2 a·b cancellation loses little. Negatives from rounding are clamped
        # and the diagonal set to exactly 0, as the exact distances are.
        centred = t - t.mean(dim=0, keepdim=True)
        gram = centred @ centred.mT
        sq_norms = gram.diagonal()  # the norms come free with the Gram matrix
        raw = sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram
        kept = raw > 0
        kept.fill_diagonal_(False)
        ctx.save_for_backward(centred, kept)
        return torch.where(kept, raw, 0.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        centred, kept = ctx.saved_tensors
        # ∂/∂t_i Σ_jk G_jk ‖t_j − t_k‖² = 2 Σ_j S_ij (t_i − t_j) with S = G + Gᵀ (zero where
        # clamped); translation invariance lets the centred rows stand in for t.
        s = torch.where(kept, grad, 0.0)
        s = 2.0 * (s + s.mT)  # scale the m×m factor, not the [m, d] result
        return torch.addmm(s.sum(dim=1, keepdim=True) * centred, s, centred, alpha=-1.0)


def squared_distances(t: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances `[m, m]` via norms and one matmul (no `[m, m, d]`)."""
    return _SquaredDistances.apply(t)


def shifted_kernel(t: Tensor, kernel: str, sigma: float) -> Tensor:
    """Kernel matrix `[m, m]` of one `[m, d]` variable, up to an additive constant.

    gaussian: `exp(−D / (2 σ² d)) − 1` (BiDO's bandwidth grows with the dimension d);
    linear: `t tᵀ`; imq: `1 / sqrt(D + 1)` (the authors' inverse multiquadric, no σ).
    """
    if kernel == "gaussian":
        return torch.expm1(squared_distances(t) / (-2.0 * sigma * sigma * t.shape[1]))
    if kernel == "linear":
        return t @ t.mT
    if kernel == "imq":
        return torch.rsqrt(squared_distances(t) + 1.0)
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")


def centred_kernel(t: Tensor, kernel: str, sigma: float, both_sides: bool) -> Tensor:
    """`K H` (or `H K H` when `both_sides`) of one `[m, d]` variable, `H = I − 11ᵀ/m`.

    For the linear kernel the centring goes into the features instead (`K H = t t_cᵀ`,
    `H K H = t_c t_cᵀ` with `t_c = H t`): `t tᵀ` of uncentred features is dominated by
    their mean, and subtracting it again after the matmul leaves float32 rounding of that
    size in directions the measures divide by ε m.
    """
    if kernel == "linear":
        centred = t - t.mean(dim=0, keepdim=True)
        return (centred if both_sides else t) @ centred.mT
    k = shifted_kernel(t, kernel, sigma)
    return center_both(k) if both_sides else center_columns(k)


def check_batch(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The tensors as `[m, d]` samples of one common dtype; checks they share m >= 2."""
    if not tensors:
        raise ValueError("prepare_many needs at least one tensor")
    samples = [as_samples(t) for t in tensors]
    sizes = {t.shape[0] for t in samples}
    if len(sizes) != 1:
        raise ValueError(f"all variables must share the batch size m, got sizes {sorted(sizes)}")
    (m,) = sizes
    if m < 2:
        raise ValueError(f"a dependence measure needs at least 2 samples, got m={m}")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in samples) else torch.float32
    return [t.to(dtype) for t in samples]


def stacked_centred_kernels(samples: Sequence[Tensor], kernel: str, sigma: float, both_sides: bool) -> Tensor:
    """`[L, m, m]` centred kernel matrices of L checked variables (see `check_batch`)."""
    return torch.stack([centred_kernel(t, kernel, sigma, both_sides) for t in samples])


def center_columns(k: Tensor) -> Tensor:
    """`K H` with `H = I − 11ᵀ/m`: subtract each row's mean (no m×m matmul)."""
    return k - k.mean(dim=-1, keepdim=True)


def center_both(k: Tensor) -> Tensor:
    """`H K H`: subtract row means, then column means."""
    k = center_columns(k)
    return k - k.mean(dim=-2, keepdim=True)

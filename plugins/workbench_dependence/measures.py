"""BiDO's kernel dependence measures: normalized HSIC, biased HSIC and COCO.

Every measure object offers the API the BiDO defense relies on:

- `measure(a, b) -> 0-d tensor` for `a: [m, d_a]`, `b: [m, d_b]` (more dims are flattened
  from dim 1). Differentiable, on the inputs' device, computed in float32 even under
  autocast (autocast is disabled inside, bf16/half inputs are upcast); float64 stays float64.
- `measure.kernel_a`, `measure.kernel_b`: the kernel names used by `measure(a, b)`.
- `measure.prepare(t, kernel) -> Prepared`: the per-variable work (kernel matrix and its
  centred or normalized form), and `measure.pair(pa, pb) -> 0-d tensor`, with
  `measure(a, b) == measure.pair(measure.prepare(a, kernel_a), measure.prepare(b, kernel_b))`.
- `measure.prepare_many(tensors, kernel) -> list[Prepared]`: the same as calling `prepare`
  on each tensor, with the m×m work of all of them batched (`[L, m, m]`, one batched solve).

So a BiDO loss computes the input kernel and the label kernel once per batch and each hidden
layer's kernel once for both of its terms: `d(X, Z_j) = pair(P_X, P_Zj)`,
`d(Z_j, Y) = pair(P_Zj, P_Y)`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor

from workbench.api import StrictModel

from .kernels import KERNELS, KernelName, center_columns, check_batch, stacked_centred_kernels


class DependenceParams(StrictModel):
    """Kernels and bandwidth shared by every dependence measure."""

    kernel_a: KernelName = "gaussian"
    """Kernel for the first variable a: gaussian exp(-|x-y|²/(2σ²d)), linear x·y, or imq 1/sqrt(|x-y|²+1)."""
    kernel_b: KernelName = "gaussian"
    """Kernel for the second variable b (BiDO uses linear for the one-hot labels Y)."""
    sigma: float = Field(default=5.0, gt=0)
    """Gaussian bandwidth factor σ; the bandwidth is σ·√d for a variable of dimension d (BiDO: 5)."""


class NormalizedHSICParams(DependenceParams):
    """Params of BiDO's normalized HSIC: the shared kernel params plus the ridge ε."""

    epsilon: float = Field(default=1e-5, gt=0)
    """Ridge ε of the normalization R = K H (K H + ε m I)⁻¹ (BiDO: 1e-5)."""


@dataclass(frozen=True)
class Prepared:
    """The per-variable part of a measure, ready to be paired with another variable's."""

    matrix: Tensor
    """`[m, m]`: R = K H (K H + ε m I)⁻¹ for nHSIC, K̃ = H K H for the biased HSIC, K̃² for COCO."""
    kernel: str
    """The kernel it was computed with."""
    form: str
    """What `matrix` holds ("R", "HKH" or "HKH^2"): measures refuse to pair forms they do not use."""


class KernelDependence(abc.ABC):
    """Shared plumbing: checks, upcasting, autocast off, and `measure(a, b)` via `pair`."""

    name: str = ""
    form: str = ""

    def __init__(self, params: DependenceParams):
        self.params = params
        self.kernel_a: str = params.kernel_a
        self.kernel_b: str = params.kernel_b
        self.sigma: float = params.sigma

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.params.model_dump().items())
        return f"{type(self).__name__}({fields})"

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return self.pair(self.prepare(a, self.kernel_a), self.prepare(b, self.kernel_b))

    def prepare(self, t: Tensor, kernel: str) -> Prepared:
        return self.prepare_many([t], kernel)[0]

    def prepare_many(self, tensors: Sequence[Tensor], kernel: str) -> list[Prepared]:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
        # Autocast would run the distance matmul and the solve in bf16/half; these measures
        # are sums of many small differences, so they stay in float32 (or float64) throughout.
        with torch.autocast(device_type=tensors[0].device.type if tensors else "cpu", enabled=False):
            matrices = self._prepare_samples(check_batch(tensors), kernel)
        return [Prepared(matrix, kernel, self.form) for matrix in matrices]

    def pair(self, pa: Prepared, pb: Prepared) -> Tensor:
        for prepared in (pa, pb):
            if prepared.form != self.form:
                raise ValueError(f"{self.name} pairs {self.form!r} preparations, got {prepared.form!r}")
        if pa.matrix.shape != pb.matrix.shape:
            raise ValueError(
                f"{self.name}: both variables need the same batch size m, got "
                f"{pa.matrix.shape[0]} and {pb.matrix.shape[0]}"
            )
        ma, mb = pa.matrix, pb.matrix
        if ma.dtype != mb.dtype:
            common = torch.promote_types(ma.dtype, mb.dtype)
            ma, mb = ma.to(common), mb.to(common)
        with torch.autocast(device_type=ma.device.type, enabled=False):
            return self._pair(ma, mb)

    @abc.abstractmethod
    def _prepare_samples(self, samples: list[Tensor], kernel: str) -> list[Tensor]:
        """Checked `[m, d_l]` variables -> their `[m, m]` prepared matrices."""

    @abc.abstractmethod
    def _pair(self, ma: Tensor, mb: Tensor) -> Tensor:
        """The measure from two prepared matrices of this measure's form."""


class NormalizedHSIC(KernelDependence):
    """BiDO's normalized HSIC: `Σ_ij (R_a ∘ R_bᵀ)_ij = tr(R_a R_b)`, `R = K H (K H + ε m I)⁻¹`."""

    name = "hsic"
    form = "R"

    def __init__(self, params: NormalizedHSICParams):
        super().__init__(params)
        self.epsilon: float = params.epsilon

    def _prepare_samples(self, samples: list[Tensor], kernel: str) -> list[Tensor]:
        m = samples[0].shape[0]
        ridge = self.epsilon * m
        prepared: list[Tensor | None] = [None] * len(samples)
        # A linear kernel of d < m features has rank <= d: its m×m solve would divide float32
        # rounding in the m − d null directions by ε m. The push-through identity
        # (X X_cᵀ + cI_m)⁻¹ X = X (X_cᵀ X + cI_d)⁻¹ gives the same R from a d×d solve, exactly
        # low-rank (this is the one-hot label kernel's path).
        low_rank = [i for i, t in enumerate(samples) if kernel == "linear" and t.shape[1] < m]
        for i in low_rank:
            prepared[i] = self._low_rank_r(samples[i], ridge)
        square = [i for i in range(len(samples)) if i not in low_rank]
        if square:
            kh = stacked_centred_kernels([samples[i] for i in square], kernel, self.sigma, both_sides=False)
            eye = torch.eye(m, dtype=kh.dtype, device=kh.device)
            # K H and (K H + εmI)⁻¹ commute (the second is a function of the first), so
            # R = (K H + εmI)⁻¹ K H: one batched linear solve for all layers, no inverse.
            # K H has the eigenvalues of H K H (>= 0), so K H + εmI is never singular: solve_ex
            # skips the error check, which on a GPU would wait for the device.
            solved = torch.linalg.solve_ex(kh + ridge * eye, kh).result
            for i, r in zip(square, solved.unbind(0), strict=True):
                prepared[i] = r
        # R 1 = 0 exactly (K H 1 = 0), so R = R H; centring again removes the rounding that
        # the solve leaves along 1, where it was divided by ε m.
        return [center_columns(r) for r in prepared if r is not None]

    @staticmethod
    def _low_rank_r(t: Tensor, ridge: float) -> Tensor:
        centred = t - t.mean(dim=0, keepdim=True)
        eye = torch.eye(t.shape[1], dtype=t.dtype, device=t.device)
        return t @ torch.linalg.solve_ex(centred.mT @ t + ridge * eye, centred.mT).result

    def _pair(self, ma: Tensor, mb: Tensor) -> Tensor:
        return (ma * mb.mT).sum()


class CentredKernelDependence(KernelDependence):
    """Measures built on the doubly centred kernel `K̃ = H K H`."""

    form = "HKH"

    def _prepare_samples(self, samples: list[Tensor], kernel: str) -> list[Tensor]:
        return list(stacked_centred_kernels(samples, kernel, self.sigma, both_sides=True).unbind(0))


class BiasedHSIC(CentredKernelDependence):
    """Gretton's biased HSIC estimator `tr(K H L H) / (m − 1)²`."""

    name = "hsic-biased"

    def _pair(self, ma: Tensor, mb: Tensor) -> Tensor:
        # tr(K H L H) = tr(HKH · HLH) because H is idempotent; elementwise, no matmul.
        m = ma.shape[-1]
        return (ma * mb.mT).sum() / ((m - 1) ** 2)


class COCO(CentredKernelDependence):
    """BiDO's COCO: `sqrt(‖K̃_a K̃_b‖_F) / m` with `K̃ = H K H`.

    `K̃` is symmetric, so `‖K̃_a K̃_b‖²_F = tr(K̃_b K̃_a K̃_a K̃_b) = tr(K̃_a² K̃_b²)`: squaring is
    per-variable work, done once in `prepare` (one batched matmul for all layers), and `pair`
    is elementwise instead of an m×m product per term.
    """

    name = "coco"
    form = "HKH^2"

    def _prepare_samples(self, samples: list[Tensor], kernel: str) -> list[Tensor]:
        centred = stacked_centred_kernels(samples, kernel, self.sigma, both_sides=True)
        return list((centred @ centred).unbind(0))

    def _pair(self, ma: Tensor, mb: Tensor) -> Tensor:
        m = ma.shape[-1]
        squared_norm = (ma * mb.mT).sum()
        # sqrt(‖P‖_F) = (‖P‖²_F)^¼. Clamping at the smallest normal float keeps the value's
        # rounding from going negative and the gradient finite (zero) when a variable is
        # constant over the batch (a dead ReLU block), where the fourth root's derivative is
        # infinite; any other value is unchanged.
        return squared_norm.clamp_min(torch.finfo(squared_norm.dtype).tiny).pow(0.25) / m

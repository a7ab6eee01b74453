"""DP-SGD: differentially private training through Opacus (Abadi et al., *Deep Learning with
Differential Privacy*, CCS 2016; Opacus, Yousefpour et al. 2021). The classical baseline of the
MI-defense papers: per-sample gradients clipped to norm C, Gaussian noise σ·C added to their sum,
and the privacy spent, ε at the given δ, tracked by an accountant and reported in results.json.

Needs the `[dp]` extra (`pip install 'workbench-mi[dp]'`).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from pydantic import Field

from workbench.api import Defense, LossOutput, StrictModel, WorkbenchError, cross_entropy


class DPSGDParams(StrictModel):
    noise_multiplier: float = Field(1.0, ge=0)
    """σ: noise standard deviation relative to the clipping norm (Opacus's MNIST example,
    `examples/mnist.py`, `--sigma 1.0`)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """C: every per-sample gradient is clipped to this L2 norm (Opacus's MNIST example `-c 1.0`)."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """δ of the (ε, δ) guarantee (Opacus's MNIST example `--delta 1e-5`; keep it below 1/N)."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Privacy accountant: `rdp` (Rényi DP, Mironov 2017; the common choice in papers) or `prv`
    (Opacus's tighter default since 1.3)."""


def _opacus():
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise WorkbenchError("dp-sgd needs Opacus: pip install 'workbench-mi[dp]'") from None
    return opacus


def make_accountant(name: str):
    _opacus()
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant() if name == "rdp" else PRVAccountant()


class DPSGD(Defense):
    """Plain cross-entropy with DP-SGD steps; BatchNorm becomes GroupNorm (BatchNorm mixes samples,
    so per-sample gradients would not bound one sample's influence).

    Deviation (docs/defenses.md): batches are the trainer's shuffled fixed-size batches, not
    Poisson-sampled ones; ε is computed as if sampling were Poisson with rate q = B/N, as most
    papers and Opacus's own examples with shuffled loaders do.
    """

    report_keys = ("epsilon", "delta")
    data_parallel = False  # per-sample clipping and the accountant see one process's batches only

    def __init__(self, params: DPSGDParams):
        self.params = params
        self.accountant = None
        self.grad_sample_module = None

    def prepare_model(self, model, num_classes, ctx=None):
        _opacus()
        from opacus.validators import ModuleValidator

        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            model = ModuleValidator.fix(model)
            left = ModuleValidator.validate(model, strict=False)
            if left:
                raise WorkbenchError(f"dp-sgd: Opacus cannot train this backbone: {left[0]}")
            if ctx is not None:
                ctx.emit("log", level="info", message="dp-sgd: BatchNorm replaced by GroupNorm for per-sample gradients")
        return model

    def start_training(self, model, optimizer, setup):
        _opacus()
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        # Opacus's hooks on the first layer warn on every run that the images need no gradient;
        # that is expected (per-sample gradients are of the weights), so the one message is silenced.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        self.grad_sample_module = GradSampleModule(model)  # hooks on model's own layers
        dp = DPOptimizer(optimizer, noise_multiplier=self.params.noise_multiplier,
                         max_grad_norm=self.params.max_grad_norm, expected_batch_size=setup.batch_size,
                         loss_reduction="mean")
        if self.accountant is None:
            self.accountant = make_accountant(self.params.accountant)
        sample_rate = min(1.0, setup.batch_size / max(setup.dataset_size, 1))
        dp.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        return dp

    def loss(self, *, x, y, logits, hiddens, model) -> LossOutput:
        ce = cross_entropy(logits, y)
        return LossOutput(ce, {"ce": float(ce.detach())})

    def epoch_figures(self):
        if self.accountant is None or not self.accountant.history:
            return {"epsilon": 0.0, "delta": self.params.delta}
        return {"epsilon": float(self.accountant.get_epsilon(delta=self.params.delta)), "delta": self.params.delta}

    def state_dict(self):
        if self.accountant is None or not self.accountant.history:
            return {}
        return {"accountant": torch.tensor([list(map(float, h)) for h in self.accountant.history], dtype=torch.float64)}

    def load_state_dict(self, state):
        if "accountant" in state:
            if self.accountant is None:  # (an accountant with no history is falsy: test for None)
                self.accountant = make_accountant(self.params.accountant)
            self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["accountant"].tolist()]

    def finish_training(self, model):
        if self.grad_sample_module is not None:
            self.grad_sample_module._close()  # hooks off, per-sample gradients dropped
            self.grad_sample_module = None

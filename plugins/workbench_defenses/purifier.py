"""Purifier: a confidence-score purifier fitted on a trained target, post-hoc, as MIBench wraps it
(`ffhibnese/Model-Inversion-Attack-ToolBox@d9ad48f`: `ConditionPurifierWrapper`, registered as
`cond_purifier`, `src/modelinversion/models/classifiers/wrappers.py:240-319`; its trainer
`ConditionPurifierTrainer`, `src/modelinversion/train/classifier/base.py:329-349`). The paper is
Yang et al., *Purifier: Defending Data Inference Attacks via Transforming Confidence Scores*, AAAI
2023; its authors' code could not be found, so this is MIBench's conditional-MLP purifier, which
may differ from the paper's model.

The target is frozen in eval mode (`wrappers.py:290-293`); its logits `l` pass through a residual
MLP conditioned on the predicted class, `l̃ = l + fc2(relu(fc1([l ; E(argmax l)])))`
(`_ConditionMLP1d.forward`, `:263-272`), fitted with `CE(l̃, argmax l) + 0.1·MSE(l̃, l)` — pseudo
labels from the target, true labels unused (`base.py:338-349`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from workbench.api import StrictModel, WorkbenchError, iterate_batches, seeds
from workbench_defenses.post_hoc import PostHocDefense


class PurifierParams(StrictModel):
    cond_dim: int = Field(512, ge=1)
    """Size of the class embedding E; the MLP's hidden layer has half as many units
    (`cond_features_dim = 512`, hidden `cond_features_dim // 2`, `wrappers.py:282,299`)."""
    mse_weight: float = Field(0.1, ge=0)
    """Weight of `MSE(l̃, l)` beside `CE(l̃, argmax l)` (MIBench's `cls_loss_coef` = 0.1, which despite
    its name multiplies the MSE, `base.py:330,347`; fixed there, since the config lacks `@dataclass`)."""
    epochs: int = Field(10, ge=1)
    """Passes over the private training split to fit the purifier. MIBench prescribes none (no example
    script trains a purifier); digits choice."""
    lr: float = Field(1e-3, gt=0)
    """Adam learning rate of the purifier (MIBench prescribes none; digits choice)."""
    batch_size: int = Field(64, ge=1)
    """Batch size of the purifier's fitting (digits choice)."""


class ConditionMLP(nn.Module):
    """`l + fc2(relu(fc1([l ; E(c)])))`, E an embedding of K classes into `cond_dim`.

    Deviation (a bug fix): MIBench sizes fc2's output as the target's feature size
    (`wrappers.py:300`) while the residual adds the K logits (`:270`); it only runs when they are
    equal. Here fc2 has K outputs.
    """

    def __init__(self, num_classes: int, cond_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, cond_dim)
        self.fc1 = nn.Linear(num_classes + cond_dim, cond_dim // 2 or 1)
        self.fc2 = nn.Linear(cond_dim // 2 or 1, num_classes)

    def forward(self, logits: Tensor, cond: Tensor) -> Tensor:
        hidden = F.relu(self.fc1(torch.cat([logits, self.embedding(cond).to(logits.dtype)], dim=-1)))
        return logits + self.fc2(hidden)


class PurifiedClassifier(nn.Module):
    """A target whose logits pass through the purifier once it is fitted (`fitted` = 1, a buffer, so
    the saved target carries it); before that, exactly the target. Hiddens are the target's."""

    def __init__(self, target: nn.Module, num_classes: int, cond_dim: int, seed: int):
        super().__init__()
        self.target = target
        self.feature_dim = target.feature_dim
        self.hidden_names = list(getattr(target, "hidden_names", []))
        with seeds.seeded(seed, "purifier", "init"):  # leaves the run's random stream as it was
            self.purifier = ConditionMLP(num_classes, cond_dim)
        self.purifier.requires_grad_(False)  # not the target's optimizer's: fitted after training
        self.register_buffer("fitted", torch.zeros((), dtype=torch.long))

    def purify(self, logits: Tensor) -> Tensor:
        return self.purifier(logits, logits.argmax(dim=-1))

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        logits, hiddens = self.target.forward_hidden(x)
        return (self.purify(logits) if int(self.fitted) else logits), hiddens

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_hidden(x)[0]


def purifier_loss(purified: Tensor, logits: Tensor, mse_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, CE, MSE): `CE_mean(l̃, argmax l) + w·MSE_mean(l̃, l)`, MSE over batch × K (`base.py:345-347`)."""
    ce = F.cross_entropy(purified.float(), logits.argmax(dim=-1))
    mse = F.mse_loss(purified.float(), logits.float())
    return ce + mse_weight * mse, ce, mse


class Purifier(PostHocDefense):
    """Post-hoc: train the target as `none`, then fit a conditional-MLP purifier of its logits."""

    def __init__(self, params: PurifierParams):
        super().__init__(params)
        self.wrapper: PurifiedClassifier | None = None

    def prepare_model(self, model, num_classes, ctx=None):
        self.keep_context(ctx)
        self.wrapper = PurifiedClassifier(model, num_classes, self.params.cond_dim, self.seed)
        return self.wrapper

    def param_groups(self, model):
        return [{"params": [p for p in model.target.parameters() if p.requires_grad]}]

    def finish_training(self, model: nn.Module) -> None:
        if self.data is None:
            raise WorkbenchError("purifier: needs the private training data to fit on (prepare_model got no context)")
        figures = fit_purifier(model, self.data.train, self.params, self.seed)
        self.announce("purifier", f"MIBench's conditional-MLP purifier fitted on the {len(self.data.train)} private "
                      f"training images ({self.params.epochs} epochs) now wraps the trained target's logits; last "
                      "epoch: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))


def fit_purifier(model: PurifiedClassifier, data, params: PurifierParams, seed: int) -> dict[str, float]:
    """Fit `model.purifier` on the frozen eval-mode target's logits of `data`; returns the last epoch's
    mean loss, CE, MSE and the share of images whose top class the purifier changed."""
    device = next(model.target.parameters()).device
    model.target.eval()
    model.purifier.requires_grad_(True).train()
    optimizer = torch.optim.Adam(model.purifier.parameters(), lr=params.lr)
    figures: dict[str, float] = {}
    for epoch in range(params.epochs):
        sums = {"loss": 0.0, "ce": 0.0, "mse": 0.0, "changed": 0.0}
        seen = 0
        shuffle = seeds.generator(seed, "purifier", "batch-order", epoch)
        for x, _ in iterate_batches(data, params.batch_size, shuffle=True, generator=shuffle):
            with torch.no_grad():
                logits = model.target(x.to(device)).float()
            purified = model.purify(logits)
            loss, ce, mse = purifier_loss(purified, logits, params.mse_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(x)
            seen += n
            changed = (purified.detach().argmax(1) != logits.argmax(1)).float().sum()
            for key, value in (("loss", loss), ("ce", ce), ("mse", mse)):
                sums[key] += float(value.detach()) * n
            sums["changed"] += float(changed)
        figures = {key: value / max(seen, 1) for key, value in sums.items()}
    model.purifier.requires_grad_(False).eval()
    model.fitted.fill_(1)
    return figures

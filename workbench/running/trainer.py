"""The one trainer every defense goes through, so baselines differ only in their loss.

`train_classifier` reads top to bottom: set up (or resume from the training checkpoint), then per
epoch: draw the batches, per step the defense's transform, one forward pass (with the OOD batch
joined in BiDO+'s second phase), the defense's loss on the ID part, the OOD loss, a step; then the
epoch's figures as an event and a checkpoint that makes the run resumable.

Two parts plug in (`workbench.running.training_parts`): `Ranks` (one process) or
`DataParallelRanks` (under torchrun every rank draws the same global batch and takes its slice;
the model runs wrapped in DistributedDataParallel; losses over the whole batch, BiDO's kernels and
the OOD term, see the global batch through gathers, so N ranks train the model one process would
with the same global batch; docs/distributed.md), and `OODTraining` (BiDO+'s unknown-aware phase;
a no-op without OOD data).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.components.capabilities import OODLossCapabilities, capabilities_of
from workbench.components.protocols import Defense, OODLoss, TrainingSetup
from workbench.errors import RunError
from workbench.recipe.schema import OODTrainingConfig, TrainConfig
from workbench.running import distributed, memory, seeds
from workbench.running.batches import (
    dataset_labels,
)
from workbench.running.device import autocast
from workbench.running.losses import accuracy
from workbench.running.training_parts import OODTraining, Ranks, layout, ranks_for
from workbench.storage.checkpoint import load_checkpoint, save_checkpoint, tensors_with_prefix

CHECKPOINT_NAME = "last.safetensors"


# ------------------------------------------------------------------ optimizer and schedule


def make_optimizer(model: nn.Module, config: TrainConfig, defense: Defense | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer over the defense's parameter groups (default: every trainable one)."""
    opt = config.optimizer
    params = defense.param_groups(model) if defense is not None else [p for p in model.parameters() if p.requires_grad]
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                               weight_decay=opt.weight_decay)
    return torch.optim.Adam(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate for 0-based `epoch`: a pure function of the epoch, so resuming needs no
    scheduler state beyond the epoch counter."""
    schedule = config.schedule
    if schedule.name == "multistep":
        passed = sum(1 for m in schedule.milestones if epoch >= m)
        return config.optimizer.lr * schedule.gamma**passed
    return config.optimizer.lr


# ------------------------------------------------------------------ checkpoints


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            elif value is not None:
                tensors[f"optimizer.{index}.{key}"] = torch.tensor(value)
    return tensors, state["param_groups"]


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor],
                       param_groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors_with_prefix(tensors, "optimizer").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


@dataclass
class TrainResult:
    """What `train_classifier` did in this call (a resumed run counts only the epochs it ran)."""

    epochs_run: int
    """Epochs trained by this call."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Every epoch's figures since the start of training (resumed epochs included); the last is the final."""
    seconds: float = 0.0
    """Wall time of this call."""


@dataclass
class OODFeed:
    """Auxiliary OOD images for unknown-aware training (BiDO+ phase 2)."""

    dataset: Dataset
    config: OODTrainingConfig
    loss: OODLoss
    """The `ood_loss` component: `loss(id_logits, ood_logits)`; `observe`, `prepare` and `restore`
    where its capabilities say so."""

    @property
    def capabilities(self) -> OODLossCapabilities:
        return capabilities_of(self.loss, "ood_loss")


def train_classifier(
    model: nn.Module,
    defense: Defense,
    train_data: Dataset,
    config: TrainConfig,
    *,
    device: torch.device,
    seed: int,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    test_data: Dataset | None = None,
    ood: OODFeed | None = None,
    emit: Callable[..., Any] = lambda *a, **k: None,
    stage: str = "train",
    variant: str | None = None,
    meta: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    data_parallel: bool = False,
) -> TrainResult:
    """Train `model` (already through `defense.prepare_model`) and return its history.

    A checkpoint after every epoch (model, optimizer, RNG, epoch, history, the OOD loss's state)
    makes an interrupted run resume to the same figures as an uninterrupted one on CPU. Random
    streams come from `seed` through `workbench.running.seeds`: the batch order of an epoch depends only
    on (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.

    `data_parallel`: train with every rank of the torchrun process group (each calls this with the
    same arguments; only rank 0 passes a `checkpoint_dir` and a real `emit`). Ignored without one.
    """
    started = time.perf_counter()
    label = f"{stage} {variant}" if variant else stage
    ranks = ranks_for(data_parallel)
    ranks.prepare(model, device, config, defense)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    batch_size = (config.balanced_batches.classes * config.balanced_batches.per_class if config.balanced_batches
                  else config.batch_size)
    memory.check_batch_fits(label, memory.footprint_of(model), batch_size, device)
    optimizer = make_optimizer(model, config, defense)
    optimizer = defense.start_training(model, optimizer, TrainingSetup(
        dataset_size=len(train_data), batch_size=batch_size, epochs=config.epochs, device=device, seed=seed))
    ood_training = OODTraining(ood, config, seed, ranks)
    checkpoint = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir else None
    torch.manual_seed(seeds.derive(seed, "train"))
    first_epoch, history = _resume(checkpoint if resume else None, model, optimizer, defense, ood_training, ranks)
    labels = dataset_labels(train_data) if config.balanced_batches else None
    forward = ranks.forward(model, device)
    emit("stage_started", stage=stage, variant=variant, total=config.epochs)

    for epoch in range(first_epoch, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch) * group.get("lr_scale", 1.0)
        defense.start_epoch(epoch, config.epochs)
        ranks.start_epoch(seed, epoch)
        shuffle = seeds.generator(seed, "batch-order", epoch)
        ood_training.start_epoch(epoch, model, train_data, device, emit, variant or stage)
        batches = ranks.batches(train_data, config, labels, shuffle)
        ranks.train_mode(model)
        sums: dict[str, float] = {}
        seen = correct = 0
        for step, (x, y) in enumerate(batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            own = len(y)  # the batch's own images; a defense may append its own after them (trapdoors)
            x, y = defense.transform(x, y, model=model, epoch=epoch, step=step)
            m = len(x)
            x_ood, warmup_logits = ood_training.draw(step, model, device)
            inputs = x if x_ood is None else torch.cat([x, x_ood])
            with autocast(device):
                logits, hiddens = forward(layout(inputs, device))
            ood_training.observe(logits[:m], warmup_logits)
            # The defense sees the ID part only (dependency terms on ID data, as BiDO+ does).
            out = defense.loss(x=x, y=y, logits=logits[:m], hiddens=[h[:m] for h in hiddens], model=model)
            logs = dict(out.logs)
            loss = out.loss if x_ood is None else ood_training.add_loss(out.loss, logs, logits[:m], logits[m:])
            finite, rank_weight = ranks.check_step(loss, m)
            if not finite:
                kept = f"; the last good checkpoint is {checkpoint}" if checkpoint and checkpoint.exists() else ""
                raise RunError(f"{label}: loss became {float(loss.detach())} at epoch {epoch + 1} step {step + 1}: "
                               f"{_blame(logits, out, logs, defense, ood)}{kept}")
            optimizer.zero_grad(set_to_none=True)
            (loss * rank_weight if rank_weight != 1.0 else loss).backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()

            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * own
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + float(value) * own
            correct += (logits[:own].detach().argmax(1) == y[:own]).sum().item()
            seen += own
            if should_stop():
                raise KeyboardInterrupt

        sums, correct, seen = ranks.epoch_sums(sums, correct, seen, device)
        metrics = {key: value / max(seen, 1) for key, value in sums.items()}
        metrics["train_accuracy"] = correct / max(seen, 1)
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics.update(defense.epoch_figures())
        if test_data is not None and distributed.is_main_process():  # rank 0 reports; the others need no figures
            metrics["test_accuracy"] = accuracy(model, test_data, device)
        history.append(metrics)
        emit("epoch", stage=stage, variant=variant, epoch=epoch + 1, epochs=config.epochs, metrics=metrics)
        if checkpoint is not None:
            _save_state(checkpoint, model, optimizer, defense, ood_training.state, history, epoch, config, meta)
            emit("checkpoint", stage=stage, variant=variant, path=str(checkpoint), epoch=epoch + 1)

    ranks.finish(model)
    defense.finish_training(model)
    seconds = time.perf_counter() - started
    emit("stage_finished", stage=stage, variant=variant, seconds=round(seconds, 3))
    model.eval()
    return TrainResult(epochs_run=config.epochs - first_epoch, history=history, seconds=seconds)


def _resume(checkpoint: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, defense: Defense,
            ood_training: OODTraining, ranks: Ranks) -> tuple[int, list[dict[str, float]]]:
    """The epoch to start from and the history so far: from the training checkpoint when resuming
    (model, optimizer, RNG, defense and OOD-loss state restored), else from the start."""
    state = load_checkpoint(checkpoint) if checkpoint is not None and checkpoint.exists() else None
    state = ranks.resume_state(state)
    if state is None:
        return 0, []
    tensors, saved = state
    try:
        model.load_state_dict(tensors_with_prefix(tensors, "model"))
        _restore_optimizer(optimizer, tensors, saved["param_groups"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise RunError(f"{checkpoint}: does not match this recipe's model ({str(exc).splitlines()[0]}); "
                       "start over with --force") from None
    torch.set_rng_state(tensors["rng.cpu"])
    defense.load_state_dict(tensors_with_prefix(tensors, "defense"))
    ood_training.restore(saved.get("ood_state", {}))
    return int(saved["epoch"]), saved.get("history", [])


def _save_state(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer, defense: Defense,
                ood_state: dict[str, float], history: list[dict[str, float]], epoch: int, config: TrainConfig,
                meta: dict[str, Any] | None) -> None:
    """The training checkpoint after `epoch` (0-based): what `_resume` needs to go on exactly."""
    opt_tensors, param_groups = _optimizer_tensors(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors.update({f"defense.{k}": v for k, v in defense.state_dict().items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    save_checkpoint(checkpoint, tensors, {
        **(meta or {}), "epoch": epoch + 1, "epochs": config.epochs, "history": history,
        "param_groups": param_groups, "ood_state": ood_state, "kind": "training-state",
    })


def _blame(logits: Tensor, out, logs: dict[str, float], defense: Defense, ood: OODFeed | None) -> str:
    """Which part of the loss went non-finite, named by component, and what to try."""
    if not torch.isfinite(logits.detach()).all():
        return "the model's logits are not finite (the weights diverged); lower the learning rate"
    bad = [key for key, value in logs.items() if key != "ood_share" and not math.isfinite(float(value))]
    if "ood_loss" in bad:
        return f"the OOD loss {type(ood.loss).__name__} went non-finite; lower its weight or the learning rate"
    if bad or not torch.isfinite(out.loss.detach()):
        terms = f" (terms {', '.join(bad)})" if bad else ""
        return (f"the defense {type(defense).__name__}'s loss went non-finite{terms}; lower its weights or the "
                "learning rate")
    return "lower the learning rate"

"""The one trainer every defense goes through, so baselines differ only in their loss.

Reads top to bottom: set up, then per epoch: (phase 2 of BiDO+: draw an OOD batch and run
one forward pass over ID and OOD together), the defense's loss on the ID part, the OOD loss,
a step, epoch figures as an event, and a checkpoint that makes the run resumable.
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

from workbench import seeds
from workbench.batches import balanced_batches, dataset_labels, iterate_batches, take
from workbench.checkpoint import load_checkpoint, save_checkpoint, tensors_with_prefix
from workbench.components import Defense, OODLoss, TrainingSetup
from workbench.device import autocast
from workbench.errors import RunError
from workbench.losses import accuracy
from workbench.recipe import OODTrainingConfig, TrainConfig

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
    """The `ood_loss` component: `loss(id_logits, ood_logits)`, optional `observe`, `prepare`, `restore`."""


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
) -> TrainResult:
    """Train `model` (already through `defense.prepare_model`) and return its history.

    A checkpoint after every epoch (model, optimizer, RNG, epoch, history, the OOD loss's state)
    makes an interrupted run resume to the same figures as an uninterrupted one on CPU. Random
    streams come from `seed` through `workbench.seeds`: the batch order of an epoch depends only
    on (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
    """
    started = time.perf_counter()
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config, defense)
    optimizer = defense.start_training(model, optimizer, TrainingSetup(
        dataset_size=len(train_data),
        batch_size=(config.balanced_batches.classes * config.balanced_batches.per_class if config.balanced_batches
                    else config.batch_size), epochs=config.epochs, device=device, seed=seed))
    history: list[dict[str, float]] = []
    ood_state: dict[str, float] = {}
    first_epoch = 0
    checkpoint = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir else None

    torch.manual_seed(seeds.derive(seed, "train"))
    if resume and checkpoint is not None and checkpoint.exists():
        tensors, saved = load_checkpoint(checkpoint)
        try:
            model.load_state_dict(tensors_with_prefix(tensors, "model"))
            _restore_optimizer(optimizer, tensors, saved["param_groups"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise RunError(f"{checkpoint}: does not match this recipe's model ({str(exc).splitlines()[0]}); "
                           "start over with --force") from None
        torch.set_rng_state(tensors["rng.cpu"])
        first_epoch = int(saved["epoch"])
        history = saved.get("history", [])
        ood_state = saved.get("ood_state", {})
        defense.load_state_dict(tensors_with_prefix(tensors, "defense"))
        if ood_state and ood is not None and hasattr(ood.loss, "restore"):
            ood.loss.restore(ood_state)

    labels = dataset_labels(train_data) if config.balanced_batches else None
    ood_batch = max(1, round(config.batch_size * ood.config.batch_factor)) if ood else 0
    emit("stage_started", stage=stage, variant=variant, total=config.epochs)

    for epoch in range(first_epoch, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch) * group.get("lr_scale", 1.0)
        defense.start_epoch(epoch, config.epochs)
        shuffle = seeds.generator(seed, "batch-order", epoch)
        ood_phase = ood is not None and epoch >= ood.config.warmup_epochs
        if ood_phase and not ood_state and hasattr(ood.loss, "prepare"):
            ood_state = ood.loss.prepare(model, train_data, ood.dataset, device)
            emit("log", level="info", message=f"{variant or stage}: OOD loss prepared "
                 + ", ".join(f"{k} = {v:.4g}" for k, v in ood_state.items()))
        # The authors' warm-up passes OOD batches through the model too (no gradient, training mode).
        ood_draws = ood is not None and (ood_phase or ood.config.warmup_ood_forward)
        ood_batches = _ood_batches(ood, ood_batch, seed, epoch) if ood_draws else None
        if config.balanced_batches:
            bb = config.balanced_batches
            batches = (take(train_data, idx) for idx in balanced_batches(labels, bb.classes, bb.per_class, shuffle))
        else:
            batches = iterate_batches(train_data, config.batch_size, shuffle=True, generator=shuffle)

        model.train()
        sums: dict[str, float] = {}
        seen = correct = 0
        for step, (x, y) in enumerate(batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            own = len(y)  # the batch's own images; a defense may append its own after them (trapdoors)
            x, y = defense.transform(x, y, model=model, epoch=epoch, step=step)
            m = len(x)
            x_ood = None
            if ood_batches is not None:
                x_ood = next(ood_batches, None)
                if x_ood is None:  # auxiliary set exhausted: start it over
                    ood_batches = _ood_batches(ood, ood_batch, seed, epoch, restart=step)
                    x_ood = next(ood_batches)
                x_ood = x_ood[0].to(device, non_blocking=True)
            if x_ood is not None and not ood_phase:  # warm-up: the OOD batch only moves BatchNorm
                with torch.no_grad(), autocast(device):
                    warmup_ood_logits = model(_layout(x_ood, device))
                x_ood_joined = None
            else:
                x_ood_joined = x_ood
            inputs = x if x_ood_joined is None else torch.cat([x, x_ood_joined])
            with autocast(device):
                logits, hiddens = model.forward_hidden(_layout(inputs, device))
            if x_ood is not None and not ood_phase and hasattr(ood.loss, "observe"):
                ood.loss.observe(logits[:m].detach().float(), warmup_ood_logits.float(), epoch)
            # The defense sees the ID part only (dependency terms on ID data, as BiDO+ does).
            out = defense.loss(x=x, y=y, logits=logits[:m], hiddens=[h[:m] for h in hiddens], model=model)
            loss = out.loss
            logs = dict(out.logs)
            if x_ood_joined is not None:
                ood_loss = ood.loss(logits[:m].float(), logits[m:].float())
                logs["ood_loss"] = float(ood_loss.detach())
                loss = loss + ood_loss
                logs["ood_share"] = abs(logs["ood_loss"]) / max(abs(float(loss.detach())), 1e-12)
            if not torch.isfinite(loss):
                kept = f"; the last good checkpoint is {checkpoint}" if checkpoint and checkpoint.exists() else ""
                raise RunError(f"{stage}{' ' + variant if variant else ''}: loss became {float(loss.detach())} at epoch "
                               f"{epoch + 1} step {step + 1}: {_blame(logits, out, logs, defense, ood)}{kept}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
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

        metrics = {key: value / max(seen, 1) for key, value in sums.items()}
        metrics["train_accuracy"] = correct / max(seen, 1)
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics.update(defense.epoch_figures())
        if test_data is not None:
            metrics["test_accuracy"] = accuracy(model, test_data, device)
        history.append(metrics)
        emit("epoch", stage=stage, variant=variant, epoch=epoch + 1, epochs=config.epochs, metrics=metrics)

        if checkpoint is not None:
            opt_tensors, param_groups = _optimizer_tensors(optimizer)
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            tensors.update(opt_tensors)
            tensors.update({f"defense.{k}": v for k, v in defense.state_dict().items()})
            tensors["rng.cpu"] = torch.get_rng_state()
            save_checkpoint(checkpoint, tensors, {
                **(meta or {}), "epoch": epoch + 1, "epochs": config.epochs, "history": history,
                "param_groups": param_groups, "ood_state": ood_state, "kind": "training-state",
            })
            emit("checkpoint", stage=stage, variant=variant, path=str(checkpoint), epoch=epoch + 1)

    defense.finish_training(model)
    seconds = time.perf_counter() - started
    emit("stage_finished", stage=stage, variant=variant, seconds=round(seconds, 3))
    model.eval()
    return TrainResult(epochs_run=config.epochs - first_epoch, history=history, seconds=seconds)


def _ood_batches(ood: OODFeed, batch_size: int, seed: int, epoch: int, restart: int = 0):
    """The epoch's auxiliary OOD batches (a fresh pass when the set runs out mid-epoch)."""
    return iterate_batches(ood.dataset, batch_size, shuffle=True, drop_last=True,
                           generator=seeds.generator(seed, "ood-batches", epoch, restart))


def _layout(x: Tensor, device: torch.device) -> Tensor:
    """Channels-last on CUDA (faster convolutions), unchanged on the CPU."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


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

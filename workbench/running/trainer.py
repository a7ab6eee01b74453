"""The one trainer every defense goes through, so baselines differ only in their loss.

Reads top to bottom: set up, then per epoch: (phase 2 of BiDO+: draw an OOD batch and run
one forward pass over ID and OOD together), the defense's loss on the ID part, the OOD loss,
a step, epoch figures as an event, and a checkpoint that makes the run resumable.

Data parallel (`data_parallel=True` under torchrun): every rank draws the same global batch and
takes its slice; the model runs wrapped in DistributedDataParallel; losses over the whole batch
(BiDO's kernels, the OOD term) see the global batch through `workbench.running.distributed` gathers, so
N ranks train the model one process would with the same global batch (see docs/distributed.md).
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
    balanced_batches,
    dataset_labels,
    iterate_batches,
    shuffled_index_batches,
    take,
)
from workbench.running.device import autocast
from workbench.running.losses import accuracy, upcast
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
    ddp = data_parallel and distributed.is_distributed()
    if ddp:
        _check_data_parallel(defense, config)
    sync_bn = ddp and device.type == "cuda" and config.sync_batchnorm \
        and distributed.convert_sync_batchnorm(model)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    batch_size = (config.balanced_batches.classes * config.balanced_batches.per_class if config.balanced_batches
                  else config.batch_size)
    memory.check_batch_fits(f"{stage} {variant}" if variant else stage, memory.footprint_of(model), batch_size, device)
    optimizer = make_optimizer(model, config, defense)
    optimizer = defense.start_training(model, optimizer, TrainingSetup(
        dataset_size=len(train_data),
        batch_size=batch_size, epochs=config.epochs, device=device, seed=seed))
    history: list[dict[str, float]] = []
    ood_state: dict[str, float] = {}
    first_epoch = 0
    checkpoint = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir else None

    torch.manual_seed(seeds.derive(seed, "train"))
    state = load_checkpoint(checkpoint) if resume and checkpoint is not None and checkpoint.exists() else None
    if ddp:  # rank 0 read the checkpoint; every rank resumes from it (no shared file system needed)
        state = distributed.broadcast_object(state)
    if state is not None:
        tensors, saved = state
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
        if ood_state and ood is not None and ood.capabilities.prepares:
            ood.loss.restore(ood_state)

    labels = dataset_labels(train_data) if config.balanced_batches else None
    ood_batch = max(1, round(config.batch_size * ood.config.batch_factor)) if ood else 0
    # Under DDP the forward pass goes through the wrapper (gradients are averaged over ranks);
    # the defense and the OOD loss still see the plain model.
    net = distributed.wrap_for_ddp(model, device) if ddp else None
    emit("stage_started", stage=stage, variant=variant, total=config.epochs)

    for epoch in range(first_epoch, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch) * group.get("lr_scale", 1.0)
        defense.start_epoch(epoch, config.epochs)
        if ddp:  # each rank its own stream (dropout, MID's noise), a pure function of the epoch
            torch.manual_seed(seeds.derive(seed, "train", epoch, distributed.rank()))
        shuffle = seeds.generator(seed, "batch-order", epoch)
        ood_phase = ood is not None and epoch >= ood.config.warmup_epochs
        if ood_phase and not ood_state and ood.capabilities.prepares:
            ood_state = ood.loss.prepare(model, train_data, ood.dataset, device)
            emit("log", level="info", message=f"{variant or stage}: OOD loss prepared "
                 + ", ".join(f"{k} = {v:.4g}" for k, v in ood_state.items()))
        # The authors' warm-up passes OOD batches through the model too (no gradient, training mode).
        ood_draws = ood is not None and (ood_phase or ood.config.warmup_ood_forward)
        ood_batches = _ood_batches(ood, ood_batch, seed, epoch, sharded=ddp) if ood_draws else None
        if config.balanced_batches:
            bb = config.balanced_batches
            batches = (take(train_data, distributed.shard(idx) if ddp else idx)
                       for idx in balanced_batches(labels, bb.classes, bb.per_class, shuffle))
        elif ddp:  # the global batches one process would draw; this rank's slice of each
            batches = (take(train_data, distributed.shard(idx))
                       for idx in shuffled_index_batches(len(train_data), config.batch_size, shuffle)
                       if len(idx) >= distributed.world_size())
        else:
            batches = iterate_batches(train_data, config.batch_size, shuffle=True, generator=shuffle)

        model.train()
        if net is not None:
            net.train()
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
                    ood_batches = _ood_batches(ood, ood_batch, seed, epoch, restart=step, sharded=ddp)
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
                forward = net if net is not None else model.forward_hidden
                logits, hiddens = forward(_layout(inputs, device))
            if x_ood is not None and not ood_phase and ood.capabilities.observes:  # the global batch's
                ood.loss.observe(distributed.gather(logits[:m].detach().float()) if ddp else logits[:m].detach().float(),
                                 distributed.gather(warmup_ood_logits.float()) if ddp else warmup_ood_logits.float(),
                                 epoch)
            # The defense sees the ID part only (dependency terms on ID data, as BiDO+ does).
            out = defense.loss(x=x, y=y, logits=logits[:m], hiddens=[h[:m] for h in hiddens], model=model)
            loss = out.loss
            logs = dict(out.logs)
            if x_ood_joined is not None:
                id_logits, ood_logits = upcast(logits[:m]), upcast(logits[m:])
                if ddp:  # the OOD loss of the global ID and OOD batches, identical on every rank
                    id_logits, ood_logits = distributed.gather_with_grad(id_logits), distributed.gather_with_grad(ood_logits)
                ood_loss = ood.loss(id_logits, ood_logits)
                logs["ood_loss"] = float(ood_loss.detach())
                loss = loss + ood_loss
                logs["ood_share"] = abs(logs["ood_loss"]) / max(abs(float(loss.detach())), 1e-12)
            finite, rank_weight = _check_step(loss, m, ddp)
            if not finite:
                kept = f"; the last good checkpoint is {checkpoint}" if checkpoint and checkpoint.exists() else ""
                raise RunError(f"{stage}{' ' + variant if variant else ''}: loss became {float(loss.detach())} at epoch "
                               f"{epoch + 1} step {step + 1}: {_blame(logits, out, logs, defense, ood)}{kept}")
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

        if ddp:  # the epoch's figures over the global batches, not rank 0's slices
            sums = distributed.all_reduce_sums({**sums, "\0correct": correct, "\0seen": seen}, device)
            correct, seen = sums.pop("\0correct"), sums.pop("\0seen")
        metrics = {key: value / max(seen, 1) for key, value in sums.items()}
        metrics["train_accuracy"] = correct / max(seen, 1)
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics.update(defense.epoch_figures())
        if test_data is not None and distributed.is_main_process():  # rank 0 reports; the others need no figures
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

    if sync_bn:  # the trained model is used by one process from here on
        distributed.revert_sync_batchnorm(model)
    defense.finish_training(model)
    seconds = time.perf_counter() - started
    emit("stage_finished", stage=stage, variant=variant, seconds=round(seconds, 3))
    model.eval()
    return TrainResult(epochs_run=config.epochs - first_epoch, history=history, seconds=seconds)


def _ood_batches(ood: OODFeed, batch_size: int, seed: int, epoch: int, restart: int = 0, sharded: bool = False):
    """The epoch's auxiliary OOD batches (a fresh pass when the set runs out mid-epoch); `sharded`:
    this rank's slice of each global OOD batch."""
    generator = seeds.generator(seed, "ood-batches", epoch, restart)
    if sharded:
        return (take(ood.dataset, distributed.shard(idx))
                for idx in shuffled_index_batches(len(ood.dataset), batch_size, generator, drop_last=True))
    return iterate_batches(ood.dataset, batch_size, shuffle=True, drop_last=True, generator=generator)


def _check_data_parallel(defense: Defense, config: TrainConfig) -> None:
    """Refuse what data-parallel training cannot do exactly, in one line."""
    n = distributed.world_size()
    if getattr(defense, "data_parallel", True) is False:
        raise RunError(f"defense {type(defense).__name__}: does not support data-parallel training; "
                       "run it in one process (without torchrun / --nproc)")
    problem = global_batch_problem(config, n)
    if problem:
        raise RunError(problem)


def global_batch_problem(config: TrainConfig, world: int) -> str | None:
    """Why `config`'s global batch cannot be split evenly over `world` ranks, or None."""
    bb = config.balanced_batches
    size, key = ((bb.classes * bb.per_class, "target.train.balanced_batches (classes × per_class)") if bb
                 else (config.batch_size, "target.train.batch_size"))
    return f"{key} = {size}: the global batch must divide evenly over {world} processes" if size % world else None


def _check_step(loss: Tensor, rows: int, ddp: bool) -> tuple[bool, float]:
    """Whether the loss is finite on every rank (they stop together, or not at all), and the weight
    of this rank's loss in the backward pass.

    DDP averages the ranks' gradients, so a per-image mean over this rank's `rows` counts as 1/N
    of the global mean only when every rank holds as many rows. An epoch's last batch may split
    unevenly (4 + 3): weighting rank r's loss by N·n_r/n makes the average the global mean. The
    terms computed identically on every rank from gathered tensors (BiDO's kernels, the OOD loss)
    stay exact, because the weights sum to N, as 1 + ... + 1 does. 1.0 when the shards are equal."""
    finite = bool(torch.isfinite(loss.detach()))
    if not ddp:
        return finite, 1.0
    agreed = distributed.all_reduce_sums({"bad": 0.0 if finite else 1.0, "rows": float(rows)}, loss.device)
    return agreed["bad"] == 0.0, distributed.world_size() * rows / agreed["rows"]


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

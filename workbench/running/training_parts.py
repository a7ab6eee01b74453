"""The parts the one trainer (`workbench.running.trainer`) is made of, besides the defense:

- `Ranks`: how a step's batch is drawn and its figures summed in one process, and
  `DataParallelRanks`: the same under torchrun (every rank draws the global batch and takes its
  slice, the model runs in DistributedDataParallel, whole-batch terms see gathered tensors);
- `OODTraining`: BiDO+'s unknown-aware phase (auxiliary OOD batches, the warm-up forward, the OOD
  loss), a no-op without OOD data.

Each is a plain object the training loop calls at fixed points, so the loop reads top to bottom
and a single-process run stays bit-identical to what it always computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.components.capabilities import capabilities_of
from workbench.components.protocols import Defense
from workbench.errors import RunError
from workbench.recipe.schema import TrainConfig
from workbench.running import distributed, seeds
from workbench.running.batches import balanced_batches, iterate_batches, shuffled_index_batches, take
from workbench.running.device import autocast
from workbench.running.losses import upcast


def layout(x: Tensor, device: torch.device) -> Tensor:
    """Channels-last on CUDA (faster convolutions), unchanged on the CPU."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


# ------------------------------------------------------------------ one process, or every rank


class Ranks:
    """Training in one process: every hook is the identity."""

    data_parallel = False

    def prepare(self, model: nn.Module, device: torch.device, config: TrainConfig, defense: Defense) -> None:
        """Before the model moves to its device and the optimizer is made."""

    def resume_state(self, state: Any) -> Any:
        return state

    def forward(self, model: nn.Module, device: torch.device) -> Callable[[Tensor], tuple[Tensor, list[Tensor]]]:
        """What a step calls on its inputs: `(logits, hiddens)`."""
        return model.forward_hidden

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Before the epoch draws anything."""

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def batches(self, data: Dataset, config: TrainConfig, labels: Tensor | None,
                shuffle: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches, in the order `shuffle` gives."""
        if config.balanced_batches:
            bb = config.balanced_batches
            return (take(data, idx) for idx in balanced_batches(labels, bb.classes, bb.per_class, shuffle))
        return iterate_batches(data, config.batch_size, shuffle=True, generator=shuffle)

    def ood_batches(self, data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator:
        return iterate_batches(data, batch_size, shuffle=True, drop_last=True, generator=generator)

    def gather(self, t: Tensor) -> Tensor:
        """`t` over the whole batch (this rank's rows are all of it here)."""
        return t

    def gather_with_grad(self, t: Tensor) -> Tensor:
        return t

    def check_step(self, loss: Tensor, rows: int) -> tuple[bool, float]:
        """Whether the loss is finite, and the weight of this process's loss in the backward pass."""
        return bool(torch.isfinite(loss.detach())), 1.0

    def epoch_sums(self, sums: dict[str, float], correct: float, seen: float,
                   device: torch.device) -> tuple[dict[str, float], float, float]:
        return sums, correct, seen

    def finish(self, model: nn.Module) -> None:
        """After the last epoch."""


class DataParallelRanks(Ranks):
    """Every rank of the torchrun process group trains the model one process would train on the same
    global batches (docs/distributed.md)."""

    data_parallel = True

    def __init__(self) -> None:
        self.net: nn.Module | None = None
        self.synced = False

    def prepare(self, model: nn.Module, device: torch.device, config: TrainConfig, defense: Defense) -> None:
        if getattr(defense, "data_parallel", True) is False:  # the Defense base declares True
            raise RunError(f"defense {type(defense).__name__}: does not support data-parallel training; "
                           "run it in one process (without torchrun / --nproc)")
        problem = global_batch_problem(config, distributed.world_size())
        if problem:
            raise RunError(problem)
        self.synced = device.type == "cuda" and config.sync_batchnorm and distributed.convert_sync_batchnorm(model)

    def resume_state(self, state: Any) -> Any:
        """Rank 0 read the checkpoint; every rank resumes from it (no shared file system needed)."""
        return distributed.broadcast_object(state)

    def forward(self, model: nn.Module, device: torch.device) -> Callable[[Tensor], tuple[Tensor, list[Tensor]]]:
        # The forward pass goes through the wrapper (gradients are averaged over ranks); the defense
        # and the OOD loss still see the plain model.
        self.net = distributed.wrap_for_ddp(model, device)
        return self.net

    def start_epoch(self, seed: int, epoch: int) -> None:
        # Each rank its own stream (dropout, MID's noise), a pure function of the epoch.
        torch.manual_seed(seeds.derive(seed, "train", epoch, distributed.rank()))

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        self.net.train()

    def batches(self, data: Dataset, config: TrainConfig, labels: Tensor | None,
                shuffle: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """The global batches one process would draw; this rank's slice of each."""
        if config.balanced_batches:
            bb = config.balanced_batches
            return (take(data, distributed.shard(idx))
                    for idx in balanced_batches(labels, bb.classes, bb.per_class, shuffle))
        return (take(data, distributed.shard(idx))
                for idx in shuffled_index_batches(len(data), config.batch_size, shuffle)
                if len(idx) >= distributed.world_size())

    def ood_batches(self, data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator:
        return (take(data, distributed.shard(idx))
                for idx in shuffled_index_batches(len(data), batch_size, generator, drop_last=True))

    def gather(self, t: Tensor) -> Tensor:
        return distributed.gather(t)

    def gather_with_grad(self, t: Tensor) -> Tensor:
        return distributed.gather_with_grad(t)

    def check_step(self, loss: Tensor, rows: int) -> tuple[bool, float]:
        """Whether the loss is finite on every rank (they stop together, or not at all), and the
        weight of this rank's loss in the backward pass.

        DDP averages the ranks' gradients, so a per-image mean over this rank's `rows` counts as 1/N
        of the global mean only when every rank holds as many rows. An epoch's last batch may split
        unevenly (4 + 3): weighting rank r's loss by N·n_r/n makes the average the global mean. The
        terms computed identically on every rank from gathered tensors (BiDO's kernels, the OOD loss)
        stay exact, because the weights sum to N, as 1 + ... + 1 does. 1.0 when the shards are equal."""
        finite = bool(torch.isfinite(loss.detach()))
        agreed = distributed.all_reduce_sums({"bad": 0.0 if finite else 1.0, "rows": float(rows)}, loss.device)
        return agreed["bad"] == 0.0, distributed.world_size() * rows / agreed["rows"]

    def epoch_sums(self, sums: dict[str, float], correct: float, seen: float,
                   device: torch.device) -> tuple[dict[str, float], float, float]:
        """The epoch's figures over the global batches, not this rank's slices."""
        sums = distributed.all_reduce_sums({**sums, "\0correct": correct, "\0seen": seen}, device)
        return sums, sums.pop("\0correct"), sums.pop("\0seen")

    def finish(self, model: nn.Module) -> None:
        if self.synced:  # the trained model is used by one process from here on
            distributed.revert_sync_batchnorm(model)


def ranks_for(data_parallel: bool) -> Ranks:
    """`DataParallelRanks` when asked for and a process group of several ranks exists."""
    return DataParallelRanks() if data_parallel and distributed.is_distributed() else Ranks()


def global_batch_problem(config: TrainConfig, world: int) -> str | None:
    """Why `config`'s global batch cannot be split evenly over `world` ranks, or None."""
    bb = config.balanced_batches
    size, key = ((bb.classes * bb.per_class, "target.train.balanced_batches (classes × per_class)") if bb
                 else (config.batch_size, "target.train.batch_size"))
    return f"{key} = {size}: the global batch must divide evenly over {world} processes" if size % world else None


# ------------------------------------------------------------------ BiDO+'s unknown-aware phase


class OODTraining:
    """Auxiliary OOD batches in the training loop (BiDO+ phase 2), or nothing without an OOD feed.

    During the warm-up epochs the OOD batch (when the recipe draws one) only passes through the
    model without a gradient, as the authors' warm-up does, and the OOD loss may `observe` the
    logits; from the OOD phase on it joins the ID batch in one forward pass and the OOD loss is
    added to the defense's."""

    def __init__(self, ood: Any, config: TrainConfig, seed: int, ranks: Ranks):
        self.ood = ood
        self.seed = seed
        self.ranks = ranks
        self.batch_size = max(1, round(config.batch_size * ood.config.batch_factor)) if ood else 0
        self.capabilities = capabilities_of(ood.loss, "ood_loss") if ood else None
        self.state: dict[str, float] = {}
        """What the OOD loss prepared (kept in the training checkpoint)."""
        self.epoch = 0
        self.phase = False
        self._batches: Iterator | None = None

    def restore(self, state: dict[str, float]) -> None:
        self.state = state
        if state and self.ood is not None and self.capabilities.prepares:
            self.ood.loss.restore(state)

    def start_epoch(self, epoch: int, model: nn.Module, train_data: Dataset, device: torch.device,
                    emit: Callable[..., Any], label: str) -> None:
        ood = self.ood
        self.epoch = epoch
        self.phase = ood is not None and epoch >= ood.config.warmup_epochs
        if self.phase and not self.state and self.capabilities.prepares:
            self.state = ood.loss.prepare(model, train_data, ood.dataset, device)
            emit("log", level="info", message=f"{label}: OOD loss prepared "
                 + ", ".join(f"{k} = {v:.4g}" for k, v in self.state.items()))
        # The authors' warm-up passes OOD batches through the model too (no gradient, training mode).
        draws = ood is not None and (self.phase or ood.config.warmup_ood_forward)
        self._batches = self._epoch_batches() if draws else None

    def _epoch_batches(self, restart: int = 0) -> Iterator:
        """The epoch's auxiliary OOD batches (a fresh pass when the set runs out mid-epoch)."""
        generator = seeds.generator(self.seed, "ood-batches", self.epoch, restart)
        return self.ranks.ood_batches(self.ood.dataset, self.batch_size, generator)

    def draw(self, step: int, model: nn.Module, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """This step's OOD batch: `(joined, warmup_logits)`: the images to join the ID batch in the
        OOD phase, or during warm-up the logits of the no-gradient pass (which only moves BatchNorm)."""
        if self._batches is None:
            return None, None
        x_ood = next(self._batches, None)
        if x_ood is None:  # auxiliary set exhausted: start it over
            self._batches = self._epoch_batches(restart=step)
            x_ood = next(self._batches)
        x_ood = x_ood[0].to(device, non_blocking=True)
        if self.phase:
            return x_ood, None
        with torch.no_grad(), autocast(device):
            return None, model(layout(x_ood, device))

    def observe(self, id_logits: Tensor, warmup_logits: Tensor | None) -> None:
        """Warm-up: the global batch's ID and OOD logits to an OOD loss that observes them."""
        if warmup_logits is not None and self.capabilities.observes:
            self.ood.loss.observe(self.ranks.gather(id_logits.detach().float()),
                                  self.ranks.gather(warmup_logits.float()), self.epoch)

    def add_loss(self, loss: Tensor, logs: dict[str, float], id_logits: Tensor, ood_logits: Tensor) -> Tensor:
        """The defense's loss plus the OOD loss of the global ID and OOD batches (identical on every rank)."""
        id_logits = self.ranks.gather_with_grad(upcast(id_logits))
        ood_logits = self.ranks.gather_with_grad(upcast(ood_logits))
        ood_loss = self.ood.loss(id_logits, ood_logits)
        logs["ood_loss"] = float(ood_loss.detach())
        loss = loss + ood_loss
        logs["ood_share"] = abs(logs["ood_loss"]) / max(abs(float(loss.detach())), 1e-12)
        return loss

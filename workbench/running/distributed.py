"""Data-parallel training under torchrun: the process group, lockstep decisions, global-batch gathers.

torchrun (torch.distributed.run) starts N copies of `workbench run`; each reads RANK,
WORLD_SIZE and LOCAL_RANK from its environment, and every rank runs the same program
(`workbench.running.runner.run_on_every_rank`) inside `lockstep()`: rank 0 alone writes the run
directory, and whatever only it can decide (a stage-cache hit, a file of the run directory) it
hands the others (`agree`, `agree_on_hit`, `broadcast_module`). Work that runs on rank 0 alone
(figures, a search that does not split) sits in `alone()`. Without torchrun (WORLD_SIZE unset or
1) nothing here does anything: every helper is the identity, so single-process training stays
bit-identical.

Backends: nccl for CUDA tensors and gloo for CPU tensors (`"cpu:gloo,cuda:nccl"` when CUDA is
visible, plain gloo otherwise). Objects (decisions, a run's start, search results) travel on a
gloo group of their own with a long timeout: rank 0 may spend hours on work of its own (an attack
that does not split) while the others wait at the next decision.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from workbench.errors import RunError

ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_RANK = "RANK"
ENV_LOCAL_RANK = "LOCAL_RANK"
ENV_LAUNCHER = "WORKBENCH_NPROC_LAUNCHER"
"""Set by `workbench run --nproc N` for its ranks: the launcher, not the ranks, reports a rank that died."""

# The other ranks wait at the next decision while rank 0 works alone (an attack that does not split).
TASK_CHANNEL_TIMEOUT = datetime.timedelta(days=7)
# Collectives of training itself: long enough for rank 0's epoch-end work (test accuracy, checkpoint).
TRAINING_TIMEOUT = datetime.timedelta(minutes=60)

_object_group: Any = None
_lockstep = False  # every rank runs the same code path (an attack's priors): stage decisions are shared
_data_parallel = False  # inside a stage's training loop run in lockstep: forwards split, gradients averaged


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 without torchrun), before any process group exists."""
    try:
        return max(1, int(os.environ.get(ENV_WORLD_SIZE, "1")))
    except ValueError:
        return 1


def local_world_size() -> int:
    """Ranks torchrun (or a multi-task submitit job) started on this machine (1 without)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Ranks taking part in training (1 without torchrun)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0, the one process that writes files and events (always True without torchrun)."""
    return rank() == 0


def backend_name() -> str:
    """The process group's backend, e.g. `gloo` or `cpu:gloo,cuda:nccl`; "" without one."""
    return str(dist.get_backend()) if is_distributed() else ""


def setup() -> bool:
    """Join the process group torchrun describes (env:// rendezvous); False without torchrun."""
    if launched_world_size() <= 1 or is_distributed():
        return is_distributed()
    global _object_group
    local_rank = int(os.environ.get(ENV_LOCAL_RANK, "0"))
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:  # no GPU for this rank (a CPU recipe on more ranks than GPUs)
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TRAINING_TIMEOUT)
    _object_group = dist.new_group(backend="gloo", timeout=TASK_CHANNEL_TIMEOUT)
    return True


def shutdown() -> None:
    """Leave the process group (safe to call when there is none)."""
    global _object_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _object_group = None


# ------------------------------------------------------------------ rank 0 -> followers


def broadcast_object(value: Any = None) -> Any:
    """Rank 0's `value` on every rank (pickled over the gloo object channel)."""
    if not is_distributed():
        return value
    box = [value if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, group=_object_group)
    return box[0]


def gather_objects(value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0 (pickled over the gloo object channel, whose
    long timeout lets early ranks wait for late ones); None on the other ranks."""
    if not is_distributed():
        return [value]
    box = [None] * world_size() if is_main_process() else None
    dist.gather_object(value, box, dst=0, group=_object_group)
    return box


# ------------------------------------------------------------------ lockstep: the attacks' priors


@contextlib.contextmanager
def lockstep() -> Iterator[None]:
    """`with lockstep():` every rank runs this block's code path together (rank 0 an attack's
    priors, the followers the same calls): each stage-cache decision is rank 0's
    (`agree_on_hit`), and a stage trained here trains data-parallel (`training_together`). No-op
    without a process group."""
    global _lockstep
    previous, _lockstep = _lockstep, is_distributed()
    try:
        yield
    finally:
        _lockstep = previous


def in_lockstep() -> bool:
    return _lockstep and is_distributed()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """`with alone():` this rank works by itself inside a lockstep run (rank 0's figures, a search
    that does not split over the ranks): its stage-cache decisions are its own, nothing is shared."""
    global _lockstep
    previous, _lockstep = _lockstep, False
    try:
        yield
    finally:
        _lockstep = previous


def agree(value: Any) -> Any:
    """In lockstep, rank 0's `value` on every rank (a decision only rank 0 can make: whether a file of
    the run directory is there); outside lockstep, `value` itself."""
    if not in_lockstep():
        return value
    return broadcast_object(value if is_main_process() else None)


def agree_on_hit(stage: str, hit: bool) -> bool:
    """In lockstep, rank 0's cache hit or miss for `stage` on every rank (a follower has no cache:
    it trains exactly when rank 0 does). Outside lockstep, `hit` itself."""
    if not in_lockstep():
        return hit
    decided = broadcast_object((stage, hit) if is_main_process() else None)
    if decided[0] != stage:
        raise RunError(f"rank {rank()} reached stage {stage!r} where rank 0 reached {decided[0]!r} "
                           "(are all ranks running the same workbench version and recipe?)")
    return bool(decided[1])


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Every parameter and buffer of `module` set to rank 0's, in place (a cached prior rank 0
    loaded, a target it trained or loaded). A no-op outside lockstep."""
    if not in_lockstep():
        return
    for tensor in module.state_dict().values():
        dense = tensor if tensor.is_contiguous() else tensor.contiguous()
        dist.broadcast(dense, src=0)
        if dense is not tensor:
            tensor.copy_(dense)


@contextlib.contextmanager
def training_together(*modules: nn.Module) -> Iterator[None]:
    """`with training_together(G, D):` a stage's training loop, run by every rank in lockstep.

    Inside, forwards through `split_forward` take this rank's slice of each global batch and
    `average_gradients` averages over the ranks. The modules start from rank 0's weights (as DDP
    does), their BatchNorm layers become SyncBatchNorm on CUDA (gloo cannot sync BatchNorm on
    the CPU: statistics are then per rank), and they end with rank 0's state. Outside lockstep
    it changes nothing (one process)."""
    global _data_parallel
    if not in_lockstep():
        yield
        return
    for module in modules:
        broadcast_module(module)
    synced = [m for m in modules if _on_cuda(m) and convert_sync_batchnorm(m)]
    previous, _data_parallel = _data_parallel, True
    try:
        yield
    finally:
        _data_parallel = previous
        for module in synced:
            revert_sync_batchnorm(module)
    for module in modules:  # per-rank BatchNorm statistics (CPU): every rank keeps rank 0's
        broadcast_module(module)


def _on_cuda(module: nn.Module) -> bool:
    return any(p.is_cuda for p in module.parameters())


def in_data_parallel() -> bool:
    return _data_parallel and is_distributed()


def split_forward(fn: Callable[..., Any], *batch: Tensor) -> Any:
    """`fn(*batch)` with the forward work split over the ranks: `fn` runs on this rank's rows of
    each global batch tensor (`shard`'s slices), and its outputs (a tensor or a tuple of them)
    are gathered back into global-batch order with autograd (`gather_with_grad`).

    Every rank holds the same global batch (drawn from the same random stream) and, after this,
    the same outputs, so a loss computed from them is computed identically on every rank; with
    `average_gradients` the parameters get exactly the single-process gradient. `fn` must treat
    rows independently (a layer that mixes rows, BatchNorm or minibatch discrimination, sees only
    this rank's slice unless it gathers itself: see `in_data_parallel`). The identity outside
    `training_together`.
    """
    if not in_data_parallel():
        return fn(*batch)
    size = batch[0].shape[0]
    index = shard(torch.arange(size))
    start, stop = (int(index[0]), int(index[-1]) + 1) if len(index) else (0, 0)
    out = fn(*(t[start:stop] for t in batch))
    if isinstance(out, tuple):
        return tuple(gather_with_grad(o) for o in out)
    return gather_with_grad(out)


def average_gradients(*modules: nn.Module) -> None:
    """Each parameter's `.grad` replaced by its mean over the ranks (one all-reduce per dtype and
    device), after `backward` and before the optimiser's step; a no-op outside `training_together`.

    The GAN priors use this instead of wrapping their networks in DistributedDataParallel: WGAN-GP's
    gradient penalty differentiates the critic twice (`autograd.grad(create_graph=True)`), which DDP
    does not support, and each step runs one network several times before a backward.
    """
    if not in_data_parallel():
        return
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.dtype, g.device), []).append(g)
    n = world_size()
    for same in groups.values():
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat)
        flat /= n
        offset = 0
        for g in same:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


# ------------------------------------------------------------------ the global batch


def shard(index: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch's indices (sizes differ by at most one)."""
    if not is_distributed():
        return index
    return torch.tensor_split(index, world_size())[rank()]


def gather_with_grad(t: Tensor) -> Tensor:
    """Every rank's `t` concatenated in rank order along dim 0, differentiable.

    Built on `torch.distributed.nn.functional.all_gather`, whose backward sums the gradients
    of all ranks into each rank's slice. A loss computed identically on every rank from
    gathered tensors therefore gives each rank N × its share of the gradient, and DDP's mean
    over ranks divides the N out again: the parameters get exactly the single-process gradient
    of that loss on the global batch, with no extra scaling. Shards may differ in size by a
    few rows (an epoch's last batch): they are padded to the largest for the gather and cut
    back after it. The identity without a process group.
    """
    if not is_distributed():
        return t
    import warnings

    from torch.distributed.nn.functional import all_gather

    sizes = _shard_sizes(t)
    largest = max(sizes)
    padded = t
    if t.shape[0] < largest:
        padded = torch.cat([t, t.new_zeros((largest - t.shape[0], *t.shape[1:]))])
    with warnings.catch_warnings():  # torch 2.14 deprecates it for a private API; it still works
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


@torch.no_grad()
def gather(t: Tensor) -> Tensor:
    """`gather_with_grad` without autograd: figures and statistics of the global batch."""
    return gather_with_grad(t.detach())


def _shard_sizes(t: Tensor) -> list[int]:
    size = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each figure over the ranks (every rank must pass the same keys)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(keys, packed.tolist(), strict=True))


# ------------------------------------------------------------------ models


class HiddenForward(nn.Module):
    """`forward(x) = model.forward_hidden(x)`: DDP synchronises gradients of `forward` only, and
    the trainer needs the hidden features from the same, synchronised pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.model.forward_hidden(x)


def wrap_for_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """A DistributedDataParallel module whose forward gives `(logits, hiddens)`.

    DDP broadcasts rank 0's parameters and buffers when it is built, so every rank starts from
    the same weights (those of a resumed checkpoint, if rank 0 loaded one). `static_graph`: the
    trainer uses the same parameters every step, and some models hold trainable parameters the
    loss never reaches (MID's bottleneck replaces the backbone's head); a static graph lets DDP
    learn that set in the first step, where the default would leave the gradients of their
    whole bucket un-averaged (tests/test_distributed.py, MID).
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(HiddenForward(model), device_ids=ids, static_graph=True)


def convert_sync_batchnorm(model: nn.Module) -> bool:
    """BatchNorm layers -> SyncBatchNorm in place (statistics over the global batch); True if any."""
    found = False
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            synced = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            synced.original_class = type(child)  # BatchNorm1d/2d/3d, for `revert_sync_batchnorm`
            setattr(model, name, synced)
            found = True
        else:
            found = convert_sync_batchnorm(child) or found
    return found


def revert_sync_batchnorm(model: nn.Module) -> None:
    """SyncBatchNorm -> the BatchNorm it replaced, in place, same state: the trained model is used by one
    process afterwards (evaluation, attacks), where SyncBatchNorm has no group to talk to."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.SyncBatchNorm):
            plain = getattr(child, "original_class", nn.BatchNorm2d)(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.weight.device if child.affine else None,
                                   dtype=child.weight.dtype if child.affine else None)
            plain.load_state_dict(child.state_dict())
            plain.train(child.training)
            setattr(model, name, plain)
        else:
            revert_sync_batchnorm(child)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def describe(device: torch.device, sync_batchnorm: bool = True) -> str:
    """One header line: how many processes, which backend, what happens to BatchNorm."""
    n = world_size()
    if n <= 1:
        return ""
    if device.type != "cuda":
        bn = "BatchNorm statistics are per rank (gloo on the CPU cannot sync BatchNorm)"
    elif sync_batchnorm:
        bn = "SyncBatchNorm over the global batch (target.train.sync_batchnorm)"
    else:
        bn = "BatchNorm statistics are per rank (target.train.sync_batchnorm = false)"
    return f"data parallel: {n} processes ({backend_name()}), each 1/{n} of the global batch; {bn}"

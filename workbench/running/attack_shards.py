"""Sharded attacks: an attack's per-class search split into jobs whose results merge exactly.

`[attacks.gmi] shards = 4` (a param of every built-in search, `SearchBudget.shards`) splits the
attack's forward batches of `max_batch` latents, in order, into 4 contiguous runs. Per variant:

1. the pass before the shards, in the variant's process: `attack.run` with
   `AttackShard(search=False)` trains or loads everything the search needs (GMI's prior,
   KED-MI's per-target GAN, LOMMA's surrogates) into the stage cache, exactly where the unsharded
   attack would, and refuses with one line when the search has fewer batches than shards;
2. the shards without a finished file, as jobs of kind `attack-shard` on the run's executor
   (`processes` when the run has several workers, else `inline`, one after another); each
   (`run_shard`) loads the target and the priors and writes its rows to
   `<variant>/reconstructions/<attack>.shard-<k>-of-<n>.safetensors`;
3. `merge_shards`: the shard files in order, merged by the attack (`attack.merge_shards`).

Every batch is computed as in the unsharded search (its own random streams, the same members,
the same thread count), so the merged rows, and every figure computed from them, equal the
unsharded run's bit for bit. A finished shard is not run again after an interruption. The two
functions a distributed launcher needs are `run_shard` (shard k of n of attack A for variant V)
and `merge_shards`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from workbench.components.capabilities import capabilities_of
from workbench.components.protocols import AttackContext, AttackResult, AttackShard
from workbench.errors import RunError, WorkbenchError
from workbench.running import distributed
from workbench.running.context import RunContext
from workbench.running.evaluation import RECONSTRUCTIONS, attack_context, reconstruction_key
from workbench.running.pool import WorkerPool
from workbench.storage.cache import StageCache
from workbench.storage.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    weights_fingerprint,
)

JOB_KIND = "attack-shard"


def shard_count(attack: Any) -> int:
    """How many shards the attack's `shards` param asks for (1: not sharded, or no such param)."""
    return int(getattr(getattr(attack, "params", None), "shards", 1) or 1)


def check_shardable(name: str, attack: Any) -> None:
    """Refuse, in one line, an attack asked for shards that cannot merge them exactly."""
    if not capabilities_of(attack, "attack").shards:
        raise WorkbenchError(
            f"attack {name!r} ({type(attack).__name__}) cannot be sharded exactly: it declares no `shards` "
            f"capability; set [attacks.{name}] shards = 1"
        )


def shard_path(folder: Path, name: str, index: int, count: int) -> Path:
    """Where shard `index` (0-based) of `count` of attack `name` keeps its rows."""
    return Path(folder) / RECONSTRUCTIONS / f"{name}.shard-{index + 1}-of-{count}.safetensors"


def shard_key(attack: Any, target: torch.nn.Module, seed: int) -> str:
    """What a shard's rows depend on (the attack's params, the target's weights, the seed): a file
    written for another target or other params is never merged."""
    key = {"attack": type(attack).__name__, "params": attack.params.model_dump(mode="json"),
           "target": weights_fingerprint(target), "seed": seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_shard(path: Path, key: str) -> AttackResult | None:
    """A finished shard's rows, or None (missing, half-written, or from another key)."""
    if not path.exists():
        return None
    try:
        tensors, meta = load_checkpoint(path)
    except CheckpointError:
        return None
    if meta.get("key") != key or not {"images", "targets", "restarts", "confidences"} <= set(tensors):
        return None
    return AttackResult(images=tensors["images"], targets=tensors["targets"], restarts=tensors["restarts"],
                        figures=meta.get("figures", {}), confidences=tensors["confidences"])


# ------------------------------------------------------------------ one shard (a job)


def run_shard(ctx: RunContext, target: torch.nn.Module, evaluation: torch.nn.Module | None, variant_name: str,
              name: str, index: int, count: int) -> Path:
    """Run shard `index` (0-based) of `count` of attack `name` on variant `variant_name`'s trained
    `target` and write its rows; the path back. The priors come from the stage cache (the pass
    before the shards put them there). Idempotent: a finished shard returns at once."""
    recipe = ctx.recipe
    folder = ctx.variant_dir(recipe.variant(variant_name))
    path = shard_path(folder, name, index, count)
    table = recipe.attacks[name]
    attack = ctx.registry.create_from("attack", table)
    key = shard_key(attack, target, recipe.seed)
    stage = f"attack:{name}:shard-{index + 1}-of-{count}"

    def emit(type: str, **fields: Any) -> None:
        ctx.emit(type, **{"variant": variant_name, **fields})

    if load_shard(path, key) is not None:
        emit("log", level="info", message=f"{variant_name}: {name} shard {index + 1} of {count} already done")
        return path
    emit("stage_started", stage=stage, total=None, shard=index, shards=count, pid=os.getpid())
    started = time.perf_counter()
    actx = attack_context(name, attack, target, data=ctx.data, evaluation_model=evaluation, device=ctx.device,
                          seed=recipe.seed, cache=ctx.cache.for_components(("attack", table.use)), emit=emit,
                          shard=AttackShard(index, count))
    part = attack.run(actx)
    if part.confidences is None or part.restarts is None:
        raise WorkbenchError(f"attack {name!r}: its shard {index + 1} of {count} returned no per-image "
                             "confidences or restarts, so the shards cannot merge exactly")
    tensors = {"images": part.images.float().cpu(), "targets": part.targets.long().cpu(),
               "restarts": part.restarts.long().cpu(), "confidences": part.confidences.cpu()}
    seconds = round(time.perf_counter() - started, 3)
    save_checkpoint(path, tensors, {"kind": JOB_KIND, "attack": name, "variant": variant_name, "shard": index,
                                    "shards": count, "key": key, "figures": part.figures, "seconds": seconds})
    emit("stage_finished", stage=stage, seconds=seconds, shard=index, shards=count, pid=os.getpid())
    return path


# ------------------------------------------------------------------ the parent: plan, run, merge


def merge_shards(attack: Any, prepared: AttackResult, folder: Path, name: str, count: int, key: str) -> AttackResult:
    """The unsharded result from the `count` shard files (in order) and the pass before them."""
    parts = []
    for index in range(count):
        part = load_shard(shard_path(folder, name, index, count), key)
        if part is None:
            raise RunError(f"{shard_path(folder, name, index, count)}: missing or unreadable after its job "
                           "finished; run again with --resume to redo that shard")
        parts.append(part)
    return attack.merge_shards(prepared, parts)


@dataclasses.dataclass
class ShardedAttack:
    """`compute(ctx)` for `run_attack`: the pass before the shards here, the shards as jobs on the
    run's workers, then the merge. Made by `sharded` for an attack with `shards` > 1."""

    pool: WorkerPool
    run: RunContext
    variant: str
    name: str
    attack: Any
    count: int
    target: torch.nn.Module | None = None
    """The trained target (its weights key the shard files; a black-box attack's context has no module)."""

    def __call__(self, ctx: AttackContext) -> AttackResult:
        name, count = self.name, self.count
        folder = self.run.run_dir / self.variant
        prepared = self.attack.run(dataclasses.replace(ctx, shard=AttackShard(0, count, search=False)))
        key = shard_key(self.attack, self.target if self.target is not None else ctx.target, ctx.seed)
        pending = [k for k in range(count) if load_shard(shard_path(folder, name, k, count), key) is None]
        if len(pending) < count:
            ctx.emit("log", level="info", message=f"{name}: {count - len(pending)} of {count} shards already "
                     f"done; running {len(pending)}")
        if pending:
            labels = [f"{self.variant}:{name}:shard-{k + 1}-of-{count}" for k in pending]
            options = [{"variant": self.variant, "attack": name, "shard": k, "shards": count} for k in pending]
            where = "worker processes" if self.run.workers > 1 else "this process, one after another"
            self.pool.run_jobs(JOB_KIND, labels, torch.get_num_threads(),
                               f"{self.variant}: {name} in {len(pending)} shard jobs ({where})", options=options)
        merged = merge_shards(self.attack, prepared, folder, name, count, key)
        for k in range(count):  # the merged reconstructions replace them (run_attack writes those next)
            shard_path(folder, name, k, count).unlink(missing_ok=True)
        return merged


def sharded(pool: WorkerPool, ctx: RunContext, variant: str, name: str, attack: Any,
            target: torch.nn.Module | None = None) -> ShardedAttack | None:
    """The `compute` for `run_attack` when the recipe shards attack `name`, else None; refuses an
    attack that cannot merge shards exactly."""
    count = shard_count(attack)
    if count <= 1:
        return None
    check_shardable(name, attack)
    return ShardedAttack(pool, ctx, variant, name, attack, count, target)


# ------------------------------------------------------------------ under torchrun: every rank a part


PRIORS_ONLY = AttackShard(0, 1, search=False)
"""The pass that trains or loads what an attack's search needs, and searches nothing."""


def reconstructions_known(folder: Path, name: str, cache: StageCache, attack: Any, target: torch.nn.Module,
                          seed: int, evaluation: torch.nn.Module | None) -> bool:
    """Whether `run_attack` will find attack `name`'s reconstructions (the variant's folder or the stage
    cache) instead of running it: rank 0 asks, and the ranks join the search only when it will not."""
    if (Path(folder) / RECONSTRUCTIONS / f"{name}.safetensors").exists():
        return True
    path = cache.path("attack", reconstruction_key(attack, target, seed, evaluation))
    return path is not None and path.exists()


def searched_by_every_rank(attack: Any, ctx: AttackContext, target: torch.nn.Module,
                           jobs: ShardedAttack | None = None) -> AttackResult | None:
    """Every rank, in lockstep: the attack's priors (trained together, or rank 0's cached ones handed
    over), then this rank's contiguous part of the per-class search; rank 0 returns the parts merged
    (the one-process result bit for bit, as `[attacks.X] shards` gives: same device and thread count
    on every rank), the others None. With the recipe's own shards (`jobs`, rank 0's) the ranks train
    the priors together and rank 0 runs the shards as the recipe says."""
    distributed.broadcast_module(target)
    prepared = attack.run(dataclasses.replace(ctx, shard=PRIORS_ONLY))
    if jobs is not None:
        if not distributed.is_main_process():
            return None
        with distributed.alone():
            return jobs(ctx)
    # Its priors again: cache hits on rank 0, handed over to the others, then the search.
    shard = AttackShard(distributed.rank(), distributed.world_size(), may_be_empty=True)
    part = attack.run(dataclasses.replace(ctx, shard=shard))
    parts = distributed.gather_objects(_on_cpu(part))
    return attack.merge_shards(prepared, parts) if parts is not None else None


def _on_cpu(result: AttackResult) -> AttackResult:
    """A result whose tensors can travel between ranks (pickled over the gloo channel)."""
    def cpu(t):
        return t.cpu() if t is not None else None

    return dataclasses.replace(result, images=cpu(result.images), targets=cpu(result.targets),
                               restarts=cpu(result.restarts), confidences=cpu(result.confidences))

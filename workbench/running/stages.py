"""The stages of a run, as plain functions of a `RunContext`, top to bottom.

1. `with_data`: the dataset;
2. `prepare_shared_stages`: what every variant needs and no defense changes: the evaluation models
   (E and the recipe's evaluators), each attack's target-independent prior (`prepare`), the OOD
   test sets;
3. per variant (`run_variant`): train the target (checkpoint every epoch), then evaluate utility,
   OOD and every attack; each writes its outcome into the variant's folder before the next begins,
   so `--resume` skips what is done and continues training from the last epoch;
4. `collect_results`: `results.json`.

One program on every rank: under torchrun every rank calls these functions in the same order
inside `distributed.lockstep()`. Rank 0 decides each stage-cache hit and each "already done" (the
others take its decision and, where it loaded weights, its weights); a miss trains on every rank
together. Only rank 0 writes: `ctx.events` elsewhere is `NoEvents`, the others' stage cache has no
folder, and files are written where `ctx.world.is_main`. Work that cannot split over the ranks (an
attack's search that does not shard, the OOD scores, the figures) runs on rank 0 alone, outside
lockstep (`distributed.alone()`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from workbench.components.capabilities import capabilities_of
from workbench.components.protocols import AttackContext, DefenseContext, EvalContext
from workbench.errors import RunError
from workbench.recipe.schema import VariantConfig
from workbench.running import attack_shards, distributed, seeds
from workbench.running.context import NoEvents, RunContext, SharedStages
from workbench.running.device import describe_machine
from workbench.running.evaluation import OODEvaluator, attack_context, check_disjoint, run_attack
from workbench.running.evaluators import (
    build_evaluator,
    build_evaluators,
    evaluator_names,
    evaluators_figures,
    judge_attack,
)
from workbench.running.pool import WorkerPool
from workbench.running.threads import threads_for
from workbench.running.trainer import OODFeed, train_classifier
from workbench.storage.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    tensors_with_prefix,
)
from workbench.storage.events import json_safe
from workbench.storage.runs import RESULTS_FILE, TARGET_FILE, read_variant_results

EVALUATION_STAGE = "evaluation-model"
EVALUATOR_STAGE = "evaluator:"  # a worker's job for one evaluation model: `evaluator:E`, `evaluator:<name>`


def quiet(ctx: RunContext) -> RunContext:
    """`ctx` whose events go nowhere: stages redone only to load what a worker already reported."""
    return ctx.replace(events=NoEvents())


def stage(ctx: RunContext, name: str, work, variant: str | None = None):
    """`work()` between stage_started / stage_finished events."""
    ctx.emit("stage_started", stage=name, variant=variant, total=None)
    started = time.perf_counter()
    result = work()
    ctx.emit("stage_finished", stage=name, variant=variant, seconds=round(time.perf_counter() - started, 3))
    return result


# ------------------------------------------------------------------ 1. data


def with_data(ctx: RunContext) -> RunContext:
    """`ctx` with the recipe's data loaded (every rank loads its own copy)."""
    dataset = ctx.registry.create_from("dataset", ctx.recipe.data)
    data = stage(ctx, "data", lambda: dataset.load(ctx.recipe.seed))
    ctx.emit("log", level="info", message=(
        f"data {ctx.recipe.data.use}: {len(data.train)} train / {len(data.test)} test private images, "
        f"{data.num_classes} classes, {data.in_channels}×{data.image_size}×{data.image_size}"))
    return ctx.replace(data=data)


# ------------------------------------------------------------------ 2. shared stages


def shared_stage_names(ctx: RunContext) -> list[str]:
    """The trained stages every variant shares: the evaluation models, and each attack's
    target-independent prior (an attack that declares `prepares`)."""
    if not ctx.recipe.attacks:
        return []
    names = [EVALUATION_STAGE]
    for name, table in ctx.recipe.attacks.items():
        if capabilities_of(ctx.registry.create_from("attack", table), "attack").prepares:  # GMI's GAN, say
            names.append(f"prior:{name}")
    return names


def prepare_shared_stages(ctx: RunContext, pool: WorkerPool | None = None) -> SharedStages:
    """Data must be loaded. On a CPU with several workers (`pool`) the trained stages train in parallel
    worker processes first and are then loaded here from the stage cache (quietly, with the figures
    of the worker that trained E)."""
    for table in ctx.recipe.metrics:  # a metric checks its files (Inception weights) when made: before training
        ctx.registry.create_from("metric", table)
    names = shared_stage_names(ctx)
    threads = ctx.cpu_threads
    shared = SharedStages()
    jobs = worker_jobs(ctx, names)
    if pool is not None and min(ctx.workers, len(jobs)) > 1 and threads:
        trained = dict(zip(jobs, pool.run_jobs("shared-stage", jobs, threads, f"training {len(jobs)} shared stages "
                                               f"in {min(ctx.workers, len(jobs))} worker processes"), strict=True))
        shared = shared_stage(quiet(ctx), shared, EVALUATION_STAGE)
        figures = trained[EVALUATION_STAGE] if EVALUATION_STAGE in trained else evaluators_figures(
            {name: trained[EVALUATOR_STAGE + name] for name in evaluator_names(ctx.recipe)})
        shared = dataclasses.replace(shared, evaluation_figures=figures)  # "cached" as the workers found them
    else:
        for name in names:
            shared = shared_stage(ctx, shared, name)
    if ctx.recipe.ood and ctx.recipe.ood.test_sets:
        evaluator = stage(ctx, "ood-test-sets", lambda: OODEvaluator(ctx.recipe, ctx.registry, ctx.data))
        shared = dataclasses.replace(shared, ood_evaluator=evaluator)
    return shared


def worker_jobs(ctx: RunContext, names: list[str]) -> list[str]:
    """The shared stages as worker jobs: the attacks' priors first (GAN training, the longest), then
    E's stage, split into one job per evaluation model when the recipe has several (each seeds
    itself and is cached on its own, so they train in parallel to the same weights)."""
    priors = [name for name in names if name != EVALUATION_STAGE]
    if EVALUATION_STAGE not in names:
        return priors
    if not ctx.recipe.evaluators:
        return [*priors, EVALUATION_STAGE]
    return [*priors, *(EVALUATOR_STAGE + name for name in evaluator_names(ctx.recipe))]


def shared_stage(ctx: RunContext, shared: SharedStages, name: str) -> SharedStages:
    """Train or load one shared stage (see `shared_stage_names`, and `worker_jobs` for one evaluator
    alone: its figures as `evaluation_figures`), on every rank together."""
    recipe = ctx.recipe
    with threads_for(ctx.cpu_threads):
        if name == EVALUATION_STAGE:
            judges = stage(ctx, name, lambda: build_evaluators(recipe, ctx.resolved, ctx.registry, ctx.data,
                                                               ctx.cache, ctx.device, ctx.emit))
            return dataclasses.replace(shared, evaluation_model=judges.primary, evaluation_figures=judges.figures,
                                       evaluators=judges.models)
        if name.startswith(EVALUATOR_STAGE):
            _, figures = stage(ctx, name, lambda: build_evaluator(name.removeprefix(EVALUATOR_STAGE), recipe,
                                                                  ctx.resolved, ctx.registry, ctx.data, ctx.cache,
                                                                  ctx.device, ctx.emit))
            return dataclasses.replace(shared, evaluation_figures=figures)
        table = recipe.attacks[name.removeprefix("prior:")]
        attack = ctx.registry.create_from("attack", table)
        actx = AttackContext(target=None, data=ctx.data, evaluation_model=None, device=ctx.device, seed=recipe.seed,
                             cache=ctx.cache.for_components(("attack", table.use)), emit=ctx.emit)
        stage(ctx, name, lambda: attack.prepare(actx))
        return shared


# ------------------------------------------------------------------ 3. variants


def run_variants(ctx: RunContext, shared: SharedStages, pool: WorkerPool) -> None:
    """Train and evaluate every variant not done yet: here, or as jobs on worker processes."""
    pending = [v for v in ctx.recipe.variants if read_variant_results(ctx.variant_dir(v)) is None]
    workers = min(ctx.workers, len(pending))
    if workers <= 1:
        with threads_for(ctx.cpu_threads):
            for variant in ctx.recipe.variants:
                run_variant(ctx, shared, variant, pool)
        return
    pool.run_jobs("variant", [v.name for v in pending], ctx.cpu_threads or 1,
                  f"training {len(pending)} variants in {workers} worker processes")


def run_variant(ctx: RunContext, shared: SharedStages, variant: VariantConfig, pool: WorkerPool | None) -> None:
    """Train (or load) one variant's target and evaluate it; results land in its folder."""
    folder = ctx.variant_dir(variant)
    if distributed.agree(ctx.world.is_main and read_variant_results(folder) is not None):
        ctx.emit("log", level="info", message=f"{variant.name}: already evaluated, skipped")
        return
    if ctx.world.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / RESULTS_FILE).exists():
            ctx.emit("log", level="warning", message=f"{folder / RESULTS_FILE}: truncated or not a variant's "
                     "results; evaluating the variant again")
    model = train_target(ctx, variant)
    figures = evaluate(ctx, shared, variant, model, pool)
    if not ctx.world.is_main:
        return
    defense = ctx.registry.create_from("defense", variant.defense)
    defense_figures = _defense_figures(ctx, variant, defense)
    if defense_figures:  # what the defense reports of its training (DP-SGD: epsilon, delta)
        figures["defense"] = defense_figures
        ctx.emit("result", variant=variant.name, section="defense", figures=defense_figures)
    if capabilities_of(defense, "defense").post_hoc:  # trained as `none`, wrapped afterwards: the reports say so
        figures["defense"] = {"use": variant.defense.use, "post_hoc": True, **defense_figures}
    atomic_write_text(folder / RESULTS_FILE,
                      json.dumps(json_safe({"name": variant.name, **figures}), indent=2, allow_nan=False))


def build_target(ctx: RunContext, variant: VariantConfig):
    """The variant's untrained target, prepared by its defense; `(model, defense)`. Every rank builds it
    together: what a defense trains while preparing the model (TL-DMI's pretraining) trains on all."""
    data = ctx.data
    backbone = ctx.registry.create_from("backbone", ctx.recipe.target.backbone)
    torch.manual_seed(seeds.derive(ctx.recipe.seed, "init"))
    model = backbone.build(data.num_classes, data.in_channels, data.image_size)
    defense = ctx.registry.create_from("defense", variant.defense)
    dctx = DefenseContext(num_classes=data.num_classes, data=data, device=ctx.device, seed=ctx.recipe.seed,
                          cache=ctx.cache.for_components(("defense", variant.defense.use)), train=ctx.recipe.target.train,
                          emit=lambda type, **f: ctx.emit(type, **{"variant": variant.name, **f}))
    return defense.prepare_model(model, data.num_classes, dctx), defense


def train_target(ctx: RunContext, variant: VariantConfig):
    """Train (or load, when a finished target is in the variant's folder or the stage cache) one
    variant's target model."""
    folder = ctx.variant_dir(variant)
    model, defense = build_target(ctx, variant)
    final = folder / TARGET_FILE
    if distributed.agree(ctx.world.is_main and _load_final(ctx, variant, model, final)):
        distributed.broadcast_module(model)
        model.to(ctx.device).eval()
        return model
    meta, cached = ctx.cache.load_or_compute(
        "target", target_key(ctx, variant), {"model": model},
        lambda: {"history": _train(ctx, variant, model, defense), "summary": f"target {variant.name}"},
        what=f"target {variant.name}")
    history = meta.get("history", [])
    if cached:
        for epoch, metrics in enumerate(history, start=1):
            ctx.emit("epoch", stage="train", variant=variant.name, epoch=epoch, epochs=len(history),
                     metrics=metrics, cached=True)
        ctx.emit("log", level="info", message=f"{variant.name}: target loaded from the stage cache")
    model.to(ctx.device).eval()
    if ctx.world.is_main:
        variant_index = [v.name for v in ctx.recipe.variants].index(variant.name)
        save_checkpoint(final, {f"model.{k}": v for k, v in model.state_dict().items()}, {
            "kind": "target", "variant": variant.name, "recipe_hash": ctx.digest,
            "defense": ctx.resolved["variants"][variant_index]["defense"],
            "backbone": ctx.resolved["target"]["backbone"], "epochs": ctx.recipe.target.train.epochs,
            "final_metrics": history[-1] if history else {}, "versions": describe_machine(),
        })
        ctx.emit("checkpoint", stage="train", variant=variant.name, path=str(final),
                 epoch=ctx.recipe.target.train.epochs)
    return model


def _load_final(ctx: RunContext, variant: VariantConfig, model, final: Path) -> bool:
    """Rank 0: the finished target from the variant's folder into `model`, when it is there and usable."""
    if not final.exists():
        return False
    try:
        tensors, _ = load_checkpoint(final)
        model.load_state_dict(tensors_with_prefix(tensors, "model"))
    except (CheckpointError, RuntimeError):
        ctx.emit("log", level="warning", message=f"{final}: unusable, training again")
        return False
    ctx.emit("log", level="info", message=f"{variant.name}: trained target loaded from {final}")
    return True


def load_target(ctx: RunContext, variant: VariantConfig) -> torch.nn.Module:
    """The variant's trained target from its folder, frozen (an attack shard's job: the parent wrote it)."""
    model, _ = build_target(ctx, variant)
    path = ctx.variant_dir(variant) / TARGET_FILE
    try:
        tensors, _ = load_checkpoint(path)
        model.load_state_dict(tensors_with_prefix(tensors, "model"))
    except (CheckpointError, RuntimeError) as exc:
        raise RunError(f"{path}: the trained target a shard attacks is unusable ({str(exc).split(';')[0]})") from None
    model.to(ctx.device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def target_key(ctx: RunContext, variant: VariantConfig) -> dict[str, Any]:
    """Everything a trained target depends on (not the variant's name, not the attacks); the cache
    adds the device, thread count and world size."""
    resolved_variant = dict(ctx.resolved["variants"][[v.name for v in ctx.recipe.variants].index(variant.name)])
    resolved_variant.pop("name")
    return {"data": ctx.resolved["data"], "target": ctx.resolved["target"], "variant": resolved_variant,
            "seed": ctx.recipe.seed}


def _train(ctx: RunContext, variant: VariantConfig, model, defense) -> list[dict[str, float]]:
    """The one trainer, on every rank (data-parallel under torchrun); rank 0 keeps the checkpoints."""
    result = train_classifier(
        model, defense, ctx.data.train, ctx.recipe.target.train,
        device=ctx.device, seed=ctx.recipe.seed, checkpoint_dir=ctx.writes(ctx.variant_dir(variant)),
        resume=ctx.resumed, test_data=ctx.data.test, ood=ood_feed(ctx, variant) if variant.ood_training else None,
        emit=ctx.emit, stage="train", variant=variant.name,
        meta={"recipe_hash": ctx.digest, "variant": variant.name}, data_parallel=ctx.world.parallel,
    )
    return result.history


def ood_feed(ctx: RunContext, variant: VariantConfig) -> OODFeed:
    config = variant.ood_training
    dataset = ctx.registry.create_from("ood_dataset", config.dataset)
    check_disjoint(dataset, ctx.data)
    aux = dataset.load(ctx.data.image_size, ctx.data.in_channels, seeds.derive(ctx.recipe.seed, "ood-aux"))
    return OODFeed(dataset=aux, config=config, loss=ctx.registry.create_from("ood_loss", config.loss))


def _defense_figures(ctx: RunContext, variant: VariantConfig, defense) -> dict[str, float]:
    """The defense's `report_keys` from the last epoch of the trained target's history."""
    keys = getattr(defense, "report_keys", ())  # Defense's default: ()
    if not keys:
        return {}
    _, meta = load_checkpoint(ctx.variant_dir(variant) / TARGET_FILE)
    final = meta.get("final_metrics") or {}
    return {key: final[key] for key in keys if key in final}


# ------------------------------------------------------------------ evaluation


def evaluate(ctx: RunContext, shared: SharedStages, variant: VariantConfig, model,
             pool: WorkerPool | None) -> dict[str, Any]:
    """Utility (and, where configured, OOD and attack) figures for one trained target; rank 0's
    figures (the other ranks take part in the attacks that split over them and return {})."""
    ctx.emit("stage_started", stage="evaluate", variant=variant.name, total=None)
    started = time.perf_counter()
    model.eval()
    figures: dict[str, Any] = {}
    if ctx.world.is_main:
        with distributed.alone():
            figures = _utility_and_ood(ctx, shared, variant, model)
    if ctx.recipe.attacks:
        attack_metrics = [m for m in (ctx.registry.create_from("metric", t) for t in ctx.recipe.metrics)
                          if getattr(m, "section", "utility") == "attacks"]  # Metric's default: utility
        figures["attacks"] = {}
        for name, table in ctx.recipe.attacks.items():
            result = stage(ctx, f"attack:{name}", lambda n=name, t=table: _attack(ctx, shared, variant, model, n, t, pool),
                           variant=variant.name)
            if result is None:  # a rank other than 0
                continue
            with distributed.alone():
                figures["attacks"][name] = judge_attack(
                    attack_metrics, model, ctx.data, shared.evaluators, result, ctx.device,
                    picture=ctx.variant_dir(variant) / "reconstructions" / f"{name}.nearest.png",
                    primary=shared.evaluation_model, cache=ctx.cache,
                    key={"metrics": ctx.resolved["metrics"], "data": ctx.resolved["data"], "seed": ctx.recipe.seed})
            ctx.emit("result", variant=variant.name, section="attacks", attack=name, figures=figures["attacks"][name])
    ctx.emit("stage_finished", stage="evaluate", variant=variant.name, seconds=round(time.perf_counter() - started, 3))
    return figures


def _utility_and_ood(ctx: RunContext, shared: SharedStages, variant: VariantConfig, model) -> dict[str, Any]:
    figures: dict[str, Any] = {"utility": {}}
    ectx = EvalContext(model=model, data=ctx.data, device=ctx.device)
    for table in ctx.recipe.metrics:
        metric = ctx.registry.create_from("metric", table)
        if getattr(metric, "section", "utility") == "utility":
            figures["utility"].update(metric.evaluate(ectx))
    ctx.emit("result", variant=variant.name, section="utility", figures=figures["utility"])
    if shared.ood_evaluator is not None:
        figures["ood"] = shared.ood_evaluator.evaluate(model, ctx.device, ctx.variant_dir(variant), variant.name)
        ctx.emit("result", variant=variant.name, section="ood", figures=figures["ood"]["mean"])
    return figures


def _attack(ctx: RunContext, shared: SharedStages, variant: VariantConfig, model, name: str, table,
            pool: WorkerPool | None):
    """One attack on one target: its result on rank 0, None on the others.

    Alone, or for an attack that cannot split its search, rank 0 runs it (`run_attack`: reused
    reconstructions, the stage cache, or the attack, sharded into jobs when the recipe says so).
    Under torchrun an attack that declares `shards` runs on every rank: rank 0 decides whether its
    reconstructions exist; if not, the ranks train its priors together and each searches a part."""
    attack = ctx.registry.create_from("attack", table)
    cache = ctx.cache.for_components(("attack", table.use))
    folder = ctx.variant_dir(variant)

    def emit(type: str, **fields: Any) -> None:
        ctx.emit(type, variant=variant.name, **fields)

    jobs = attack_shards.sharded(pool, ctx, variant.name, name, attack, model) if pool is not None else None
    evaluation = shared.evaluation_model
    together = ctx.world.parallel and capabilities_of(attack, "attack").shards
    known = ctx.world.is_main and attack_shards.reconstructions_known(folder, name, cache, attack, model,
                                                                     ctx.recipe.seed, evaluation)
    if not together or distributed.agree(known):
        if not ctx.world.is_main:
            return None
        with distributed.alone():
            return run_attack(name, attack, model, ctx.data, evaluation, ctx.device, ctx.recipe.seed, cache,
                              folder, emit, compute=jobs)

    def every_rank(actx):
        return attack_shards.searched_by_every_rank(attack, actx, model, jobs)

    if ctx.world.is_main:
        return run_attack(name, attack, model, ctx.data, evaluation, ctx.device, ctx.recipe.seed, cache, folder,
                          emit, compute=every_rank)
    actx = attack_context(name, attack, model.eval(), data=ctx.data, evaluation_model=evaluation,
                          device=ctx.device, seed=ctx.recipe.seed, cache=cache, emit=emit)
    every_rank(actx)
    return None


# ------------------------------------------------------------------ 4. results


def collect_results(ctx: RunContext, shared: SharedStages) -> dict[str, Any]:
    """results.json from every variant's folder (rank 0)."""
    variants = []
    for variant in ctx.recipe.variants:
        path = ctx.variant_dir(variant) / RESULTS_FILE
        entry = read_variant_results(path.parent)
        if entry is None:
            raise RunError(f"{path}: missing or unreadable; continue with `workbench run {ctx.run_dir} --resume` "
                           "to evaluate the variant again")
        variants.append(entry)
    results = {
        "recipe": str(ctx.source), "recipe_hash": ctx.digest, "seed": ctx.recipe.seed,
        "title": ctx.recipe.title, "machine": describe_machine(), "device": str(ctx.device),
        "variants": variants,
    }
    if shared.evaluation_figures is not None:
        results["evaluation_model"] = shared.evaluation_figures
    atomic_write_text(ctx.run_dir / RESULTS_FILE, json.dumps(json_safe(results), indent=2, allow_nan=False))
    return results


def write_report(ctx: RunContext, results: dict[str, Any]) -> None:
    from workbench.reporting.report import write_report as write

    write(ctx.run_dir, results, ctx.recipe)


# ------------------------------------------------------------------ the jobs of a run's workers


def shard_job(ctx: RunContext, variant_name: str, name: str, index: int, count: int) -> Path:
    """An `attack-shard` job: shard `index` of `count` of attack `name` on variant `variant_name`'s
    trained target, its rows written to the variant's folder (`attack_shards.run_shard`). Data loaded."""
    shared = shared_stage(quiet(ctx), SharedStages(), EVALUATION_STAGE)
    variant = ctx.recipe.variant(variant_name)
    return attack_shards.run_shard(ctx, load_target(ctx, variant), shared.evaluation_model, variant_name, name,
                                   index, count)

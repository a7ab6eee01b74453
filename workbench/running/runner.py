"""The headless runner: a recipe in, a run directory out.

The stage graph, top to bottom (`Runner.run`):
1. shared stages, which every variant needs and no defense changes: the data, the evaluation
   model E, each attack's target-independent prior (`prepare`), the OOD test sets;
2. per variant: train the target (checkpoint every epoch), then evaluate utility, OOD and every
   attack; each writes its outcome into the variant's folder before the next begins, so
   `--resume` skips what is done and continues training from the last epoch;
3. `results.json` and `report.md`.
Independent pieces (the trained shared stages, the variants) run as jobs (`workbench.running.jobs`) on
the `processes` executor when there are several workers, else in this process. The run
directory's layout and lifecycle live in `workbench.storage.runs`. Everything a user or the TUI sees
comes from `events.jsonl`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench import __version__
from workbench.components.capabilities import capabilities_of
from workbench.components.protocols import AttackContext, DataSplits, DefenseContext, EvalContext, Job
from workbench.components.registry import Registry, load_registry
from workbench.errors import RunError, WorkbenchError
from workbench.recipe.schema import Recipe, VariantConfig, load_recipe, recipe_hash, resolve, to_toml
from workbench.running import distributed, seeds
from workbench.running.attack_shards import sharded
from workbench.running.device import describe_machine, resolve_device
from workbench.running.evaluation import (
    OODEvaluator,
    check_disjoint,
    run_attack,
)
from workbench.running.follower import attack_together, prepare_together
from workbench.running.jobs import resolve_workers, threads_for, threads_per_job
from workbench.running.trainer import OODFeed, train_classifier
from workbench.storage.cache import StageCache, default_cache_dir
from workbench.storage.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    tensors_with_prefix,
)
from workbench.storage.events import EventWriter, json_safe, relay_events
from workbench.storage.runs import (
    RECIPE_FILE,
    RESULTS_FILE,
    TARGET_FILE,
    default_run_dir,
    prepare_run_dir,
    read_variant_results,
    write_run_file,
)


class RunInterrupted(WorkbenchError):
    """Ctrl-C or a cancel from the TUI: the run stopped cleanly and can be resumed."""

    exit_code = 130


@dataclass
class RunOptions:
    """What `workbench run` was asked to do."""

    recipe: Path
    run_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    force: bool = False
    cache_dir: Path | None = None
    plugins_dir: Path | None = None
    workers: int | None = None
    """Variants trained in parallel worker processes; None = as many as the CPU allows (1 on CUDA)."""
    sinks: list[str] = field(default_factory=list)
    """Event sinks by name (`--sink`), added to the recipe's `[[sinks]]`."""
    executor: str = "processes"
    """The executor that runs a run's parallel pieces (shared stages, variants, attack shards) when
    it has several workers: any executor that declares `shares_machine` (its jobs see this run
    directory and cache)."""


def _quiet(*args: Any, **fields: Any) -> None:
    """An emit that drops events: stages redone only to load what a worker already reported."""


class Runner:
    """Runs one recipe into one run directory. Create with `Runner.start(options)`."""

    def __init__(self, recipe: Recipe, registry: Registry, run_dir: Path, digest: str,
                 resolved: dict[str, Any], events: EventWriter, cache: StageCache, resumed: bool,
                 source: Path):
        self.recipe = recipe
        self.registry = registry
        self.run_dir = run_dir
        self.digest = digest
        self.resolved = resolved
        self.events = events
        self.cache = cache
        # A corrupt cache entry is named in the run's events (the TUI and the log show it), then recomputed.
        cache.on_problem = cache.on_problem or (lambda message: self.emit("log", level="warning", message=message))
        self.resumed = resumed
        self.source = source
        self.device = resolve_device(recipe.device)
        cache.device_type = self.device.type  # part of every stage-cache key
        self.data: DataSplits | None = None
        self.evaluation_model = None
        self.evaluators: dict[str, Any] = {}  # by name, E first (issue 27; running/evaluators.py)
        self.evaluation_figures: dict[str, Any] | None = None
        self.ood_evaluator = None
        self.workers = 1
        self.plugins_dir: Path | None = None
        self.executor_name = "processes"
        self._executor = None  # made on first use by `run_jobs`

    # -------------------------------------------------------------- setup

    @classmethod
    def start(cls, options: RunOptions, listeners: list | None = None, registry: Registry | None = None) -> Runner:
        """Check the recipe and the run directory, record this process as the run's owner; `registry`
        when the caller (the CLI) already built one, so plugins load once."""
        registry = registry or load_registry(plugins_dir=str(options.plugins_dir) if options.plugins_dir else None)
        source = Path(options.recipe)
        if source.is_dir():  # `workbench run RUN_DIR --resume`
            options.run_dir = options.run_dir or source
            source = source / RECIPE_FILE
        recipe = load_recipe(source, options.overrides, registry)
        resolved = resolve(recipe, registry)
        digest = recipe_hash(resolved)
        run_dir = Path(options.run_dir) if options.run_dir else default_run_dir(source)
        resumed = prepare_run_dir(run_dir, digest, resume=options.resume, force=options.force)
        if not resumed:
            header = (f"Resolved recipe of this run (from {source}); every default filled in.\n"
                      f"Resume with: workbench run {run_dir} --resume")
            atomic_write_text(run_dir / RECIPE_FILE, to_toml(resolved, header))
        write_run_file(run_dir, digest, source, __version__, world_size=distributed.world_size())
        events = EventWriter(run_dir)
        events.listeners.extend(listeners or [])
        from workbench.storage.sinks import attach_sinks  # TensorBoard, MLflow...: each on its own thread
        attach_sinks(events, registry, recipe.sinks, options.sinks, run_dir, resolved)
        cache = StageCache(options.cache_dir or default_cache_dir(), registry=registry)
        runner = cls(recipe, registry, run_dir, digest, resolved, events, cache, resumed, source)
        # Under torchrun every target trains in this process with the other ranks, one after another.
        runner.workers = 1 if distributed.is_distributed() else resolve_workers(options.workers, len(recipe.variants),
                                                                                runner.device)
        runner.plugins_dir = options.plugins_dir
        runner.executor_name = options.executor
        return runner

    @classmethod
    def for_worker(cls, run_dir: Path, cache_dir: Path, plugins_dir: Path | None, resumed: bool) -> Runner:
        """A runner inside a worker process: the run's saved recipe, its event file, its cache."""
        registry = load_registry(plugins_dir=str(plugins_dir) if plugins_dir else None)
        recipe = load_recipe(run_dir / RECIPE_FILE, registry=registry)
        resolved = resolve(recipe, registry)
        runner = cls(recipe, registry, run_dir, recipe_hash(resolved), resolved, EventWriter(run_dir),
                     StageCache(cache_dir, registry=registry), resumed, run_dir / RECIPE_FILE)
        runner.plugins_dir = plugins_dir
        return runner

    def emit(self, type: str, **fields: Any) -> None:
        self.events.emit(type, **fields)

    # -------------------------------------------------------------- the run

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        recipe = self.recipe
        self.emit("run_started", recipe=str(self.source), run_dir=str(self.run_dir),
                  variants=[v.name for v in recipe.variants], seed=recipe.seed, version=__version__,
                  resumed=self.resumed, device=str(self.device), recipe_hash=self.digest,
                  world_size=distributed.world_size())
        if distributed.is_distributed():
            self.emit("log", level="info", message=distributed.describe(self.device,
                                                                        self.recipe.target.train.sync_batchnorm))
        try:
            self.prepare_shared_stages()
            self.run_variants()
            self.close_executor()
            results = self.collect_results()
            self._write_report(results)
        except KeyboardInterrupt:
            self.close_executor(cancel=True)
            self.emit("run_interrupted", message="stopped by the user; resumable")
            self.events.close()
            raise RunInterrupted(f"interrupted; continue with: workbench run {self.run_dir} --resume") from None
        except WorkbenchError as exc:
            self.close_executor(cancel=True)
            self.emit("run_failed", error=str(exc))
            self.events.close()
            raise
        except Exception as exc:
            self.close_executor(cancel=True)
            self.emit("run_failed", error=f"{type(exc).__name__}: {exc}")
            self.events.close()
            raise
        self.emit("run_finished", seconds=round(time.perf_counter() - started, 3))
        self.events.close()
        return results

    def prepare_shared_stages(self, quiet: bool = False) -> None:
        """What every variant needs and no defense changes: data, E, OOD test sets, attack priors.

        On a CPU with several workers the main process trains E and the attack priors in
        parallel worker processes first, then loads them here from the stage cache. Variant
        workers call this quietly: everything then comes from the stage cache.
        """
        recipe = self.recipe
        emit = _quiet if quiet else self.emit
        for table in recipe.metrics:  # a metric checks its files (Inception weights) when made: before training
            self.registry.create_from("metric", table)
        self.data = self._load_data(emit)
        jobs = self.shared_stage_names()
        threads = self.cpu_threads()
        workers = min(self.workers, len(jobs))
        if not quiet and workers > 1 and threads:
            trained = self.run_jobs("shared-stage", jobs, threads,
                                    f"training {len(jobs)} shared stages in {workers} worker processes")
            # The priors stay in the cache for the variants; only E is needed here (variants that
            # run in this process), with the figures of the worker that trained it.
            self.shared_stage("evaluation-model", _quiet)
            self.evaluation_figures = trained[jobs.index("evaluation-model")]
        else:
            with threads_for(threads):
                for name in jobs:
                    self.shared_stage(name, emit)
        if recipe.ood and recipe.ood.test_sets:
            self.ood_evaluator = self._stage("ood-test-sets", lambda: OODEvaluator(recipe, self.registry, self.data),
                                             emit=emit)

    def shared_stage_names(self) -> list[str]:
        """The trained stages every variant shares: E, and each attack's target-independent prior."""
        if not self.recipe.attacks:
            return []
        names = ["evaluation-model"]
        for name, table in self.recipe.attacks.items():
            if capabilities_of(self.registry.create_from("attack", table), "attack").prepares:  # GMI's GAN, say
                names.append(f"prior:{name}")
        return names

    def train_shared_stage(self, name: str) -> dict[str, Any] | None:
        """A job: train one shared stage into the stage cache (in a worker); E's figures back."""
        self.data = self._load_data(_quiet)
        return self.shared_stage(name, self.emit)

    def shared_stage(self, name: str, emit) -> dict[str, Any] | None:
        """Train or load one shared stage (see `shared_stage_names`); E's figures for E."""
        recipe = self.recipe
        with threads_for(self.cpu_threads()):
            if name == "evaluation-model":
                # Evaluators (issue 27): E and the recipe's `evaluators`, one cached stage each (running/evaluators.py).
                from workbench.running.evaluators import build_evaluators
                judges = self._stage(name, lambda: build_evaluators(
                    recipe, self.resolved, self.registry, self.data, self.cache, self.device, emit), emit=emit)
                self.evaluation_model, self.evaluation_figures, self.evaluators = (judges.primary, judges.figures,
                                                                                   judges.models)
                return self.evaluation_figures
            table = recipe.attacks[name.removeprefix("prior:")]
            attack = self.registry.create_from("attack", table)
            ctx = AttackContext(target=None, data=self.data, evaluation_model=None, device=self.device,
                                seed=recipe.seed, cache=self.cache.for_components(("attack", table.use)), emit=emit)
            self._stage(name, lambda: prepare_together(attack, name.removeprefix("prior:"), ctx), emit=emit)
            return None

    def cpu_threads(self) -> int | None:
        """CPU threads for every piece of this run's work (E, the priors, each variant and its attacks),
        whoever runs it: this process, a worker, a sweep's job, an attack shard. The count changes
        float reductions, so it is in the stage-cache keys; one count per machine and recipe lets a
        prior trained as a shared stage be found again by the attack that needs it. Under torchrun
        the ranks of one machine share its cores (variants then run one after another). None on CUDA."""
        if self.device.type != "cpu":
            return None
        ranks_here = distributed.local_world_size()
        if ranks_here > 1:
            return threads_per_job(ranks_here)
        return threads_per_job(len(self.recipe.variants))

    def run_variants(self) -> None:
        """Train and evaluate every variant not done yet: here, or as jobs on worker processes."""
        pending = [v for v in self.recipe.variants if read_variant_results(self.variant_dir(v)) is None]
        workers = min(self.workers, len(pending))
        threads = self.cpu_threads()
        if workers <= 1:
            with threads_for(threads):
                for variant in self.recipe.variants:
                    self.run_variant(variant)
            return
        self.run_jobs("variant", [v.name for v in pending], threads or 1,
                      f"training {len(pending)} variants in {workers} worker processes")

    def run_jobs(self, kind: str, items: list[str], threads: int, message: str,
                 options: list[dict[str, Any]] | None = None) -> list[Any]:
        """One job per item (with its `options`) on the run's executor: `processes` when the run has
        several workers (spawned once, reused from the shared stages to the variants and attack
        shards), else `inline`; their events are relayed to this process's listeners as they
        arrive. Values in the order of `items`; the first failure ends the run."""
        if self._executor is None:
            self._executor = self.registry.create("executor", self.executor_name, workers=self.workers) \
                if self.workers > 1 else self.registry.create("executor", "inline")
            if not capabilities_of(self._executor, "executor").shares_machine:
                raise RunError(f"executor {self.executor_name!r} cannot run a run's pieces: its jobs do not share "
                               "this machine's run directory (it declares no `shares_machine`); use `processes`")
        self.emit("log", level="info", message=message)
        offset = self.events.path.stat().st_size
        jobs = [Job(kind=kind, run_dir=str(self.run_dir), cache_dir=str(self.cache.root) if self.cache.root else None,
                    item=item, plugins_dir=str(self.plugins_dir) if self.plugins_dir else None, threads=threads,
                    resumed=self.resumed, options=(options or [{}] * len(items))[i]) for i, item in enumerate(items)]

        def relay() -> None:
            nonlocal offset
            offset = relay_events(self.events, offset)

        outcomes = self._executor.run(jobs, relay)
        for item, outcome in zip(items, outcomes, strict=True):
            if not outcome.ok:
                if outcome.error == "interrupted":
                    raise KeyboardInterrupt
                raise RunError(f"{kind} {item}: {outcome.error}")
        return [outcome.value for outcome in outcomes]

    def close_executor(self, cancel: bool = False) -> None:
        """Shut the worker processes down; `cancel` stops them mid-job (Ctrl-C, a failure)."""
        if self._executor is not None:
            self._executor.close(cancel=cancel)
            self._executor = None

    def _stage(self, name: str, work, variant: str | None = None, emit=None):
        """Run `work()` between stage_started / stage_finished events."""
        emit = emit or self.emit
        emit("stage_started", stage=name, variant=variant, total=None)
        t0 = time.perf_counter()
        result = work()
        emit("stage_finished", stage=name, variant=variant, seconds=round(time.perf_counter() - t0, 3))
        return result

    def _load_data(self, emit=None) -> DataSplits:
        emit = emit or self.emit
        dataset = self.registry.create_from("dataset", self.recipe.data)
        data = self._stage("data", lambda: dataset.load(self.recipe.seed), emit=emit)
        emit("log", level="info", message=(
            f"data {self.recipe.data.use}: {len(data.train)} train / {len(data.test)} test private images, "
            f"{data.num_classes} classes, {data.in_channels}×{data.image_size}×{data.image_size}"))
        return data

    def variant_dir(self, variant: VariantConfig) -> Path:
        return self.run_dir / variant.name

    def run_variant(self, variant: VariantConfig) -> None:
        """Train (or load) one variant's target and evaluate it; results land in its folder."""
        folder = self.variant_dir(variant)
        folder.mkdir(parents=True, exist_ok=True)
        if read_variant_results(folder) is not None:
            self.emit("log", level="info", message=f"{variant.name}: already evaluated, skipped")
            return
        if (folder / RESULTS_FILE).exists():
            self.emit("log", level="warning", message=f"{folder / RESULTS_FILE}: truncated or not a variant's "
                      "results; evaluating the variant again")
        model = self.train_target(variant)
        figures = self.evaluate(variant, model)
        defense_figures = self._defense_figures(variant)
        if defense_figures:  # what the defense reports of its training (DP-SGD: epsilon, delta)
            figures["defense"] = defense_figures
            self.emit("result", variant=variant.name, section="defense", figures=defense_figures)
        atomic_write_text(folder / RESULTS_FILE, json.dumps(json_safe({"name": variant.name, **figures}), indent=2, allow_nan=False))

    def _defense_figures(self, variant: VariantConfig) -> dict[str, float]:
        """The defense's `report_keys` from the last epoch of the trained target's history."""
        keys = getattr(self.registry.create_from("defense", variant.defense), "report_keys", ())
        if not keys:
            return {}
        _, meta = load_checkpoint(self.variant_dir(variant) / TARGET_FILE)
        final = meta.get("final_metrics") or {}
        return {key: final[key] for key in keys if key in final}

    def build_target(self, variant: VariantConfig):
        data = self.data
        backbone = self.registry.create_from("backbone", self.recipe.target.backbone)
        torch.manual_seed(seeds.derive(self.recipe.seed, "init"))
        model = backbone.build(data.num_classes, data.in_channels, data.image_size)
        defense = self.registry.create_from("defense", variant.defense)
        ctx = DefenseContext(num_classes=data.num_classes, data=data, device=self.device, seed=self.recipe.seed,
                             cache=self.cache.for_components(("defense", variant.defense.use)),
                             train=self.recipe.target.train,
                             emit=lambda type, **f: self.emit(type, **{"variant": variant.name, **f}))
        return defense.prepare_model(model, data.num_classes, ctx), defense

    def train_target(self, variant: VariantConfig):
        """Train (or load, when a finished target is on disk) one variant's target model."""
        folder = self.variant_dir(variant)
        # Under torchrun the other ranks build it with this one (workbench.running.follower): what a defense
        # trains while preparing the model (TL-DMI's pretraining) trains on every rank together.
        distributed.send_task("build-target", variant=variant.name)
        with distributed.lockstep():
            model, defense = self.build_target(variant)
        final = folder / TARGET_FILE
        if final.exists():
            try:
                tensors, _ = load_checkpoint(final)
                model.load_state_dict(tensors_with_prefix(tensors, "model"))
                model.to(self.device).eval()
                self.emit("log", level="info", message=f"{variant.name}: trained target loaded from {final}")
                return model
            except (CheckpointError, RuntimeError):
                self.emit("log", level="warning", message=f"{final}: unusable, training again")
        meta, cached = self.cache.load_or_compute(
            "target", self._target_key(variant), {"model": model},
            lambda: {"history": self._train(variant, model, defense), "summary": f"target {variant.name}"},
            what=f"target {variant.name}")
        history = meta.get("history", [])
        if cached:
            for epoch, metrics in enumerate(history, start=1):
                self.emit("epoch", stage="train", variant=variant.name, epoch=epoch, epochs=len(history),
                          metrics=metrics, cached=True)
            self.emit("log", level="info", message=f"{variant.name}: target loaded from the stage cache")
        model.to(self.device).eval()
        save_checkpoint(final, {f"model.{k}": v for k, v in model.state_dict().items()}, {
            "kind": "target", "variant": variant.name, "recipe_hash": self.digest,
            "defense": self.resolved["variants"][self._variant_index(variant)]["defense"],
            "backbone": self.resolved["target"]["backbone"], "epochs": self.recipe.target.train.epochs,
            "final_metrics": history[-1] if history else {}, "versions": describe_machine(),
        })
        self.emit("checkpoint", stage="train", variant=variant.name, path=str(final),
                  epoch=self.recipe.target.train.epochs)
        return model

    def _target_key(self, variant: VariantConfig) -> dict[str, Any]:
        """Everything a trained target depends on (not the variant's name, not the attacks)."""
        resolved_variant = dict(self.resolved["variants"][self._variant_index(variant)])
        resolved_variant.pop("name")
        return {"data": self.resolved["data"], "target": self.resolved["target"], "variant": resolved_variant,
                "seed": self.recipe.seed}

    def _train(self, variant: VariantConfig, model, defense) -> list[dict[str, float]]:
        folder = self.variant_dir(variant)
        ood_feed = self._ood_feed(variant) if variant.ood_training else None
        distributed.send_task("target", variant=variant.name)  # the other ranks join (workbench.running.follower)
        result = train_classifier(
            model, defense, self.data.train, self.recipe.target.train,
            device=self.device, seed=self.recipe.seed, checkpoint_dir=folder, resume=self.resumed,
            test_data=self.data.test, ood=ood_feed, emit=self.emit, stage="train", variant=variant.name,
            meta={"recipe_hash": self.digest, "variant": variant.name}, data_parallel=distributed.is_distributed(),
        )
        return result.history

    def _variant_index(self, variant: VariantConfig) -> int:
        return [v.name for v in self.recipe.variants].index(variant.name)

    def _ood_feed(self, variant: VariantConfig) -> OODFeed:
        config = variant.ood_training
        dataset = self.registry.create_from("ood_dataset", config.dataset)
        check_disjoint(dataset, self.data)
        aux = dataset.load(self.data.image_size, self.data.in_channels, seeds.derive(self.recipe.seed, "ood-aux"))
        return OODFeed(dataset=aux, config=config, loss=self.registry.create_from("ood_loss", config.loss))

    def evaluate(self, variant: VariantConfig, model) -> dict[str, Any]:
        """Utility (and, where configured, OOD and attack) figures for one trained target."""
        self.emit("stage_started", stage="evaluate", variant=variant.name, total=None)
        t0 = time.perf_counter()
        model.eval()
        ctx = EvalContext(model=model, data=self.data, device=self.device)
        figures: dict[str, Any] = {"utility": {}}
        for table in self.recipe.metrics:
            metric = self.registry.create_from("metric", table)
            if getattr(metric, "section", "utility") != "utility":
                continue
            figures["utility"].update(metric.evaluate(ctx))
        self.emit("result", variant=variant.name, section="utility", figures=figures["utility"])
        folder = self.variant_dir(variant)
        if self.ood_evaluator is not None:
            figures["ood"] = self.ood_evaluator.evaluate(model, self.device, folder, variant.name)
            self.emit("result", variant=variant.name, section="ood", figures=figures["ood"]["mean"])
        if self.recipe.attacks:
            attack_metrics = [m for m in (self.registry.create_from("metric", t) for t in self.recipe.metrics)
                              if getattr(m, "section", "utility") == "attacks"]
            figures["attacks"] = {}
            for name, table in self.recipe.attacks.items():
                def emit(type, _variant=variant.name, **fields):
                    self.emit(type, variant=_variant, **fields)

                attack = self.registry.create_from("attack", table)
                cache = self.cache.for_components(("attack", table.use))
                shards = sharded(self, variant.name, name, attack)  # None unless `shards` > 1
                shards = attack_together(attack, name, variant.name, shards)  # torchrun: every rank takes part
                result = self._stage(f"attack:{name}", lambda a=attack, n=name, c=cache, s=shards: run_attack(
                    n, a, model, self.data, self.evaluation_model, self.device, self.recipe.seed, c,
                    folder, emit, compute=s), variant=variant.name)
                # Evaluators (issue 27): every evaluator judges; the nearest-image grid beside the reconstructions.
                from workbench.running.evaluators import judge_attack
                figures["attacks"][name] = judge_attack(
                    attack_metrics, model, self.data, self.evaluators, result, self.device,
                    picture=folder / "reconstructions" / f"{name}.nearest.png", primary=self.evaluation_model)
                self.emit("result", variant=variant.name, section="attacks", attack=name,
                          figures=figures["attacks"][name])
        self.emit("stage_finished", stage="evaluate", variant=variant.name,
                  seconds=round(time.perf_counter() - t0, 3))
        return figures

    # -------------------------------------------------------------- results

    def collect_results(self) -> dict[str, Any]:
        variants = []
        for variant in self.recipe.variants:
            path = self.variant_dir(variant) / RESULTS_FILE
            entry = read_variant_results(path.parent)
            if entry is None:
                raise RunError(f"{path}: missing or unreadable; continue with `workbench run {self.run_dir} --resume` "
                               "to evaluate the variant again")
            variants.append(entry)
        results = {
            "recipe": str(self.source), "recipe_hash": self.digest, "seed": self.recipe.seed,
            "title": self.recipe.title, "machine": describe_machine(), "device": str(self.device),
            "variants": variants,
        }
        if self.evaluation_figures is not None:
            results["evaluation_model"] = self.evaluation_figures
        atomic_write_text(self.run_dir / RESULTS_FILE, json.dumps(json_safe(results), indent=2, allow_nan=False))
        return results

    def _write_report(self, results: dict[str, Any]) -> None:
        from workbench.reporting.report import write_report

        write_report(self.run_dir, results, self.recipe)


def run_recipe(options: RunOptions, listeners: list | None = None) -> tuple[Path, dict[str, Any]]:
    """Start and run; returns the run directory and the results."""
    runner = Runner.start(options, listeners)
    return runner.run_dir, runner.run()

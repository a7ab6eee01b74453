"""Evaluation stages beyond utility: the evaluation model E, OOD detection, and attacks.

The runner calls these per variant. What does not depend on the defense (E, the OOD test
sets) is built once per run, and E is cached across runs by the config that determines it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.components.capabilities import capabilities_of
from workbench.components.protocols import AttackContext, AttackResult, DataSplits, EvalContext
from workbench.components.registry import Registry
from workbench.errors import WorkbenchError
from workbench.recipe.schema import Recipe
from workbench.reporting.drawing import save_png
from workbench.reporting.grids import reconstruction_grid as labelled_grid
from workbench.reporting.plots import histogram
from workbench.running import distributed, seeds
from workbench.running.batches import iterate_batches
from workbench.running.device import autocast
from workbench.running.losses import accuracy
from workbench.running.ood_metrics import CONVENTION, mean_over_sets, ood_metrics
from workbench.running.oracle import TargetOracle, query_budget_of
from workbench.running.trainer import train_classifier
from workbench.storage.cache import StageCache
from workbench.storage.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    weights_fingerprint,
)


class ResizedInput(nn.Module):
    """E behind a bilinear resize: the papers judge 64 px CelebA reconstructions with a face model
    trained at 112 px (`low2high`). Upsampling with half-pixel centres is what PIL's bilinear
    resize computes too; unlike the reference, images stay in float (no 8-bit round trip)."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model = model
        self.size = size
        self.feature_dim = getattr(model, "feature_dim", None)
        self.hidden_names = getattr(model, "hidden_names", None)

    def resize(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.resize(x))

    def forward_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.model.forward_hidden(self.resize(x))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (what `sha256sum` prints), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# How many offending keys a message names before summarising the rest.
_SHOWN_KEYS = 4


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown + (f" (+{len(items) - _SHOWN_KEYS} more)" if len(items) > _SHOWN_KEYS else "")


def load_evaluation_weights(model: nn.Module, path: Path, what: str) -> None:
    """Load a safetensors state dict into E, or say in one line what is wrong with the file.

    Every key and shape must match (BatchNorm's `num_batches_tracked` may be absent; a `module.`
    prefix on every key, as DataParallel saves them, is dropped), so a wrong file never half-loads.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    local = Path(path).expanduser()
    if local.suffix.lower() != ".safetensors":
        raise WorkbenchError(f"evaluation.weights_file '{path}': expected a .safetensors file, never a pickle; "
                             "convert the checkpoint once (docs/attacks.md, \"E from a file\")")
    if not local.is_file():
        raise WorkbenchError(f"evaluation.weights_file '{path}' does not exist; expected a local .safetensors "
                             f"state dict of {what} (nothing is downloaded; docs/attacks.md, \"E from a file\")")
    try:
        state = load_file(str(local), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(f"evaluation.weights_file '{path}' could not be read as safetensors: {reason}") from None
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} file {list(v.shape)} vs model {list(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = [f"{label} {_listed(keys)}" for label, keys in
                (("shape", mismatched), ("missing", missing), ("unexpected", unexpected)) if keys]
    if problems:
        raise WorkbenchError(f"evaluation.weights_file '{path}' does not fit {what}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def evaluation_model(recipe: Recipe, resolved: dict[str, Any], registry: Registry, data: DataSplits,
                     cache: StageCache, device: torch.device, emit: Callable[..., Any]
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """E: loaded from `weights_file`, or trained once on the private data (digits: all ten classes)
    and cached by its config; behind a resize to `input_size` when that differs from the data's."""
    config = recipe.evaluation
    if config.seed is not None and config.seed != recipe.seed:
        # E's own seed (sweeps): its own split of the data, so runs of every seed share one E.
        recipe = recipe.model_copy(update={"seed": config.seed})
        data = registry.create_from("dataset", recipe.data).load(config.seed)
    num_classes = data.evaluation_num_classes or data.num_classes
    train_set = data.evaluation_train or data.train
    test_set = data.evaluation_test or data.test
    size = config.input_size or data.image_size
    torch.manual_seed(seeds.derive(recipe.seed, "evaluation-model", "init"))
    network = registry.create_from("backbone", config.backbone).build(num_classes, data.in_channels, size)
    model = ResizedInput(network, size) if size != data.image_size else network
    figures: dict[str, Any] = {"backbone": config.backbone.use}
    if config.input_size is not None:
        figures["input_size"] = size
    if config.weights_file is not None and not distributed.is_main_process():
        distributed.broadcast_module(network)  # rank 0 read the file (the others need no copy of it)
        return model.to(device).eval(), figures
    if config.weights_file is not None:
        what = (f"backbone '{config.backbone.use}' built for {num_classes} classes, {data.in_channels} channels, "
                f"{size} px")
        load_evaluation_weights(network, config.weights_file, what)
        distributed.broadcast_module(network)
        model.to(device)
        figures.update(test_accuracy=accuracy(model, test_set, device), cached=False,
                       weights_file=str(config.weights_file),
                       weights_sha256=file_sha256(Path(config.weights_file).expanduser()))
        resized = f", inputs resized {data.image_size} -> {size} px" if size != data.image_size else ""
        emit("log", level="info", message=f"evaluation model E ({config.backbone.use}) loaded from "
             f"{config.weights_file} (sha256 {figures['weights_sha256'][:16]}){resized}, not trained; "
             f"test accuracy {figures['test_accuracy']:.4f}")
        if figures["test_accuracy"] <= 2.0 / num_classes:
            emit("log", level="warning", message=f"E from {config.weights_file} is near chance on the private "
                 f"test split ({figures['test_accuracy']:.4f}, chance {1 / num_classes:.4f}): are its classes "
                 "the dataset's classes, in the same order?")
    else:
        key = {"backbone": resolved["evaluation"]["backbone"], "train": resolved["evaluation"]["train"],
               "data": resolved["data"], "seed": recipe.seed, "classes": num_classes}
        if config.input_size is not None:
            key["input_size"] = size

        def train() -> dict[str, Any]:
            train_classifier(model, registry.create("defense", "none"), train_set, config.train, device=device,
                             seed=seeds.derive(recipe.seed, "evaluation-model"), emit=emit, stage="train",
                             variant="evaluation-model", data_parallel=distributed.is_distributed())
            return {"test_accuracy": accuracy(model, test_set, device),
                    "summary": f"E {config.backbone.use}, {num_classes} classes"}

        meta, cached = cache.load_or_compute("evaluation-model", key, {"model": network}, train,
                                             what="evaluation model")
        model.to(device)
        if cached:
            emit("log", level="info", message=f"evaluation model loaded from the stage cache "
                                              f"(test accuracy {meta.get('test_accuracy', float('nan')):.4f})")
        figures.update(test_accuracy=meta.get("test_accuracy"), cached=cached)
    emit("result", variant=None, section="evaluation_model", figures=figures)
    return model.eval(), figures


# ------------------------------------------------------------------ OOD


def score_dataset(score: Callable[[nn.Module, Tensor], Tensor], model: nn.Module, dataset: Dataset,
                  device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Per-sample OOD scores (higher = more in-distribution) for a whole dataset."""
    model.eval()
    out = []
    for x, _ in iterate_batches(dataset, batch_size, shuffle=False):
        with autocast(device):
            out.append(score(model, x.to(device)).float().detach().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def check_disjoint(component: Any, data: DataSplits) -> None:
    """Refuse an OOD set that shares classes with the private data (components that can tell)."""
    check = getattr(component, "check_disjoint", None)
    if check is not None:
        check(data)


class OODEvaluator:
    """Scores the private test set against every OOD test set (loaded once per run)."""

    def __init__(self, recipe: Recipe, registry: Registry, data: DataSplits):
        config = recipe.ood
        self.score_name = config.score.use
        self.score = registry.create_from("ood_score", config.score)
        self.data = data
        self.test_sets: dict[str, Dataset] = {}
        for name, table in config.test_sets.items():
            component = registry.create_from("ood_dataset", table)
            check_disjoint(component, data)
            self.test_sets[name] = component.load(data.image_size, data.in_channels,
                                                  seeds.derive(recipe.seed, "ood-test", name))

    def evaluate(self, model: nn.Module, device: torch.device, folder: Path, variant: str) -> dict[str, Any]:
        scores_dir = folder / "ood_scores"
        scores_dir.mkdir(parents=True, exist_ok=True)
        id_scores = score_dataset(self.score, model, self.data.test, device)
        np.save(scores_dir / "id.npy", id_scores)
        sets, series = {}, {"ID (private test)": id_scores}
        for name, dataset in self.test_sets.items():
            scores = score_dataset(self.score, model, dataset, device)
            np.save(scores_dir / f"{name}.npy", scores)
            sets[name] = ood_metrics(id_scores, scores)
            series[name] = scores
        save_png(histogram(series, f"{variant}: {self.score_name} scores (higher = more ID)",
                           xlabel=self.score_name), folder / "ood_histogram.png")
        return {"score": self.score_name, "convention": CONVENTION, "sets": sets, "mean": mean_over_sets(sets)}


# ------------------------------------------------------------------ attacks

RECONSTRUCTIONS = "reconstructions"


def run_attack(name: str, attack: Any, target: nn.Module, data: DataSplits, evaluation: nn.Module,
               device: torch.device, seed: int, cache: StageCache, folder: Path,
               emit: Callable[..., Any],
               compute: Callable[[AttackContext], AttackResult] | None = None) -> AttackResult:
    """One attack on one target; reconstructions saved (tensors + grid), reused on resume.
    `compute(ctx)` makes the result when neither is there (default `attack.run`; a sharded
    attack's jobs and merge, `workbench.running.attack_shards`)."""
    out = folder / RECONSTRUCTIONS / f"{name}.safetensors"
    if out.exists():
        try:
            tensors, meta = load_checkpoint(out)
            return AttackResult(images=tensors["images"], targets=tensors["targets"],
                                restarts=tensors.get("restarts"), figures=meta.get("figures", {}))
        except (CheckpointError, KeyError) as exc:
            reason = str(exc).split(";")[0] if isinstance(exc, CheckpointError) else f"{out}: no tensor {exc}"
            emit("log", level="warning", message=f"{reason}; computing the reconstructions again")
    started = time.perf_counter()
    for p in target.parameters():
        p.requires_grad_(False)
    key = reconstruction_key(attack, target, seed, evaluation)
    cached = cache.load_state("attack", key)
    if cached is not None:
        tensors, meta = cached
        emit("log", level="info", message=f"{name}: reconstructions loaded from the stage cache")
    else:
        ctx = attack_context(name, attack, target.eval(), data=data, evaluation_model=evaluation, device=device,
                             seed=seed, cache=cache, emit=emit)
        result = (compute or attack.run)(ctx)
        if ctx.oracle.access != "white-box":  # the threat model's cost, reported beside the attack's figures
            result.figures = {**result.figures, "queries": ctx.oracle.queries}
        tensors = {"images": result.images.float().cpu(), "targets": result.targets.long().cpu()}
        if result.restarts is not None:
            tensors["restarts"] = result.restarts.long().cpu()
        meta = {"attack": name, "figures": result.figures, "seconds": round(time.perf_counter() - started, 3),
                "summary": f"{name} reconstructions"}
        cache.save_state("attack", key, tensors, meta)
    result = AttackResult(images=tensors["images"], targets=tensors["targets"], restarts=tensors.get("restarts"),
                          figures=meta.get("figures", {}))
    save_checkpoint(out, tensors, meta)
    save_png(reconstruction_grid(result, data), out.with_suffix(".png"))
    return result


def reconstruction_key(attack: Any, target: nn.Module, seed: int, evaluation: nn.Module | None) -> dict[str, Any]:
    """What an attack's reconstructions depend on: its config, the target's weights and the seed; E's
    weights too, since the attack is handed E (a loaded E changes with its file, not with the recipe)."""
    params = attack.params.model_dump(mode="json") if hasattr(attack, "params") else repr(attack)
    return {"attack": type(attack).__name__, "params": params, "target": weights_fingerprint(target), "seed": seed,
            "evaluation": weights_fingerprint(evaluation) if evaluation is not None else None}


def attack_context(name: str, attack: Any, target: nn.Module, *, data: DataSplits, **fields: Any) -> AttackContext:
    """The context attack `name` runs in, as its declared access allows (`AttackCapabilities.access`):
    a `TargetOracle` always; the module as `ctx.target` for a white-box attack only (None otherwise).
    The oracle enforces the attack's `query_budget` (the `QueryBudget` params mixin)."""
    access = capabilities_of(attack, "attack").access
    oracle = TargetOracle(target, access, data.num_classes, budget=query_budget_of(attack), attack=name,
                          device=fields.get("device"))
    return AttackContext(target=target if access == "white-box" else None, data=data, oracle=oracle, **fields)


def reconstruction_grid(result: AttackResult, data: DataSplits, per_class: int = 8, private: int = 4):
    """One row per attacked class: private training examples, then reconstructions by restart
    (`workbench.reporting.grids.reconstruction_grid` lays it out and labels it)."""
    train_x, train_y = _collect_labelled(data.train)
    return labelled_grid(train_x, train_y, result.images, result.targets, result.restarts, data.class_names,
                         per_class=per_class, private=private)


def _collect_labelled(dataset: Dataset, limit: int = 4096) -> tuple[Tensor, Tensor]:
    xs, ys, seen = [], [], 0
    for x, y in iterate_batches(dataset, 512, shuffle=False):
        xs.append(x)
        ys.append(y)
        seen += len(x)
        if seen >= limit:
            break
    return torch.cat(xs), torch.cat(ys)


def attack_figures(metrics: list[Any], target: nn.Module, data: DataSplits, evaluation: nn.Module,
                   result: AttackResult, device: torch.device) -> dict[str, float]:
    ctx = EvalContext(model=target, data=data, device=device, evaluation_model=evaluation, attack=result)
    figures = dict(result.figures)
    for metric in metrics:
        figures.update(metric.evaluate(ctx))
    return figures

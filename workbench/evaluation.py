"""Evaluation stages beyond utility: the evaluation model E, OOD detection, and attacks.

The runner calls these per variant. What does not depend on the defense (E, the OOD test
sets) is built once per run, and E is cached across runs by the config that determines it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench import seeds
from workbench.batches import iterate_batches
from workbench.cache import StageCache
from workbench.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    weights_fingerprint,
)
from workbench.components import AttackContext, AttackResult, DataSplits, EvalContext
from workbench.device import autocast
from workbench.losses import accuracy
from workbench.ood_metrics import CONVENTION, mean_over_sets, ood_metrics
from workbench.plots import histogram, image_grid, save_png
from workbench.recipe import Recipe
from workbench.registry import Registry
from workbench.trainer import train_classifier


def evaluation_model(recipe: Recipe, resolved: dict[str, Any], registry: Registry, data: DataSplits,
                     cache: StageCache, device: torch.device, emit: Callable[..., Any]
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """E: trained once on the private data (digits: all ten classes), cached by its config."""
    config = recipe.evaluation
    if config.seed is not None and config.seed != recipe.seed:
        # E's own seed (sweeps): its own split of the data, so runs of every seed share one E.
        recipe = recipe.model_copy(update={"seed": config.seed})
        data = registry.create_from("dataset", recipe.data).load(config.seed)
    num_classes = data.evaluation_num_classes or data.num_classes
    train_set = data.evaluation_train or data.train
    test_set = data.evaluation_test or data.test
    key = {"backbone": resolved["evaluation"]["backbone"], "train": resolved["evaluation"]["train"],
           "data": resolved["data"], "seed": recipe.seed, "classes": num_classes}
    torch.manual_seed(seeds.derive(recipe.seed, "evaluation-model", "init"))
    model = registry.create_from("backbone", config.backbone).build(num_classes, data.in_channels, data.image_size)
    def train() -> dict[str, Any]:
        train_classifier(model, registry.create("defense", "none"), train_set, config.train, device=device,
                         seed=seeds.derive(recipe.seed, "evaluation-model"), emit=emit, stage="train",
                         variant="evaluation-model")
        return {"test_accuracy": accuracy(model, test_set, device),
                "summary": f"E {config.backbone.use}, {num_classes} classes"}

    meta, cached = cache.load_or_compute("evaluation-model", key, {"model": model}, train, what="evaluation model")
    model.to(device)
    if cached:
        emit("log", level="info", message=f"evaluation model loaded from the stage cache "
                                          f"(test accuracy {meta.get('test_accuracy', float('nan')):.4f})")
    figures = {"test_accuracy": meta.get("test_accuracy"), "backbone": config.backbone.use, "cached": cached}
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
               emit: Callable[..., Any]) -> AttackResult:
    """One attack on one target; reconstructions saved (tensors + grid), reused on resume."""
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
    # Reconstructions depend on the attack's config, the target's weights and the seed only.
    key = {"attack": type(attack).__name__, "params": attack.params.model_dump(mode="json")
           if hasattr(attack, "params") else repr(attack), "target": weights_fingerprint(target), "seed": seed}
    cached = cache.load_state("attack", key)
    if cached is not None:
        tensors, meta = cached
        emit("log", level="info", message=f"{name}: reconstructions loaded from the stage cache")
    else:
        ctx = AttackContext(target=target.eval(), data=data, evaluation_model=evaluation, device=device, seed=seed,
                            cache=cache, emit=emit)
        result = attack.run(ctx)
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


def reconstruction_grid(result: AttackResult, data: DataSplits, per_class: int = 8, private: int = 4):
    """One row per attacked class: private training examples, then reconstructions."""
    train_x, train_y = _collect_labelled(data.train)
    rows, labels = [], []
    for cls in sorted(set(result.targets.tolist())):
        real = train_x[train_y == cls][:private]
        fake = result.images[result.targets == cls][:per_class]
        blank = torch.ones((private - len(real), *fake.shape[1:]))
        pad = torch.ones((per_class - len(fake), *fake.shape[1:]))
        rows.append(torch.cat([real, blank, fake, pad]))
        labels.append(data.class_names[cls] if cls < len(data.class_names) else str(cls))
    images = torch.cat(rows)
    return image_grid(images, nrow=private + per_class, scale=max(1, 64 // images.shape[-1]), labels=labels)


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

"""Several evaluation models, and the nearest-neighbour evidence that needs none.

One evaluator's accuracy has many false positives (Ho et al. 2025): a reconstruction of a public
shape that E happens to map to the target counts as a leak. So a recipe may name more evaluators
beside E (`[evaluators.<name>]`, each an `EvaluationConfig`, trained once per data set and seed
and cached exactly like E), the attack metrics judge by all of them, and every attack gets a
picture that puts each reconstruction beside its nearest private and nearest public image.

The runner calls two functions: `build_evaluators` (a shared stage: E, then the others) and
`judge_attack` (per variant and attack: every attack metric with every evaluator, and the grid).
A judgement is kept in the stage cache (stage `judgement`), keyed by what it reads: a rerun whose
reconstructions, target, evaluators, metrics and data are the same loads its figures instead of
computing every metric again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from workbench.components.protocols import AttackResult, DataSplits, EvalContext
from workbench.components.registry import Registry
from workbench.recipe.schema import Recipe
from workbench.reporting.drawing import save_png
from workbench.reporting.grids import image_grid
from workbench.running.batches import iterate_batches
from workbench.running.evaluation import evaluation_model
from workbench.storage.cache import StageCache
from workbench.storage.checkpoint import weights_fingerprint

PRIMARY = "E"
"""The name of the recipe's `[evaluation]` model among the evaluators (`top1@E`)."""

JUDGEMENT_STAGE = "judgement"
"""The stage-cache folder of judged attacks (figures only, no tensors)."""


@dataclass(frozen=True)
class Evaluators:
    """Every evaluation model of a run, by name, E first; and what the results report of them."""

    models: dict[str, nn.Module]
    figures: dict[str, Any]
    """E's figures (backbone, test accuracy...), with `evaluators`: {name: figures} for the others."""

    @property
    def primary(self) -> nn.Module:
        return self.models[PRIMARY]


def build_evaluators(recipe: Recipe, resolved: dict[str, Any], registry: Registry, data: DataSplits,
                     cache: StageCache, device: torch.device, emit: Callable[..., Any]) -> Evaluators:
    """E and each of the recipe's `evaluators`, trained (or loaded) once and cached by config.

    An evaluator is E's stage with its own config, so its cache entry is keyed like E's (backbone,
    training, data, seed): the same config is the same model, shared by every variant, sweep point
    and attack; another seed or backbone is another model. Its result event is section
    `evaluator/<name>`, so it never reads as E's."""
    models, figures = {}, {}
    for name in evaluator_names(recipe):
        models[name], figures[name] = build_evaluator(name, recipe, resolved, registry, data, cache, device, emit)
    return Evaluators(models, evaluators_figures(figures))


def evaluator_names(recipe: Recipe) -> list[str]:
    """E, then the recipe's other evaluators in its order."""
    return [PRIMARY, *recipe.evaluators]


def build_evaluator(name: str, recipe: Recipe, resolved: dict[str, Any], registry: Registry, data: DataSplits,
                    cache: StageCache, device: torch.device, emit: Callable[..., Any]) -> tuple[nn.Module, dict[str, Any]]:
    """One evaluator, E (`PRIMARY`) or one of the recipe's `evaluators`, trained or loaded; (model, figures).
    Each seeds itself, so they train alike in any order and in any process (the run's workers train
    them in parallel)."""
    if name == PRIMARY:
        return evaluation_model(recipe, resolved, registry, data, cache, device, emit)

    def emit_as(type: str, **fields: Any) -> None:
        if type == "result" and fields.get("section") == "evaluation_model":
            fields["section"] = f"evaluator/{name}"
        elif type == "log" and "message" in fields:
            fields["message"] = f"evaluator {name}: {fields['message']}"
        emit(type, **fields)

    as_e = recipe.model_copy(update={"evaluation": recipe.evaluators[name]})
    return evaluation_model(as_e, {**resolved, "evaluation": resolved["evaluators"][name]}, registry, data, cache,
                            device, emit_as)


def evaluators_figures(by_name: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What results.json reports of the evaluators: E's figures, with `evaluators`: {name: figures}
    for the others (when there are any)."""
    others = {name: figures for name, figures in by_name.items() if name != PRIMARY}
    return {**by_name[PRIMARY], "evaluators": others} if others else by_name[PRIMARY]


def judge_attack(metrics: list[Any], target: nn.Module, data: DataSplits, evaluators: dict[str, nn.Module],
                 result: AttackResult, device: torch.device, picture: Path | None = None,
                 primary: nn.Module | None = None, cache: StageCache | None = None,
                 key: dict[str, Any] | None = None) -> dict[str, Any]:
    """The attack's own figures, then every attack metric's with every evaluator in the context;
    with `picture`, the side-by-side grid of nearest images is saved there (`nearest_grid`).
    `primary` stands in for E when `evaluators` is empty (a runner that set only E).

    With a `cache`, the figures are looked up there first and stored after: `key` names what else
    the metrics read (their resolved configs, the data's config and seed); the reconstructions,
    the attack's own figures and the weights of the target and of every evaluator are added here."""
    if not evaluators and primary is not None:
        evaluators = {PRIMARY: primary}
    entry = None
    if cache is not None:
        entry = {**(key or {}), **judgement_inputs(target, evaluators, result)}
        found = cache.load_state(JUDGEMENT_STAGE, entry)
        if found is not None and isinstance(found[1].get("figures_json"), str):
            figures = json.loads(found[1]["figures_json"])  # text, so the figures keep their order
            if picture is not None:
                save_png(nearest_grid(result, data), picture)
            return figures
    ctx = EvalContext(model=target, data=data, device=device, evaluation_model=evaluators.get(PRIMARY),
                      evaluators=dict(evaluators), attack=result)
    figures = dict(result.figures)
    for metric in metrics:
        figures.update(metric.evaluate(ctx))
    if picture is not None:
        save_png(nearest_grid(result, data), picture)
    if cache is not None:
        cache.save_state(JUDGEMENT_STAGE, entry, {}, {"figures_json": json.dumps(figures, default=str),
                                                       "summary": f"judged {len(result.images)} reconstructions"})
    return figures


def judgement_inputs(target: nn.Module, evaluators: dict[str, nn.Module], result: AttackResult) -> dict[str, Any]:
    """The tensors a judgement reads, as fingerprints: the reconstructions (images, targets, restarts),
    the attack's own figures, the target's and every evaluator's weights."""
    digest = hashlib.sha256()
    for name, tensor in (("images", result.images), ("targets", result.targets), ("restarts", result.restarts)):
        if tensor is not None:
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"reconstructions": digest.hexdigest()[:16], "attack_figures": result.figures,  # any order: keys sort them
            "target": weights_fingerprint(target),
            "evaluators": {name: weights_fingerprint(model) for name, model in evaluators.items()}}


# ------------------------------------------------------------------ nearest neighbours


def nearest_indices(queries: Tensor, bank: Tensor, chunk: int = 2048) -> Tensor:
    """For each query row, the index of its nearest bank row in Euclidean distance (float64;
    the bank is walked in chunks so a large one never needs a queries × bank × pixels tensor;
    ties go to the lower index)."""
    if len(bank) == 0:
        raise ValueError("nearest_indices: the bank is empty")
    queries = queries.detach().double().flatten(1).cpu()
    best = torch.full((len(queries),), float("inf"), dtype=torch.float64)
    index = torch.zeros(len(queries), dtype=torch.long)
    for start in range(0, len(bank), chunk):
        block = bank[start:start + chunk].detach().double().flatten(1).cpu()
        distances = torch.cdist(queries, block)
        value, where = distances.min(dim=1)
        better = value < best
        best[better], index[better] = value[better], where[better] + start
    return index


def collect_images(dataset: Dataset | None, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """(images, labels) of a dataset in its order, the first `limit` when set; empty without one."""
    if dataset is None:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    xs, ys, seen = [], [], 0
    for x, y in iterate_batches(dataset, 512, shuffle=False):
        xs.append(x)
        ys.append(torch.as_tensor(y).long())
        seen += len(x)
        if limit is not None and seen >= limit:
            break
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    images, labels = torch.cat(xs), torch.cat(ys)
    return (images[:limit], labels[:limit]) if limit is not None else (images, labels)


GRID_COLUMNS = ("recon", "private", "public")
"""The column labels of each reconstruction's group: it, its nearest private image of the target
class, its nearest public image."""


def nearest_grid(result: AttackResult, data: DataSplits, per_class: int = 4, limit: int | None = 20000):
    """Rows by attacked class; per reconstruction (the first `per_class` of the class) three
    columns: the reconstruction, its nearest private training image of the target class and its
    nearest public image, nearest in pixel space (blank where the data has no public split)."""
    private_x, private_y = collect_images(data.train, limit)
    public_x, _ = collect_images(data.public, limit)
    tiles, labels = [], []
    blank = torch.ones_like(result.images[:1])
    for cls in sorted(set(result.targets.tolist())):
        fakes = result.images[result.targets == cls][:per_class]
        same = private_x[private_y == cls]
        near_private = same[nearest_indices(fakes, same)] if len(same) else blank.expand(len(fakes), -1, -1, -1)
        near_public = (public_x[nearest_indices(fakes, public_x)] if len(public_x)
                       else blank.expand(len(fakes), -1, -1, -1))
        row = [torch.stack([f, p, q]) for f, p, q in zip(fakes, near_private, near_public, strict=True)]
        row += [blank.expand(3, -1, -1, -1)] * (per_class - len(fakes))
        tiles.append(torch.cat(row))
        labels.append(data.class_names[cls] if cls < len(data.class_names) else str(cls))
    images = torch.cat(tiles).float()
    return image_grid(images, nrow=3 * per_class, scale=max(1, 64 // images.shape[-1]), labels=labels,
                      column_labels=GRID_COLUMNS * per_class, groups=[(f"#{i + 1}", 3) for i in range(per_class)])

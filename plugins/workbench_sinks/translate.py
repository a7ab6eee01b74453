"""From events to what trackers store: scalars with steps, images, and the final results.

Both built-in sinks use one `Translator`, so TensorBoard and MLflow hold the same numbers under
the same names, and a replay of `events.jsonl` (`workbench export`) gives what the live sink gave.

Names (`scope` is the variant, or None for the run as a whole):
- `epoch` events: `<stage>/<metric>` at step = epoch (`train/loss`, `train/dep_x/0`,
  `train/test_accuracy`...). Training that is not a variant's (the evaluation model E) goes to
  the run scope as `<name>/<stage>/<metric>`.
- `progress` events (optional): every numeric field as `<stage>/<field>`, at the event's step,
  or, for attacks that restart per class, at the event's position in that stage's stream.
- `result` events, step 0: `utility/<figure>`, `ood/mean/<figure>`, `attacks/<attack>/<figure>`,
  and `evaluation_model/<figure>` in the run scope. With an attack's result comes its
  reconstruction grid (`<variant>/reconstructions/<attack>.png`) as image `reconstructions/<attack>`;
  with the OOD result the score histogram as image `ood/histogram`.
- `run_finished`: the per-set OOD figures from `results.json` (`ood/<set>/<figure>`, step 0) and a
  `Finished` item carrying the results, for hparams and artifacts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_SCOPE = "_run"
"""TensorBoard folder of the run-level scalars (a variant name cannot start with `_`)."""

_NOT_FIGURES = {"t", "type", "stage", "variant", "step", "total", "target_class", "epoch", "epochs"}


@dataclass(frozen=True)
class Scalar:
    scope: str | None
    tag: str
    value: float
    step: int
    wall_time: float


@dataclass(frozen=True)
class Image:
    scope: str | None
    tag: str
    path: Path
    step: int
    wall_time: float


@dataclass(frozen=True)
class Finished:
    """The run ended (`status`: FINISHED, FAILED or KILLED); `results` is results.json when there is one."""

    status: str
    results: dict[str, Any] | None
    wall_time: float


def number(value: Any) -> float | None:
    """A figure as a float, or None for what is not one (bools, strings, NaN written as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Translator:
    """Feed it events in order; it yields `Scalar`, `Image` and `Finished` items."""

    def __init__(self, run_dir: Path, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.variants: list[str] = []
        self._counters: dict[tuple[str | None, str], int] = {}

    def scope(self, variant: Any) -> tuple[str | None, str]:
        """(scope, tag prefix) for an event's `variant` field."""
        if variant is None:
            return None, ""
        if variant in self.variants:
            return variant, ""
        return None, f"{variant}/"  # training of something shared: the evaluation model

    def __call__(self, event: dict[str, Any]) -> Iterator[Scalar | Image | Finished]:
        kind = event.get("type")
        t = float(event.get("t") or 0.0)
        if kind == "run_started":
            for name in event.get("variants") or []:
                if name not in self.variants:
                    self.variants.append(name)
        elif kind == "epoch":
            scope, prefix = self.scope(event.get("variant"))
            for key, value in (event.get("metrics") or {}).items():
                if (value := number(value)) is not None:
                    yield Scalar(
                        scope, f"{prefix}{event.get('stage', 'train')}/{key}", value, int(event["epoch"]), t
                    )
        elif kind == "progress" and self.progress:
            scope, prefix = self.scope(event.get("variant"))
            stage = event.get("stage", "progress")
            counter = self._counters[(scope, stage)] = self._counters.get((scope, stage), 0) + 1
            step = (
                counter
                if "target_class" in event or number(event.get("step")) is None
                else int(event["step"])
            )
            for key, value in event.items():
                if key not in _NOT_FIGURES and (value := number(value)) is not None:
                    yield Scalar(scope, f"{prefix}{stage}/{key}", value, step, t)
        elif kind == "result":
            yield from self._result(event, t)
        elif kind in ("run_finished", "run_failed", "run_interrupted"):
            status = {"run_finished": "FINISHED", "run_failed": "FAILED", "run_interrupted": "KILLED"}[kind]
            results = read_results(self.run_dir) if kind == "run_finished" else None
            for variant in (results or {}).get("variants", []):
                for name, figures in ((variant.get("ood") or {}).get("sets") or {}).items():
                    for key, value in figures.items():
                        if (value := number(value)) is not None:
                            yield Scalar(variant["name"], f"ood/{name}/{key}", value, 0, t)
            yield Finished(status, results, t)

    def _result(self, event: dict[str, Any], t: float) -> Iterator[Scalar | Image]:
        section = event.get("section")
        variant = event.get("variant")
        scope, prefix = self.scope(variant)
        if section == "ood":
            base = "ood/mean"
        elif section == "attacks":
            base = f"attacks/{event.get('attack')}"
        else:
            base = str(section)
        for key, value in (event.get("figures") or {}).items():
            if (value := number(value)) is not None:
                yield Scalar(scope, f"{prefix}{base}/{key}", value, 0, t)
        if scope is None:
            return
        if section == "attacks":
            grid = self.run_dir / variant / "reconstructions" / f"{event.get('attack')}.png"
            if grid.is_file():
                yield Image(scope, f"reconstructions/{event.get('attack')}", grid, 0, t)
        elif section == "ood":
            histogram = self.run_dir / variant / "ood_histogram.png"
            if histogram.is_file():
                yield Image(scope, "ood/histogram", histogram, 0, t)


def read_results(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / "results.json").read_text())
    except (OSError, ValueError):
        return None


def result_figures(variant: dict[str, Any]) -> dict[str, float]:
    """A variant's final figures from results.json under the scalar names of its `result` events."""
    figures: dict[str, float] = {}
    for key, value in (variant.get("utility") or {}).items():
        if (value := number(value)) is not None:
            figures[f"utility/{key}"] = value
    ood = variant.get("ood") or {}
    for key, value in (ood.get("mean") or {}).items():
        if (value := number(value)) is not None:
            figures[f"ood/mean/{key}"] = value
    for name, sets in (ood.get("sets") or {}).items():
        for key, value in sets.items():
            if (value := number(value)) is not None:
                figures[f"ood/{name}/{key}"] = value
    for attack, values in (variant.get("attacks") or {}).items():
        for key, value in values.items():
            if (value := number(value)) is not None:
                figures[f"attacks/{attack}/{key}"] = value
    return figures


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys (`variant.defense.lambda_x`); lists of scalars as JSON text,
    lists of tables by index."""
    flat: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, value in enumerate(data):
            flat.update(flatten(value, f"{prefix}{i}."))
    elif isinstance(data, list):
        flat[prefix[:-1]] = json.dumps(data)
    else:
        flat[prefix[:-1]] = data
    return flat


def recipe_params(recipe: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
    """The resolved recipe flattened. Without `variant`: variants keyed by name
    (`variants.bido-hsic.defense.lambda_x`); with one: the shared keys plus that variant's own table
    under `variant.` (what the HParams tab and a nested MLflow run compare)."""
    shared = {k: v for k, v in recipe.items() if k not in ("variants", "sinks")}
    flat = flatten(shared)
    tables = {
        str(v.get("name")): {k: x for k, x in v.items() if k != "name"} for v in recipe.get("variants", [])
    }
    if variant is None:
        flat.update(flatten(tables, "variants."))
    else:
        flat["variant"] = variant
        flat.update(flatten(tables.get(variant, {}), "variant."))
    return flat


_SEED_SUFFIX = re.compile(r"^(?P<point>.+)-s(?P<seed>-?\d+)$")


def sweep_info(run_dir: Path, started: dict[str, Any] | None = None) -> dict[str, str]:
    """Sweep id and grid point of a run that belongs to a sweep, else {}.

    From the `run_started` event when it carries `sweep` / `point`, else from the sweep layout
    `SWEEP_DIR/runs/<point>-s<seed>/` next to `SWEEP_DIR/sweep.toml`.
    """
    started = started or {}
    if started.get("sweep"):
        info = {"sweep": str(started["sweep"])}
        if started.get("point") is not None:
            info["point"] = str(started["point"])
        return info
    run_dir = Path(run_dir).resolve()
    sweep_dir = run_dir.parent.parent
    if run_dir.parent.name != "runs" or not (sweep_dir / "sweep.toml").is_file():
        return {}
    match = _SEED_SUFFIX.match(run_dir.name)
    return {"sweep": sweep_dir.name, "point": match["point"] if match else run_dir.name}

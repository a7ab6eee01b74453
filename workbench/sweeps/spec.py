"""Sweep files: a recipe expanded over seeds and a grid of `--set` paths.

```toml
recipe = "../bido_plus.toml"          # relative to this file
seeds = [0, 1, 2, 3, 4]               # or "0-4"
[grid]                                # dotted recipe paths, the --set syntax; variants by name
"variants.bido-hsic.defense.lambda_x" = [0.05, 0.1, 0.3, 0.5]
[executor]
use = "processes"
workers = 2
```

Loading checks the sweep file like a recipe: unknown keys with a "did you mean", the executor's
params by its own model, and every expanded run's recipe, all before anything runs; every
problem is reported at once, one line each.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError, field_validator

from workbench.components.params import ComponentTable, StrictModel
from workbench.errors import RecipeError, did_you_mean
from workbench.recipe.load import apply_overrides, parse_toml, recipe_hash, resolve, validate_raw
from workbench.recipe.schema import Recipe, structure_problems

SWEEP_FILE = "sweep.toml"
"""The sweep as it ran (resolved: absolute recipe path, seeds as a list, the executor's defaults)."""

ExecutorTable = ComponentTable.of("executor")
BASE_POINT = "base"
"""The point's name when the sweep has no grid (seeds only)."""


class ParetoConfig(StrictModel):
    """Which figures the privacy–utility plot (pareto.png) shows."""

    x: str = "utility.test_accuracy"
    """Utility figure (higher is better), a dotted path into a variant's results."""
    y: str | None = None
    """Privacy figure (lower is better); unset = the first attack's `top1`."""


class SweepFile(StrictModel):
    """A recipe run over seeds and a grid of values, on an executor."""

    recipe: str
    """The recipe file, relative to the sweep file."""
    seeds: list[int] | str = [0]
    """Seeds every grid point runs with: a list, or ranges such as "0-4" or "0-2,7"."""
    grid: dict[str, list[Any]] = {}
    """Dotted recipe paths (the --set syntax; variants by name) -> the values to try; the points are
    every combination."""
    overrides: list[str] = []
    """`key.path=value` overrides applied to every run (before the grid)."""
    share_stages: bool = True
    """Train the stages no defense or seed changes (the evaluation model, public-data GAN priors)
    once for the whole sweep, with the recipe's own `seed`, as the papers judge every target with
    one evaluation model; false = every run trains its own with its seed."""
    executor: ExecutorTable = ExecutorTable(use="processes")
    """Where the runs execute (kind `executor`): `inline`, `processes`, `submitit`, `ray`..."""
    pareto: ParetoConfig = ParetoConfig()
    """Figures of the privacy–utility plot."""

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int] | str) -> list[int]:
        seeds = parse_seeds(value) if isinstance(value, str) else list(value)
        if not seeds:
            raise ValueError("at least one seed is needed")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds repeat: {', '.join(map(str, repeated))}")
        return seeds

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        problems = []
        for path, values in grid.items():
            if path in ("seed", "seeds"):
                problems.append(f"grid {path!r}: seeds go in `seeds`, not the grid")
            elif not values:
                problems.append(f"grid {path!r}: no values")
            elif any(isinstance(v, (dict, list)) for v in values):
                problems.append(f"grid {path!r}: values must be numbers, strings or booleans")
            elif len({json.dumps(v) for v in values}) < len(values):
                problems.append(f"grid {path!r}: values repeat")
        if problems:
            raise ValueError("; ".join(problems))
        return grid


def parse_seeds(text: str) -> list[int]:
    """"0-4" -> [0, 1, 2, 3, 4]; "0-2,7" -> [0, 1, 2, 7]; "3" -> [3]."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        match = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
        if not match:
            raise ValueError(f"seeds {text!r}: expected a list or ranges such as '0-4' or '0-2,7'")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"seeds {text!r}: range {part} runs backwards")
        seeds.extend(range(low, high + 1))
    return seeds


@dataclass
class Point:
    """One combination of grid values."""

    id: str
    values: dict[str, Any]
    overrides: list[str]


@dataclass
class PlannedRun:
    """One run of the sweep: a point at a seed, in `runs/<point>-s<seed>/`."""

    id: str
    point: Point
    seed: int
    overrides: list[str]
    digest: str
    recipe: Recipe = field(repr=False)
    resolved: dict[str, Any] = field(repr=False)


@dataclass
class Sweep:
    """A validated, expanded sweep."""

    source: Path
    recipe_path: Path
    spec: SweepFile
    points: list[Point]
    runs: list[PlannedRun]
    extra_overrides: list[str] = field(default_factory=list)
    """Recipe overrides from the command line (`--set`), applied to every run after the file's."""

    @property
    def identity(self) -> str:
        """What the sweep computes: every run's name and recipe hash (not where it executes)."""
        data = {run.id: run.digest for run in self.runs}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def resolved(self, registry) -> dict[str, Any]:
        """The sweep file as it runs: absolute recipe path, seeds listed, executor defaults filled in."""
        spec = self.spec
        return {
            "recipe": str(self.recipe_path),
            "seeds": list(spec.seeds),
            "grid": copy.deepcopy(spec.grid),
            "overrides": [*spec.overrides, *self.extra_overrides],
            "share_stages": spec.share_stages,
            "executor": registry.resolve("executor", spec.executor),
            "pareto": spec.pareto.model_dump(mode="json", exclude_none=True),
        }

    def to_toml(self, registry) -> str:
        document = tomlkit.document()
        document.add(tomlkit.comment(f"Resolved sweep (from {self.source}); identity {self.identity}."))
        document.add(tomlkit.comment("Finish what is missing with: workbench sweep <this folder> --resume"))
        document.add(tomlkit.nl())
        for key, value in self.resolved(registry).items():
            document[key] = value
        return tomlkit.dumps(document)


# ------------------------------------------------------------------ loading

SWEEP_KEYS = tuple(SweepFile.model_fields)


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """`--set` items for the sweep file (paths starting with one of its keys) and for the recipe."""
    sweep, recipe = [], []
    for item in overrides:
        key = item.partition("=")[0].strip()
        (sweep if key.split(".")[0] in SWEEP_KEYS else recipe).append(item)
    return sweep, recipe


def _apply_sweep_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    plain = []
    for item in overrides:
        key, _, text = item.partition("=")
        key = key.strip()
        if key.startswith("grid."):  # grid keys are dotted recipe paths: one key, not a nesting
            value = apply_overrides({}, [f"v={text}"], source)["v"]
            raw.setdefault("grid", {})[key.removeprefix("grid.")] = value
        elif key.startswith("executor.") and not isinstance(raw.get("executor"), dict):
            raw["executor"] = {"use": "processes"}  # the default executor, with this param set
            plain.append(item)
        elif key == "seeds" and not text.strip().startswith("["):
            raw["seeds"] = text.strip().strip('"')
        else:
            plain.append(item)
    return apply_overrides(raw, plain, source) if plain else raw


def toml_value(value: Any) -> str:
    """A value in the --set syntax (TOML)."""
    return tomlkit.item(value).as_string()


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def point_labels(paths: list[str]) -> dict[str, str]:
    """Short names for grid paths: the last segment, or more of them where two paths share it."""
    depth = dict.fromkeys(paths, 1)
    while True:
        labels = {p: ".".join(p.split(".")[-depth[p]:]) for p in paths}
        clashes = [p for p in paths if list(labels.values()).count(labels[p]) > 1 and depth[p] < len(p.split("."))]
        if not clashes:
            return labels
        for p in clashes:
            depth[p] += 1


def expand_points(grid: dict[str, list[Any]]) -> list[Point]:
    """Every combination of grid values, in file order, with a short stable name each."""
    if not grid:
        return [Point(BASE_POINT, {}, [])]
    paths = list(grid)
    labels = point_labels(paths)
    points, seen = [], set()
    for combo in itertools.product(*(grid[p] for p in paths)):
        name = "_".join(f"{labels[p]}={_value_text(v)}" for p, v in zip(paths, combo, strict=True))
        name = re.sub(r"[^A-Za-z0-9._+=\-]", "_", name)
        base, k = name, 2
        while name in seen:
            name, k = f"{base}~{k}", k + 1
        seen.add(name)
        values = dict(zip(paths, combo, strict=True))
        points.append(Point(name, values, [f"{p}={toml_value(v)}" for p, v in values.items()]))
    return points


def _walk_problem(data: Any, path: str) -> str | None:
    """A 'did you mean' problem for a grid path that misnames a variant or a table on the way.
    The last key is left to the recipe's own validation (an unset optional value is legal)."""
    parts = path.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[:i]) or "recipe"
        if isinstance(node, list):
            names = [item.get("name") for item in node if isinstance(item, dict) and item.get("name")]
            if part.lstrip("-").isdigit():
                if not -len(node) <= int(part) < len(node):
                    return f"grid {path!r}: {where} has no item {part}"
                node = node[int(part)]
                continue
            if part not in names:
                return f"grid {path!r}: no {where[:-1] if where.endswith('s') else where} named {part!r}" + (
                    did_you_mean(part, names) or (f"; there are {', '.join(names)}" if names else ""))
            node = node[names.index(part)]
        elif isinstance(node, dict):
            if part not in node:
                hint = did_you_mean(part, list(node))
                if hint:
                    return f"grid {path!r}: no key {part!r} in {where}{hint}"
                return None
            node = node[part]
        else:
            return f"grid {path!r}: {where} is a value, not a table"
    if isinstance(node, dict) and parts[-1] not in node:
        hint = did_you_mean(parts[-1], list(node))
        if hint:
            return f"grid {path!r}: no key {parts[-1]!r} in {'.'.join(parts[:-1])}{hint}"
    return None


def shared_stage_overrides(recipe: Recipe, raw: dict[str, Any], registry) -> list[str]:
    """Overrides that key the seed-independent stages on the recipe's own seed, so every run of the
    sweep shares them: `evaluation.seed`, and `prior_seed` of each attack whose component has one."""
    overrides = []
    if recipe.evaluation is not None and "seed" not in (raw.get("evaluation") or {}):
        overrides.append(f"evaluation.seed={recipe.seed}")
    for name in recipe.evaluators:  # the other evaluators likewise
        if "seed" not in ((raw.get("evaluators") or {}).get(name) or {}):
            overrides.append(f"evaluators.{name}.seed={recipe.seed}")
    for name, table in recipe.attacks.items():
        if registry.get("attack", table.use).capabilities().seeded_prior and "prior_seed" not in table.params:
            overrides.append(f"attacks.{name}.prior_seed={recipe.seed}")
    if recipe.evaluation is not None and "seed" not in type(recipe.evaluation).model_fields:
        overrides = [o for o in overrides if not o.startswith("evaluation.seed=")]
    return overrides


def load_sweep(path: Path | str, overrides: list[str] | None = None, registry=None,
               executor: str | None = None) -> Sweep:
    """Read a sweep file (or a sweep directory's sweep.toml), apply `--set` items and validate the
    sweep and every run it expands to. A RecipeError lists all problems at once."""
    if registry is None:
        from workbench import load_registry

        registry = load_registry()
    path = Path(path)
    if path.is_dir():
        path = path / SWEEP_FILE
    sweep_sets, recipe_sets = split_overrides(overrides or [])
    raw = parse_toml(path)
    if sweep_sets:
        raw = _apply_sweep_overrides(raw, sweep_sets, "--set")
    if executor is not None:
        table = raw.get("executor") if isinstance(raw.get("executor"), dict) else {}
        raw["executor"] = table if table.get("use") == executor else {"use": executor}
    return build_sweep(raw, path, recipe_sets, registry)


def seeds_only_sweep(recipe: Path | str, seeds: str, overrides: list[str], registry) -> Sweep:
    """`workbench run RECIPE --seeds 0-4`: the recipe over seeds, no grid, on `processes`."""
    recipe = Path(recipe)
    if recipe.is_dir():
        raise RecipeError(str(recipe), ["--seeds needs a recipe file; resume a seeds sweep with "
                                        "`workbench sweep SWEEP_DIR --resume`"])
    raw = {"recipe": str(recipe.resolve()), "seeds": seeds}
    sweep = build_sweep(raw, recipe.parent / f"{recipe.stem}-seeds.toml", list(overrides), registry)
    return sweep


def build_sweep(raw: dict[str, Any], path: Path, recipe_sets: list[str], registry) -> Sweep:
    """Validate a sweep file's data (read from `path`) and expand it; see `load_sweep`. Checks go on
    past the first problem (structure, executor, recipe, grid paths) so every one is reported."""
    source = str(path)
    problems: list[str] = []
    spec = None
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as exc:
        problems += structure_problems(exc, SweepFile)
    executor = raw.get("executor", {"use": "processes"})
    if isinstance(executor, dict) and isinstance(executor.get("use"), str):
        problems += registry.validate("executor", executor, "executor")
    pareto = raw.get("pareto") if isinstance(raw.get("pareto"), dict) else {}
    problems += [f"pareto.{axis}: figures are dotted paths such as 'attacks.gmi.top1'"
                 for axis in ("x", "y") if isinstance(pareto.get(axis), str)
                 and not re.fullmatch(r"[\w\-+]+(\.[\w\-+]+)+", pareto[axis])]
    if not isinstance(raw.get("recipe"), str):
        raise RecipeError(source, problems)
    recipe_path = (path.parent / raw["recipe"]).resolve()
    try:
        raw_recipe = parse_toml(recipe_path)
    except RecipeError as exc:
        raise RecipeError(source, problems + [f"recipe {raw['recipe']!r} ({recipe_path}): {p}"
                                              for p in exc.problems]) from None
    listed = raw.get("overrides") if isinstance(raw.get("overrides"), list) else []  # else a structure problem
    common = [*(spec.overrides if spec else listed), *recipe_sets]
    try:
        base_raw = apply_overrides(raw_recipe, [o for o in common if isinstance(o, str)])
        base = validate_raw(base_raw, str(recipe_path), registry)
    except RecipeError as exc:
        raise RecipeError(source, problems + [f"recipe {recipe_path.name}: {p}" for p in exc.problems]) from None
    base_resolved = resolve(base, registry)
    grid = raw.get("grid") if isinstance(raw.get("grid"), dict) else {}
    for grid_path in grid:
        problem = _walk_problem(base_resolved, grid_path)
        if problem:
            problems.append(problem)
    if problems or spec is None:
        raise RecipeError(source, problems)
    shared = shared_stage_overrides(base, base_raw, registry) if spec.share_stages else []
    points = expand_points(spec.grid)
    runs: list[PlannedRun] = []
    seen: dict[str, list[str]] = {}
    for point in points:
        for seed in spec.seeds:
            run_overrides = [*common, *point.overrides, *shared, f"seed={seed}"]
            try:
                recipe = validate_raw(apply_overrides(raw_recipe, run_overrides), str(recipe_path), registry)
            except RecipeError as exc:
                for problem in exc.problems:
                    seen.setdefault(problem, []).append(point.id)
                continue
            resolved = resolve(recipe, registry)
            runs.append(PlannedRun(f"{point.id}-s{seed}", point, seed, run_overrides, recipe_hash(resolved),
                                   recipe, resolved))
    for problem, ids in seen.items():
        ids = list(dict.fromkeys(ids))
        where = f"point {ids[0]}" + (f" (and {len(ids) - 1} more)" if len(ids) > 1 else "")
        problems.append(f"{where}: {problem}")
    if problems:
        raise RecipeError(source, problems)
    return Sweep(source=path, recipe_path=recipe_path, spec=spec, points=points, runs=runs,
                 extra_overrides=list(recipe_sets))

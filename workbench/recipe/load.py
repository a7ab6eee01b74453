"""Reading a recipe: the TOML file (refusing what is not one), `--set` overrides, both validation
passes (structure, then every component's own params through the registry) with every problem at
once, the resolved form with every default, and its hash."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import tomllib
from pydantic import ValidationError

from workbench.components.params import (
    KeyPath,
    format_path,
)
from workbench.errors import RecipeError
from workbench.recipe.schema import Recipe, component_tables_in, kind_at, structure_problems

MAX_RECIPE_BYTES = 1_000_000
"""A recipe is a small text file; anything larger is not one (and is not read into memory)."""


def _not_a_recipe_file(path: Path) -> str | None:
    """Why `path` cannot be a recipe (a device, a FIFO, a folder, a huge file), or None."""
    import stat

    try:
        mode, size = path.stat().st_mode, path.stat().st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a folder, not a recipe file; expected a TOML file"
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        return f"is {kind}, not a recipe file; expected a TOML file"
    if size > MAX_RECIPE_BYTES:
        return f"is {size:,} bytes; a recipe is a small TOML file (at most {MAX_RECIPE_BYTES:,} bytes)"
    return None


MAX_DEPTH = 32
"""How deeply tables and arrays may nest in a recipe (the shipped ones nest 5 deep); deeper is not a
recipe, and reading or checking it would exhaust Python's recursion limit (a traceback, not a line)."""


def nesting_problem(raw: Any, limit: int = MAX_DEPTH) -> str | None:
    """Where `raw` nests tables or arrays more than `limit` deep, as one line; None when it does not.
    Walks with an explicit stack, so no depth of input can overflow it."""
    stack: list[tuple[Any, KeyPath]] = [(raw, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > limit:
            shown = format_path(path[:4])
            return f"{shown}...: tables or arrays nested more than {limit} levels deep; a recipe nests a few levels"
        if isinstance(node, dict):
            stack.extend((value, (*path, str(key))) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, (*path, i)) for i, value in enumerate(node))
    return None


def _loads(text: str) -> Any:
    """`tomllib.loads`, with nesting deep enough to exhaust the recursion limit as a TOMLDecodeError."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError(f"tables or arrays nested too deeply (a recipe nests at most {MAX_DEPTH} "
                                      "levels)") from None


def parse_toml(path: Path) -> dict[str, Any]:
    """The raw TOML of a recipe file, or a RecipeError naming the file and the line."""
    path = Path(path)
    not_a_file = _not_a_recipe_file(path)  # /dev/zero or a FIFO would hang read_text
    if not_a_file:
        raise RecipeError(str(path), [not_a_file])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), [f"cannot read: {exc}"]) from None
    try:
        raw = _loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"malformed TOML: {exc}"]) from None
    too_deep = nesting_problem(raw)
    if too_deep:
        raise RecipeError(str(path), [too_deep])
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply `key.path=value` overrides (value parsed as TOML, else taken as a string).

    List items are addressed by index or, for variants, by name: `variants.bido-hsic.defense.lambda_x`.
    """
    too_deep = nesting_problem(raw)  # deepcopy below recurses
    if too_deep:
        raise RecipeError(source, [too_deep])
    raw = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{item!r}: expected key.path=value")
            continue
        try:
            value = _loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        parts = key.strip().split(".")
        if len(parts) > MAX_DEPTH or nesting_problem(value, MAX_DEPTH - len(parts)):
            shown = key if len(key) <= 60 else key[:60] + "..."
            problems.append(f"{shown}: nested more than {MAX_DEPTH} levels deep; a recipe nests a few levels")
            continue
        node: Any = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                index = _list_index(node, part)
                if index is None:
                    problems.append(f"{key}: no item {part!r} in {'.'.join(parts[:i]) or 'recipe'}")
                    break
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                problems.append(f"{key}: {'.'.join(parts[:i])} is a value, not a table")
                break
    if problems:
        raise RecipeError(source, problems)
    return raw


def _list_index(items: list, part: str) -> int | None:
    if part.lstrip("-").isdigit():
        index = int(part)
        return index if -len(items) <= index < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    return None


def validate_raw(raw: dict[str, Any], source: str, registry=None) -> Recipe:
    """Check the structure and every component; a RecipeError lists all problems at once (a wrong
    top-level key does not hide a wrong component param)."""
    if registry is None:
        from workbench import load_registry

        registry = load_registry()
    too_deep = nesting_problem(raw)
    if too_deep:
        raise RecipeError(source, [too_deep])
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = structure_problems(exc)
        for where, table in component_tables_in(raw):
            if isinstance(table, dict) and isinstance(table.get("use"), str):
                problems += registry.validate(kind_at(where), table, where)
        raise RecipeError(source, list(dict.fromkeys(problems))) from None
    problems = []
    for where, table in recipe.component_tables():
        problems += registry.validate(table.kind, table, where)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def load_recipe(path: Path | str, overrides: list[str] | None = None, registry=None) -> Recipe:
    """Read, override and validate a recipe file."""
    raw = parse_toml(Path(path))
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_raw(raw, str(path), registry)


# ------------------------------------------------------------------ resolving and writing


def resolve(recipe: Recipe, registry) -> dict[str, Any]:
    """The recipe as plain data with every default filled in, components included."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    if not data.get("sinks"):
        data.pop("sinks", None)  # recipes without sinks resolve (and hash) as before sinks existed
    if not data.get("evaluators"):
        data.pop("evaluators", None)  # likewise recipes with E alone

    def put(where: KeyPath, value: dict[str, Any]) -> None:
        node: Any = data
        for part in where[:-1]:
            node = node[part]
        node[where[-1]] = value

    for where, table in recipe.component_tables():
        put(where, registry.resolve(table.kind, table))
    return data


def recipe_hash(resolved: dict[str, Any]) -> str:
    """A short stable hash of a resolved recipe (what a run directory belongs to). Event sinks are
    left out: they change no figure, and a run resumes with other sinks."""
    resolved = {k: v for k, v in resolved.items() if k != "sinks"}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]

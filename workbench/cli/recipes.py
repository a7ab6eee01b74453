"""`workbench recipes`: validate, show, create and describe recipes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import err, out, registry
from workbench.errors import WorkbenchError

app = typer.Typer(help="Validate, show, create and describe recipes.", no_args_is_help=True)


@app.command("validate")
def recipes_validate(ctx: typer.Context,
                     files: Annotated[list[Path], typer.Argument(help="Recipe files to check.")]) -> None:
    """Check recipes: structure, every component name and every param. Lists all problems."""
    from workbench.errors import RecipeError
    from workbench.recipe.load import load_recipe

    reg = registry(ctx)
    failed = False
    for path in files:
        try:
            load_recipe(path, registry=reg)
        except RecipeError as exc:
            failed = True
            for problem in exc.problems:
                err.print(f"{path}: {problem}", highlight=False, soft_wrap=True)
            continue
        out.print(f"{path}: ok", highlight=False)
    if failed:
        raise typer.Exit(2)


@app.command("show")
def recipes_show(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Recipe file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.path=value.")] = None,
) -> None:
    """Print the recipe as it will run: every default filled in, overrides applied."""
    from workbench.recipe.load import load_recipe, recipe_hash, resolve
    from workbench.recipe.write import to_toml

    reg = registry(ctx)
    recipe = load_recipe(file, set_ or [], reg)
    resolved = resolve(recipe, reg)
    sys.stdout.write(to_toml(resolved, f"{file}, resolved (hash {recipe_hash(resolved)})"))


@app.command("new")
def recipes_new(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """A commented starter recipe to copy and edit."""
    from workbench.recipe.template import STARTER_RECIPE

    if output is None:
        sys.stdout.write(STARTER_RECIPE)
        return
    if output.exists():
        raise WorkbenchError(f"{output}: already exists; choose another --output")
    if not output.parent.is_dir():
        raise WorkbenchError(f"{output}: the folder {output.parent} does not exist or is not a folder; "
                             "create it first or choose another --output")
    try:
        with output.open("x", encoding="utf-8") as handle:  # "x": never overwrite what appeared meanwhile
            handle.write(STARTER_RECIPE)
    except OSError as exc:
        raise WorkbenchError(f"{output}: cannot write ({exc.strerror or exc}); choose another --output") from None
    out.print(f"wrote {output}; check it with: workbench recipes validate {output}", highlight=False)


@app.command("schema")
def recipes_schema(ctx: typer.Context) -> None:
    """JSON Schema of recipes (component tables narrowed to registered names) for editors."""
    from workbench.recipe.write import json_schema

    sys.stdout.write(json.dumps(json_schema(registry(ctx)), indent=2) + "\n")

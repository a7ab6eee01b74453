"""`workbench data`: which datasets and OOD sets exist, what files each expects, and whether they are there."""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from workbench.cli.common import cli_state
from workbench.errors import WorkbenchError

DATA_KINDS = ("dataset", "ood_dataset")

app = typer.Typer(
    help="Datasets and OOD sets: list them, and show what files one expects and whether they are present.",
    no_args_is_help=True,
)


def _fail(exc: WorkbenchError) -> typer.Exit:
    """One line on stderr and the error's exit code (2 for user errors), never a traceback."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {exc}", markup=False)
    return typer.Exit(code=getattr(exc, "exit_code", 2))


def _registry(ctx: typer.Context):
    """The registry with the main options' plugin folder (local plugins show up too)."""
    from workbench import load_registry

    plugins_dir = cli_state(ctx).plugins_dir
    return load_registry(plugins_dir=str(plugins_dir) if plugins_dir is not None else None)


def _takes_root(component: Any) -> bool:
    return "root" in component.params.model_fields


def _description(component: Any, root: Path | None) -> Any:
    """The component's DataDescription, or None when it cannot say.

    Built-in sets describe themselves from the class (`description(root, params)`), so a real set
    needs no root to be listed; a third-party set is built and asked through `describe()`.
    """
    takes_root = _takes_root(component)
    given = {"root": str(root)} if root is not None and takes_root else {}
    try:
        params = component.params.model_validate(given)
    except ValidationError:  # other required params: describe with the defaults we have
        params = None
    describe_class = getattr(component.factory, "description", None)
    if callable(describe_class):
        return describe_class(root if takes_root else None, params)
    if params is None:
        return None
    try:
        instance = component.factory(params)
    except Exception:  # a third-party set that cannot be built here: show its summary and params only
        return None
    return instance.describe() if hasattr(instance, "describe") else None


def _is_embedded(component: Any) -> bool:
    embedded = getattr(component.factory, "embedded", None)
    return bool(embedded) if embedded is not None else not _takes_root(component)


@app.command("list")
def list_datasets(
    ctx: typer.Context,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print JSON rows (kind, name, plugin, summary, data) instead of a table."
        ),
    ] = False,
) -> None:
    """List every dataset and OOD set: kind, name, summary, and whether it is embedded or read from files."""
    try:
        registry = _registry(ctx)
    except WorkbenchError as exc:
        raise _fail(exc) from None
    rows = [
        {
            "kind": component.kind,
            "name": component.name,
            "plugin": component.plugin,
            "summary": component.summary,
            "data": "embedded" if _is_embedded(component) else "real",
        }
        for kind in DATA_KINDS
        for component in registry.components(kind)
    ]
    if json_output:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="datasets and OOD sets", title_justify="left")
    for column in ("kind", "name", "data", "summary"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["kind"], row["name"], row["data"], row["summary"])
    console = Console()
    console.print(table)
    console.print("Real sets read local files only: `workbench data show NAME --root PATH` checks them.")


@app.command("show")
def show_dataset(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A dataset or OOD set name from `workbench data list`.")],
    root: Annotated[
        Path | None, typer.Option("--root", help="Folder to check for the expected files.")
    ] = None,
) -> None:
    """Describe one dataset or OOD set: source, expected files (present or missing at --root), params."""
    try:
        registry = _registry(ctx)
        found = []
        for kind in DATA_KINDS:
            if name in registry.names(kind):
                found.append(registry.get(kind, name))
        if not found:
            known = [n for kind in DATA_KINDS for n in registry.names(kind)]
            from workbench.errors import did_you_mean

            raise WorkbenchError(
                f"unknown dataset or OOD set {name!r}{did_you_mean(name, known)}; see `workbench data list`"
            )
    except WorkbenchError as exc:
        raise _fail(exc) from None
    console = Console(highlight=False)
    for component in found:
        _show_one(console, component, root)


def _show_one(console: Console, component: Any, root: Path | None) -> None:
    description = _description(component, root)
    console.print(f"[bold]{component.name}[/bold]  ({component.kind}, plugin {component.plugin})")
    console.print(component.summary, markup=False)
    if description is not None:
        console.print(f"[bold]source:[/bold] {description.source}", markup=True, soft_wrap=True)
        if description.notes:
            console.print(description.notes, markup=False, soft_wrap=True)
        if description.embedded:
            console.print("[green]embedded[/green]: no files needed.")
            if root is not None:
                console.print(f"[dim]--root {root} ignored: {component.name} reads no files.[/dim]")
        else:
            _show_files(console, description, root)
    _show_params(console, component)


def _show_files(console: Console, description: Any, root: Path | None) -> None:
    table = Table(title=f"expected files{f' under {root}' if root else ''}", title_justify="left")
    table.add_column("path", overflow="fold")
    table.add_column("what", overflow="fold")
    if root is not None:
        table.add_column("status")
    missing = set(description.missing()) if root is not None else set()
    for expected in description.files:
        row = [expected.path, expected.what]
        if root is not None:
            row.append("[red]missing[/red]" if expected.path in missing else "[green]present[/green]")
        table.add_row(*row)
    console.print(table)
    if root is None:
        console.print("[dim]Pass --root PATH to check which of these are present.[/dim]")
    elif not root.is_dir():
        console.print(f"[red]{root} is not a folder.[/red]", markup=True)
    elif missing:
        console.print(
            f"[red]{len(missing)} missing[/red]; get them from: {description.source}", soft_wrap=True
        )
    else:
        console.print("[green]all expected files present[/green]")


def _type_name(annotation: Any) -> str:
    """'int', 'float | None', "'gaussian' | 'uniform'" rather than typing's reprs."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(arg) for arg in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _show_params(console: Console, component: Any) -> None:
    fields = component.params.model_fields
    if not fields:
        console.print("params: none")
        return
    table = Table(title="params", title_justify="left")
    for column in ("name", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for field_name, field in fields.items():
        default = (
            "(required)"
            if field.is_required()
            else json.dumps(field.get_default(call_default_factory=True), default=str)
        )
        table.add_row(field_name, _type_name(field.annotation), default, field.description or "")
    console.print(table)

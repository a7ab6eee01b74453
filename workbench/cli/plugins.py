"""`workbench plugins`: the registered components and the plugins that provide them; a new plugin package."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workbench.cli.common import out, registry
from workbench.scaffold import KINDS as SCAFFOLD_KINDS

app = typer.Typer(help="Registered components and the plugins that provide them.", no_args_is_help=True)


@app.command("new")
def plugins_new(
    name: Annotated[str, typer.Argument(help="Component name, e.g. `dcor`; the package is workbench-NAME.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to create the package in.")] = Path(
        "."
    ),
    kind: Annotated[
        str, typer.Option(help=f"Kind of the example component: {', '.join(SCAFFOLD_KINDS)}.")
    ] = "dependency",
) -> None:
    """Write a ready plugin package: pyproject with the entry point, one working component of the
    kind, its tests (they pass before you change anything) and a README."""
    from workbench.scaffold import write_plugin_package

    folder = write_plugin_package(name, output, kind)
    Console().print(f"wrote {folder}\nnext: pytest {folder} && pip install -e {folder}", highlight=False)


@app.command("list")
def plugins_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON rows: kind, name, plugin, summary, params.")] = False,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
) -> None:
    """Every registered component by kind, with the plugin that provides it and its params."""
    from workbench.components.capabilities import as_json as capabilities_json
    from workbench.components.registry import KINDS

    reg = registry(ctx)
    kinds = [kind] if kind else list(KINDS)
    rows = []
    for k in kinds:
        reg.names(k)  # unknown kind -> clear error
        for component in reg.components(k):
            info = reg.manager.info.get(component.plugin)
            rows.append({
                "kind": component.kind, "name": component.name, "plugin": component.plugin,
                "distribution": info.distribution if info else None, "version": info.version if info else None,
                "summary": component.summary, "params": _params_rows(component.params),
                "capabilities": capabilities_json(component.capabilities()),
            })
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    for k in kinds:
        table = Table(title=f"{k}", title_justify="left", show_lines=False, expand=False)
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("plugin", style="dim")
        table.add_column("summary")
        table.add_column("params", style="green")
        kind_rows = [r for r in rows if r["kind"] == k]
        for r in kind_rows:
            params = ", ".join(f"{p['name']}={p['default']}" if p["default"] is not None else p["name"]
                               for p in r["params"])
            plugin = r["plugin"] + (f" ({r['distribution']} {r['version']})" if r["distribution"] else "")
            declared = ", ".join(k if v is True else f"{k}={v}" for k, v in r["capabilities"].items()
                                 if v not in (False, None, (), []))
            summary = r["summary"] + (f" [{declared}]" if declared else "")
            table.add_row(r["name"], plugin, escape(summary), params)  # `[post_hoc]` is text, not markup
        if not kind_rows:
            table.add_row("(none registered)", "", "", "")
        out.print(table)


def _params_rows(model) -> list[dict]:
    rows = []
    for name, field in model.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if hasattr(default, "model_dump"):
            default = default.model_dump(mode="json")
        rows.append({
            "name": name, "type": _type_name(field.annotation), "default": _jsonable(default),
            "required": field.is_required(), "help": field.description or "",
        })
    return rows


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)

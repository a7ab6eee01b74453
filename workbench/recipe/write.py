"""Writing a recipe: TOML that keeps a user's comments (tomlkit), and the JSON Schema for editors."""

from __future__ import annotations

from typing import Any

import tomlkit

from workbench.components.params import (
    table_types,
)
from workbench.components.registry import KINDS
from workbench.recipe.schema import Recipe


def to_toml(data: dict[str, Any], header: str = "") -> str:
    """Plain recipe data as TOML text (tomlkit keeps key order and nests tables readably)."""
    document = tomlkit.document()
    if header:
        for line in header.strip().splitlines():
            document.add(tomlkit.comment(line.lstrip("# ").rstrip()))
        document.add(tomlkit.nl())
    for key, value in data.items():
        document[key] = _toml_value(value)
    return tomlkit.dumps(document)


def _toml_value(value: Any) -> Any:
    if isinstance(value, dict):
        table = tomlkit.table()
        for k, v in value.items():
            table[k] = _toml_value(v)
        return table
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        array = tomlkit.aot()
        for v in value:
            array.append(_toml_value(v))
        return array
    return value


def update_toml_text(text: str, data: dict[str, Any]) -> str:
    """Write `data` into an existing TOML text, keeping its comments and key order."""
    document = tomlkit.parse(text)
    _merge(document, data)
    return tomlkit.dumps(document)


def _merge(container: Any, data: dict[str, Any]) -> None:
    for key in list(container.keys()):
        if key not in data:
            del container[key]
    for key, value in data.items():
        current = container.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        else:
            container[key] = _toml_value(value)


def json_schema(registry) -> dict[str, Any]:
    """JSON Schema of recipes for editors, with each component table narrowed to its kind's names
    and params (nested component tables too, such as a defense's dependency measure)."""
    schema = Recipe.model_json_schema()
    defs = schema.setdefault("$defs", {})
    options_by_kind: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        options = options_by_kind.setdefault(kind, [])
        for component in registry.components(kind):
            params = component.params.model_json_schema(ref_template="#/$defs/{model}")
            for sub_name, sub_def in params.pop("$defs", {}).items():
                defs.setdefault(sub_name, sub_def)
            properties = {"use": {"const": component.name, "description": component.summary}}
            properties.update(params.get("properties", {}))
            options.append({
                "title": component.name,
                "type": "object",
                "properties": properties,
                "required": ["use", *params.get("required", [])],
                "additionalProperties": False,
            })
    for table_type in table_types():
        if table_type.__name__ in defs and options_by_kind.get(table_type.kind):
            description = defs[table_type.__name__].get("description", "")
            defs[table_type.__name__] = {"description": description, "oneOf": options_by_kind[table_type.kind]}
    return schema

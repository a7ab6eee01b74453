"""The recipe editor's model: which tables a recipe has, and a form for each, from pydantic models.

The editor works on the raw TOML data (plain dicts and lists) so that saving writes back only
what the user set, through `update_toml_text`, keeping comments and order. Sections are
derived from the `Recipe` model and, inside component tables, from each registered
component's own params model, so third-party components get forms without any TUI change.
Nothing here imports Textual.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

import tomllib
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from workbench.components.params import ComponentTable, nested_fields
from workbench.components.registry import Registry, UnknownComponentError
from workbench.recipe.schema import Recipe

Path_ = tuple  # a key path into the raw recipe: str keys and int list indices

# What a non-scalar field holds.
COMPONENT, MODEL, LIST, DICT = "component", "model", "list", "dict"


@dataclass
class Slot:
    """The shape of one non-scalar field: a component of `kind`, a model, or a list/dict of those."""

    shape: str
    kind: str | None = None  # component kind
    model: type[BaseModel] | None = None
    item: Slot | None = None  # for LIST and DICT


@dataclass
class Section:
    """One entry in the editor's outline: a table of the recipe."""

    path: Path_
    label: str
    depth: int
    slot: Slot
    optional: bool = False  # may be removed (optional field, list or dict item)
    present: bool = True  # False: an unset optional table (can be added)
    default: Any = None  # plain data used when this table is missing from the raw recipe
    data: Any = None  # the effective data (raw, else defaults), for display only
    is_item: bool = False

    @property
    def key(self) -> str:
        return path_text(self.path)


def path_text(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "recipe"


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def classify(annotation: Any) -> Slot | None:
    """The Slot for a non-scalar annotation, None for scalars (edited in the form)."""
    annotation = _strip_annotated(_unwrap_optional(_strip_annotated(annotation))[0])
    if isinstance(annotation, type):
        if issubclass(annotation, ComponentTable):
            return Slot(COMPONENT, kind=annotation.kind) if annotation.kind else None
        if issubclass(annotation, BaseModel):
            return Slot(MODEL, model=annotation)
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is list and args:
        item = classify(args[0])
        return Slot(LIST, item=item) if item else None
    if origin is dict and len(args) == 2:
        item = classify(args[1])
        return Slot(DICT, item=item) if item else None
    return None


def field_slot(model: type[BaseModel], name: str) -> Slot | None:
    slot = classify(model.model_fields[name].annotation)
    if slot is not None:
        return slot
    nested = nested_fields(model)  # `Annotated[ComponentTable, NestedComponent(kind)]`
    return Slot(COMPONENT, kind=nested[name]) if name in nested else None


def is_optional(info: FieldInfo) -> bool:
    return _unwrap_optional(_strip_annotated(info.annotation))[1]


def plain(value: Any) -> Any:
    """Default values as the raw TOML data a user would write (only what differs from defaults)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def field_default(info: FieldInfo) -> Any:
    if info.is_required():
        return None
    return plain(info.get_default(call_default_factory=True))


def build_sections(raw: dict[str, Any], registry: Registry) -> list[Section]:
    """The outline of a recipe: the recipe itself, then every table in model order."""
    sections = [Section((), "recipe", 0, Slot(MODEL, model=Recipe), data=raw)]
    _walk_model(Recipe, raw, (), 1, sections, registry)
    return sections


def _walk_model(model, data, path, depth, out, registry) -> None:
    data = data if isinstance(data, dict) else {}
    for name, info in model.model_fields.items():
        slot = field_slot(model, name)
        if slot is None:
            continue
        default = field_default(info)
        value = data.get(name, default)
        section = Section(path + (name,), name, depth, slot, optional=is_optional(info),
                          present=value is not None, default=default, data=value)
        out.append(section)
        if value is not None:
            _walk_slot(slot, value, section.path, depth + 1, out, registry)


def _walk_slot(slot: Slot, value, path, depth, out, registry) -> None:
    if slot.shape == COMPONENT:
        use = value.get("use") if isinstance(value, dict) else None
        try:
            component = registry.get(slot.kind, use) if isinstance(use, str) else None
        except UnknownComponentError:
            component = None
        if component is not None:
            _walk_model(component.params, value, path, depth, out, registry)
    elif slot.shape == MODEL:
        _walk_model(slot.model, value, path, depth, out, registry)
    elif slot.shape in (LIST, DICT):
        items = list(enumerate(value)) if slot.shape == LIST and isinstance(value, list) else (
            list(value.items()) if isinstance(value, dict) else [])
        for key, item in items:
            label = str(key)
            if isinstance(item, dict):
                label = str(item.get("name") or (f"{key}: {item.get('use')}" if slot.shape == DICT else item.get("use"))
                            or key)
            section = Section(path + (key,), label, depth, slot.item, optional=True, data=item, default={},
                              is_item=True)
            out.append(section)
            _walk_slot(slot.item, item, section.path, depth + 1, out, registry)


def section_model(section: Section, registry: Registry) -> type[BaseModel] | None:
    """The pydantic model whose scalar fields the section's form edits."""
    slot = section.slot
    if slot.shape == MODEL:
        return slot.model
    if slot.shape == COMPONENT and isinstance(section.data, dict):
        try:
            return registry.get(slot.kind, section.data.get("use")).params
        except (UnknownComponentError, TypeError):
            return None
    return None


# ------------------------------------------------------------------ reading and writing raw data

MISSING = object()


def get_raw(raw: Any, path: Path_) -> Any:
    node = raw
    for part in path:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        else:
            return MISSING
    return node


def ensure_path(raw: dict[str, Any], path: Path_, sections: list[Section]) -> Any:
    """The raw node at `path`, created from the defaults along the way when missing."""
    by_path = {s.path: s for s in sections}
    node: Any = raw
    for i, part in enumerate(path):
        if isinstance(node, list):
            node = node[part]
            continue
        if part not in node or node[part] is None:
            section = by_path.get(path[: i + 1])
            default = section.default if section is not None else None
            node[part] = copy.deepcopy(default) if default is not None else {}
        node = node[part]
    return node


def set_at(raw: dict[str, Any], path: Path_, value: Any, sections: list[Section]) -> None:
    parent = ensure_path(raw, path[:-1], sections)
    parent[path[-1]] = value


def remove_at(raw: dict[str, Any], path: Path_, sections: list[Section]) -> None:
    parent = ensure_path(raw, path[:-1], sections)
    if isinstance(parent, list):
        del parent[path[-1]]
    else:
        parent.pop(path[-1], None)


def new_table(slot: Slot, registry: Registry, taken: set[str] = frozenset()) -> Any:
    """A fresh table for `slot`: required names and components filled so it validates early."""
    if slot.shape == COMPONENT:
        names = registry.names(slot.kind)
        return {"use": names[0]} if names else {"use": ""}
    if slot.shape in (LIST, DICT):
        return [] if slot.shape == LIST else {}
    data: dict[str, Any] = {}
    for name, info in slot.model.model_fields.items():
        if not info.is_required():
            continue
        inner = field_slot(slot.model, name)
        if inner is not None:
            data[name] = new_table(inner, registry)
        elif _unwrap_optional(info.annotation)[0] is str:
            data[name] = unique_name(name, taken)
    return data


def unique_name(base: str, taken: set[str]) -> str:
    n = 1
    while f"{base}{n}" in taken:
        n += 1
    return f"{base}{n}"


def add_to(raw: dict[str, Any], section: Section, sections: list[Section], registry: Registry) -> Path_:
    """Add an item to a list/dict section, or set an unset optional table; returns the new path."""
    slot = section.slot
    if section.present and slot.shape in (LIST, DICT):
        container = ensure_path(raw, section.path, sections)
        if slot.shape == LIST:
            taken = {str(item.get("name")) for item in container if isinstance(item, dict)}
            container.append(new_table(slot.item, registry, taken))
            return section.path + (len(container) - 1,)
        item = new_table(slot.item, registry)
        base = str(item.get("use") or "item") if isinstance(item, dict) else "item"
        key = base if base not in container else unique_name(base, set(container))
        container[key] = item
        return section.path + (key,)
    if not section.present:
        set_at(raw, section.path, new_table(slot, registry), sections)
        return section.path
    raise ValueError(f"{section.key}: nothing to add here")


# ------------------------------------------------------------------ form fields


@dataclass
class FieldSpec:
    """One scalar field of a form."""

    name: str
    annotation: Any
    description: str
    default: Any
    required: bool
    widget: str  # "switch", "select" or "input"
    choices: list[Any] = field(default_factory=list)
    optional: bool = False

    @property
    def is_text(self) -> bool:
        """Typed as plain text: no TOML quoting needed."""
        return _unwrap_optional(self.annotation)[0] is str

    @property
    def placeholder(self) -> str:
        if self.required:
            return "required"
        return "unset" if self.default is None else f"default: {format_value(self.default)}"


def form_fields(model: type[BaseModel]) -> list[FieldSpec]:
    specs = []
    for name, info in model.model_fields.items():
        if field_slot(model, name) is not None:
            continue
        annotation = _strip_annotated(info.annotation)
        inner, optional = _unwrap_optional(annotation)
        inner = _strip_annotated(inner)
        widget, choices = "input", []
        if inner is bool and not optional:
            widget = "switch"
        elif get_origin(inner) is Literal:
            widget, choices = "select", list(get_args(inner))
        specs.append(FieldSpec(name, annotation, (info.description or "").strip(), field_default(info),
                               info.is_required(), widget, choices, optional))
    return specs


def format_value(value: Any) -> str:
    """A value as the user types it: text bare, everything else as a TOML literal."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    import tomlkit

    return tomlkit.item(list(value) if isinstance(value, tuple) else value).as_string()


UNSET = object()


def parse_value(spec: FieldSpec, text: str) -> Any:
    """What the user typed, as data: empty means "use the default"; text fields take text as is."""
    if not text.strip():
        return UNSET
    if spec.is_text:
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # let the model say what is wrong with it


def field_errors(model: type[BaseModel], data: Any) -> dict[str, str]:
    """Field name -> first problem, from the model's own validation ('' for table-level ones)."""
    data = {k: v for k, v in (data or {}).items() if k != "use"} if isinstance(data, dict) else {}
    if issubclass(model, ComponentTable):
        return {}
    try:
        model.model_validate(data)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            if err["type"] == "extra_forbidden":
                message = f"unknown key {key!r}"
                key = ""
            else:
                message = err["msg"].removeprefix("Value error, ")
            errors.setdefault(key, message)
        return errors
    return {}

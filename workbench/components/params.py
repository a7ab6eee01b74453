"""Base models for component params and recipes.

Every component owns a strict pydantic model; field docstrings become CLI help, TUI
tooltips and JSON Schema descriptions, so write them for a researcher reading a form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from workbench.errors import did_you_mean


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys and infinite or NaN numbers, and reads field
    docstrings as help."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        protected_namespaces=(),
        allow_inf_nan=False,
    )


class NoParams(StrictModel):
    """For components without parameters."""


class ComponentTable(BaseModel):
    """A component in a recipe: `use = "<registered name>"` plus that component's params.

    The params are checked once, by the component's own model, when the recipe is validated
    (`Registry.validate`); the typed result stays on the table as `.config`, and building the
    component (`Registry.create_from`) uses it without checking again. After that the built
    component is available as `.instance` (for components that hold other components, such as a
    defense holding a dependency measure).
    """

    model_config = ConfigDict(extra="allow")

    use: str
    """Registered name of the component (see `workbench plugins list`)."""

    _instance: Any = PrivateAttr(default=None)
    _config: Any = PrivateAttr(default=None)

    kind: ClassVar[str | None] = None
    """Set on the per-kind subclasses made by `ComponentTable.of(kind)`."""

    @classmethod
    def of(cls, kind: str) -> type[ComponentTable]:
        """The table type for one kind, so validation and JSON Schema know what `use` may name."""
        if kind not in _TABLE_TYPES:
            title = "".join(part.title() for part in kind.split("_")) + "Component"
            _TABLE_TYPES[kind] = type(title, (cls,), {"kind": kind, "__doc__": f"A `{kind}` component: `use` plus its params."})
        return _TABLE_TYPES[kind]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def config(self) -> StrictModel | None:
        """The validated, typed params (None until the registry validated this table)."""
        return self._config

    @property
    def instance(self) -> Any:
        if self._instance is None:
            raise RuntimeError(f"component {self.use!r} has not been created through the registry")
        return self._instance


_TABLE_TYPES: dict[str, type[ComponentTable]] = {}


def table_types() -> list[type[ComponentTable]]:
    """Every per-kind table type made so far (for JSON Schema generation)."""
    return list(_TABLE_TYPES.values())


class NestedComponent:
    """Marks a `ComponentTable` field as holding a component of `kind`.

    Use as `measure: Annotated[ComponentTable, NestedComponent("dependency")]` (or simply
    `measure: ComponentTable.of("dependency")`); the registry
    validates and creates the nested component with the outer one.
    """

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"NestedComponent({self.kind!r})"


def nested_fields(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> kind for every field marked with `NestedComponent`."""
    found = {}
    for name, field in model.model_fields.items():
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, ComponentTable) and arg.kind:
                found[name] = arg.kind
        for meta in field.metadata:
            if isinstance(meta, NestedComponent):
                found[name] = meta.kind
    return found


# ------------------------------------------------------------------ validation errors, one formatter

KeyPath = tuple[str | int, ...]
"""A key path in a recipe (`("variants", 1, "defense", "lambda_x")`), kept as a tuple until printed."""


def format_path(path: Iterable[str | int]) -> str:
    """`variants[1].defense.lambda_x`: how a key path is shown to the user."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def field_names_at(model: type[BaseModel] | None, path: Iterable[str | int]) -> list[str]:
    """The field names of the model that sits at `path` inside `model` (for "did you mean")."""
    current: Any = model
    for part in path:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:  # list[Model] / dict[str, Model]
            for c in candidates:
                for inner in getattr(c, "__args__", ()):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        nxt = inner
        current = nxt
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def validation_problems(exc: ValidationError, where: KeyPath = (), model: type[BaseModel] | None = None) -> list[str]:
    """pydantic errors as one line each: `key.path: message (got value)`; an unknown key gets the
    nearest valid key of `model` at that place. The one formatter for recipes, components, the
    CLI and the TUI."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        path = format_path((*where, *loc))
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), field_names_at(model, loc[:-1])) if model is not None else ""
            problems.append(f"unknown key {path!r}{hint}")
        elif err["type"] == "missing":
            problems.append(f"{path}: required key missing")
        else:
            value = err.get("input")
            shown = f" (got {value!r})" if not isinstance(value, (dict, list)) and value is not None else ""
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{path}: {message}{shown}" if path else f"{message}{shown}")
    return problems

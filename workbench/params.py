"""Base models for component params and recipes.

Every component owns a strict pydantic model; field docstrings become CLI help, TUI
tooltips and JSON Schema descriptions, so write them for a researcher reading a form.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys and reads field docstrings as help."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        protected_namespaces=(),
    )


class NoParams(StrictModel):
    """For components without parameters."""


class ComponentTable(BaseModel):
    """A component in a recipe: `use = "<registered name>"` plus that component's params.

    The params are checked by the component's own model when the recipe is validated; after
    `Registry.create` the built component is available as `.instance` (for components that
    hold other components, such as a defense holding a dependency measure).
    """

    model_config = ConfigDict(extra="allow")

    use: str
    """Registered name of the component (see `workbench plugins list`)."""

    _instance: Any = PrivateAttr(default=None)

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

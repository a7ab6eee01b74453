"""Base models for component params and recipes.

Every component owns a strict pydantic model; field docstrings become CLI help, TUI
tooltips and JSON Schema descriptions, so write them for a researcher reading a form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, ClassVar

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

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

    @field_validator("*", mode="after")
    @classmethod
    def _int_within_reach(cls, value: Any, info: ValidationInfo) -> Any:
        """The safety net under every int param that sets no upper bound of its own (see `bounded_int`):
        beyond `MAX_INT` a loop or a tensor shape overflows or never ends, so no run could honour it."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None or any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in field.metadata):
            return value
        for number in _ints_in(value):
            if not -MAX_INT <= number <= MAX_INT:
                raise ValueError(f"must be from {-MAX_INT:,} to {MAX_INT:,}; no run can honour a larger magnitude")
        return value


MAX_INT = 2**31 - 1
"""The largest magnitude an int param without its own bound may take (what int32 indices and shapes hold)."""


def _ints_in(value: Any) -> Iterable[int]:
    """The ints in a param value (in lists, tuples and dicts too, one level at a time; bools are not ints)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            yield item
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


def bounded_int(low: int, high: int, what: str = "") -> Any:
    """An int param in [low, high], checked when the recipe is validated, the message naming the range.

    Use the named ones below (`Epochs`, `Steps`, `Count`, `Width`, `BatchSize`, `ImageSize`) for the
    quantities a run loops over or allocates, so that every component refuses a value no run could
    honour (an `epochs` of 2⁶³ that hangs, a width of 10⁹ that ends in an allocator traceback) the same
    way; the JSON Schema and `plugins list` show the range."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be {what or 'an integer'} from {low:,} to {high:,}")
        return value

    return Annotated[int, AfterValidator(check), Field(json_schema_extra={"minimum": low, "maximum": high})]


Epochs = bounded_int(1, 100_000, "a number of epochs")
"""Training epochs (1 to 100,000)."""
Steps = bounded_int(1, 10_000_000, "a number of steps")
"""Optimisation steps or iterations (1 to 10⁷)."""
Count = bounded_int(1, 1_000_000)
"""How many of something a run makes or keeps: restarts, samples, candidates, classes (1 to 10⁶)."""
Width = bounded_int(1, 65_536, "a width")
"""Channels, hidden units or latent dimensions of a network (1 to 65,536); whether the network then fits
in memory is checked, with an estimate, before it is built."""
BatchSize = bounded_int(1, 65_536, "a batch size")
"""Rows in a batch (1 to 65,536); whether a batch fits in memory is checked before training."""
ImageSize = bounded_int(4, 4096, "an image side in pixels")
"""An image side in pixels (4 to 4,096)."""


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
    """`variants[1].defense.lambda_x`: how a key path is shown to the user. A key with characters that
    do not print (a control character, a line break) is shown quoted and escaped, so a problem stays
    one line."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        shown = str(part) if str(part).isprintable() else repr(str(part))
        out += f".{shown}" if out else shown
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

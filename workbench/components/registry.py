"""The component registry: every backbone, measure, dataset, defense, attack, metric and score.

Built from the plugin manager by calling each registration hook once per plugin, so each
component knows which plugin registered it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from workbench.components.capabilities import capabilities_of, missing_methods
from workbench.components.manager import PluginManager, get_plugin_manager
from workbench.components.params import (
    ComponentTable,
    KeyPath,
    NoParams,
    StrictModel,
    format_path,
    nested_fields,
    validation_problems,
)
from workbench.components.protocols import CONTRACTS
from workbench.errors import WorkbenchError, did_you_mean

# kind -> registration hook. The kind names are a contract (docs/hooks.md), so is their order in listings.
KIND_HOOKS: dict[str, str] = {
    "backbone": "register_backbones",
    "dependency": "register_dependency_measures",
    "dataset": "register_datasets",
    "ood_dataset": "register_ood_datasets",
    "defense": "register_defenses",
    "attack": "register_attacks",
    "metric": "register_metrics",
    "ood_score": "register_ood_scores",
    "ood_loss": "register_ood_losses",
    "executor": "register_executors",
    "event_sink": "register_event_sinks",
}
KINDS: tuple[str, ...] = tuple(KIND_HOOKS)


class UnknownComponentError(WorkbenchError):
    """A name that no plugin registered for that kind."""


@dataclass(frozen=True)
class Component:
    """One registered component: how to build it and how to describe it."""

    kind: str
    name: str
    factory: Callable[[Any], Any]
    params: type[StrictModel]
    summary: str
    plugin: str

    def params_schema(self) -> dict[str, Any]:
        return self.params.model_json_schema()

    def capabilities(self) -> Any:
        """What the component declares beyond its kind's contract (on its class; see
        `workbench.components.capabilities`); an instance may refine it from its params."""
        return capabilities_of(self.factory, self.kind)


class Registry:
    """Components by kind and name, with validation and creation from recipe tables."""

    def __init__(self, manager: PluginManager):
        self.manager = manager
        self.problems: list[str] = list(manager.problems)
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KIND_HOOKS.items():
            hook = getattr(manager.pm.hook, hook_name)
            for impl in hook.get_hookimpls():  # in registration order: built-ins first
                self._collect(kind, hook_name, impl)

    def _collect(self, kind: str, hook_name: str, impl) -> None:
        plugin_name = impl.plugin_name

        def register(name: str, factory: Callable[[Any], Any], params: type[BaseModel] = NoParams,
                     summary: str | None = None) -> None:
            existing = self._components[kind].get(name)
            if existing is not None:
                self.problems.append(
                    f"plugin {plugin_name!r} registers {kind} {name!r}, already registered by "
                    f"{existing.plugin!r}; kept the first; rename yours"
                )
                return
            wrong = registration_problem(name, factory, params)
            if wrong:
                self.problems.append(f"plugin {plugin_name!r} registers {kind} {name!r} with {wrong}; "
                                     "the component was left out")
                return
            doc = summary or inspect.getdoc(factory) or ""
            self._components[kind][name] = Component(
                kind, name, factory, params, doc.strip().splitlines()[0] if doc.strip() else "", plugin_name
            )

        try:
            impl.function(register=register)
        except (Exception, SystemExit) as exc:  # SystemExit too: a plugin must not end the command
            self.problems.append(
                f"plugin {plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
            )

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(self._components[kind])

    def components(self, kind: str | None = None) -> list[Component]:
        kinds = [kind] if kind else list(KINDS)
        return [c for k in kinds for _, c in sorted(self._components[k].items())]

    def get(self, kind: str, name: str) -> Component:
        self._check_kind(kind)
        try:
            return self._components[kind][name]
        except KeyError:
            known = self.names(kind)
            hint = did_you_mean(name, known) or (f"; known: {', '.join(known)}" if known else "; none registered")
            raise UnknownComponentError(f"unknown {kind} {name!r}{hint}") from None

    def _check_kind(self, kind: str) -> None:
        if kind not in self._components:
            raise UnknownComponentError(f"unknown component kind {kind!r}{did_you_mean(kind, KINDS)}")

    def validate(self, kind: str, table: ComponentTable | dict, where: KeyPath | str = ()) -> list[str]:
        """Every problem with one component table (and the components nested in it), one line each.

        This is the one place params are checked: on success the typed params stay on the table
        (`table.config`), and `resolve` and `create_from` use them as they are.
        """
        where = (where,) if isinstance(where, str) and where else (where or ())
        table = as_table(table)
        try:
            component = self.get(kind, table.use)
        except UnknownComponentError as exc:
            return [f"{format_path((*where, 'use'))}: {exc}"]
        try:
            config = component.params.model_validate(table.params)
        except ValidationError as exc:
            return validation_problems(exc, where, component.params)
        problems = []
        for field_name, nested_kind in nested_fields(component.params).items():
            nested = getattr(config, field_name)
            if nested is not None:
                problems += self.validate(nested_kind, nested, (*where, field_name))
        if not problems:
            table._config = config
        return problems

    def config_of(self, kind: str, table: ComponentTable | dict) -> StrictModel:
        """The table's typed params: as validated before, else validated now (a WorkbenchError
        naming the component when they are wrong)."""
        table = as_table(table)
        if table.config is None:
            problems = self.validate(kind, table)
            if problems:
                raise WorkbenchError(f"{kind} {table.use!r}: " + "; ".join(problems))
        return table.config

    def resolve(self, kind: str, table: ComponentTable | dict) -> dict[str, Any]:
        """The table with every default filled in (nested components too), as plain data."""
        table = as_table(table)
        config = self.config_of(kind, table)
        component = self.get(kind, table.use)
        data = {"use": table.use, **config.model_dump(mode="json", exclude_none=True)}
        for field_name, nested_kind in nested_fields(component.params).items():
            nested = getattr(config, field_name)
            if nested is not None:
                data[field_name] = self.resolve(nested_kind, nested)
        return data

    def create(self, kind: str, name: str, /, **params: Any) -> Any:
        """Validate `params` with the component's model and build it (nested components first)."""
        return self.create_from(kind, ComponentTable(use=name, **params))

    def create_from(self, kind: str, table: ComponentTable | dict) -> Any:
        """Build the component a (validated) table names; nested components first. The object is
        checked against its kind's contract (`workbench.api`), naming the plugin when it falls short."""
        table = as_table(table)
        config = self.config_of(kind, table)
        component = self.get(kind, table.use)
        for field_name, nested_kind in nested_fields(component.params).items():
            nested: ComponentTable | None = getattr(config, field_name)
            if nested is not None:
                nested._instance = self.create_from(nested_kind, nested)
        created = component.factory(config)
        missing = missing_members(kind, created)
        if missing:
            raise WorkbenchError(
                f"{kind} {component.name!r} (plugin {component.plugin!r}): the object its factory returned has no "
                f"{', '.join(missing)}; see the {kind} contract in workbench.api")
        try:
            promised = missing_methods(created, kind)
        except TypeError as exc:
            raise WorkbenchError(f"{kind} {component.name!r} (plugin {component.plugin!r}): {exc}") from None
        if promised:
            raise WorkbenchError(
                f"{kind} {component.name!r} (plugin {component.plugin!r}) declares capabilities whose methods it "
                f"lacks: {', '.join(promised)}; see docs/plugins.md, \"Capabilities\"")
        builtin = getattr(self.manager.info.get(component.plugin), "source", None) == "builtin"
        if kind == "dependency" and not builtin:
            return CheckedMeasure(created, component.name, component.plugin)
        if kind == "backbone":  # a network that cannot fit is refused before it is allocated
            from workbench.running.memory import CheckedBackbone

            return CheckedBackbone(created, component.name, table.params)
        return created


def as_table(table: ComponentTable | dict) -> ComponentTable:
    return table if isinstance(table, ComponentTable) else ComponentTable.model_validate(table)


def missing_members(kind: str, obj: Any) -> list[str]:
    """The methods of the kind's contract that `obj` lacks (empty when it satisfies it)."""
    contract = CONTRACTS.get(kind)
    if contract is None:
        return []
    required = getattr(contract, "__abstractmethods__", None) or [
        name for name, value in vars(contract).items()
        if callable(value) and (not name.startswith("_") or name == "__call__")
    ]
    return sorted(name for name in required if not callable(getattr(obj, name, None)))


def registration_problem(name: Any, factory: Any, params: Any) -> str | None:
    """What is wrong with one `register(name, factory, params)` call, or None."""
    if not isinstance(name, str) or not name:
        return f"name {name!r} (expected a non-empty string)"
    if not callable(factory):
        return f"factory {factory!r} (expected a class or function)"
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        shown = getattr(params, "__name__", repr(params))
        return f"params={shown} (expected a pydantic model class, e.g. a subclass of workbench.api.StrictModel)"
    return None


class CheckedMeasure:
    """A third-party dependency measure whose every result is checked against the contract
    (a 0-d tensor): a wrong shape or type is one line naming the plugin and the component, not
    a traceback from deep inside the loss."""

    def __init__(self, measure: Any, name: str, plugin: str):
        self._measure, self._name, self._plugin = measure, name, plugin

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._measure, attribute)

    def __call__(self, a: Any, b: Any) -> Any:
        import torch

        value = self._measure(a, b)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            got = (f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor)
                   else f"a {type(value).__name__}")
            raise WorkbenchError(f"dependency {self._name!r} (plugin {self._plugin!r}) returned {got}; a measure "
                                 "must return a 0-d tensor (measure(a, b) on [m, d_a], [m, d_b]), "
                                 "differentiable, on the inputs' device")
        return value


def load_registry(*, plugins_dir: str | None = None, manager: PluginManager | None = None) -> Registry:
    """The registry with built-ins and installed plugins (and a local plugin folder if given)."""
    return Registry(manager or get_plugin_manager(plugins_dir=plugins_dir))

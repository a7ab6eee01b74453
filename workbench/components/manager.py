"""The plugin manager factory: built-ins, installed packages, and local plugin folders.

Nothing here runs at import time; `get_plugin_manager()` builds a fresh manager each call,
so tests can register inline plugins without leaking into other tests.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from workbench.components import hookspecs
from workbench.errors import did_you_mean

ENTRY_POINT_GROUP = "workbench"

# Built-in plugins, loaded through the same hooks as any third-party package, in this order. The one
# list of them: the wheel ships every folder under plugins/, and tests/test_hygiene.py checks that the
# folders and import-linter's lists in pyproject.toml (TOML cannot import this) name the same packages.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "workbench_backbones",
    "workbench_dependence",
    "workbench_data",
    "workbench_defenses",
    "workbench_metrics",
    "workbench_ood",
    "workbench_attacks",
    "workbench_sinks",
    "workbench_executors",
)

DISABLE_ENV = "WORKBENCH_DISABLE_PLUGINS"
"""Comma-separated plugin names (built-in module or entry-point name) that are not loaded."""

LOAD_ENV = "WORKBENCH_LOAD_PLUGINS"
"""When set, only these comma-separated third-party plugins are loaded (built-ins always are)."""

HOOK_NAMES = tuple(
    name for name in dir(hookspecs) if name.startswith("register_") and callable(getattr(hookspecs, name))
)


@dataclass
class PluginInfo:
    """Where a loaded plugin came from, for `workbench plugins list`."""

    name: str
    source: str  # "builtin", "entrypoint", "local" (--plugins-dir), or "inline" (registered by a test)
    distribution: str | None = None
    version: str | None = None


@dataclass
class PluginManager:
    """A pluggy manager plus what went wrong while loading plugins."""

    pm: pluggy.PluginManager
    info: dict[str, PluginInfo] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def register(self, plugin: object, name: str, info: PluginInfo | None = None) -> bool:
        """Register one plugin; a misspelled hook is reported and the plugin left out."""
        unknown = [
            attr
            for attr in dir(plugin)
            if self.pm.parse_hookimpl_opts(plugin, attr) is not None and attr not in HOOK_NAMES
        ]
        if unknown:
            for attr in unknown:
                self.problems.append(
                    f"plugin {name!r} implements unknown hook {attr!r}{did_you_mean(attr, HOOK_NAMES)}; "
                    "the plugin was not loaded"
                )
            return False
        self.pm.register(plugin, name=name)
        self.info[name] = info or PluginInfo(name=name, source="inline")
        return True

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.info.pop(name, None)


_entry_points_read: tuple[tuple, tuple[importlib.metadata.EntryPoint, ...]] | None = None
"""(`_path_state()` when read, the entry points then)."""


def _path_state() -> tuple:
    """Each `sys.path` entry with its modification time: installing or removing a distribution adds or
    removes a `*.dist-info` folder there, which changes the time."""
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, None))
    return tuple(state)


def installed_entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    """The installed `workbench` entry points. Finding them reads every installed distribution's
    metadata (about 40 ms with 170 packages), so they are kept while `sys.path` and its folders are
    unchanged: a process that builds many managers (the TUI, a test suite) reads them once, and one
    that installs a plugin package sees it on its next manager."""
    global _entry_points_read
    state = _path_state()
    if _entry_points_read is None or _entry_points_read[0] != state:
        _entry_points_read = state, tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return _entry_points_read[1]


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def get_plugin_manager(
    *,
    builtins: bool = True,
    entrypoints: bool = True,
    plugins_dir: str | Path | None = None,
) -> PluginManager:
    """Build a plugin manager with built-ins, `workbench` entry points and a local folder."""
    pm = pluggy.PluginManager("workbench")
    pm.add_hookspecs(hookspecs)
    manager = PluginManager(pm)
    disabled = _names_from_env(DISABLE_ENV) or set()
    allowed = _names_from_env(LOAD_ENV)

    if builtins:
        for module_name in DEFAULT_PLUGINS:
            if module_name in disabled:
                continue
            module = importlib.import_module(module_name)
            manager.register(module, module_name, PluginInfo(module_name, "builtin", "workbench", _version()))

    if entrypoints:
        for ep in installed_entry_points():
            if ep.name in disabled or (allowed is not None and ep.name not in allowed):
                continue
            if pm.has_plugin(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            dist_version = dist.version if dist is not None else None
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a broken third-party package must not break the rest
                manager.problems.append(
                    f"plugin {ep.name!r} ({dist_name or ep.value}) failed to import: "
                    f"{describe_failure(exc)}; reinstall it or block it with {DISABLE_ENV}={ep.name}"
                )
                continue
            manager.register(plugin, ep.name, PluginInfo(ep.name, "entrypoint", dist_name, dist_version))

    if plugins_dir is not None:
        load_plugins_dir(manager, Path(plugins_dir), disabled)

    pm.check_pending()
    return manager


def load_plugins_dir(manager: PluginManager, folder: Path, disabled: set[str] = frozenset()) -> None:
    """Load every `*.py` in `folder` as a plugin named after the file (quick local research)."""
    if not folder.is_dir():
        manager.problems.append(f"--plugins-dir {folder}: not a directory")
        return
    for path in sorted(folder.glob("*.py")):
        name = path.stem
        if name in disabled or manager.pm.has_plugin(name):
            continue
        module_name = f"workbench_local_{name}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(module_name, None)
            manager.problems.append(f"plugin file {path} failed to import: {describe_failure(exc)}; "
                                    f"fix it or block it with {DISABLE_ENV}={name}")
            continue
        manager.register(module, name, PluginInfo(name, "local", str(path), None))


def describe_failure(exc: BaseException) -> str:
    """One line for an exception a plugin raised (SystemExit included: sys.exit at import)."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while importing"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _version() -> str:
    from workbench.version import __version__

    return __version__

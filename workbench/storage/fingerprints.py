"""What the stage-cache keys record of the code: the core's and the built-in plugins' source, and
each third-party plugin's version and source, so an edit keys new entries instead of reusing
what the old code made."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.components.registry import Registry

# Subpackages that only show results; editing them does not change what a stage computes.
PRESENTATION_PACKAGES = ("cli", "tui")


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


def _digest_of(path: Path) -> bytes:
    stat = path.stat()
    return _file_digest(str(path), stat.st_mtime_ns, stat.st_size)


def source_fingerprint(packages: list[Path]) -> str:
    """A hash of the Python source under each package folder (or single module file),
    presentation code left out."""
    digest = hashlib.sha256()
    for package in packages:
        package = Path(package)
        files = [package] if package.is_file() else sorted(package.rglob("*.py"))
        for path in files:
            relative = path.relative_to(package) if path != package else Path(path.name)
            if len(relative.parts) > 1 and relative.parts[0] in PRESENTATION_PACKAGES:
                continue
            digest.update(f"{package.name}/{relative.as_posix()}\0".encode())
            digest.update(_digest_of(path))
    return digest.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """workbench's and the built-in plugins' source, hashed once per process: in a development
    install an edit to a trainer, defense or attack keys new cache entries instead of reusing
    what the old code made (the version number alone does not change)."""
    from workbench.components.manager import DEFAULT_PLUGINS

    packages = [Path(__file__).parent.parent]  # the whole core (this module lives in workbench/storage/)
    for name in DEFAULT_PLUGINS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            packages.append(Path(spec.origin).parent)
    return source_fingerprint(packages)


def plugin_source_paths(plugin: object) -> list[Path]:
    """The source a plugin object comes from: its top-level package folder (a plugin module
    may import helpers from anywhere in its package), or its module file."""
    if inspect.ismodule(plugin):
        module = plugin
    else:
        owner = plugin if inspect.isclass(plugin) or inspect.isfunction(plugin) else type(plugin)
        module = sys.modules.get(getattr(owner, "__module__", "") or "")
    if module is None:
        return []
    top = sys.modules.get(module.__name__.split(".")[0], module)
    folders = [Path(p) for p in getattr(top, "__path__", None) or []]
    if folders:
        return folders
    file = getattr(module, "__file__", None)
    return [Path(file)] if file else []


def plugin_fingerprint(registry: Registry, plugin_name: str) -> dict[str, Any]:
    """Version and source hash of one loaded plugin (what a cache key records for it)."""
    manager = registry.manager
    info = manager.info.get(plugin_name)
    plugin = manager.pm.get_plugin(plugin_name)
    try:
        source = source_fingerprint(plugin_source_paths(plugin)) if plugin is not None else None
    except OSError:
        source = None
    return {"version": getattr(info, "version", None), "source": source}

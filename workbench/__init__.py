"""workbench: defend image classifiers against model inversion with BiDO and BiDO+."""

from __future__ import annotations

from workbench.version import __version__

__all__ = ["__version__", "load_registry"]


def load_registry(*, plugins_dir: str | None = None):
    """The component registry: built-in plugins plus installed `workbench` entry points."""
    from workbench.components.registry import load_registry as _load

    return _load(plugins_dir=plugins_dir)

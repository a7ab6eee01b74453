"""pytest fixtures for workbench and for plugin authors.

Use in a plugin package's tests with `pytest_plugins = ["workbench.testing"]` in conftest.py:

- `plugin_manager`: a fresh plugin manager with the built-ins (no installed entry points).
- `register_plugin`: register an inline plugin object on it; unregistered after the test.
- `make_registry`: a registry from that manager (call it after registering your plugin).
- `isolated_cache`: a temporary stage cache (`WORKBENCH_CACHE_DIR`) so tests never share one.
- `run_tiny_recipe`: run a recipe (TOML text) end to end on the embedded data, in seconds; the
  plugins registered with `register_plugin` take part, so a test can `use` its component in a
  recipe without installing the package.
- `make_attack_context`: the `AttackContext` the harness gives an attack, from its declared
  `AttackCapabilities.access`: a black-box or label-only attack gets `target = None` and a counted
  `TargetOracle` (its `query_budget` enforced), so a test runs the attack under its threat model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workbench.components.manager import PluginManager, get_plugin_manager
from workbench.components.registry import Registry

# A recipe small enough to train in a second or two on a CPU: a tiny tuning of the defaults.
TINY_RECIPE = """\
title = "tiny"
seed = 0
device = "cpu"

[data]
use = "digits"
image_size = 16

[target.backbone]
use = "mcnn"
width = 16

[target.train]
epochs = 5
batch_size = 64

[[variants]]
name = "none"
defense = { use = "none" }
"""


@pytest.fixture
def plugin_manager() -> PluginManager:
    return get_plugin_manager(entrypoints=False)


@pytest.fixture
def register_plugin(plugin_manager):
    registered: list[str] = []

    def register(plugin: object, name: str | None = None) -> bool:
        name = name or getattr(plugin, "__name__", type(plugin).__name__)
        ok = plugin_manager.register(plugin, name)
        if ok:
            registered.append(name)
        return ok

    try:
        yield register
    finally:
        for name in registered:
            plugin_manager.unregister(name)


@pytest.fixture
def make_registry(plugin_manager):
    return lambda: Registry(plugin_manager)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def run_tiny_recipe(tmp_path, isolated_cache, plugin_manager, monkeypatch):
    """Run a recipe given as TOML text (default: TINY_RECIPE); returns (run_dir, results)."""
    from workbench.running import runner
    from workbench.running.runner import RunOptions, run_recipe

    counter = iter(range(1000))

    def run(text: str = TINY_RECIPE, *, overrides: list[str] | None = None, **options: Any):
        index = next(counter)
        recipe = tmp_path / f"recipe{index}.toml"
        recipe.write_text(text)
        run_dir = options.pop("run_dir", tmp_path / f"run{index}")
        options.setdefault("cache_dir", isolated_cache)
        if _has_inline_plugins(plugin_manager) and options.get("plugins_dir") is None:
            # The run sees the test's inline plugins (plus installed ones); worker processes would
            # build their own registry without them, so the variants train in this process.
            monkeypatch.setattr(runner, "load_registry", lambda **_: _registry_with_entrypoints(plugin_manager))
            options["workers"] = 1
        return run_recipe(RunOptions(recipe=recipe, run_dir=run_dir, overrides=overrides or [], **options))

    return run


@pytest.fixture
def make_attack_context():
    """`make_attack_context(attack, target, data, seed=0, device="cpu", name=None, **fields)`: the
    context the harness builds for `attack` (`workbench.running.evaluation.attack_context`)."""
    import torch

    from workbench.running.evaluation import attack_context

    def make(attack: Any, target: Any, data: Any, *, seed: int = 0, device: str = "cpu", name: str | None = None,
             **fields: Any):
        fields.setdefault("evaluation_model", None)
        return attack_context(name or getattr(attack, "name", type(attack).__name__), attack, target.eval(),
                              data=data, device=torch.device(device), seed=seed, **fields)

    return make


def _has_inline_plugins(manager: PluginManager) -> bool:
    return any(info.source == "inline" for info in manager.info.values())


def _registry_with_entrypoints(inline: PluginManager) -> Registry:
    """Built-ins, installed entry points and the inline plugins registered on `inline`."""
    manager = get_plugin_manager()
    for name, info in inline.info.items():
        if info.source == "inline" and not manager.pm.has_plugin(name):
            manager.register(inline.pm.get_plugin(name), name, info)
    return Registry(manager)

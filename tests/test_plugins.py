"""The plugin system: hooks, registry, did-you-mean, broken and misspelled plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from pydantic import Field

from workbench.components.hookspecs import hookimpl
from workbench.components.manager import DEFAULT_PLUGINS, HOOK_NAMES, get_plugin_manager
from workbench.components.params import StrictModel
from workbench.components.registry import KINDS, Registry, UnknownComponentError
from workbench.errors import WorkbenchError


class ScaleParams(StrictModel):
    factor: float = Field(2.0, gt=0)
    """How much to scale."""


class Scaler:
    """Scales its input (a toy dependency measure for tests)."""

    def __init__(self, params: ScaleParams):
        self.factor = params.factor

    def __call__(self, a, b):
        return (a * b).sum() * self.factor


class InlinePlugin:
    @hookimpl
    def register_dependency_measures(self, register):
        register("toy-scale", Scaler, params=ScaleParams)


def test_every_kind_has_a_hook_and_the_builtins_register_through_them():
    assert len(KINDS) == 11
    assert set(HOOK_NAMES) == {
        "register_backbones", "register_dependency_measures", "register_datasets", "register_ood_datasets",
        "register_defenses", "register_attacks", "register_metrics", "register_ood_scores",
        "register_ood_losses", "register_executors", "register_event_sinks",
    }
    registry = Registry(get_plugin_manager(entrypoints=False))
    assert registry.problems == []
    assert {"none", "bido", "mid"} <= set(registry.names("defense"))
    assert registry.get("defense", "bido").plugin == "workbench_defenses"
    assert "workbench_defenses" in DEFAULT_PLUGINS


def test_inline_plugin_registers_and_creates_with_validated_params(register_plugin, make_registry):
    register_plugin(InlinePlugin(), "inline")
    registry = make_registry()
    component = registry.get("dependency", "toy-scale")
    assert component.plugin == "inline"
    assert component.summary.startswith("Scales its input")
    measure = registry.create("dependency", "toy-scale", factor=3.0)
    assert measure.factor == 3.0
    with pytest.raises(WorkbenchError, match="factor"):
        registry.create("dependency", "toy-scale", factor=-1)
    with pytest.raises(WorkbenchError, match="unknown key 'fctor'"):
        registry.create("dependency", "toy-scale", fctor=1)


def test_unknown_names_suggest_the_nearest(make_registry):
    registry = make_registry()
    with pytest.raises(UnknownComponentError, match='did you mean "bido"'):
        registry.get("defense", "bidoo")
    with pytest.raises(UnknownComponentError, match='did you mean "defense"'):
        registry.names("defence")


def test_misspelled_hook_is_reported_and_plugin_left_out(plugin_manager):
    class Misspelled:
        @hookimpl
        def register_backbone(self, register):  # missing "s"
            register("x", object)

    assert plugin_manager.register(Misspelled(), "misspelled") is False
    assert any("register_backbones" in p and "misspelled" in p for p in plugin_manager.problems)
    assert not plugin_manager.pm.has_plugin("misspelled")


def test_duplicate_name_keeps_the_first_and_reports_the_second(register_plugin, make_registry):
    class Duplicate:
        @hookimpl
        def register_defenses(self, register):
            register("bido", object)

    register_plugin(Duplicate(), "dupe")
    registry = make_registry()
    assert registry.get("defense", "bido").plugin == "workbench_defenses"
    assert any("'dupe'" in p and "already registered" in p for p in registry.problems)


def test_plugin_that_raises_in_its_hook_does_not_break_the_rest(register_plugin, make_registry):
    class Exploding:
        @hookimpl
        def register_metrics(self, register):
            raise RuntimeError("boom")

    register_plugin(Exploding(), "exploding")
    registry = make_registry()
    assert "accuracy" in registry.names("metric")
    assert any("exploding" in p and "boom" in p for p in registry.problems)


def test_plugins_dir_loads_local_files_and_reports_broken_ones(tmp_path):
    (tmp_path / "good.py").write_text(textwrap.dedent('''
        from workbench.components.hookspecs import hookimpl

        class Identity:
            """A local test defense."""
            def __init__(self, params):
                pass

        @hookimpl
        def register_defenses(register):
            register("local-identity", Identity)
    '''))
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    registry = Registry(get_plugin_manager(entrypoints=False, plugins_dir=tmp_path))
    assert registry.get("defense", "local-identity").plugin == "good"
    assert any("broken.py" in p and "does_not_exist_anywhere" in p for p in registry.problems)


def test_disable_env_blocks_a_plugin_by_name(monkeypatch):
    monkeypatch.setenv("WORKBENCH_DISABLE_PLUGINS", "workbench_defenses")
    registry = Registry(get_plugin_manager(entrypoints=False))
    assert registry.names("defense") == []


@pytest.mark.slow  # a subprocess or a fresh interpreter: seconds, kept out of the fast lane
def test_broken_entry_point_is_reported_by_name(tmp_path):
    """A third-party package that fails to import: named in a warning, the rest keeps working."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[workbench]\nbroken = broken_plugin_module\n")
    (tmp_path / "broken_plugin_module.py").write_text("raise ImportError('missing native library')\n")
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        from workbench.components.registry import load_registry
        r = load_registry()
        print(r.problems)
        print("bido" in r.names("defense"))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'broken'" in result.stdout and "missing native library" in result.stdout
    assert "broken-plugin" in result.stdout
    assert result.stdout.strip().endswith("True")

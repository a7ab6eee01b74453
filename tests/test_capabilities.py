"""Capabilities are declared by a component, checked when it is created, shown by `plugins list --json`,
and read by the core from the declaration alone (never by probing for methods or names)."""

from __future__ import annotations

import json

import pytest

from workbench.api import (
    AttackCapabilities,
    AttackResult,
    ExecutorCapabilities,
    OODLossCapabilities,
    WorkbenchError,
    hookimpl,
)
from workbench.components.capabilities import capabilities_of, missing_methods
from workbench.running.trainer import OODFeed


class Declared:
    """An attack that says it prepares a prior and shards its search, and has both methods."""

    capabilities = AttackCapabilities(access="black-box", prepares=True, shards=True)

    def __init__(self, params):
        self.params = params

    def prepare(self, ctx) -> None:
        pass

    def merge_shards(self, prepared, parts) -> AttackResult:
        return prepared

    def run(self, ctx) -> AttackResult:
        raise AssertionError("never run")


class Boasting(Declared):
    """Declares `prepares` and lacks `prepare`."""

    prepare = None


class Undeclared:
    """Has `prepare` and `merge_shards` but declares nothing: the core treats it as a plain attack."""

    def __init__(self, params):
        self.params = params

    def prepare(self, ctx) -> None:
        pass

    def merge_shards(self, prepared, parts):
        return prepared

    def run(self, ctx):
        raise AssertionError("never run")


class Plugin:
    @staticmethod
    @hookimpl
    def register_attacks(register):
        register("declared", Declared)
        register("boasting", Boasting)
        register("undeclared", Undeclared)


def test_declared_capabilities_are_read_and_undeclared_methods_are_not(register_plugin, make_registry):
    register_plugin(Plugin, "capabilities-test")
    registry = make_registry()
    declared = registry.create("attack", "declared")
    assert capabilities_of(declared, "attack") == AttackCapabilities(access="black-box", prepares=True, shards=True)
    assert registry.get("attack", "declared").capabilities().access == "black-box"  # from the class, not made
    # Methods without a declaration give nothing: the defaults of the kind.
    assert capabilities_of(registry.create("attack", "undeclared"), "attack") == AttackCapabilities()


def test_a_declaration_without_its_methods_is_one_line_naming_the_component(register_plugin, make_registry):
    register_plugin(Plugin, "capabilities-test")
    with pytest.raises(WorkbenchError) as caught:
        make_registry().create("attack", "boasting")
    message = str(caught.value)
    assert "\n" not in message
    assert "attack 'boasting' (plugin 'capabilities-test')" in message and "lacks: prepare" in message


def test_a_declaration_of_the_wrong_kind_is_refused():
    class Confused:
        capabilities = OODLossCapabilities(observes=True)

    with pytest.raises(TypeError, match="AttackCapabilities"):
        capabilities_of(Confused, "attack")
    assert missing_methods(Declared(None), "attack") == []


def test_the_builtins_declare_what_they_do(make_registry):
    registry = make_registry()
    gmi = registry.get("attack", "gmi").capabilities()
    assert gmi.prepares and gmi.shards and gmi.seeded_prior and gmi.access == "white-box"
    assert not registry.get("attack", "kedmi").capabilities().prepares
    assert registry.get("attack", "ppa").capabilities() == AttackCapabilities(prepares=True, seeded_prior=True)
    energy = registry.get("ood_loss", "energy").capabilities()
    assert energy == OODLossCapabilities(prepares=True, observes=True)
    # An executor refines its declaration from its params.
    processes = registry.create("executor", "processes", workers=3)
    assert capabilities_of(processes, "executor") == ExecutorCapabilities(shares_machine=True, workers=3)
    assert not registry.get("executor", "submitit").capabilities().shares_machine


def test_the_trainer_asks_an_ood_loss_for_its_declaration(make_registry):
    registry = make_registry()
    feed = OODFeed(dataset=None, config=None, loss=registry.create("ood_loss", "energy"))
    assert feed.capabilities.observes and feed.capabilities.prepares
    feed = OODFeed(dataset=None, config=None, loss=registry.create("ood_loss", "entropy"))
    assert not feed.capabilities.observes and not feed.capabilities.prepares


def test_plugins_list_json_shows_every_components_capabilities(monkeypatch, capsys):
    from test_cli import invoke

    code, out, _ = invoke(monkeypatch, capsys, "plugins", "list", "--json")
    rows = {(r["kind"], r["name"]): r for r in json.loads(out)}
    assert code == 0
    assert rows[("attack", "gmi")]["capabilities"] == {"access": "white-box", "prepares": True, "shards": True,
                                                        "seeded_prior": True}
    assert rows[("executor", "processes")]["capabilities"]["shares_machine"] is True
    assert rows[("ood_loss", "energy")]["capabilities"] == {"prepares": True, "observes": True}
    assert rows[("backbone", "mcnn")]["capabilities"] == {}

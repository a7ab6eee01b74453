"""Layering: the core stays importable without Textual, and import-linter's contracts cover every module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parents[1]
PRESENTATION = ("cli", "tui")


@pytest.mark.slow  # a subprocess or a fresh interpreter: seconds, kept out of the fast lane
def test_cli_and_runner_do_not_import_textual():
    code = (
        "import sys, workbench, workbench.cli, workbench.running.runner, workbench.components.registry;"
        "workbench.load_registry();"
        "print('textual' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_reading_runs_does_not_import_torch():
    code = "import sys, workbench.storage.runs, workbench.tui.follow; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_no_textual_contract_lists_every_core_module():
    """A new core module must join the contract that keeps Textual, Typer and Rich out of the core."""
    contract = next(c for c in _contracts() if "textual" in c["forbidden_modules"])
    listed = set(contract["source_modules"])
    core = {f"workbench.{p.stem}" for p in (ROOT / "workbench").glob("*.py") if p.stem not in ("__init__", "__main__")}
    core |= {f"workbench.{p.name}" for p in (ROOT / "workbench").iterdir()
             if p.is_dir() and (p / "__init__.py").exists() and p.name not in PRESENTATION}
    assert core - listed == set(), f"add {sorted(core - listed)} to the contract in pyproject.toml"


def test_the_builtin_plugins_are_listed_once():
    """DEFAULT_PLUGINS is the list of built-in plugins; the wheel ships every folder under plugins/,
    and import-linter's lists (which TOML cannot derive) must name exactly the same packages."""
    from workbench.components.manager import DEFAULT_PLUGINS

    builtins = sorted(set(DEFAULT_PLUGINS))
    assert len(builtins) == len(DEFAULT_PLUGINS), "DEFAULT_PLUGINS names a package twice"
    folders = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())
    assert folders == builtins, "each folder under plugins/ is a built-in: add it to DEFAULT_PLUGINS, or remove it"
    linter = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert sorted(set(linter["root_packages"]) - {"workbench"}) == builtins, "importlinter root_packages"
    public_api = next(c for c in linter["contracts"] if c["name"].startswith("Plugins import only"))
    assert sorted(public_api["source_modules"]) == builtins, "the public-API contract's source_modules"
    no_plugins = next(c for c in linter["contracts"] if c["name"] == "The core never imports a plugin package")
    assert sorted(no_plugins["forbidden_modules"]) == builtins, "the no-plugin contract's forbidden_modules"
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "plugins" in wheel["only-include"] and wheel["sources"] == {"plugins": ""}, "the wheel ships plugins/*"

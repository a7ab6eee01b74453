"""Layering: the core stays importable without Textual, and import-linter's contracts cover every module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]
PRESENTATION = ("cli", "tui")


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


def test_every_builtin_plugin_is_held_to_the_public_api():
    from workbench.components.manager import DEFAULT_PLUGINS

    contract = next(c for c in _contracts() if c["name"].startswith("Plugins import only"))
    assert set(DEFAULT_PLUGINS) <= set(contract["source_modules"])

"""`workbench plugins new`: a package for every component kind, registered through its entry point,
importing only the public API, with tests that pass before anyone edits them."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from workbench.cli import main
from workbench.components.registry import KIND_HOOKS, KINDS
from workbench.errors import WorkbenchError
from workbench.scaffold import KINDS as TEMPLATE_KINDS
from workbench.scaffold import TEMPLATES, write_plugin_package


def package_name(kind: str) -> str:
    return "my-" + kind.replace("_", "-")


def workbench_imports(path: Path) -> set[str]:
    """The workbench modules a Python file imports (`workbench.x`, not `workbench_x`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        found |= {n for n in names if n == "workbench" or n.startswith("workbench.")}
    return found


def test_every_kind_has_a_template():
    assert TEMPLATE_KINDS == KINDS
    folders = {entry.name for entry in TEMPLATES.iterdir() if entry.is_dir() and entry.name[0] not in "._"}
    assert folders == {*KINDS, "package"}
    for kind in KINDS:
        assert {entry.name for entry in (TEMPLATES / kind).iterdir()} >= {"component.py", "test_component.py"}


def test_rendered_packages_pass_ruff_as_their_authors_would_run_it(tmp_path):
    """The templates are checked in this repository (their ruff.toml); what a user gets must pass
    too, run from the package folder with no workbench settings (its src/ module first-party)."""
    for kind in KINDS:
        folder = write_plugin_package(package_name(kind), tmp_path, kind)
        result = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--target-version", "py310",
             "--line-length", "110", "--select", "E,F,W,I,B,UP,SIM", "."],
            cwd=folder, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, f"{kind}: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("kind", KINDS)
def test_generated_package_imports_only_the_public_api_and_registers_its_component(
    tmp_path, monkeypatch, kind, plugin_manager, register_plugin, make_registry
):
    name = package_name(kind)
    folder = write_plugin_package(name, tmp_path, kind)
    module_name = "workbench_" + name.replace("-", "_")
    source = folder / "src" / module_name / "__init__.py"
    tests = folder / "tests" / f"test_{module_name}.py"
    assert workbench_imports(source) == {"workbench.api"}
    assert workbench_imports(tests) <= {"workbench.api", "workbench.testing"}
    pyproject = tomllib.loads((folder / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["workbench"] == {name: module_name}
    assert (folder / "README.md").exists()
    assert (folder / "tests" / "conftest.py").read_text() == 'pytest_plugins = ["workbench.testing"]\n'

    # The module registers one component of its kind, through that kind's hook, which meets the
    # kind's contract (the registry checks it on creation) with its default params.
    monkeypatch.syspath_prepend(str(folder / "src"))
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    module = importlib.import_module(module_name)
    try:
        assert hasattr(module, KIND_HOOKS[kind])
        register_plugin(module, name)
        registry = make_registry()
        assert registry.problems == []
        assert registry.get(kind, name).plugin == name
        assert registry.create(kind, name) is not None
        other_kinds = [k for k in KINDS if k != kind and name in registry.names(k)]
        assert other_kinds == []
    finally:
        sys.modules.pop(module_name, None)


@pytest.mark.slow
def test_generated_tests_pass_for_every_kind(tmp_path):
    """Each kind's generated tests, all in one pytest process (as `pytest` in each package would run
    them, without installing anything: the packages' src folders are on PYTHONPATH)."""
    folders = [write_plugin_package(package_name(kind), tmp_path, kind) for kind in KINDS]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*(str(f / "src") for f in folders), os.environ.get("PYTHONPATH", "")]),
    }
    expected = sum(
        (f / "tests" / f"test_{f.name.replace('-', '_')}.py").read_text().count("\ndef test_") for f in folders
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(str(f) for f in folders)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert f"{expected} passed" in result.stdout, result.stdout[-3000:]


@pytest.mark.slow  # a subprocess or a fresh interpreter: seconds, kept out of the fast lane
def test_a_package_runs_its_own_tests_from_its_folder(tmp_path):
    """What a user does first: `pytest` inside the new package (its pyproject puts src on the path)."""
    folder = write_plugin_package("my-measure", tmp_path, "dependency")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.slow
def test_installed_package_shows_in_plugins_list(tmp_path):
    """What `pip install -e` does for discovery, by hand: a dist-info with the entry point."""
    folder = write_plugin_package("my-measure", tmp_path / "pkg", "dependency")
    site = tmp_path / "site"
    dist_info = site / "workbench_my_measure-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: workbench-my-measure\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[workbench]\nmy-measure = workbench_my_measure\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(folder / "src")])}
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "plugins", "list", "--json", "--kind", "dependency"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    row = next(r for r in json.loads(result.stdout) if r["name"] == "my-measure")
    assert row["distribution"] == "workbench-my-measure" and row["version"] == "0.1.0"


def test_bad_name_unknown_kind_and_existing_folder_are_refused(tmp_path):
    with pytest.raises(WorkbenchError, match="lowercase"):
        write_plugin_package("Bad_Name", tmp_path)
    with pytest.raises(WorkbenchError, match='did you mean "ood_loss"'):
        write_plugin_package("x", tmp_path, "ood-loss")
    with pytest.raises(WorkbenchError, match="built-in"):
        write_plugin_package("data", tmp_path)  # workbench_data is the built-in datasets plugin
    with pytest.raises(WorkbenchError, match="leave out 'workbench-'"):
        write_plugin_package("workbench-x", tmp_path)
    write_plugin_package("taken", tmp_path)
    with pytest.raises(WorkbenchError, match="not empty"):
        write_plugin_package("taken", tmp_path)


def invoke(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["workbench", *args])
    monkeypatch.setenv("COLUMNS", "250")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_help_lists_every_kind_and_an_unknown_kind_is_one_line(tmp_path, monkeypatch, capsys):
    code, out, _ = invoke(monkeypatch, capsys, "plugins", "new", "--help")
    assert code == 0
    help_text = " ".join(out.split())
    for kind in KINDS:
        assert kind in help_text

    code, _, err = invoke(monkeypatch, capsys, "plugins", "new", "x", "--kind", "atack", "-o", str(tmp_path))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and "Traceback" not in err and len(lines) == 1, err
    assert "'atack' is not a component kind" in lines[0] and 'did you mean "attack"' in lines[0]
    assert list(tmp_path.iterdir()) == []

    code, out, _ = invoke(monkeypatch, capsys, "plugins", "new", "x", "--kind", "event_sink", "-o", str(tmp_path))
    assert code == 0 and (tmp_path / "workbench-x" / "src" / "workbench_x" / "__init__.py").exists()

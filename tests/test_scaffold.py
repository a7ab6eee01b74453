"""`workbench plugins new`: the generated package registers through its entry point and its test passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tomllib

from workbench.errors import WorkbenchError
from workbench.scaffold import KINDS_WITH_TEMPLATES, write_plugin_package


@pytest.mark.parametrize("kind", KINDS_WITH_TEMPLATES)
def test_generated_package_test_passes(tmp_path, kind):
    folder = write_plugin_package(f"my-{kind}", tmp_path, kind)
    pyproject = tomllib.loads((folder / "pyproject.toml").read_text())
    module = f"workbench_my_{kind}"
    assert pyproject["project"]["entry-points"]["workbench"] == {f"my-{kind}": module}
    assert (folder / "src" / module / "__init__.py").exists() and (folder / "README.md").exists()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


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


def test_bad_name_and_existing_folder_are_refused(tmp_path):
    with pytest.raises(WorkbenchError, match="lowercase"):
        write_plugin_package("Bad_Name", tmp_path)
    with pytest.raises(WorkbenchError, match="templates exist"):
        write_plugin_package("x", tmp_path, "attack")
    with pytest.raises(WorkbenchError, match="built-in"):
        write_plugin_package("data", tmp_path)  # workbench_data is the built-in datasets plugin
    with pytest.raises(WorkbenchError, match="leave out 'workbench-'"):
        write_plugin_package("workbench-x", tmp_path)
    write_plugin_package("taken", tmp_path)
    with pytest.raises(WorkbenchError, match="not empty"):
        write_plugin_package("taken", tmp_path)

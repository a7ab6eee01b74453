"""Snapshot tests of the TUI's static screens (update with `pytest --snapshot-update`)."""

from __future__ import annotations

from workbench.tui.app import WorkbenchApp


def test_recipes_screen(snap_compare, tmp_path):
    app = WorkbenchApp(runs_dir="no-runs-here", recipes_dir=tmp_path)  # a fixed path: it is on screen
    assert snap_compare(app, terminal_size=(120, 30))


def test_empty_runs_screen(snap_compare, tmp_path):
    app = WorkbenchApp(runs_dir="no-runs-here", recipes_dir=tmp_path)  # a fixed path: it is on screen
    assert snap_compare(app, press=["2"], terminal_size=(120, 30))

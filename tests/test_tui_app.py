"""Pilot tests of the TUI's screens against fixture run directories."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from textual.widgets import DataTable, Static

from workbench.tui.app import WorkbenchApp
from workbench.tui.runs import ResultsScreen, RunScreen

RESULTS = {"variants": [
    {"name": "none", "utility": {"test_accuracy": 0.99}, "attacks": {"gmi": {"top1": 0.6}}},
    {"name": "bido-hsic", "utility": {"test_accuracy": 0.97}, "attacks": {"gmi": {"top1": 0.4}}},
]}


def write_run(root: Path, name: str, events: list[dict], *, results: dict | None = None, pid: int = 999_999,
              raw_tail: str = "") -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text('[data]\nuse = "digits"\n')
    (run / "run.json").write_text(json.dumps({"recipe_hash": "x", "pid": pid, "started": time.time()}))
    lines = "".join(json.dumps({"t": time.time(), **e}) + "\n" for e in events)
    (run / "events.jsonl").write_text(lines + raw_tail)
    if results is not None:
        (run / "results.json").write_text(json.dumps(results))
    return run


def started(variants=("none",)) -> dict:
    return {"type": "run_started", "recipe": "recipes/bido_plus.toml", "variants": list(variants), "seed": 0}


def fixture_runs(root: Path) -> None:
    import os

    write_run(root, "finished", [started(["none", "bido-hsic"]), {"type": "run_finished", "seconds": 3.0}],
              results=RESULTS)
    write_run(root, "failed", [started(), {"type": "run_failed", "error": "data: root missing"}])
    write_run(root, "corrupt", [started()], raw_tail='{"type": "epoch", "trunc\nnot json at all\n{"half')
    write_run(root, "running", [started(), {"type": "stage_started", "stage": "train", "variant": "none",
                                            "total": 4}], pid=os.getpid())


def table_column(table: DataTable, index: int) -> list[str]:
    return [str(table.get_row_at(i)[index]) for i in range(table.row_count)]


def run_app(app: WorkbenchApp, scenario) -> None:
    async def main() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.pause()
            await scenario(app, pilot)

    asyncio.run(main())


def test_recipes_screen_lists_shipped_recipes(tmp_path):
    async def scenario(app, pilot):
        table = app.screen.query_one("#recipes", DataTable)
        names = " ".join(str(table.get_row_at(i)[0]) for i in range(table.row_count))
        assert "bido_plus.toml" in names and "celeba_vgg16_bido_plus.toml" in names

    run_app(WorkbenchApp(runs_dir=tmp_path / "runs", recipes_dir=tmp_path), scenario)


def test_runs_screen_shows_every_status_without_crashing_on_corrupt_events(tmp_path):
    fixture_runs(tmp_path)

    async def scenario(app, pilot):
        await pilot.press("2")
        await pilot.pause(0.5)
        table = app.screen.query_one("#runs", DataTable)
        for _ in range(20):  # the scan runs in a worker thread
            if table.row_count == 4:
                break
            await pilot.pause(0.2)
        cells = " ".join(" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))
        for status in ("finished", "failed", "running"):
            assert status in cells
        assert "corrupt" in cells

    run_app(WorkbenchApp(runs_dir=tmp_path, recipes_dir=tmp_path), scenario)


def test_live_view_follows_a_growing_event_file(tmp_path):
    import os

    run = write_run(tmp_path, "live", [started(), {"type": "stage_started", "stage": "train", "variant": "none",
                                                   "total": 4}], pid=os.getpid())

    async def scenario(app, pilot):
        app.push_screen(RunScreen(run))
        await pilot.pause(0.5)
        with (run / "events.jsonl").open("a") as handle:
            for epoch in (1, 2):
                handle.write(json.dumps({"t": time.time(), "type": "epoch", "stage": "train", "variant": "none",
                                         "epoch": epoch, "epochs": 4,
                                         "metrics": {"loss": 1.0 / epoch, "test_accuracy": 0.5 + epoch / 10,
                                                     "dep_x/0": 0.2, "dep_y/0": 0.3}}) + "\n")
        progress = app.screen.query_one("#progress", Static)
        for _ in range(30):
            await pilot.pause(0.2)
            if "2/4" in str(progress.render()):
                break
        assert "2/4" in str(progress.render())
        with (run / "events.jsonl").open("a") as handle:
            handle.write(json.dumps({"t": time.time(), "type": "run_failed", "error": "boom"}) + "\n")
        header = app.screen.query_one("#run-header", Static)
        for _ in range(30):
            await pilot.pause(0.2)
            if "failed" in str(header.render()):
                break
        assert "failed" in str(header.render())

    run_app(WorkbenchApp(runs_dir=tmp_path, recipes_dir=tmp_path), scenario)


def test_results_view_and_deleted_run_directory(tmp_path):
    import shutil

    run = write_run(tmp_path, "done", [started(["none", "bido-hsic"]), {"type": "run_finished", "seconds": 1}],
                    results=RESULTS)

    async def scenario(app, pilot):
        app.push_screen(ResultsScreen([run]))
        await pilot.pause(0.5)
        table = app.screen.query_one("#results", DataTable)
        cells = " ".join(" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))
        assert "bido-hsic" in cells and "none" in cells
        shutil.rmtree(run)
        await pilot.press("f5")
        await pilot.pause(0.5)
        assert app.is_running  # a deleted run is a notice, not a crash

    run_app(WorkbenchApp(runs_dir=tmp_path, recipes_dir=tmp_path), scenario)


def test_q_quits(tmp_path):
    async def scenario(app, pilot):
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running

    run_app(WorkbenchApp(runs_dir=tmp_path, recipes_dir=tmp_path), scenario)

"""The TUI's screens, driven through Textual's Pilot against fixture run directories."""

from __future__ import annotations

import os
import shutil

import pytest
import tomllib
from textual.widgets import DataTable, Input, OptionList, Select, Static

from test_tui import (  # noqa: F401  (fixtures)
    COMMENTED_RECIPE,
    make_app,
    notices,
    plain_text,
    registry,
    runs_dir,
    toy_registry,
    wait_for,
)
from workbench.recipe.load import validate_raw
from workbench.tui.compose import EditorScreen
from workbench.tui.demo import append_events, write_run
from workbench.tui.results import ResultsScreen
from workbench.tui.runs import RunScreen

pytestmark = pytest.mark.asyncio


async def test_recipes_screen_lists_shipped_and_user_recipes(tmp_path, registry):
    (tmp_path / "mine.toml").write_text(COMMENTED_RECIPE)
    app = make_app(tmp_path / "runs", registry, tmp_path)
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.screen.query_one(DataTable)
        names = [table.get_row_at(i)[0] for i in range(table.row_count)]
        assert "bido_plus.toml" in names and "mine.toml" in names
        await pilot.press("q")
    assert app.return_code == 0


@pytest.mark.slow  # a subprocess or a fresh interpreter: seconds, kept out of the fast lane
async def test_runs_screen_shows_each_status(runs_dir, tmp_path, registry):
    app = make_app(runs_dir, registry, tmp_path)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("2")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 4)
        rows = {table.get_row_at(i)[1]: table.get_row_at(i) for i in range(4)}
        assert str(rows["done"][2]) == "finished"
        assert str(rows["broke"][2]) == "failed" and "NaN" in rows["broke"][6]
        assert str(rows["stopped"][2]) == "interrupted"
        assert str(rows["garbled"][2]) == "finished"  # corrupt lines skipped, not fatal
        # A run started elsewhere (from the CLI) appears on the next scan.
        write_run(runs_dir / "from-cli", status="finished")
        await wait_for(pilot, lambda: table.row_count == 5, timeout=15)
        # Deleting a run directory under the TUI's feet is not a crash.
        shutil.rmtree(runs_dir / "done")
        await wait_for(pilot, lambda: table.row_count == 4, timeout=15)


async def test_live_view_follows_a_growing_run(tmp_path, registry):
    runs = tmp_path / "runs"
    run_dir = write_run(runs / "live", status="running", pid=os.getpid(), variants=("none",), epochs=2)
    app = make_app(runs, registry, tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.push_screen(RunScreen(run_dir))
        screen = app.screen
        await wait_for(pilot, lambda: screen.state.events_seen > 0)
        assert screen._status() == "running"
        before = screen.state.events_seen
        # Hundreds of events arriving at once are read and drawn in one go.
        burst = [{"t": 2e9 + i, "type": "progress", "stage": "attack", "variant": "none", "step": i,
                  "total": 400} for i in range(1, 401)]
        burst += [{"t": 2e9 + 500, "type": "epoch", "stage": "train", "variant": "none", "epoch": 3,
                   "epochs": 3, "metrics": {"loss": 0.1, "dep_x/0": 0.3, "dep_y/0": 0.4, "ood_loss": 0.2}}]
        append_events(run_dir, [{"t": 2e9, "type": "stage_started", "stage": "attack", "variant": "none",
                                 "total": 400}] + burst)
        await wait_for(pilot, lambda: screen.state.events_seen == before + len(burst) + 1)
        await pilot.pause(0.3)
        assert "none · attack" in plain_text(screen.query_one("#progress", Static))
        assert "dep_x/0" in plain_text(screen.query_one("#curves-dependency", Static))
        assert "ood_loss" in plain_text(screen.query_one("#curves-ood", Static))
        assert "Device" in plain_text(screen.query_one("#device", Static))
        append_events(run_dir, [{"t": 2e9 + 600, "type": "run_finished", "seconds": 600}])
        await wait_for(pilot, lambda: "finished" in plain_text(screen.query_one("#run-header", Static)))
        assert any("run finished" in str(line) for line in screen.query_one("#log").lines)


async def test_failed_and_corrupt_runs_show_notices(runs_dir, tmp_path, registry):
    app = make_app(runs_dir, registry, tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.push_screen(RunScreen(runs_dir / "broke"))
        await pilot.pause(0.2)
        assert "loss is NaN" in plain_text(app.screen.query_one("#run-header", Static))
        app.pop_screen()
        await app.push_screen(RunScreen(runs_dir / "garbled"))
        await wait_for(pilot, lambda: any("corrupt line" in n for n in notices(app)))
        assert app.screen._status() == "finished"
        app.pop_screen()
        screen = RunScreen(runs_dir / "stopped")
        await app.push_screen(screen)
        await pilot.pause(0.2)
        shutil.rmtree(runs_dir / "stopped")
        await wait_for(pilot, lambda: any("deleted" in n for n in notices(app)))
        assert "missing" in plain_text(screen.query_one("#run-header", Static))


async def test_reconstructions_are_drawn_with_half_blocks(runs_dir, tmp_path, registry):
    app = make_app(runs_dir, registry, tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.push_screen(RunScreen(runs_dir / "done"))
        await pilot.pause(0.2)
        text = plain_text(app.screen.query_one("#recon", Static))
        assert "none · gmi" in text and "▀" in text
        assert "a row per class: its private images, then the reconstructions by restart" in text


async def test_results_across_runs(runs_dir, tmp_path, registry):
    write_run(runs_dir / "other", status="finished", attacks=("gmi",), ood=True)
    app = make_app(runs_dir, registry, tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.push_screen(ResultsScreen([runs_dir / "done", runs_dir / "other"]))
        await pilot.pause(0.2)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 4
        header = [str(c.label) for c in table.columns.values()]
        # The headline columns of report.md (workbench.reporting.columns.headline_columns), within 120.
        assert header == ["run", "variant", "test acc ↑", "gmi top-1 ↓", "OOD FPR95 ↓", "OOD AUROC ↑"]
        assert table.virtual_size.width <= 120
        first = table.get_row_at(0)
        assert first[:4] == ["done", "none", "0.900", "0.800"]
        chart = plain_text(app.screen.query_one("#tradeoff", Static))
        assert "done/bido-hsic (0.6, 0.85)" in chart
        await pilot.press("d")  # every figure
        await pilot.pause(0.2)
        header = [str(c.label) for c in table.columns.values()]
        assert {"gmi top-5 ↓", "gmi KNN ↑", "gmi FID ↑", "OOD AUPR-In ↑"} <= set(header)
        await pilot.press("d")
        await pilot.pause(0.2)
        assert len(table.columns) == 6


async def test_results_headline_fits_120_columns_with_many_attacks(runs_dir, tmp_path, registry):
    """Nine attacks do not fit beside each other: the headline keeps test accuracy and OOD, as many
    attacks as fit, and names how many wait for `d` (which shows every figure of every attack)."""
    attacks = ("gmi", "kedmi", "lomma-gmi", "lomma-kedmi", "plg-mi", "vmi", "ppa", "mi-face", "if-gmi")
    write_run(runs_dir / "many", status="finished", attacks=attacks, ood=True)
    app = make_app(runs_dir, registry, tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        await app.push_screen(ResultsScreen([runs_dir / "many"]))
        await pilot.pause(0.2)
        table = app.screen.query_one(DataTable)
        header = [str(c.label) for c in table.columns.values()]
        assert table.virtual_size.width <= 120
        assert header[:3] == ["run", "variant", "test acc ↑"] and "OOD AUROC ↑" in header
        shown = [h for h in header if h.endswith("top-1 ↓")]
        assert 1 <= len(shown) < len(attacks)
        assert header[-1] == f"+{len(attacks) - len(shown)} attack columns: d"
        await pilot.press("d")
        await pilot.pause(0.2)
        every = {str(c.label) for c in table.columns.values()}
        assert {f"{a} top-1 ↓" for a in attacks} <= every


async def open_section(pilot, screen, key: str) -> None:
    outline = screen.query_one("#outline", OptionList)
    index = next(i for i, s in enumerate(screen.sections) if s.key == key)
    outline.highlighted = index
    await wait_for(pilot, lambda: screen.current is not None and screen.current.key == key
                   and not screen._rendering)
    await pilot.pause(0.05)


async def test_editor_round_trip_keeps_comments(tmp_path, registry):
    path = tmp_path / "mine.toml"
    path.write_text(COMMENTED_RECIPE)
    app = make_app(tmp_path / "runs", registry, tmp_path)
    async with app.run_test(size=(140, 45)) as pilot:
        screen = EditorScreen(path, path)
        await app.push_screen(screen)
        await open_section(pilot, screen, "target.train")
        epochs = screen.query_one("#f-epochs", Input)
        epochs.value = "0"  # invalid: shown inline
        await pilot.pause(0.1)
        assert "from 1 to 100,000" in plain_text(screen.query_one("#e-epochs", Static))
        epochs.value = "7"
        await pilot.pause(0.1)
        assert plain_text(screen.query_one("#e-epochs", Static)) == ""
        await pilot.press("ctrl+s")
        await pilot.pause(0.1)
    text = path.read_text()
    assert "# My experiment: a header comment that must survive the editor." in text
    assert "# training settings, kept short" in text and "# the data table" in text
    raw = tomllib.loads(text)
    assert raw["target"]["train"]["epochs"] == 7 and raw["seed"] == 3
    validate_raw(raw, str(path), registry)


async def test_third_party_component_appears_in_the_picker(tmp_path, toy_registry):
    path = tmp_path / "mine.toml"
    path.write_text(COMMENTED_RECIPE)
    app = make_app(tmp_path / "runs", toy_registry, tmp_path)
    async with app.run_test(size=(140, 45)) as pilot:
        screen = EditorScreen(path, path)
        await app.push_screen(screen)
        await open_section(pilot, screen, "target.backbone")
        picker = screen.query_one("#use-select", Select)
        assert "toy-net" in [value for _, value in picker._options]
        picker.value = "toy-net"
        await wait_for(pilot, lambda: screen.current is not None and screen.current.data == {"use": "toy-net"}
                       and screen.query("#f-width"))
        await pilot.pause(0.05)
        width = screen.query_one("#f-width", Input)
        assert width.placeholder == "default: 8"
        assert "Channels of the toy network" in plain_text(screen.query(".help").first())
        width.value = "16"
        await pilot.pause(0.1)
        assert screen.action_save()
    raw = tomllib.loads(path.read_text())
    assert raw["target"]["backbone"] == {"use": "toy-net", "width": 16}
    validate_raw(raw, str(path), toy_registry)


async def test_palette_lists_the_screen_bindings(runs_dir, tmp_path, registry):
    app = make_app(runs_dir, registry, tmp_path)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("2")
        await pilot.pause(0.1)
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert {"Cancel run", "Resume run", "Results", "Quit"} <= set(titles)

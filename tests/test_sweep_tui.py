"""A sweep directory in `runs list` and the TUI: one row with its progress, and a screen with its
aggregate table and Pareto plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from test_sweep import fake_results
from test_tui import make_app, plain_text, registry, wait_for  # noqa: F401  (fixtures)
from workbench.storage.runs import list_runs, summarize
from workbench.sweeps.aggregate import aggregate, write_aggregate, write_pareto
from workbench.tui.results import SweepScreen

T0 = 1_790_000_000.0


def write_sweep(sweep_dir: Path, *, finished: int, failed: int = 0, total: int = 3, ended: bool = True,
                pid: int | None = None) -> None:
    runs = [f"base-s{i}" for i in range(total)]
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"identity": "x", "runs": total, "pid": pid or 999_999_999,
                                                      "host": None, "started": T0}))
    events = [{"t": T0, "type": "sweep_started", "sweep": "recipes/sweeps/s.toml", "runs": runs}]
    events += [{"t": T0 + i, "type": "sweep_run_finished", "run": runs[i]} for i in range(finished)]
    events += [{"t": T0 + 10 + i, "type": "sweep_run_failed", "run": runs[finished + i], "error": "boom"}
               for i in range(failed)]
    if ended:
        events.append({"t": T0 + 20, "type": "sweep_finished", "finished": finished, "failed": failed})
    (sweep_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if ended:
        results = {s: fake_results(0.99 - s / 100, 0.6 + s / 50, 0.3 + s / 40) for s in range(finished)}
        data = aggregate([{"id": "base", "values": {}, "seeds": list(range(total)), "results": results}])
        write_aggregate(sweep_dir, data)
        write_pareto(sweep_dir, data, "utility.test_accuracy", None)


def test_a_sweep_is_one_row_with_its_progress(tmp_path):
    write_sweep(tmp_path / "done", finished=3)
    write_sweep(tmp_path / "partly", finished=2, failed=1)
    write_sweep(tmp_path / "live", finished=1, ended=False, pid=os.getpid())
    write_sweep(tmp_path / "killed", finished=1, ended=False)
    rows = {info.name: info for info in list_runs(tmp_path)}
    assert set(rows) == {"done", "partly", "live", "killed"}  # the runs inside are not rows of their own
    assert rows["done"].status == "finished" and rows["done"].headline == "sweep: 3 of 3 runs finished"
    assert rows["partly"].status == "failed" and rows["partly"].headline == "sweep: 2 of 3 runs finished, 1 failed"
    assert "base-s2" in rows["partly"].error
    assert rows["live"].status == "running" and rows["killed"].status == "interrupted"
    assert summarize(tmp_path / "done").kind == "sweep" and rows["done"].recipe == "recipes/sweeps/s.toml"



@pytest.mark.asyncio
async def test_runs_screen_opens_a_sweep_with_its_aggregate_and_plot(tmp_path, registry):  # noqa: F811
    runs_dir = tmp_path / "runs"
    write_sweep(runs_dir / "seeds", finished=3)
    app = make_app(runs_dir, registry, tmp_path)
    async with app.run_test(size=(160, 60)) as pilot:
        await pilot.press("2")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 1)
        assert "sweep: 3 of 3 runs finished" in str(table.get_row_at(0)[6])
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
        aggregate_table = app.screen.query_one("#sweep-aggregate", DataTable)
        await wait_for(pilot, lambda: aggregate_table.row_count == 2)
        row = [str(c) for c in aggregate_table.get_row_at(1)]
        assert row[:2] == ["base", "bido-coco"] and any(c.startswith("lowers by") for c in row)
        assert "3 of 3 runs finished" in plain_text(app.screen.query_one("#sweep-progress", Static))
        assert "▀" in plain_text(app.screen.query_one("#sweep-pareto", Static))
        await pilot.press("escape")

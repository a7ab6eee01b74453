"""How fast the TUI opens a long run: reading and folding thousands of events, and mounting the
live view headless, in one process.

    python benchmarks/bench_tui.py [--events 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from workbench.tui.app import WorkbenchApp
from workbench.tui.follow import EventFollower, RunState
from workbench.tui.runs import RunScreen


def write_events(run: Path, count: int) -> None:
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"recipe_hash": "x", "pid": 0}))
    lines = [{"type": "run_started", "recipe": "r.toml", "variants": ["none", "bido-hsic"], "seed": 0}]
    for i in range(count):
        variant = ("none", "bido-hsic")[i % 2]
        lines.append({"type": "progress", "stage": "attack:gmi", "variant": variant, "step": i, "total": count,
                      "loss": 1.0 / (i + 1), "confidence": 0.5} if i % 3 else
                     {"type": "epoch", "stage": "train", "variant": variant, "epoch": i // 3 + 1, "epochs": count,
                      "metrics": {"loss": 1.0, "test_accuracy": 0.9, "dep_x/0": 0.1, "dep_y/0": 0.2}})
    (run / "events.jsonl").write_text("".join(json.dumps({"t": time.time(), **e}) + "\n" for e in lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        write_events(run, args.events)
        start = time.perf_counter()
        state = RunState()
        follower = EventFollower(run)
        while batch := follower.poll():
            state.apply_all(batch)
        fold = time.perf_counter() - start

        async def mount() -> float:
            app = WorkbenchApp(runs_dir=tmp, recipes_dir=tmp)
            async with app.run_test(size=(160, 50)) as pilot:
                begin = time.perf_counter()
                app.push_screen(RunScreen(run))
                await pilot.pause()
                return time.perf_counter() - begin

        mounted = asyncio.run(mount())
    print(f"{args.events} events: read + fold {fold * 1e3:.0f} ms; live view mounted in {mounted * 1e3:.0f} ms")


if __name__ == "__main__":
    main()

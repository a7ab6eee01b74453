"""Where the main job's time goes: by stage and by operation, as ratios to a reference run.

    python benchmarks/profile_main_job.py [--recipe recipes/bido_plus.toml] [--workers N]
                                          [--ops] [--top 25] [--set KEY=VALUE ...] [--no-warm]

Runs the recipe cold (fresh stage cache) and then warm (same cache, new run directory) in this
process and prints:

- the wall time and the CPU time of each run (this process plus its worker processes, from
  `getrusage`), and the warm / cold ratio;
- the cold run's stages from its `events.jsonl` (the shared stages, then each variant's training,
  attacks and evaluation), in seconds and as a share of the run;
- with `--ops`, the operations: the cold run goes in this process (`--workers 1`, which gives the same
  figures as two workers: threads per job do not depend on `--workers`) under cProfile, and the
  functions that take the time are listed by own time (torch's kernels: convolutions, backward,
  optimizer steps) and by cumulative time inside workbench and its plugins (GAN training steps,
  latent searches, evaluation);
- every time also as a multiple of a reference run measured in the same process before and after
  the job (a fixed MCNN training loop on one thread), so figures taken on a busy or a different
  machine can be compared: "cold = 41.3 reference units" means the same thing on a shared runner.

CPU time is the figure to compare on a loaded machine: wall time there measures the other
processes. On a quiet 2-core machine the cold wall time is about the CPU time over 2 plus the parts
that run in one process only (the data, the report).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from workbench import load_registry
from workbench.running.runner import RunOptions, run_recipe


def cpu_seconds() -> float:
    """CPU time of this process and of every worker it has waited for (user + system)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reference_run(steps: int = 150) -> tuple[float, float]:
    """(wall, CPU) seconds of a fixed workload like the job's: MCNN width 16 on 16 px digits-sized
    batches of 64, forward + backward + Adam, on one thread (the job's threads per worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = load_registry().create("backbone", "mcnn", width=16).build(5, 1, 16)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(64, 1, 16, 16, generator=generator)
        y = torch.randint(0, 5, (64,), generator=generator)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)


def stage_seconds(run_dir: Path) -> list[tuple[str, str | None, float]]:
    """(stage, variant, seconds) of every finished stage in the run's events, in order."""
    rows = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("type") == "stage_finished":
            rows.append((event["stage"], event.get("variant"), float(event["seconds"])))
    return rows


def print_stages(rows: list[tuple[str, str | None, float]], run_wall: float, unit: float) -> None:
    print("\nStages of the cold run (events.jsonl; nested stages overlap: `evaluate` holds a variant's "
          "attacks, `evaluation-model` its `train`; variants overlap when workers > 1):")
    print(f"  {'stage':<28} {'variant':<18} {'seconds':>8} {'share':>6} {'ref units':>9}")
    for stage, variant, seconds in rows:
        print(f"  {stage:<28} {variant or '-':<18} {seconds:8.1f} {seconds / run_wall:6.1%} {seconds / unit:9.1f}")
    totals: dict[str, float] = defaultdict(float)
    for stage, variant, seconds in rows:
        if variant is not None and variant != "evaluation-model":
            totals[stage] += seconds
    if totals:
        print("  summed over variants:")
        for stage, seconds in sorted(totals.items(), key=lambda item: -item[1]):
            print(f"    {stage:<26} {seconds:8.1f} s  {seconds / unit:7.1f} ref units")


def print_ops(profile: cProfile.Profile, top: int) -> None:
    stats = pstats.Stats(profile)
    total = sum(entry[2] for entry in stats.stats.values())  # own time of every function
    entries = [(func, entry) for func, entry in stats.stats.items()]

    def name(func: tuple[str, int, str]) -> str:
        filename, line, function = func
        if filename == "~":
            return function  # a builtin: torch's C kernels show here ({built-in method torch.conv2d})
        for marker in ("/workbench/", "/plugins/", "/torch/"):
            if marker in filename:
                filename = filename[filename.index(marker) + 1:]
                break
        else:
            filename = Path(filename).name
        return f"{filename}:{line}({function})"

    print(f"\nOperations by own time (cProfile, {total:.1f} s profiled in this process):")
    print(f"  {'own s':>8} {'share':>6} {'calls':>9}  function")
    for func, (_, calls, own, _, _) in sorted(entries, key=lambda item: -item[1][2])[:top]:
        print(f"  {own:8.1f} {own / total:6.1%} {calls:9d}  {name(func)}")
    ours = [(func, entry) for func, entry in entries
            if "/workbench/" in func[0] or "/plugins/" in func[0]]
    print("\nworkbench and plugin functions by cumulative time (GAN steps, latent searches, evaluation):")
    print(f"  {'cum s':>8} {'share':>6} {'calls':>9}  function")
    for func, (_, calls, _, cumulative, _) in sorted(ours, key=lambda item: -item[1][3])[:top]:
        print(f"  {cumulative:8.1f} {cumulative / total:6.1%} {calls:9d}  {name(func)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/bido_plus.toml")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes for the cold run (default: as `workbench run`; 1 with --ops)")
    parser.add_argument("--ops", action="store_true", help="profile the cold run's operations (in this process)")
    parser.add_argument("--top", type=int, default=25, help="functions listed with --ops")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, as `workbench run --set` (e.g. to profile a shorter job)")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm (cached) rerun")
    args = parser.parse_args()
    workers = 1 if args.ops and args.workers is None else args.workers

    before = reference_run()
    print(f"reference run: {before[0]:.2f} s wall, {before[1]:.2f} s CPU", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        runs: dict[str, tuple[float, float]] = {}
        profile = cProfile.Profile() if args.ops else None
        for attempt in ("cold",) if args.no_warm else ("cold", "warm"):
            options = RunOptions(recipe=Path(args.recipe), run_dir=Path(tmp) / attempt, cache_dir=cache,
                                 workers=workers, overrides=list(args.overrides))
            wall, cpu = time.perf_counter(), cpu_seconds()
            if profile is not None and attempt == "cold":
                profile.runcall(run_recipe, options)
            else:
                run_recipe(options)
            runs[attempt] = (time.perf_counter() - wall, cpu_seconds() - cpu)
            print(f"{attempt:>4} cache: {runs[attempt][0]:7.1f} s wall, {runs[attempt][1]:7.1f} s CPU", flush=True)
        after = reference_run()
        print(f"reference run: {after[0]:.2f} s wall, {after[1]:.2f} s CPU")
        wall_unit = (before[0] + after[0]) / 2
        cpu_unit = (before[1] + after[1]) / 2
        print(f"\n{'run':<6} {'wall s':>8} {'CPU s':>8} {'wall / ref':>11} {'CPU / ref CPU':>14}")
        for attempt, (wall, cpu) in runs.items():
            print(f"{attempt:<6} {wall:8.1f} {cpu:8.1f} {wall / wall_unit:11.1f} {cpu / cpu_unit:14.1f}")
        if "warm" in runs:
            print(f"warm / cold: {runs['warm'][0] / runs['cold'][0]:.3f} wall, "
                  f"{runs['warm'][1] / runs['cold'][1]:.3f} CPU")
        print_stages(stage_seconds(Path(tmp) / "cold"), runs["cold"][0], wall_unit)
    if profile is not None:
        print_ops(profile, args.top)


if __name__ == "__main__":
    main()

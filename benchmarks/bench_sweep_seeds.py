"""A 5-seed sweep of the main recipe on `processes` (2 workers) against 5 sequential single runs.

    python benchmarks/bench_sweep_seeds.py [--recipe recipes/bido_plus.toml] [--seeds 0-4] [--workers 2]
                                           [--set key=value ...] [--quick] [--out DIR]

Each side starts from its own empty stage cache, as `workbench` commands in fresh processes:

- sequential: `workbench run RECIPE --set seed=N` for each seed, one after another (the way the
  5-seed table was made before sweeps); each run trains its own evaluation model and GMI prior,
  keyed on its seed, so each is a cold single run (their median is "one cold single run").
- sweep: `workbench sweep` over the same seeds with `processes` and `--workers` workers; E and the
  GMI prior are trained once for all seeds (share_stages), then the runs go two at a time.

Prints both wall times, sweep / sequential, and sweep / one cold single run (the issue's target:
at most 3.5x). `--quick` cuts every budget (epochs, GAN steps, search iterations) so the whole
comparison fits a few minutes on a busy 2-core machine; the figures are then not the paper's.

Then where the time goes, from the runs' events.jsonl (`stage_seconds`): seconds by stage summed
over the sweep's runs and over the single runs, the seed-dependent work of one run (its variants'
training and evaluation, one thread each) against the shared stages, and the floor those set on
sweep / one cold single run with W workers: (shared + N·work/W) / (shared + work/W), whatever the
scheduling. `--profile SWEEP_DIR` prints that part alone for a finished sweep (no timing runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

QUICK = [
    "target.train.epochs=4",
    "variants.bido-hsic+.ood_training.warmup_epochs=2",
    "variants.bido-coco+.ood_training.warmup_epochs=2",
    "evaluation.train.epochs=4",
    "attacks.gmi.gan_steps=20",
    "attacks.gmi.iterations=30",
    "attacks.kedmi.gan_steps=15",
    "attacks.kedmi.iterations=30",
]


def workbench(*args: str, cache: Path) -> float:
    env = {**os.environ, "WORKBENCH_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workbench", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def stage_seconds(run_dirs: list[Path]) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds by stage summed over runs: (shared stages, per-variant stages). A variant's work is
    its `train` plus its `evaluate` (which holds its attacks, listed too but not added twice)."""
    shared: dict[str, float] = defaultdict(float)
    variants: dict[str, float] = defaultdict(float)
    for run_dir in run_dirs:
        path = run_dir / "events.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("type") != "stage_finished":
                continue
            (variants if event.get("variant") else shared)[event["stage"]] += float(event.get("seconds") or 0)
    return dict(shared), dict(variants)


def profile(sweep_dir: Path, workers: int, singles: list[Path] | None = None) -> None:
    """Where the sweep's time went, and the floor it sets on sweep / one cold single run."""
    runs = sorted((sweep_dir / "runs").iterdir())
    shared, variants = stage_seconds(sorted((sweep_dir / "shared").iterdir()) + runs)
    print(f"\nstage seconds summed over the sweep's {len(runs)} runs (one thread per job):")
    for name, seconds in sorted({**shared, **variants}.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22} {seconds:9.1f}  {'shared' if name in shared else 'per variant'}")
    work = (variants.get("train", 0.0) + variants.get("evaluate", 0.0)) / max(1, len(runs))
    trained_once = max(shared.get("evaluation-model", 0.0),
                       max((v for k, v in shared.items() if k.startswith("prior:")), default=0.0))
    loads = sum(v for k, v in shared.items() if k in ("data", "ood-test-sets")) / max(1, len(runs))
    print(f"seed-dependent work of one run: {work:.1f} s (variants' train + evaluate); shared stages trained "
          f"once: {trained_once:.1f} s (the longer of E and the priors, in parallel); loading per run: {loads:.1f} s")
    n = len(runs)
    floor = (trained_once + n * (work + loads) / workers) / (trained_once + (work + loads) / workers)
    print(f"floor of sweep / one cold single run with {workers} workers: {floor:.2f}  "
          f"((shared + {n} x work / {workers}) / (shared + work / {workers}))")
    if singles:
        s_shared, s_variants = stage_seconds(singles)
        single_work = (s_variants.get("train", 0.0) + s_variants.get("evaluate", 0.0)) / len(singles)
        print(f"single runs: seed-dependent work {single_work:.1f} s per run, shared stages "
              f"{sum(s_shared.values()) / len(singles):.1f} s per run (each trains its own E and priors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/bido_plus.toml")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="small budgets: minutes instead of an hour")
    parser.add_argument("--out", default=None, help="keep the run and sweep directories here")
    parser.add_argument("--profile", default=None, metavar="SWEEP_DIR",
                        help="only print where a finished sweep's time went (no timing runs)")
    args = parser.parse_args()
    if args.profile:
        profile(Path(args.profile), args.workers)
        return
    from workbench.sweeps import parse_seeds

    seeds = parse_seeds(args.seeds)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    sets = [x for o in overrides for x in ("--set", o)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        singles = []
        for seed in seeds:
            singles.append(workbench("run", args.recipe, "--run-dir", str(out / "single" / f"s{seed}"), "--quiet",
                                     "--set", f"seed={seed}", *sets, cache=Path(tmp) / "cache-single"))
            print(f"single run, seed {seed}: {singles[-1]:7.1f} s", flush=True)
        sequential = sum(singles)
        sweep_file = Path(tmp) / "sweep.toml"
        sweep_file.write_text(f'recipe = "{Path(args.recipe).resolve()}"\nseeds = "{args.seeds}"\n'
                              f'[executor]\nuse = "processes"\nworkers = {args.workers}\n')
        swept = workbench("sweep", str(sweep_file), "--sweep-dir", str(out / "sweep"), "--quiet", *sets,
                          cache=Path(tmp) / "cache-sweep")
        print(f"{len(seeds)} sequential single runs: {sequential:7.1f} s")
        print(f"{len(seeds)}-seed sweep, processes ({args.workers} workers): {swept:7.1f} s")
        print(f"sweep / sequential: {swept / sequential:.2f}")
        # Every single run is cold for its own seed (E and the GMI prior are keyed on it); the median
        # is the "one cold single run", robust to one run slowed by other load on the machine.
        median = statistics.median(singles)
        print(f"sweep / one cold single run (median {median:.1f} s): {swept / median:.2f}  (target <= 3.5)")
        profile(out / "sweep", args.workers, [out / "single" / f"s{seed}" for seed in seeds])


if __name__ == "__main__":
    main()

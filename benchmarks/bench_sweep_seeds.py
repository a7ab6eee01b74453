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
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/bido_plus.toml")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="small budgets: minutes instead of an hour")
    parser.add_argument("--out", default=None, help="keep the run and sweep directories here")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()

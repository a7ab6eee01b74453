"""Wall time of the main job, cold and warm stage cache, in one process.

    python benchmarks/bench_main_job.py [--recipe recipes/bido_plus.toml] [--workers N]

Runs the recipe twice into fresh run directories with one fresh cache folder: the first run
trains everything; the second finds the evaluation model, the GAN priors, the targets and the
reconstructions in the cache. Prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from workbench.running.runner import RunOptions, run_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="recipes/bido_plus.toml")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        times = []
        for attempt in ("cold", "warm"):
            start = time.perf_counter()
            run_recipe(RunOptions(recipe=Path(args.recipe), run_dir=Path(tmp) / attempt, cache_dir=cache,
                                  workers=args.workers))
            times.append(time.perf_counter() - start)
            print(f"{attempt:>4} cache: {times[-1]:7.1f} s", flush=True)
    print(f"warm / cold: {times[1] / times[0]:.3f}")


if __name__ == "__main__":
    main()

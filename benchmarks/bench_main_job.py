"""Wall time of the main job, cold and warm stage cache, in one process.

    python benchmarks/bench_main_job.py [--recipe recipes/bido_plus.toml] [--workers N]
                                        [--set KEY=VALUE ...] [--baseline-set KEY=VALUE ...]

Runs the recipe twice into fresh run directories with one fresh cache folder: the first run
trains everything; the second finds the evaluation model, the GAN priors, the targets and the
reconstructions in the cache. Prints both times and their ratio.

With `--baseline-set`, a cold run of the recipe with those overrides instead (its own fresh cache)
runs first in the same process, and the ratio of the main job's cold time to it is printed: what
a feature costs, measured on the same machine at the same moment. For example, what the two extra
evaluation models and their metrics cost the main job:

    python benchmarks/bench_main_job.py --baseline-set 'evaluators={}' \\
        --baseline-set 'metrics=[{use = "accuracy"}, {use = "attack-accuracy"}, {use = "knn-dist"}, {use = "fid"}]'
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from workbench.running.runner import RunOptions, run_recipe


def timed_run(recipe: Path, run_dir: Path, cache: Path, overrides: list[str], workers: int | None) -> float:
    start = time.perf_counter()
    run_recipe(RunOptions(recipe=recipe, run_dir=run_dir, cache_dir=cache, overrides=overrides, workers=workers))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/bido_plus.toml")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the measured recipe (repeatable)")
    parser.add_argument("--baseline-set", dest="baseline", action="append", default=None, metavar="KEY=VALUE",
                        help="measure a cold baseline with these overrides first (repeatable)")
    args = parser.parse_args()
    recipe = Path(args.recipe)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = None
        if args.baseline is not None:
            baseline = timed_run(recipe, Path(tmp) / "baseline", Path(tmp) / "baseline-cache",
                                 args.overrides + args.baseline, args.workers)
            print(f"baseline cold: {baseline:7.1f} s  ({' '.join(args.baseline)})", flush=True)
        times = []
        for attempt in ("cold", "warm"):
            times.append(timed_run(recipe, Path(tmp) / attempt, Path(tmp) / "cache", args.overrides, args.workers))
            print(f"{attempt:>4} cache: {times[-1]:7.1f} s", flush=True)
    print(f"warm / cold: {times[1] / times[0]:.3f}")
    if baseline is not None:
        print(f"cold / baseline cold: {times[0] / baseline:.3f}")


if __name__ == "__main__":
    main()

"""The main job over several seeds: mean ± std per variant of utility, privacy and OOD figures.

    python benchmarks/bido_plus_seeds.py [--seeds 0 1 2] [--recipe recipes/bido_plus.toml] [--out runs/seeds]

Each seed is a full `workbench run` (`--set seed=N`); the evaluation model and GMI prior are
cached per seed. Prints a table and writes `summary.json` beside the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

COLUMNS = [
    ("test acc", lambda v: v["utility"]["test_accuracy"]),
    ("gmi top-1", lambda v: v["attacks"]["gmi"]["top1"]),
    ("kedmi top-1", lambda v: v["attacks"]["kedmi"]["top1"]),
    ("gmi KNN", lambda v: v["attacks"]["gmi"]["knn_dist"]),
    ("mean FPR95", lambda v: v["ood"]["mean"]["fpr95"]),
    ("mean AUROC", lambda v: v["ood"]["mean"]["auroc"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default="recipes/bido_plus.toml")
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    per_seed = {}
    for seed in args.seeds:
        run_dir = Path(args.out) / f"seed{seed}"
        if not (run_dir / "results.json").exists():
            cmd = [sys.executable, "-m", "workbench", "run", args.recipe, "--run-dir", str(run_dir), "--quiet",
                   "--set", f"seed={seed}", *[x for o in args.overrides for x in ("--set", o)]]
            if run_dir.exists():
                cmd.append("--resume")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        per_seed[seed] = json.loads((run_dir / "results.json").read_text())

    names = [v["name"] for v in per_seed[args.seeds[0]]["variants"]]
    summary: dict[str, dict[str, list[float]]] = {}
    for name in names:
        summary[name] = {}
        for title, get in COLUMNS:
            values = []
            for results in per_seed.values():
                variant = next(v for v in results["variants"] if v["name"] == name)
                with contextlib.suppress(KeyError):  # a variant without that figure
                    values.append(float(get(variant)))
            if values:
                summary[name][title] = values

    header = f"{'variant':<12}" + "".join(f"{t:>22}" for t, _ in COLUMNS)
    print(f"seeds {args.seeds}: mean ± std (sample std over seeds)")
    print(header)
    for name, columns in summary.items():
        cells = []
        for title, _ in COLUMNS:
            values = columns.get(title)
            if not values:
                cells.append(f"{'–':>22}")
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):>14.4f} ± {std:.4f}")
        print(f"{name:<12}" + "".join(cells))
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

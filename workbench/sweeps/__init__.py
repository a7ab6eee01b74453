"""Sweeps: a recipe over seeds and a grid of values, run on an executor, aggregated with
confidence intervals (see docs/sweeps.md)."""

from workbench.sweeps.run import SweepOptions, SweepResult, SweepRunner, is_sweep_dir, run_sweep
from workbench.sweeps.spec import Sweep, SweepFile, load_sweep, parse_seeds

__all__ = ["Sweep", "SweepFile", "SweepOptions", "SweepResult", "SweepRunner", "is_sweep_dir", "load_sweep",
           "parse_seeds", "run_sweep"]

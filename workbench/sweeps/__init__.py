"""Sweeps: a recipe over seeds and a grid of values, run on an executor, aggregated with
confidence intervals (see docs/sweeps.md).

Names are imported on first use, so readers of a sweep directory (`runs list`, the TUI) that
import `workbench.sweeps.aggregate` do not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SweepOptions": "run", "SweepResult": "run", "SweepRunner": "run", "is_sweep_dir": "directory", "run_sweep": "run",
    "Sweep": "spec", "SweepFile": "spec", "load_sweep": "spec", "parse_seeds": "spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"workbench.sweeps.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'workbench.sweeps' has no attribute {name!r}")

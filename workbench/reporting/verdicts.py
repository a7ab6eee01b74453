"""Plain sentences written from a run's figures: one verdict per variant against `none`, and what a
single seed can and cannot show.

Torch-free and pure: report.md, report.html and their tests use the same wording.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from workbench.reporting.columns import Column, figure, headline_columns, rounded, spread_decimals

BASELINE = "none"
"""The variant each defense is compared with (the undefended target)."""

SEEDS_EXAMPLE = "0-4"


def seeds_command(recipe: str | Path) -> str:
    """The command that repeats a recipe over seeds (a seeds-only sweep with 95 % intervals)."""
    return f"workbench run {recipe} --seeds {SEEDS_EXAMPLE}"


def seed_note(results: dict[str, Any], run_dir: Path) -> str:
    """What the figures of this one run are: one draw over seeds, and how to get intervals.

    Markdown inline (backticks for commands and paths)."""
    seed = results.get("seed", "?")
    sweep_dir = Path(run_dir).parent.parent
    restarts = ("; the ± beside an attack's top-1 is its spread over the attack's restarts on this one "
                "target, not over seeds")
    if (sweep_dir / "sweep.toml").exists():
        return (f"This run is seed {seed} of the sweep in `{sweep_dir}`: its figures are one draw{restarts}. "
                f"The sweep's own report (`{sweep_dir / 'report.html'}`) has the mean over seeds, 95 % "
                "confidence intervals and paired differences against `none`.")
    return (f"One seed (seed {seed}): every figure here is one draw of the training and attack randomness"
            f"{restarts}. A difference between variants smaller than the seed-to-seed spread (often several "
            "points of attack top-1) cannot be told from noise on one seed. For 95 % confidence intervals "
            f"and paired differences against `none`, run `{seeds_command(results.get('recipe', 'RECIPE'))}` "
            "(or `workbench sweep SWEEP.toml` with `seeds = [0, 1, 2, 3, 4]`).")


def _difference(value: float, reference: float, spread: float | None) -> str:
    """`+0.106` rounded like the figures it compares."""
    decimals = spread_decimals(spread)
    return f"{value - reference:+.{3 if decimals is None else decimals}f}".replace("-", "−")


def _compare(column: Column, variant: dict[str, Any], baseline: dict[str, Any]) -> str | None:
    value, reference = figure(variant, column.section, column.key), figure(baseline, column.section, column.key)
    if value is None or reference is None:
        return None
    spreads = [figure(v, column.section, column.spread) if column.spread else None for v in (variant, baseline)]
    known = [s for s in spreads if s is not None]
    combined = math.sqrt(sum(s * s for s in known)) if len(known) == 2 else None
    shown = f"{column.title} {rounded(value, spreads[0])} against {rounded(reference, spreads[1])}"
    difference = value - reference
    if rounded(value, combined) == rounded(reference, combined):
        return f"{shown}: the same"
    if combined is not None and abs(difference) <= combined:
        return f"{shown} ({_difference(value, reference, combined)}): within the spread over restarts"
    better = (difference > 0) == column.higher if column.higher is not None else None
    meaning = {
        "utility": {True: "more accurate", False: "costs accuracy"},
        "attacks": {True: "more private", False: "less private"},
        "ood": {True: "detects OOD better", False: "detects OOD worse"},
    }.get(column.section, {True: "better", False: "worse"})
    word = "" if better is None else f", {meaning[better]}"
    return f"{shown} ({_difference(value, reference, combined)}{word})"


def run_verdicts(results: dict[str, Any]) -> dict[str, str]:
    """variant name -> one sentence comparing its headline figures with `none`'s on this run.

    Empty when the run has no `none` variant (nothing to compare with)."""
    variants = results.get("variants", [])
    baseline = next((v for v in variants if v.get("name") == BASELINE), None)
    if baseline is None:
        return {}
    columns = headline_columns(variants)
    verdicts = {BASELINE: "The undefended target: the reference the other variants are compared with."}
    for variant in variants:
        if variant is baseline:
            continue
        parts = [p for p in (_compare(c, variant, baseline) for c in columns) if p]
        verdicts[variant["name"]] = ("Against none: " + "; ".join(parts) + ".") if parts else \
            "No figure in common with none."
    return verdicts

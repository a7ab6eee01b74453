"""The results table's columns, in one place: report.md, the terminal table and the TUI show the same.

Torch-free, so the TUI's runs side can use it. Known figures get a title and a direction (↑ higher
is better for the defender, ↓ lower); any other numeric figure a metric plugin adds gets a column
too, titled by its key, so a metric's keys are never only in results.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# figure key -> (title, higher is better for the defender)
KNOWN: dict[str, tuple[str, bool]] = {
    "test_accuracy": ("test acc", True),
    "top1": ("top-1", False),
    # Counted only when every evaluation model agrees on the target class (several evaluators).
    "agreed_top1": ("agreed top-1", False),
    "top5": ("top-5", False),
    # PPA reports E's accuracy before its final selection too (top1/top5 are the selected set's).
    "top1_unselected": ("top-1 unselected", False),
    "top5_unselected": ("top-5 unselected", False),
    "knn_dist": ("KNN", True),
    "fid": ("FID", True),
    "fpr95": ("FPR95", False),
    "auroc": ("AUROC", True),
    "aupr_in": ("AUPR-In", True),
    "epsilon": ("DP ε", False),
    "trap_accuracy": ("trapdoor acc", None),
    # Images a black-box or label-only attack sent to the target (its oracle's count; the threat model's cost).
    "queries": ("queries", None),
}
OOD_COLUMNS = ("fpr95", "auroc", "aupr_in")


@dataclass(frozen=True)
class Column:
    section: str
    key: str
    """Dotted path inside the section (`gmi.top1`, `mean.fpr95`)."""
    title: str
    higher: bool | None
    """True/False: which way is better for the defender; None: unknown (a plugin's figure)."""
    spread: str | None = None
    """Dotted path of the figure's standard deviation in the same section (`gmi.top1_std`: over
    the attack's restarts), shown as ± beside it; None when the figure has none."""

    @property
    def heading(self) -> str:
        return self.title + {True: " ↑", False: " ↓", None: ""}[self.higher]


POST_HOC = "post-hoc"
"""The mark beside a variant whose defense declares `DefenseCapabilities(post_hoc=True)`: its target
trained as `none` would and the defense wrapped it afterwards (results.json: `defense.post_hoc`)."""


def is_post_hoc(variant: dict[str, Any]) -> bool:
    """Whether a variant's record (results.json, or a sweep's aggregate) says its defense is post-hoc."""
    defense = variant.get("defense")
    return isinstance(defense, dict) and defense.get("post_hoc") is True


def variant_label(variant: dict[str, Any]) -> str:
    """The variant's name as the tables show it: `noise (post-hoc)` for a post-hoc defense's variant."""
    return f"{variant['name']} ({POST_HOC})" if is_post_hoc(variant) else str(variant["name"])


def post_hoc_note(variants: list[dict[str, Any]]) -> str | None:
    """One line naming the post-hoc variants and what the mark means, or None when there are none."""
    marked = [f"`{v['name']}` ({v['defense'].get('use', '?')})" for v in variants if is_post_hoc(v)]
    if not marked:
        return None
    return (f"{POST_HOC}: {', '.join(marked)}: the classifier trained without the defense (as `none`) and the "
            "defense wraps the trained classifier; it changes what evaluation and attacks see, not the training")


def figure(variant: dict[str, Any], section: str, key: str) -> float | None:
    """A numeric figure of one variant's results, or None (missing, or not a number)."""
    value: Any = variant.get(section, {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _numeric_keys(mappings: list[Any]) -> list[str]:
    keys: dict[str, None] = {}
    for mapping in mappings:
        if isinstance(mapping, dict):
            keys.update((k, None) for k, v in mapping.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    known = [k for k in KNOWN if k in keys]
    return known + sorted(k for k in keys if k not in KNOWN)


def _column(section: str, key: str, prefix: str = "") -> Column:
    title, higher = KNOWN.get(key.rsplit(".", 1)[-1], (key.rsplit(".", 1)[-1], None))
    return Column(section, key, f"{prefix}{title}", higher)


def results_columns(variants: list[dict[str, Any]]) -> list[Column]:
    """Every column that at least one variant has a figure for: utility, each attack, mean OOD."""
    columns = [_column("utility", k) for k in _numeric_keys([v.get("utility") for v in variants])]
    attacks = sorted({a for v in variants for a in (v.get("attacks") or {}) if isinstance(v.get("attacks"), dict)})
    for attack in attacks:
        per_attack = [(v.get("attacks") or {}).get(attack) for v in variants]
        columns += [_column("attacks", f"{attack}.{k}", f"{attack} ") for k in _numeric_keys(per_attack)]
    columns += [_column("ood", f"mean.{k}", "OOD ") for k in OOD_COLUMNS]
    # What a defense reports of its training (DP-SGD's ε; δ is a setting, not a result).
    columns += [_column("defense", k) for k in _numeric_keys([v.get("defense") for v in variants]) if k != "delta"]
    return [c for c in columns if any(figure(v, c.section, c.key) is not None for v in variants)]


def best_per_column(variants: list[dict[str, Any]], columns: list[Column]) -> dict[Column, float]:
    """The best value of each column with a direction (for bold / green)."""
    best = {}
    for column in columns:
        values = [x for x in (figure(v, column.section, column.key) for v in variants) if x is not None]
        if values and column.higher is not None:
            best[column] = max(values) if column.higher else min(values)
    return best


HEADLINE_ATTACK_KEYS = ("agreed_top1", "top1")
"""An attack's headline figure: the evaluators' agreed top-1 where the run has several evaluation
models, else E's top-1."""


def headline_columns(variants: list[dict[str, Any]]) -> list[Column]:
    """The few columns a reader looks at first: test accuracy, each attack's headline top-1 (with its
    spread over restarts where recorded) and, for a black-box or label-only attack, its queries, mean
    OOD FPR95 and AUROC, and a defense's privacy budget.
    `results_columns` has every figure; this is its compact head (report.md, report.html, the TUI)."""
    columns = [_column("utility", "test_accuracy")]
    attacks = sorted({a for v in variants for a in (v.get("attacks") or {}) if isinstance(v.get("attacks"), dict)})
    for attack in attacks:
        key = next((k for k in HEADLINE_ATTACK_KEYS
                    if any(figure(v, "attacks", f"{attack}.{k}") is not None for v in variants)), None)
        if key is None:
            continue
        spread = f"{attack}.{key}_std"
        has_spread = any(figure(v, "attacks", spread) is not None for v in variants)
        column = _column("attacks", f"{attack}.{key}", f"{attack} ")
        columns.append(Column(column.section, column.key, column.title, column.higher,
                              spread if has_spread else None))
        columns.append(_column("attacks", f"{attack}.queries", f"{attack} "))  # black-box / label-only only
    columns += [_column("ood", f"mean.{k}", "OOD ") for k in ("fpr95", "auroc")]
    columns += [_column("defense", "epsilon")]
    return [c for c in columns if any(figure(v, c.section, c.key) is not None for v in variants)]


def spread_decimals(spread: float | None) -> int | None:
    """Decimals that fit an uncertainty: its first significant digit, or two when that digit is 1 or 2
    (0.09 -> 2 decimals, 0.023 -> 3, 0.15 -> 2); None without a usable spread."""
    if spread is None or not math.isfinite(spread) or spread <= 0:
        return None
    mantissa, _, power = f"{spread:.6e}".partition("e")  # decimal digits, free of log10's float error
    leading, exponent = float(mantissa), int(power)
    significant = 2 if leading < 3 else 1
    return min(6, max(0, significant - 1 - exponent))


def rounded(value: float | None, spread: float | None = None, compact: bool = False) -> str:
    """A figure rounded to fit its spread (`0.61 ± 0.09`); without one, three decimals for a
    fraction and four significant digits otherwise. `compact` drops the spaces (narrow tables)."""
    if value is None or not math.isfinite(value):
        return "–" if value is None else str(value)
    decimals = spread_decimals(spread)
    joiner = "±" if compact else " ± "
    if decimals is None:
        text = f"{value:.3f}" if abs(value) < 10 else f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return text + (f"{joiner}0" if spread == 0 else "")
    return f"{value:.{decimals}f}{joiner}{spread:.{decimals}f}"


def cell_text(variant: dict[str, Any], column: Column, compact: bool = False) -> str:
    """One variant's figure in a column, with its spread when the column has one."""
    value = figure(variant, column.section, column.key)
    spread = figure(variant, column.section, column.spread) if column.spread else None
    return rounded(value, spread, compact)


def headline_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """The compact table (`workbench.reporting.columns.headline_columns`): headings, one row of cells per
    variant (figures rounded to their spread) and which cells are the best of their column (several
    variants, ties after rounding all best)."""
    variants = results["variants"]
    columns = headline_columns(variants)
    best = best_per_column(variants, columns)
    rows, marks = [], []
    for variant in variants:
        cells = [cell_text(variant, c) for c in columns]
        rows.append([variant_label(variant), *cells])
        flags = []
        for column, text in zip(columns, cells, strict=True):
            value = figure(variant, column.section, column.key)
            flags.append(len(variants) > 1 and value is not None and column in best
                         and _same_when_rounded(best[column], value, text))
        marks.append([False, *flags])
    return ["variant", *(c.heading for c in columns)], rows, marks


def _same_when_rounded(best: float, value: float, text: str) -> bool:
    decimals = len(text.split(" ±")[0].partition(".")[2])
    return round(best, decimals) == round(value, decimals) if text != "–" else False

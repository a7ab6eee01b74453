"""The results table's columns, in one place: report.md, the terminal table and the TUI show the same.

Torch-free, so the TUI's runs side can use it. Known figures get a title and a direction (↑ higher
is better for the defender, ↓ lower); any other numeric figure a metric plugin adds gets a column
too, titled by its key, so a metric's keys are never only in results.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# figure key -> (title, higher is better for the defender)
KNOWN: dict[str, tuple[str, bool]] = {
    "test_accuracy": ("test acc", True),
    "top1": ("top-1", False),
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

    @property
    def heading(self) -> str:
        return self.title + {True: " ↑", False: " ↓", None: ""}[self.higher]


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

"""OOD detection metrics in the BiDO+ convention (ID is the positive class), in pure numpy.

Every function is sort-based, O(n log n), and exact with ties, so figures match
scikit-learn's `roc_auc_score` / `average_precision_score` without depending on it at run time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from workbench.errors import WorkbenchError

CONVENTION = (
    "ID positive (BiDO+ convention): scores are higher for in-distribution samples; "
    "FPR95 = share of OOD samples scored at or above the largest threshold that keeps >= 95% of "
    "ID samples; AUROC counts ties as 1/2; AUPR-In = average precision with ID positive; "
    "AUPR-Out = average precision with OOD positive on negated scores. "
    "(OpenOOD and pytorch-ood make OOD positive instead.)"
)
"""One line the report prints next to the OOD table, so readers know which way the metrics point."""

METRIC_NAMES: tuple[str, ...] = ("fpr95", "auroc", "aupr_in", "aupr_out")


def _as_scores(values, name: str) -> np.ndarray:
    """A flat float64 array of finite-or-infinite scores; NaN or empty input is a user-visible error."""
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise WorkbenchError(f"ood metrics: {name} is empty; need at least one score")
    nan_count = int(np.isnan(scores).sum())
    if nan_count:
        raise WorkbenchError(
            f"ood metrics: {name} holds {nan_count} NaN value(s) of {scores.size}; "
            "the model's outputs diverged or the score is undefined for these inputs"
        )
    return scores


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Share of OOD scores `>= t`, where t is the largest threshold with at least `tpr` of ID `>= t`.

    With n ID scores, "at least tpr" means at least `ceil(tpr·n)` of them, so t is exactly the
    `ceil(tpr·n)`-th largest ID score: any larger t keeps fewer ID samples. Ties at t count as
    kept on both sides (an OOD sample tied with t is a false positive).
    """
    if not 0.0 < tpr <= 1.0:
        raise WorkbenchError(f"ood metrics: tpr must be in (0, 1], got {tpr!r}")
    id_arr = _as_scores(id_scores, "id_scores")
    ood_arr = _as_scores(ood_scores, "ood_scores")
    # The small tolerance keeps 0.95·100 = 95.00000000000001 from asking for 96 samples.
    needed = max(1, math.ceil(tpr * id_arr.size - 1e-9))
    threshold = np.sort(id_arr)[::-1][needed - 1]
    return float(np.mean(ood_arr >= threshold))


def auroc(id_scores, ood_scores) -> float:
    """P(ID score > OOD score) + ½·P(tie): the Mann-Whitney U statistic with mid-ranks."""
    id_arr = _as_scores(id_scores, "id_scores")
    ood_arr = _as_scores(ood_scores, "ood_scores")
    pooled = np.concatenate([id_arr, ood_arr])
    _, group_of, group_sizes = np.unique(pooled, return_inverse=True, return_counts=True)
    # Mid-rank of a tie group = (rank of its first member + rank of its last) / 2, 1-based.
    ranks_before = np.cumsum(group_sizes) - group_sizes
    mid_ranks = ranks_before + (group_sizes + 1) / 2.0
    id_rank_sum = mid_ranks[group_of[: id_arr.size]].sum()
    n_id, n_ood = id_arr.size, ood_arr.size
    u_statistic = id_rank_sum - n_id * (n_id + 1) / 2.0
    return float(u_statistic / (n_id * n_ood))


def average_precision(positive_scores, negative_scores) -> float:
    """Average precision `Σ (R_k − R_{k−1})·P_k` over distinct thresholds, high to low.

    Tied scores enter together at one threshold, as in scikit-learn (no interpolation).
    """
    pos = _as_scores(positive_scores, "positive scores")
    neg = _as_scores(negative_scores, "negative scores")
    scores = np.concatenate([pos, neg])
    is_positive = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]
    # Index of the last sample of each group of equal scores: the curve only moves there.
    # (`!=` rather than np.diff, which turns two equal infinities into NaN.)
    last_of_group = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    true_positives = np.cumsum(is_positive)[last_of_group]
    predicted_positives = last_of_group + 1.0
    precision = true_positives / predicted_positives
    recall = true_positives / pos.size
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def ood_metrics(id_scores, ood_scores, tpr: float = 0.95) -> dict[str, float]:
    """FPR95, AUROC, AUPR-In and AUPR-Out as fractions in [0, 1] (see `CONVENTION`)."""
    id_arr = _as_scores(id_scores, "id_scores")
    ood_arr = _as_scores(ood_scores, "ood_scores")
    return {
        "fpr95": fpr_at_tpr(id_arr, ood_arr, tpr),
        "auroc": auroc(id_arr, ood_arr),
        "aupr_in": average_precision(id_arr, ood_arr),
        "aupr_out": average_precision(-ood_arr, -id_arr),
    }


def mean_over_sets(per_set: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each metric averaged over the OOD test sets that report it (the 'mean' row of the table).

    Keys keep the order in which they first appear; an empty mapping gives an empty dict.
    """
    totals: dict[str, list[float]] = {}
    for figures in per_set.values():
        for key, value in figures.items():
            totals.setdefault(key, []).append(float(value))
    return {key: float(np.mean(values)) for key, values in totals.items()}

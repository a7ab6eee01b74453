"""Summary statistics over seeds: mean, sample std and Student-t 95 % confidence intervals.

Written out here (no scipy) so that reading a sweep stays instant; the tests check these
figures against scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t (bisection on the CDF; 1e-12 accurate)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def summarize(values: Sequence[float | None], level: float = 0.95) -> dict[str, Any]:
    """`{"n", "mean", "std", "ci95": [lo, hi], "values"}` over the finite values (None skipped).

    `std` is the sample standard deviation (n − 1); the interval is mean ± t·std/√n with Student's
    t at n − 1 degrees of freedom. With one value std and the interval are null (not knowable).
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci95": [None, None],
                           "values": [None if v is None or not math.isfinite(v) else float(v) for v in values]}
    if n == 0:
        return out
    mean = math.fsum(finite) / n
    out["mean"] = mean
    if n > 1:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
        half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
        out["std"] = std
        out["ci95"] = [mean - half, mean + half]
    return out


def paired(values: Sequence[float | None], baseline: Sequence[float | None]) -> dict[str, Any]:
    """Statistics of the per-seed differences `values − baseline` (pairs where both are known)."""
    diffs = [None if a is None or b is None else a - b for a, b in zip(values, baseline, strict=True)]
    return summarize(diffs)

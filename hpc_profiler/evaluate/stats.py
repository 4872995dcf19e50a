"""Multiple-testing and summary statistics of the CPJUMP1 benchmark.

* :func:`bh_qvalues`: Benjamini-Hochberg adjusted p-values (q-values), as
  ``statsmodels.stats.multitest.multipletests(method="fdr_bh")`` used by
  copairs' ``mean_average_precision``, and ``scipy.stats.false_discovery_control``.
* :func:`geometric_mean`: combined q-value of a class (Chandrasekaran et al.
  2024: a perturbation's q is the geometric mean of its replicates' q-values).
* :func:`directionality`: 5th/95th percentiles of a null of cosines, share of
  true pairs beyond each, Fisher's exact test (``scipy.stats.fisher_exact``)
  of positive vs negative excess against the null (CPJUMP1 Fig. 5).

SciPy is imported inside :func:`directionality`, its only user: ``scipy.stats``
costs ~1 CPU s to import, paid by every MPI rank of ``hpc-profiler evaluate``
at start-up whether or not a directionality task runs.
"""
from __future__ import annotations

import numpy as np


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN p-values stay NaN and are not counted as tests.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the sorted p-values.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    pv = p[ok]
    m = len(pv)
    if m == 0:
        return q
    order = np.argsort(pv, kind="stable")
    scaled = pv[order] * m / np.arange(1, m + 1)
    qs = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(qs, 1.0)
    q[ok] = out
    return q


def geometric_mean(values, groups, n_groups: int) -> np.ndarray:
    """Geometric mean of ``values`` per group id (``exp(mean(log v))``), vectorized."""
    values = np.asarray(values, dtype=np.float64)
    logs = np.bincount(groups, weights=np.log(values), minlength=n_groups)
    cnt = np.bincount(groups, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.exp(logs / cnt)


def directionality(true_cos: np.ndarray, null_cos: np.ndarray) -> dict:
    """Share of true-pair cosines beyond the null's 5th/95th percentiles and Fisher's exact test.

    The 2x2 table is ``[[true > p95, true < p5], [null > p95, null < p5]]``;
    the test (two-sided, ``scipy.stats.fisher_exact``) asks whether true pairs
    lean to one direction more than the null does.

    Returns
    -------
    dict
        ``n_true, n_null, null_p5, null_p95, frac_below_p5, frac_above_p95,
        odds_ratio, fisher_p``.
    """
    from scipy import stats as sps

    true_cos = np.asarray(true_cos, dtype=np.float64)
    null_cos = np.asarray(null_cos, dtype=np.float64)
    if len(true_cos) == 0 or len(null_cos) == 0:
        raise ValueError(f"directionality needs true and null pairs (got {len(true_cos)} and {len(null_cos)})")
    p5, p95 = np.percentile(null_cos, [5, 95])
    table = [
        [int((true_cos > p95).sum()), int((true_cos < p5).sum())],
        [int((null_cos > p95).sum()), int((null_cos < p5).sum())],
    ]
    odds, p = sps.fisher_exact(table)
    return {
        "n_true": len(true_cos),
        "n_null": len(null_cos),
        "null_p5": float(p5),
        "null_p95": float(p95),
        "frac_below_p5": float((true_cos < p5).mean()),
        "frac_above_p95": float((true_cos > p95).mean()),
        "odds_ratio": float(odds),
        "fisher_p": float(p),
    }

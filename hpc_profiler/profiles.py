"""Well profiles from single cells: aggregation, normalization, feature selection.

Pure table functions (NumPy kernels, pandas at the edges) that reproduce the
pycytominer steps of the CPJUMP1 profiling recipe:

* :func:`aggregate_cells` / :func:`aggregate` -- ``pycytominer.aggregate``
  (``operation="median"`` or ``"mean"``, ``compute_object_count=True``,
  giving ``Metadata_Object_Count``).
* :func:`normalize` -- ``pycytominer.normalize`` with
  ``method="mad_robustize"`` (``pycytominer.operations.transform.RobustMAD``)
  or ``"standardize"`` (scikit-learn ``StandardScaler``), fitted on the
  negative-control wells of each plate (or all wells), applied per plate.
* :func:`feature_select` -- ``pycytominer.feature_select`` with the
  operations ``frequency_threshold``, ``variance_threshold``,
  ``correlation_threshold``, ``drop_na_columns`` and ``blocklist``.
* :func:`drop_nonfinite_features` -- after feature selection, the features
  still NaN or infinite in any well (``drop_na_columns`` keeps those under its
  5 % cutoff) are dropped and returned, so that the written table hands
  pycytominer or copairs no NaN.

The MPI orchestration that feeds these functions lives in
:mod:`hpc_profiler.reduce`; nothing here reads files except
:func:`load_blocklist`.

Deliberate differences from pycytominer
---------------------------------------
* ``frequency_threshold`` is what pycytominer < 1.3 (and the CPJUMP1 paper)
  called ``variance_threshold``: the ``freq_cut``/``unique_cut`` rule.
  ``variance_threshold`` here is pycytominer >= 1.3's ``min_variance`` rule.
  Both names mean what the installed pycytominer means by them.
* Normalization is always per plate (``by="Metadata_Plate"``): pycytominer's
  ``normalize`` sees one plate per call in the CPJUMP1 recipe; here the loop
  over plates is part of the function.
* Features are the columns starting with ``Cells``, ``Cytoplasm`` or
  ``Nuclei`` (pycytominer's ``infer_cp_features``); ``Image_*`` columns are not
  features (pycytominer's ``image_features=False``).
"""
from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

#: Column-name prefixes of single-cell features (pycytominer ``infer_cp_features``).
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
STRATA = ["Metadata_Plate", "Metadata_Well"]
COUNT_COLUMN = "Metadata_Object_Count"
#: pycytominer's ``RobustMAD`` scale: MAD * 1.4826 estimates the standard deviation.
MAD_SCALE = 1.4826
OPERATIONS = ("variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist")


# --------------------------------------------------------------------------- columns
def feature_columns(df: pd.DataFrame) -> list[str]:
    """Feature columns: names starting with Cells, Cytoplasm or Nuclei.

    Reproduces ``pycytominer.cyto_utils.infer_cp_features`` (default compartments,
    ``image_features=False``).
    """
    return [c for c in df.columns if str(c).startswith(COMPARTMENTS)]


def metadata_columns(df: pd.DataFrame) -> list[str]:
    """Columns starting with ``Metadata_`` (pycytominer's ``metadata=True`` inference)."""
    return [c for c in df.columns if str(c).startswith("Metadata_")]


def metadata_first(df: pd.DataFrame) -> pd.DataFrame:
    """Reorder columns: all ``Metadata_`` columns first, then the features, order kept."""
    meta = metadata_columns(df)
    rest = [c for c in df.columns if c not in set(meta)]
    return df.loc[:, meta + rest]


# --------------------------------------------------------------------------- aggregate
def aggregate_cells(values: np.ndarray, operation: str = "median") -> np.ndarray:
    """Aggregate one well: the median (or mean) of every feature over its cells.

    Parameters
    ----------
    values : ndarray, shape (n_cells, n_features)
        Single-cell features of one well (any float dtype; computed in float64
        as pycytominer casts with ``astype(float)``).
    operation : {"median", "mean"}
        pycytominer ``aggregate(operation=...)``.

    Returns
    -------
    ndarray, shape (n_features,)
        NaN are skipped (pandas ``groupby().median()`` semantics); a feature
        with no finite value in the well, or a well with no cells, gives NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"aggregate_cells: expected a 2-D cells x features array, got shape {x.shape}")
    if operation not in ("median", "mean"):
        raise ValueError(f"aggregate_cells: operation must be 'median' or 'mean', got {operation!r}")
    if x.shape[0] == 0:
        return np.full(x.shape[1], np.nan)
    if operation == "mean":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as pandas does
            return np.nanmean(x, axis=0)
    return nanmedian_columns(x)


def nanmedian_columns(x: np.ndarray) -> np.ndarray:
    """Median of every column, NaN skipped, all-NaN columns NaN.

    The same numbers as ``np.nanmedian(x, axis=0)`` (mean of the two middle
    values for an even count), but vectorized over columns when there are NaN:
    one sort puts NaN last, and each column's middle is indexed from its count
    of values (``np.nanmedian`` falls back to a Python loop over columns).
    """
    s = np.sort(np.asarray(x, dtype=np.float64), axis=0)
    if s.shape[0] == 0:
        return np.full(s.shape[1], np.nan)
    k = np.sum(~np.isnan(s), axis=0)
    cols = np.arange(s.shape[1])
    lo, hi = np.maximum(k - 1, 0) // 2, k // 2  # k == 0: index 0, NaN below
    med = (s[lo, cols] + s[np.minimum(hi, s.shape[0] - 1), cols]) / 2.0
    med[k == 0] = np.nan
    return med


def aggregate(
    cells: pd.DataFrame,
    strata: Sequence[str] = tuple(STRATA),
    operation: str = "median",
    features: Optional[Sequence[str]] = None,
) -> pd.DataFrame:
    """Per-well profiles of a single-cell table.

    Reproduces ``pycytominer.aggregate(population_df, strata, operation=...,
    compute_object_count=True)``: one row per stratum, the strata columns,
    ``Metadata_Object_Count`` (rows per stratum), then the aggregated features.
    Rows are sorted by the strata, as ``groupby`` sorts them.
    """
    strata = list(strata)
    feats = list(features) if features is not None else feature_columns(cells)
    keys = cells.loc[:, strata].astype(str)
    codes, uniques = pd.MultiIndex.from_frame(keys).factorize(sort=True)
    x = cells.loc[:, feats].to_numpy(dtype=np.float64)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    rows = [aggregate_cells(x[order[a:b]], operation) for a, b in zip(bounds[:-1], bounds[1:])]
    out = pd.DataFrame(np.vstack(rows) if rows else np.empty((0, len(feats))), columns=feats)
    meta = pd.DataFrame(list(uniques), columns=strata)
    meta[COUNT_COLUMN] = np.diff(bounds).astype(np.int64)
    return pd.concat([meta, out], axis=1)


# --------------------------------------------------------------------------- metadata
def join_metadata(wells: pd.DataFrame, metadata: pd.DataFrame, where: str = "well metadata") -> pd.DataFrame:
    """Add the ``Metadata_`` columns of a per-well table to the well profiles.

    Like ``pycytominer.annotate`` with a platemap joined on plate and well, but
    strict: a profiled well missing from ``metadata`` is an error that names
    the wells (``where`` names the metadata file in the message).
    """
    for col in STRATA:
        if col not in metadata.columns:
            raise ValueError(f"{where}: column {col} is missing (columns: {list(metadata.columns)})")
    meta = metadata.loc[:, [c for c in metadata.columns if str(c).startswith("Metadata_")]].copy()
    meta[STRATA] = meta[STRATA].astype(str)
    dup = meta.duplicated(STRATA)
    if dup.any():
        bad = meta.loc[dup, STRATA].apply(lambda r: f"{r.iloc[0]}/{r.iloc[1]}", axis=1).tolist()
        raise ValueError(f"{where}: duplicate rows for plate/well {bad[:10]}")
    keys = wells.loc[:, STRATA].astype(str)
    present = pd.MultiIndex.from_frame(meta[STRATA])
    missing = ~pd.MultiIndex.from_frame(keys).isin(present)
    if missing.any():
        bad = [f"{p}/{w}" for p, w in keys.loc[missing].itertuples(index=False)]
        raise ValueError(f"{where}: no metadata for {len(bad)} profiled well(s) (plate/well): {bad[:20]}")
    extra = [c for c in meta.columns if c not in STRATA and c in wells.columns]
    left = wells.drop(columns=extra).copy()
    left[STRATA] = keys
    merged = left.merge(meta, on=STRATA, how="left", validate="one_to_one")
    return metadata_first(merged)


# --------------------------------------------------------------------------- normalize
def mad_robustize_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and scaled MAD of every column, NaN skipped.

    Reproduces ``pycytominer.operations.transform.RobustMAD.fit``: center is the
    median (pandas ``median``, NaN skipped), scale is ``1.4826 * median(|x -
    median|)`` over the non-NaN values (``scipy.stats.median_abs_deviation(...,
    nan_policy="omit", scale=1/1.4826)``). All-NaN columns give NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(x, axis=0)
        mad = np.nanmedian(np.abs(x - med), axis=0) * MAD_SCALE
    return med, mad


def standardize_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every column as scikit-learn's ``StandardScaler``.

    Population variance (ddof 0), NaN skipped; a column that is constant up to
    rounding (scikit-learn's ``_is_constant_feature`` bound) gets scale 1.
    """
    x = np.asarray(x, dtype=np.float64)
    n = np.sum(~np.isnan(x), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, axis=0)
        var = np.nanvar(x, axis=0)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.sqrt(var)
    scale[constant | (scale < 10 * eps)] = 1.0
    return mean, scale


def normalize_matrix(
    x: np.ndarray, reference: np.ndarray, method: str = "mad_robustize", epsilon: float = 1e-18
) -> np.ndarray:
    """Normalize ``x`` (rows = wells) with center and scale fitted on ``reference`` rows.

    ``mad_robustize``: ``(x - median) / (1.4826 * MAD + epsilon)``
    (pycytominer ``normalize(method="mad_robustize", mad_robustize_epsilon=...)``);
    ``standardize``: ``(x - mean) / std`` (pycytominer's default method).
    """
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape[0] == 0:
        raise ValueError("normalize: no reference wells to fit the normalization on")
    if method == "mad_robustize":
        center, scale = mad_robustize_fit(ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (x - center) / (scale + epsilon)
    if method == "standardize":
        center, scale = standardize_fit(ref)
        return (x - center) / scale
    raise ValueError(f"normalize: unknown method {method!r} (mad_robustize or standardize)")


def normalize(
    profiles: pd.DataFrame,
    method: str = "mad_robustize",
    samples: str = "negcon",
    epsilon: float = 1e-18,
    control_column: str = "Metadata_control_type",
    by: str = "Metadata_Plate",
) -> pd.DataFrame:
    """Normalize the features of each plate against its reference wells.

    Parameters
    ----------
    profiles : DataFrame
        Well profiles: ``Metadata_`` columns and features.
    method : {"mad_robustize", "standardize"}
    samples : {"negcon", "all"}
        Reference wells: those with ``control_column == "negcon"`` (pycytominer
        ``samples="Metadata_control_type == 'negcon'"``), or all wells.
    epsilon : float
        pycytominer's ``mad_robustize_epsilon``.
    by : str
        The column whose groups are normalized separately (plates).

    Returns
    -------
    DataFrame
        Same rows and columns; features replaced by normalized values.
        A plate without reference wells is an error naming the plate.
    """
    feats = feature_columns(profiles)
    out = profiles.copy()
    x = profiles.loc[:, feats].to_numpy(dtype=np.float64)
    y = np.empty_like(x)
    if samples == "negcon":
        if control_column not in profiles.columns:
            raise ValueError(f"normalize: samples='negcon' needs the column {control_column}")
        is_ref = (profiles[control_column].astype(str) == "negcon").to_numpy()
    elif samples == "all":
        is_ref = np.ones(len(profiles), dtype=bool)
    else:
        raise ValueError(f"normalize: samples must be 'negcon' or 'all', got {samples!r}")
    groups = profiles[by].astype(str).to_numpy()
    for g in pd.unique(groups):
        rows = groups == g
        if not np.any(rows & is_ref):
            raise ValueError(f"normalize: plate {g} has no reference wells ({control_column} == 'negcon')")
        y[rows] = normalize_matrix(x[rows], x[rows & is_ref], method, epsilon)
    out.loc[:, feats] = y
    return out


# --------------------------------------------------------------------------- feature selection
def frequency_excluded(x: np.ndarray, freq_cut: float = 0.05, unique_cut: float = 0.01) -> np.ndarray:
    """Mask of columns failing the frequency / uniqueness rule.

    Reproduces ``pycytominer.operations.frequency_threshold`` (pycytominer < 1.3
    ``variance_threshold``): a column is excluded when (count of its second
    most common value) / (count of its most common value) < ``freq_cut`` (a
    column with fewer than two distinct values has ratio 0), or when
    (number of distinct values) / (number of rows) < ``unique_cut``. NaN are
    not values (pandas ``value_counts``/``nunique``) but count as rows.

    Vectorized over columns: sorting each column puts equal values in runs,
    whose lengths are counted with one ``bincount``.
    """
    if not (0 <= freq_cut <= 1 and 0 <= unique_cut <= 1):
        raise ValueError("frequency_threshold: freq_cut and unique_cut must be in [0, 1]")
    x = np.asarray(x, dtype=np.float64)
    n, f = x.shape
    if n == 0:
        return np.ones(f, dtype=bool)
    s = np.sort(x, axis=0)  # NaN sort last
    valid = ~np.isnan(s)
    new = np.ones_like(valid)
    new[1:] = s[1:] != s[:-1]
    new &= valid
    run = np.cumsum(new, axis=0) - 1  # run index within the column
    cols = np.broadcast_to(np.arange(f), (n, f))
    counts = np.bincount((cols * n + run)[valid], minlength=n * f).reshape(f, n)
    top = -np.sort(-counts, axis=1)[:, :2] if n >= 2 else np.pad(counts, ((0, 0), (0, 1)))
    n_unique = new.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n_unique >= 2, top[:, 1] / np.maximum(top[:, 0], 1), 0.0)
    return (ratio < freq_cut) | (n_unique / n < unique_cut)


def variance_excluded(x: np.ndarray, min_variance: float = 1e-6) -> np.ndarray:
    """Mask of columns whose variance (ddof 0, NaN skipped) is not above ``min_variance``.

    Reproduces ``pycytominer.operations.variance_threshold`` (pycytominer >= 1.3,
    scikit-learn ``VarianceThreshold(threshold=min_variance)``, which keeps
    ``variance > threshold``; with threshold 0 it uses min(variance, peak-to-peak)).
    """
    x = np.asarray(x, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        var = np.nanvar(x, axis=0)
        if min_variance == 0:
            var = np.nanmin(np.stack([var, np.ptp(x, axis=0)]), axis=0)
    return ~(var > min_variance)


def na_excluded(x: np.ndarray, cutoff: float = 0.05) -> np.ndarray:
    """Mask of columns whose fraction of NaN is above ``cutoff``.

    Reproduces ``pycytominer.operations.get_na_columns`` (``drop_na_columns``).
    """
    if not 0 <= cutoff <= 1:
        raise ValueError("drop_na_columns: cutoff must be in [0, 1]")
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0:
        return np.zeros(x.shape[1], dtype=bool)
    return np.isnan(x).mean(axis=0) > cutoff


def correlation_matrix(x: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Feature-feature correlation as pycytominer's ``get_pairwise_correlation``.

    Pearson on finite data is ``np.corrcoef``; with NaN/inf, or for Spearman and
    Kendall, pandas ``DataFrame.corr`` (pairwise complete observations).
    """
    x = np.asarray(x, dtype=np.float64)
    if method == "pearson" and np.all(np.isfinite(x)):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.atleast_2d(np.corrcoef(x, rowvar=False))
    if method not in ("pearson", "spearman", "kendall"):
        raise ValueError(f"correlation_threshold: unknown method {method!r}")
    return pd.DataFrame(x).corr(method=method).to_numpy()


def correlation_excluded(
    x: np.ndarray, names: Sequence[str], threshold: float = 0.9, method: str = "pearson"
) -> np.ndarray:
    """Mask of columns dropped by pycytominer's ``correlation_threshold``.

    Every pair (a, b) of the lower triangle whose correlation is above
    ``threshold`` (signed, as pycytominer compares ``correlation > threshold``)
    drops one feature: the one ranked later when features are sorted by the
    sum of their absolute correlations with all features (pandas
    ``sort_values``, NaN skipped in the sum). All pairs are judged on the same
    ranking at once, not greedily, exactly as pycytominer does.
    """
    if not 0 <= threshold <= 1:
        raise ValueError("correlation_threshold: threshold must be in [0, 1]")
    f = len(names)
    excluded = np.zeros(f, dtype=bool)
    if f < 2:
        return excluded
    cor = correlation_matrix(x, method)
    # pycytominer ranks with pandas (DataFrame.abs().sum().sort_values()); the same pandas calls
    # give the same rounding and the same order for tied sums (e.g. duplicated features).
    order = pd.DataFrame(cor).abs().sum().sort_values().index.to_numpy()
    rank = np.empty(f, dtype=np.int64)
    rank[order] = np.arange(f)
    with np.errstate(invalid="ignore"):
        hi = np.tril(cor > threshold, k=-1)
    a, b = np.nonzero(hi)  # a: row (pair_a), b: column (pair_b)
    excluded[np.where(rank[a] > rank[b], a, b)] = True
    return excluded


def load_blocklist(path=None) -> list[str]:
    """Feature names of a blocklist file (one per line, optional ``blocklist`` header).

    ``path=None`` reads the list shipped with the package
    (``hpc_profiler/data/blocklist_features.txt``, copied from pycytominer; see
    ``LICENSE-pycytominer-blocklist.txt`` beside it).
    """
    if path is None:
        text = resources.files("hpc_profiler").joinpath("data/blocklist_features.txt").read_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise OSError(f"{path}: cannot read blocklist file ({exc.strerror or exc})") from exc
    names = [ln.strip() for ln in text.splitlines()]
    return [n for n in names if n and n != "blocklist" and not n.startswith("#")]


def feature_select(
    profiles: pd.DataFrame,
    operations: Iterable[str] = ("frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"),
    *,
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    min_variance: float = 1e-6,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    na_cutoff: float = 0.05,
    blocklist: Optional[Sequence[str]] = None,
) -> pd.DataFrame:
    """Drop uninformative features, as ``pycytominer.feature_select``.

    Operations run in order on all rows; each sees only the features the
    previous ones kept, and the union of their exclusions is dropped. Metadata
    columns are kept. ``blocklist=None`` uses the shipped pycytominer list.
    """
    feats = feature_columns(profiles)
    dropped: set[str] = set()
    for op in operations:
        if op not in OPERATIONS:
            raise ValueError(f"feature_select: unknown operation {op!r}; known: {list(OPERATIONS)}")
        x = profiles.loc[:, feats].to_numpy(dtype=np.float64)
        if op == "frequency_threshold":
            mask = frequency_excluded(x, freq_cut, unique_cut)
        elif op == "variance_threshold":
            mask = variance_excluded(x, min_variance)
        elif op == "drop_na_columns":
            mask = na_excluded(x, na_cutoff)
        elif op == "correlation_threshold":
            mask = correlation_excluded(x, feats, corr_threshold, corr_method)
        else:
            block = set(load_blocklist() if blocklist is None else blocklist)
            mask = np.array([f in block for f in feats], dtype=bool)
        dropped.update(f for f, m in zip(feats, mask) if m)
        feats = [f for f, m in zip(feats, mask) if not m]
    return profiles.drop(columns=[c for c in profiles.columns if c in dropped])


def drop_nonfinite_features(profiles: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``profiles`` without the feature columns that are NaN or infinite in any row,
    and the names of those columns (in table order). Metadata columns are kept,
    NaN or not."""
    feats = feature_columns(profiles)
    if not feats:
        return profiles, []
    x = profiles.loc[:, feats].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(x).all(axis=0)
    dropped = [f for f, b in zip(feats, bad) if b]
    return (profiles.drop(columns=dropped) if dropped else profiles), dropped

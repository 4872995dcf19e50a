"""Figures of the CPJUMP1 benchmark (matplotlib, Agg backend, PNG), readable without the paper.

* :func:`plot_retrieval`: Fig. 4 of Chandrasekaran et al. (2024): one box of
  per-perturbation mAP per task x modality x cell type x time point (hours),
  the fraction retrieved (share of perturbations with q below the threshold)
  printed above each box.
* :func:`plot_directionality`: Fig. 5: per task and cell type, the cosine
  similarity of same-gene pairs against different-gene pairs (the null); the
  dashed lines are the null's 5th and 95th percentiles, and the legend gives
  the share of same-gene pairs beyond each.

``retrieval_figure`` / ``directionality_figure`` build the matplotlib figure
(the tests inspect its axes); the ``plot_*`` functions write it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .tasks import SUMMARY_KEYS  # noqa: E402

#: How a summary key reads on an axis label ("24" -> "24 h").
_UNITS = {"Metadata_timepoint": " h"}


def _label(row) -> str:
    """``replicate: compound, U2OS, 48 h``: task, then the non-trivial summary keys."""
    parts = []
    for k in SUMMARY_KEYS:
        if k in row and str(row[k]) not in ("all", "", "nan"):
            parts.append(" / ".join(f"{v}{_UNITS.get(k, '')}" for v in str(row[k]).split("|")))
    return f"{row['task']}" + (f"\n{', '.join(parts)}" if parts else "")


def retrieval_figure(classes: pd.DataFrame, summary: pd.DataFrame):
    """The Fig. 4 matplotlib figure (see :func:`plot_retrieval`)."""
    data, labels, fracs = [], [], []
    for _, row in summary.iterrows():
        sel = classes["task"] == row["task"]
        for k in SUMMARY_KEYS:
            if k in classes.columns and row[k] != "all" and "|" not in str(row[k]):
                sel &= classes[k].astype(str) == str(row[k])
        data.append(classes.loc[sel, "mean_average_precision"].to_numpy())
        labels.append(_label(row))
        fracs.append(row["fraction_retrieved"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(data) + 2.5), 5.5))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=35, ha="right", fontsize=8)
    ax.set_xlabel("task (modality, cell type, time point)")
    ax.set_ylabel("mAP per perturbation (mean average precision)")
    ax.set_ylim(0, 1.14)
    for i, f in enumerate(fracs, start=1):
        ax.text(i, 1.06, f"{f:.2f}", ha="center", fontsize=8, color="tab:red")
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", label="mAP of the perturbations (box: quartiles)"),
                       Line2D([], [], color="tab:red", marker="$0.5$", ls="", markersize=12,
                              label="fraction retrieved (q below threshold)")],
              fontsize=8, loc="lower right")
    ax.set_title("Perturbation retrieval (CPJUMP1 Fig. 4)\nred: fraction retrieved; box: mAP per perturbation",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_retrieval(classes: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    """mAP box plot per summary row with the fraction retrieved above (Fig. 4)."""
    fig = retrieval_figure(classes, summary)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def directionality_figure(pairs: pd.DataFrame, table: pd.DataFrame = None):
    """The Fig. 5 matplotlib figure (see :func:`plot_directionality`).

    The percentiles are those of each panel's own null cosines, as in
    :func:`hpc_profiler.evaluate.stats.directionality` (``table`` is accepted
    for the callers' signature; its numbers are the same)."""
    panels = list(pairs.groupby(["task", "group"], sort=True))
    ncols = min(3, max(1, len(panels)))
    nrows = -(-len(panels) // ncols)
    # at least 7 in wide: the two-line title fits above a single panel
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(7.0, 4.6 * ncols), 3.8 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, ((task, group), df) in zip(axes.flat, panels):
        null = df.loc[~df["true_pair"], "cosine"].to_numpy(float)
        true = df.loc[df["true_pair"], "cosine"].to_numpy(float)
        ax.hist(null, bins=40, density=True, alpha=0.5, color="tab:gray",
                label=f"different genes (null, n={len(null)})")
        ax.hist(true, bins=40, density=True, alpha=0.6, color="tab:blue", label=f"same gene (n={len(true)})")
        if len(null):
            p5, p95 = np.percentile(null, [5, 95])
            below = float((true < p5).mean()) if len(true) else float("nan")
            above = float((true > p95).mean()) if len(true) else float("nan")
            ax.axvline(p5, color="k", ls="--", lw=0.9, label=f"null 5th pct.: {below:.0%} same-gene below")
            ax.axvline(p95, color="k", ls=":", lw=1.1, label=f"null 95th pct.: {above:.0%} same-gene above")
        ax.set_title(f"{task}\n{group}", fontsize=9)
        ax.set_xlabel("cosine similarity of the pair")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Directionality (CPJUMP1 Fig. 5)\ndo same-gene pairs lean to one side of the null?", fontsize=10)
    fig.tight_layout()
    return fig


def plot_directionality(pairs: pd.DataFrame, table: pd.DataFrame, path: Path) -> Path:
    """Cosine histograms of true pairs vs the null with 5th/95th percentiles (Fig. 5)."""
    fig = directionality_figure(pairs, table)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

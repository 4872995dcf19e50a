"""Figures of the CPJUMP1 benchmark (matplotlib, Agg backend, PNG).

* :func:`plot_retrieval`: Fig. 4 of Chandrasekaran et al. (2024): mAP box
  plots per task x modality x cell type x time point, fraction retrieved
  printed above each box.
* :func:`plot_directionality`: Fig. 5: cosine distributions of true pairs and
  of the null (different genes) with the null's 5th/95th percentiles.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .tasks import SUMMARY_KEYS  # noqa: E402


def _label(row) -> str:
    return "\n".join([str(row["task"])] + [str(row[k]) for k in SUMMARY_KEYS if k in row and row[k] != "all"])


def plot_retrieval(classes: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    """mAP box plot per summary row with the fraction retrieved above (Fig. 4)."""
    data, labels, fracs = [], [], []
    for _, row in summary.iterrows():
        sel = classes["task"] == row["task"]
        for k in SUMMARY_KEYS:
            if k in classes.columns and row[k] != "all" and "|" not in str(row[k]):
                sel &= classes[k].astype(str) == str(row[k])
        data.append(classes.loc[sel, "mean_average_precision"].to_numpy())
        labels.append(_label(row))
        fracs.append(row["fraction_retrieved"])
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(data) + 2), 4.5))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=90, fontsize=7)
    ax.set_ylabel("mAP")
    ax.set_ylim(0, 1.12)
    for i, f in enumerate(fracs, start=1):
        ax.text(i, 1.05, f"{f:.2f}", ha="center", fontsize=7)
    ax.set_title("fraction retrieved (above) and mAP per perturbation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_directionality(pairs: pd.DataFrame, table: pd.DataFrame, path: Path) -> Path:
    """Cosine histograms of true pairs vs the null with 5th/95th percentiles (Fig. 5)."""
    panels = list(pairs.groupby(["task", "group"], sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    for ax, ((task, group), df) in zip(axes[0], panels):
        ax.hist(df.loc[~df["true_pair"], "cosine"], bins=40, density=True, alpha=0.5, label="different genes")
        ax.hist(df.loc[df["true_pair"], "cosine"], bins=40, density=True, alpha=0.6, label="same gene")
        row = table.loc[table["task"] == task]
        for _, r in row.iterrows():
            ax.axvline(r["null_p5"], color="k", ls="--", lw=0.8)
            ax.axvline(r["null_p95"], color="k", ls="--", lw=0.8)
        ax.set_title(f"{task}\n{group}", fontsize=8)
        ax.set_xlabel("cosine")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

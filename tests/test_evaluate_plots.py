"""Fig. 4 / Fig. 5 figures: titles, axis labels and a legend on every panel."""
import numpy as np
import pandas as pd

from hpc_profiler.evaluate import plots


def test_retrieval_figure_labels_time_point_with_unit(tmp_path):
    rng = np.random.default_rng(0)
    classes = pd.DataFrame({"task": "replicate", "Metadata_modality": ["compound"] * 6 + ["crispr"] * 6,
                            "Metadata_cell_type": "U2OS", "Metadata_timepoint": ["48"] * 6 + ["144"] * 6,
                            "mean_average_precision": rng.random(12)})
    summary = pd.DataFrame({"task": ["replicate"] * 2, "Metadata_modality": ["compound", "crispr"],
                            "Metadata_cell_type": ["U2OS"] * 2, "Metadata_timepoint": ["48", "144"],
                            "fraction_retrieved": [0.5, 0.25]})
    fig = plots.retrieval_figure(classes, summary)
    (ax,) = fig.axes
    assert ax.get_title() and ax.get_xlabel() and "mAP" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["replicate\ncompound, U2OS, 48 h", "replicate\ncrispr, U2OS, 144 h"]
    assert len(ax.get_legend().get_texts()) == 2
    assert [t.get_text() for t in ax.texts] == ["0.50", "0.25"]
    assert plots.plot_retrieval(classes, summary, tmp_path / "f4.png").exists()


def test_directionality_figure_every_panel_labelled_with_legend(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for group in ("U2OS", "A549"):
        null = rng.normal(0, 0.2, 400)
        true = np.r_[rng.normal(0.5, 0.1, 8), [-0.9, 0.0]]
        rows.append(pd.DataFrame({"task": "direction_orf_crispr", "group": group,
                                  "true_pair": [False] * 400 + [True] * 10, "cosine": np.r_[null, true]}))
    pairs = pd.concat(rows)
    fig = plots.directionality_figure(pairs, pd.DataFrame())
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_title() and ax.get_xlabel() == "cosine similarity of the pair" and ax.get_ylabel() == "density"
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(texts) == 4 and texts[1] == "same gene (n=10)"
        # the dashed lines are the null's percentiles, and the legend says how many same-gene pairs lie beyond
        df = pairs[pairs["group"] == ax.get_title().split("\n")[1]]
        null = df.loc[~df["true_pair"], "cosine"].to_numpy()
        true = df.loc[df["true_pair"], "cosine"].to_numpy()
        p5, p95 = np.percentile(null, [5, 95])
        xs = sorted(line.get_xdata()[0] for line in ax.get_lines())
        np.testing.assert_allclose(xs, [p5, p95])
        assert texts[2] == f"null 5th pct.: {(true < p5).mean():.0%} same-gene below"
        assert texts[3] == f"null 95th pct.: {(true > p95).mean():.0%} same-gene above"
    assert plots.plot_directionality(pairs, pd.DataFrame(), tmp_path / "f5.png").exists()

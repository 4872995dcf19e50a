"""Neighbors with CellProfiler's "Consider objects discarded for touching image border?" = Yes.

Hand-computed cases; the pipeline-level check against CellProfiler 5 itself is
``tests/test_cellprofiler_reference.py`` (Cells and Nuclei Neighbors at the bar).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from hpc_profiler.config import FeaturesConfig, NucleiConfig
from hpc_profiler.features import measure_site
from hpc_profiler.features.neighbors import measure_neighbors, with_discarded_labels
from hpc_profiler.segmentation import unfiltered_nuclei


def _row():
    """Two final squares (unedited numbers 3 and 5) and a discarded one (7) touching the second.

    Centres (5.5, 3.5), (5.5, 7.5) and (5.5, 12): 4 px between the final ones, 4.5 px from
    the second to the discarded one.
    """
    final = np.zeros((12, 20), np.int32)
    final[4:8, 2:6] = 1
    final[4:8, 6:10] = 2
    unfiltered = np.zeros_like(final)
    unfiltered[4:8, 2:6] = 3
    unfiltered[4:8, 6:10] = 5
    unfiltered[4:8, 10:15] = 7
    return final, unfiltered


def test_with_discarded_labels_numbering():
    final, unfiltered = _row()
    d = with_discarded_labels(unfiltered, final)
    ext = d.labels
    assert ext.dtype == np.int32 and d.n_labels == 2 + 7 and d.n_cellprofiler == 7
    np.testing.assert_array_equal(ext[final > 0], final[final > 0])
    # a discarded object of unfiltered number u is N + u
    np.testing.assert_array_equal(np.unique(ext[(final == 0) & (unfiltered > 0)]), [2 + 7])
    unfiltered[0:2, 0:2] = 9
    unfiltered[10:12, 0:2] = 8
    d = with_discarded_labels(unfiltered, final, 2)
    assert d.labels[5, 12] == 9 and d.labels[11, 0] == 10 and d.labels[0, 0] == 11 and d.n_labels == 11


def test_discarded_neighbour_counts_by_hand():
    final, unfiltered = _row()
    ext = with_discarded_labels(unfiltered, final)
    yes = measure_neighbors(final, 2, distance=None, with_discarded=ext)
    no = measure_neighbors(final, 2, distance=None)
    s = "Adjacent"
    # the discarded square is a neighbour of object 2 only
    np.testing.assert_array_equal(yes[f"Neighbors_NumberOfNeighbors_{s}"], [1, 2])
    np.testing.assert_array_equal(no[f"Neighbors_NumberOfNeighbors_{s}"], [1, 1])
    # outline of a 4x4 square: its 12 border pixels; object 2 touches on both sides
    np.testing.assert_allclose(yes[f"Neighbors_PercentTouching_{s}"], [100 * 4 / 12, 100 * 8 / 12])
    np.testing.assert_allclose(no[f"Neighbors_PercentTouching_{s}"], [100 * 4 / 12, 100 * 4 / 12])
    # object numbers: final objects only, and with two final objects no second one
    for out in (yes, no):
        np.testing.assert_array_equal(out[f"Neighbors_FirstClosestObjectNumber_{s}"], [2, 1])
        np.testing.assert_array_equal(out[f"Neighbors_SecondClosestObjectNumber_{s}"], [0, 0])
        np.testing.assert_allclose(out[f"Neighbors_FirstClosestDistance_{s}"], [4, 4])
    # distances and angle see the discarded object (CellProfiler recomputes only the numbers)
    np.testing.assert_allclose(yes[f"Neighbors_SecondClosestDistance_{s}"], [8.5, 4.5])
    np.testing.assert_allclose(yes[f"Neighbors_AngleBetweenNeighbors_{s}"], [0, 180], atol=1e-6)
    np.testing.assert_array_equal(no[f"Neighbors_SecondClosestDistance_{s}"], [0, 0])
    np.testing.assert_array_equal(no[f"Neighbors_AngleBetweenNeighbors_{s}"], [0, 0])
    # within 5 px the discarded square is also within reach of object 1 (edge gap 4 px)
    w5 = measure_neighbors(final, 2, distance=5, with_discarded=ext)
    np.testing.assert_array_equal(w5["Neighbors_NumberOfNeighbors_5"], [2, 2])


def test_discarded_nearest_distance_and_single_final_object():
    """One final object and a discarded one nearer than nothing: CellProfiler measures
    (two objects exist) but names no closest object."""
    final = np.zeros((10, 20), np.int32)
    final[2:6, 2:6] = 1
    unfiltered = final.copy()
    unfiltered[2:6, 6:12] = 2
    ext = with_discarded_labels(unfiltered, final)
    out = measure_neighbors(final, 1, distance=5, with_discarded=ext)
    assert out["Neighbors_NumberOfNeighbors_5"].tolist() == [1.0]
    assert out["Neighbors_FirstClosestObjectNumber_5"].tolist() == [0.0]
    assert out["Neighbors_FirstClosestDistance_5"][0] == pytest.approx(5.0)  # (3.5, 3.5) to (3.5, 8.5)
    assert measure_neighbors(final, 1, distance=5)["Neighbors_FirstClosestDistance_5"].tolist() == [0.0]


def test_measure_site_switch():
    final, unfiltered = _row()
    images = {"DNA": np.random.default_rng(0).random(final.shape).astype(np.float32)}
    labels = {"Nuclei": final, "Cells": final, "Cytoplasm": final}
    col = "Cells_Neighbors_NumberOfNeighbors_Adjacent"
    got = {}
    for count in (True, False):
        params = FeaturesConfig(families=["Neighbors"])
        params.neighbors.count_discarded = count
        tab = measure_site(images, labels, params, ["DNA"], unfiltered={"Cells": unfiltered})
        got[count] = tab.objects["Cells"].values[:, tab.objects["Cells"].names.index(col)].tolist()
    assert got == {True: [1.0, 2.0], False: [1.0, 1.0]}
    assert FeaturesConfig().neighbors.count_discarded  # CPJUMP1's setting is the default


def test_unfiltered_nuclei_keeps_only_the_too_large():
    """IdentifyPrimaryObjects' small_removed_segmented: border-touching and too-small
    objects removed, too-large ones kept, numbers unchanged."""
    params = NucleiConfig()
    unedited = np.zeros((200, 200), np.int32)
    unedited[0:12, 50:62] = 1  # touches the border
    unedited[50:53, 50:53] = 2  # 9 px: smaller than pi * 10**2 / 4
    unedited[100:112, 100:112] = 3  # 144 px: kept by both filters
    yy, xx = np.mgrid[0:200, 0:200]
    big = np.hypot(yy - 150, xx - 55) <= 40  # ~5000 px > pi * 75**2 / 4 = 4418
    unedited[big & (unedited == 0)] = 4
    assert (unedited == 4).sum() > math.pi * params.max_diameter**2 / 4
    out = unfiltered_nuclei(unedited, params)
    np.testing.assert_array_equal(np.unique(out), [0, 3, 4])
    np.testing.assert_array_equal(out[out > 0], unedited[out > 0])

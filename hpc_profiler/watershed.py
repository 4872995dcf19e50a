"""Marker watershed with the exact flooding order of scikit-image 0.24.

CellProfiler 5 runs with scikit-image 0.24, whose ``segmentation.watershed``
floods from the markers with a binary heap ordered by (value, age).
scikit-image 0.25 changed the algorithm (markers enter the heap at ``-inf``
and a pixel's cost is at least its parent's), so the labels of touching
objects depend on the installed version. This module is our own
implementation of the 0.24 order, for a 2-D image, 8-connectivity, no
compactness and no watershed lines (what IdentifyPrimaryObjects' shape
declumping and IdentifySecondaryObjects' "Watershed - Image" call):

* the image is read as float64 and, like markers and mask, zero-padded by one
  pixel; neighbour offsets are visited in the order ``up, left, right, down,
  up-left, up-right, down-left, down-right`` (distance from the centre, ties
  in raster order);
* every marker pixel is pushed in raster order with its own value and age 0;
* popping the smallest (value, age) item, each unlabelled in-mask neighbour
  gets the item's label at once and is pushed with its own value and the
  next age (a global counter starting at 2);
* the heap is the textbook binary heap (sift up while strictly smaller than
  the parent; sift down to the strictly smaller child, left child first),
  which fixes the order in which items of equal (value, age) -- the markers --
  are released.

It is compiled with numba (``numba`` is a dependency for this: a heap loop
over every pixel in Python would take seconds per site). Results do not
depend on the installed scikit-image. GPU arrays are flooded on the host
(:func:`watershed` accepts any backend array and returns one on the same
backend).
"""
from __future__ import annotations

import numpy as np

from .backend import backend_of

from .morphology import njit_cached  # numba, with the in-memory fallback where no cache dir is usable

__all__ = ["watershed", "watershed_numpy"]


@njit_cached
def _key_smaller(va, aa, vb, ab):
    """(value, age) ``a`` strictly before ``b``: the heap's order."""
    if va != vb:
        return va < vb
    return aa < ab


@njit_cached
def _push(hv, ha, hi, items, value, age, idx):
    """Push ``(value, age, idx)`` on the heap of ``items`` entries; returns the new size.

    Sift-up with a hole: the parents that the new item passes move down one
    level each and the item is written once, where the swaps would leave it
    (the same comparisons, the same heap).
    """
    child = items
    while child > 0:
        parent = (child + 1) // 2 - 1
        if _key_smaller(value, age, hv[parent], ha[parent]):
            hv[child] = hv[parent]
            ha[child] = ha[parent]
            hi[child] = hi[parent]
            child = parent
        else:
            break
    hv[child] = value
    ha[child] = age
    hi[child] = idx
    return items + 1


@njit_cached
def _flood(image, output, mask, markers_at, offsets):
    n_max = image.size + markers_at.size + 1
    hv = np.empty(n_max, np.float64)  # heap values
    ha = np.empty(n_max, np.int64)  # heap ages
    hi = np.empty(n_max, np.int64)  # heap pixel indices
    items = 0
    age = 1
    for k in range(markers_at.size):
        items = _push(hv, ha, hi, items, image[markers_at[k]], 0, markers_at[k])
    nn = offsets.size
    while items > 0:
        idx = hi[0]
        items -= 1
        if items > 0:
            # sift the last item down from the root with a hole: the smaller
            # child (strictly smaller than the item, left child first on ties)
            # moves up; the item is written once where the swaps would leave it
            xv = hv[items]
            xa = ha[items]
            xi = hi[items]
            i = 0
            while True:
                left = 2 * i + 1
                if left >= items:
                    break
                right = left + 1
                best = i
                bv = xv
                ba = xa
                if _key_smaller(hv[left], ha[left], xv, xa):
                    best = left
                    bv = hv[left]
                    ba = ha[left]
                if right < items and _key_smaller(hv[right], ha[right], bv, ba):
                    best = right
                if best == i:
                    break
                hv[i] = hv[best]
                ha[i] = ha[best]
                hi[i] = hi[best]
                i = best
            hv[i] = xv
            ha[i] = xa
            hi[i] = xi
        lab = output[idx]
        for k in range(nn):
            nb = idx + offsets[k]
            if not mask[nb] or output[nb] != 0:
                continue
            age += 1
            output[nb] = lab
            items = _push(hv, ha, hi, items, image[nb], age, nb)


def watershed_numpy(image, markers, mask=None) -> np.ndarray:
    """scikit-image 0.24 ``watershed(image, markers, connectivity=2, mask=mask)`` on NumPy arrays.

    Parameters
    ----------
    image : array (H, W), any real dtype (flooded as float64)
    markers : int array (H, W), 0 = no marker; negative labels are kept as they are
    mask : bool array (H, W), optional
        Only pixels where it is True are labelled (markers outside it are dropped).

    Returns
    -------
    int32 array (H, W)
    """
    image = np.asarray(image)
    markers = np.asarray(markers)
    if image.ndim != 2 or markers.shape != image.shape:
        raise ValueError(f"watershed: image {image.shape} and markers {markers.shape} must be the same 2-D shape")
    mask = np.ones(image.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"watershed: mask {mask.shape} differs from image {image.shape}")
    h, w = image.shape
    W = w + 2
    img = np.pad(image.astype(np.float64), 1).ravel()
    out = np.pad((markers * mask).astype(np.int32), 1).ravel()
    m = np.pad(mask, 1).ravel()
    offsets = np.array([-W, -1, 1, W, -W - 1, -W + 1, W - 1, W + 1], dtype=np.int64)
    _flood(img, out, m, np.flatnonzero(out).astype(np.int64), offsets)
    return out.reshape(h + 2, W)[1:-1, 1:-1].copy()


def watershed(image, markers, mask=None):
    """:func:`watershed_numpy` for arrays of any backend (GPU arrays are flooded on the host)."""
    bk = backend_of(image, markers)
    out = watershed_numpy(bk.to_numpy(image), bk.to_numpy(markers), None if mask is None else bk.to_numpy(mask))
    return bk.asarray(out)

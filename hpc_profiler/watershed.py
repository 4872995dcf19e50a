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
  are released. Our heap stores 16-byte nodes and pops with Floyd's
  bottom-up sift-down, which leaves every item where the textbook sift-down
  would (:func:`_flood`); images of 2**31 pixels or more are refused (ages
  and pixel indices are packed in 32 bits each).

It is compiled with numba (``numba`` is a dependency for this: a heap loop
over every pixel in Python would take seconds per site). Results do not
depend on the installed scikit-image. GPU arrays are flooded on the host
(:func:`watershed` accepts any backend array and returns one on the same
backend).
"""
from __future__ import annotations

import numba
import numpy as np

from .backend import backend_of
from .morphology import njit_cached  # numba, with the in-memory fallback where no cache dir is usable

__all__ = ["watershed", "watershed_numpy"]


@numba.njit(inline="always", cache=True, nogil=True)
def _push(hv, hk, items, v, key):
    """Push ``(v, key)`` onto :func:`_flood`'s heap of ``items`` nodes: sift-up with a hole.

    The parents the new item passes move down one level each and it is
    written once. It passes a parent only when its value is strictly smaller:
    its age (``key >> 32``) is never smaller than any age already in the heap
    (the markers all have age 0; each later push has a new, larger age), so a
    tie never lets it pass.
    """
    child = items
    while child > 0:
        parent = (child + 1) // 2 - 1
        pv = hv[2 * parent + 2]
        if v < pv:
            hv[2 * child + 2] = pv
            hk[2 * child + 3] = hk[2 * parent + 3]
            child = parent
        else:
            break
    hv[2 * child + 2] = v
    hk[2 * child + 3] = key


@njit_cached
def _flood(image, output, todo, markers_at, offsets):
    """Flood ``output`` (int32, flat, padded) from the pixels ``markers_at``.

    ``todo`` (uint8): 1 for the in-mask pixels without a label yet; cleared
    as they are labelled. The heap is one float64 array of 16-byte nodes
    (node ``j`` at slots ``2 j + 2`` and ``2 j + 3``: its value, and
    ``age << 32 | pixel`` read through an int64 view), so a node and its
    sibling share a cache line; an item is before another when its value is
    smaller, or equal with a smaller age.

    * Push (:func:`_push`): sift-up with a hole, moving while strictly before
      the parent.
    * Pop: the hole goes down the smaller children (the left one unless the
      right is strictly before it) to a leaf, and the last item rises from
      there while its parent is not before it (Floyd's bottom-up sift-down).
      Along that path the keys do not decrease, so the item ends where the
      textbook sift-down (stop at the first child not strictly before it)
      puts it, ties included, with about half the comparisons.
    """
    n_max = image.size + markers_at.size + 1
    hv = np.empty(2 * n_max + 2, np.float64)
    hk = hv.view(np.int64)
    items = 0
    for k in range(markers_at.size):  # in raster order, all of age 0
        _push(hv, hk, items, image[markers_at[k]], np.int64(markers_at[k]))
        items += 1
    age = 1
    nn = offsets.size
    while items > 0:
        idx = hk[3] & 0xFFFFFFFF
        items -= 1
        if items > 0:
            xv = hv[2 * items + 2]
            xk = hk[2 * items + 3]
            xa = xk >> 32
            i = 0
            while True:  # the hole down to a leaf
                left = 2 * i + 1
                if left >= items:
                    break
                best = left
                right = left + 1
                if right < items:
                    lv = hv[2 * left + 2]
                    rv = hv[2 * right + 2]
                    if rv < lv or (rv == lv and (hk[2 * right + 3] >> 32) < (hk[2 * left + 3] >> 32)):
                        best = right
                hv[2 * i + 2] = hv[2 * best + 2]
                hk[2 * i + 3] = hk[2 * best + 3]
                i = best
            while i > 0:  # the last item rises while its parent is not before it
                parent = (i + 1) // 2 - 1
                pv = hv[2 * parent + 2]
                if xv < pv or (xv == pv and xa <= (hk[2 * parent + 3] >> 32)):
                    hv[2 * i + 2] = pv
                    hk[2 * i + 3] = hk[2 * parent + 3]
                    i = parent
                else:
                    break
            hv[2 * i + 2] = xv
            hk[2 * i + 3] = xk
        lab = output[idx]
        for k in range(nn):
            nb = idx + offsets[k]
            if todo[nb] == 0:
                continue
            todo[nb] = 0
            age += 1
            output[nb] = lab
            _push(hv, hk, items, image[nb], (np.int64(age) << 32) | np.int64(nb))
            items += 1


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
    img = np.pad(np.asarray(image, dtype=np.float64), 1).ravel()
    out = np.pad(np.where(mask, markers, 0).astype(np.int32, copy=False), 1).ravel()
    m = np.pad(mask, 1).ravel()
    if (h + 2) * W >= 2**31:
        raise ValueError(f"watershed: image {image.shape} has 2**31 or more pixels (ages and pixel "
                         "indices are packed in 32 bits each)")
    offsets = np.array([-W, -1, 1, W, -W - 1, -W + 1, W - 1, W + 1], dtype=np.int64)
    todo = (m & (out == 0)).view(np.uint8)
    _flood(img, out, todo, np.flatnonzero(out).astype(np.int64), offsets)
    return out.reshape(h + 2, W)[1:-1, 1:-1].copy()


def watershed(image, markers, mask=None):
    """:func:`watershed_numpy` for arrays of any backend (GPU arrays are flooded on the host)."""
    bk = backend_of(image, markers)
    out = watershed_numpy(bk.to_numpy(image), bk.to_numpy(markers), None if mask is None else bk.to_numpy(mask))
    return bk.asarray(out)

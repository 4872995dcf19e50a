"""Object neighbours: CellProfiler 4 **MeasureObjectNeighbors** (objects vs themselves).

For every object of a label image, with the neighbours being the other objects
of the same image (CPJUMP1: Cells within 5 px, Cells adjacent, Nuclei within
1 px):

=============================  ==================================================
column                         definition (CellProfiler 4)
=============================  ==================================================
``NumberOfNeighbors``          other objects with a pixel inside the object
                               dilated by a disk of radius ``distance``
                               (``x^2 + y^2 <= distance^2``)
``PercentTouching``            100 x share of the object's outline pixels that
                               lie within a disk of radius ``distance + 0.5`` of
                               another object's pixel
``FirstClosestObjectNumber``   the other object with the nearest centre
``FirstClosestDistance``       distance between the two centres, pixels
``SecondClosestObjectNumber``  the other object with the second nearest centre
``SecondClosestDistance``      its centre distance
``AngleBetweenNeighbors``      angle (degrees) at the object's centre between the
                               vectors to the first and second closest centres
=============================  ==================================================

"Centre" is the centroid of the object's pixels (``centers_of_labels``), the
outline is CellProfiler's ``outline``: a labelled pixel with an 8-neighbour of
another value, or on the image border. "Adjacent" is a distance of 1 (a
4-connected step for the neighbour count, the 3 x 3 square for touching). The
column suffix is the distance (``_5``) or ``Adjacent``.

With fewer than two objects every column is 0; with exactly two, the second
closest number, distance and the angle are 0 (CellProfiler's conventions;
with discarded objects, "objects" counts CellProfiler's ``nneighbors``, the
largest number of the unfiltered labels, and the second closest *number*
still needs three final objects).

Vectorised over all objects: the neighbour search only visits outline pixels
(the pixel of an object nearest to any outside point is always an outline
pixel, so this finds exactly the pairs CellProfiler's per-object dilation finds)
and gathers the labels at every offset of the disk (a loop over offsets, not
over objects). Runs on CPU or GPU through :mod:`hpc_profiler.backend`.

Objects the identification discarded
------------------------------------
CellProfiler's "Consider objects discarded for touching image border?" = Yes
(the CPJUMP1 setting of all three Neighbors modules) measures on the object
set's ``small_removed_segmented`` label image instead of the final one: for
Cells the cells grown from the final nuclei *and* from the nuclei discarded
for touching the border (IdentifySecondaryObjects grows both, then drops the
latter), for Nuclei the nuclei before the filters except the border-touching
and too-small ones (so the too-large ones). With ``with_discarded`` (see
:func:`with_discarded_labels`) the discarded objects are counted as
neighbours (``NumberOfNeighbors``), as touching pixels (``PercentTouching``)
and as nearest centres for ``FirstClosestDistance``,
``SecondClosestDistance`` and ``AngleBetweenNeighbors``, while
``FirstClosestObjectNumber`` / ``SecondClosestObjectNumber`` name final
objects only: CellProfiler recomputes those among the kept objects, not the
distances (``MeasureObjectNeighbors.run``). They are never measured
themselves. Without it (the setting "No", ``features.neighbors.count_discarded:
false``) only the final objects exist.

Deliberate differences (``docs/feature_differences.md``):

* An object without pixels (possible only for an empty compartment) gets 0
  neighbours, object numbers 0 and NaN distances/angle instead of an error.
* The angle's cosine is clipped to [-1, 1] before ``arccos`` (CellProfiler can
  return NaN for collinear centres by rounding).
* ``cp_measure`` 0.3.0 reports the object itself as ``FirstClosestObjectNumber``
  and the nearest other object as ``SecondClosestObjectNumber``; we follow
  CellProfiler (the nearest and second-nearest *other* objects).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from ..backend import backend_of
from ..morphology import njit_cached

MEASUREMENTS = (
    "NumberOfNeighbors",
    "PercentTouching",
    "FirstClosestObjectNumber",
    "FirstClosestDistance",
    "SecondClosestObjectNumber",
    "SecondClosestDistance",
    "AngleBetweenNeighbors",
)


def neighbor_scale(distance: Optional[int]) -> str:
    """Column suffix: ``"Adjacent"`` for ``None``, else the distance (``"5"``)."""
    return "Adjacent" if distance is None else str(int(distance))


def neighbor_feature_names(distance: Optional[int]) -> list[str]:
    """Column names :func:`measure_neighbors` returns for ``distance``."""
    s = neighbor_scale(distance)
    return [f"Neighbors_{m}_{s}" for m in MEASUREMENTS]


def disk_offsets(radius: float) -> np.ndarray:
    """(dy, dx) offsets of CellProfiler's ``strel_disk(radius)`` (``dy^2+dx^2 <= r^2``)."""
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy * dy + dx * dx <= radius * radius
    return np.stack([dy[keep], dx[keep]], axis=1)


def outline_mask(xp, labels):
    """CellProfiler's ``outline``: labelled pixels with an 8-neighbour of another
    value, plus labelled pixels on the image border.

    A pixel has an 8-neighbour of another value when the maximum or the
    minimum of its 3 x 3 window (edge pixels repeated, which adds no new
    value) differs from it: on the device two rank filters instead of eight
    shifted comparisons (a handful of launches instead of ~25).
    """
    if xp is np:  # eight shifted comparisons: 6x faster than the rank filters on the CPU
        diff = np.zeros(labels.shape, dtype=bool)
        for (sa, sb) in (
            ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
            ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
            ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
            ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))),
        ):
            d = labels[sa] != labels[sb]
            diff[sa] |= d
            diff[sb] |= d
        diff[0, :] = True
        diff[-1, :] = True
        diff[:, 0] = True
        diff[:, -1] = True
        return diff & (labels != 0)
    if labels.shape[0] < 3 or labels.shape[1] < 3:  # every pixel is on the border
        return labels != 0
    ndi = backend_of(labels).ndi
    diff = ((ndi.maximum_filter(labels, size=3, mode="nearest") != labels)
            | (ndi.minimum_filter(labels, size=3, mode="nearest") != labels))
    diff = xp.pad(diff[1:-1, 1:-1], 1, mode="constant", constant_values=True)
    return diff & (labels != 0)


def object_centers(xp, labels, n):
    """Centroids (y, x) of objects 1..n, NaN for objects without pixels.

    On the device, sums per label by ``bincount`` over all pixels in raster
    order (labels above ``n`` fall in bins that are cut off, no boolean
    selection): the order and values of the CPU's sum over the object's
    pixels alone.
    """
    if xp is np:  # one numba pass in raster order: the additions of bincount over the labelled pixels
        cnt = np.zeros(n)
        sy = np.zeros(n)
        sx = np.zeros(n)
        _center_sums_jit(np.ascontiguousarray(labels), n, cnt, sy, sx)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sy / cnt, sx / cnt, cnt
    flat = labels.ravel()
    k = xp.arange(flat.shape[0])
    w = labels.shape[1]
    m = max(n + 1, 1)
    cnt = xp.bincount(flat, minlength=m)[1:n + 1].astype(xp.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = xp.bincount(flat, weights=(k // w).astype(xp.float64), minlength=m)[1:n + 1] / cnt
        cx = xp.bincount(flat, weights=(k % w).astype(xp.float64), minlength=m)[1:n + 1] / cnt
    return cy, cx, cnt


def _closest(xp, cy, cx, has, rows: Optional[int] = None):
    """Indices of the nearest and second-nearest other objects (stable ties) of the
    first ``rows`` objects (all by default) among all objects."""
    m = cy.shape[0]
    r = m if rows is None else rows
    d = xp.sqrt((cy[:r, None] - cy[None, :]) ** 2 + (cx[:r, None] - cx[None, :]) ** 2)
    d[~has[:r], :] = xp.inf
    d[:, ~has] = xp.inf
    d[xp.arange(r), xp.arange(r)] = xp.inf
    order = xp.argsort(d, axis=1, kind="stable")
    return order[:, 0], order[:, 1] if m > 1 else order[:, 0]


#: Largest (objects + 1)^2 for which the CPU marks neighbour pairs in a table (64 MiB of flags)
_PAIR_TABLE_MAX = 2**26


def _neighbor_pairs(xp, padded, width: int, base, own, radius: int, n: int):
    """Neighbour pairs and touching outline pixels, every disk offset at once.

    ``padded`` is the flat label image padded by ``radius + 1``; ``base`` the
    flat indices of the outline pixels in it and ``own`` their labels. The
    labels at every offset of the disk of radius ``radius + 0.5`` are read in
    one gather (``outline pixels x offsets``): an outline pixel touches when
    one of them is another object; the pairs (own, other) at offsets within
    ``radius`` are the neighbour pairs, returned as unique codes
    ``own * (n + 1) + other``. On the device a fixed number of array
    operations, whatever the number of objects or offsets (one launch per
    offset cost ~10 launches x 100 offsets per call); on the CPU one offset at
    a time, which streams through memory faster than the 2-D gather.
    """
    touch_offsets = disk_offsets(radius + 0.5)
    in_count = (touch_offsets ** 2).sum(axis=1) <= radius * radius  # the disk of radius ``radius``
    table = np.stack([touch_offsets[:, 0] * width + touch_offsets[:, 1], in_count]).astype(np.int64)
    if xp is np and (n + 1) ** 2 <= _PAIR_TABLE_MAX:  # CPU: one numba pass, the pairs as bits of an (n+1)^2 table
        touching = np.zeros(own.shape, dtype=bool)
        seen = np.zeros((n + 1) ** 2, dtype=np.bool_)
        _pairs_cpu_jit(padded, base.astype(np.int64), own.astype(np.int64), table[0], table[1], n, touching, seen)
        return np.flatnonzero(seen), touching  # the unique codes, ascending
    if xp is np:  # CPU, many objects: one offset at a time (streams through memory)
        touching = np.zeros(own.shape, dtype=bool)
        pair_codes = []
        for off, counted in table.T.tolist():
            q = padded[base + off]
            other = (q != 0) & (q != own)
            touching |= other
            if counted:
                pair_codes.append(own[other].astype(np.int64) * (n + 1) + q[other])
        codes = np.unique(np.concatenate(pair_codes)) if pair_codes else np.zeros(0, np.int64)
        return codes, touching
    table = xp.asarray(table)  # one host->device copy of the offsets
    q = padded[base[:, None] + table[0][None, :]]
    other = (q != 0) & (q != own[:, None])
    touching = other.any(axis=1)
    pairs = other & (table[1] > 0)[None, :]
    codes = (own[:, None].astype(xp.int64) * (n + 1) + q)[pairs]
    return xp.unique(codes), touching


def _center_sums(labels, n, cnt, sy, sx):
    """Pixel count and sums of the row / column indices of objects 1..n, in raster order (numba)."""
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            v = labels[y, x]
            if v > 0 and v <= n:
                cnt[v - 1] += 1.0
                sy[v - 1] += y
                sx[v - 1] += x


def _pairs_cpu(padded, base, own, offsets, counted, n, touching, seen):
    """:func:`_neighbor_pairs` on the CPU: ``touching`` per outline pixel, ``seen[own * (n + 1) + other]`` (numba)."""
    for i in range(base.shape[0]):
        b = base[i]
        o = own[i]
        t = False
        for j in range(offsets.shape[0]):
            q = padded[b + offsets[j]]
            if q != 0 and q != o:
                t = True
                if counted[j]:
                    seen[o * (n + 1) + q] = True
        touching[i] = t


def _discarded_cpu(unf, fin, lut, out):
    """``lut[unf] = fin`` where both are labelled (raster order: the last pixel wins, as NumPy's assignment),
    then ``out = lut[unf]`` (numba)."""
    h, w = unf.shape
    for y in range(h):
        for x in range(w):
            u = unf[y, x]
            f = fin[y, x]
            if u > 0 and f > 0:
                lut[u] = f
    for y in range(h):
        for x in range(w):
            out[y, x] = lut[unf[y, x]]


_discarded_cpu_jit = njit_cached(_discarded_cpu)
_center_sums_jit = njit_cached(_center_sums)
_pairs_cpu_jit = njit_cached(_pairs_cpu)


class DiscardedObjects(NamedTuple):
    """What :func:`measure_neighbors` takes as ``with_discarded`` (:func:`with_discarded_labels`)."""

    #: objects 1..N with their unfiltered pixels; a discarded object of unfiltered number u is N + u
    labels: object
    #: N + the largest unfiltered number: the label range of ``labels``
    n_labels: int
    #: the largest unfiltered number: CellProfiler's ``nneighbors``, which decides whether
    #: there are enough objects to measure (> 1) and a second closest one (> 2)
    n_cellprofiler: int


def with_discarded_labels(unfiltered, final, n_objects: Optional[int] = None,
                          n_unfiltered: Optional[int] = None) -> DiscardedObjects:
    """The objects :func:`measure_neighbors` takes as ``with_discarded``.

    ``unfiltered`` is CellProfiler's ``small_removed_segmented`` of an object
    set (the objects before the identification's final filters, in its own
    numbering 1..M), ``final`` the final labels 1..N. An unfiltered object
    that overlaps a final object gets that object's number; every other one
    (a discarded object) with unfiltered number u gets N + u (numbers that
    stay unused are objects without pixels, which are never anybody's
    neighbour). The pixels are the unfiltered image's, as CellProfiler
    measures them. ``n_objects``: N when known; ``n_unfiltered``: M when known
    (else one device->host copy reads it).
    """
    bk = backend_of(unfiltered, final)
    xp = bk.xp
    if xp is np and np.ndim(unfiltered) == 2 and np.shape(unfiltered) == np.shape(final):
        unf = np.asarray(unfiltered)
        unf = np.ascontiguousarray(unf if unf.dtype.kind in "iu" else unf.astype(np.int64))
        fin = np.ascontiguousarray(final)
        m = int(n_unfiltered) if n_unfiltered is not None else (int(unf.max()) if unf.size else 0)
        n = int(n_objects) if n_objects is not None else (int(fin.max()) if fin.size else 0)
        lut = n + np.arange(m + 1, dtype=np.int64)
        lut[0] = 0
        out = np.empty(unf.shape, dtype=np.int32)
        _discarded_cpu_jit(unf, fin, lut, out)  # the same lookup, in two numba passes
        return DiscardedObjects(out, n + m, m)
    unfiltered = xp.asarray(unfiltered).astype(xp.int64)
    final = xp.asarray(final)
    m = int(n_unfiltered) if n_unfiltered is not None else (int(unfiltered.max()) if unfiltered.size else 0)
    n = int(n_objects) if n_objects is not None else (int(final.max()) if final.size else 0)
    lut = n + xp.arange(m + 1, dtype=xp.int64)
    lut[0] = 0
    both = (final > 0) & (unfiltered > 0)
    lut[unfiltered[both]] = final[both].astype(xp.int64)
    return DiscardedObjects(lut[unfiltered].astype(xp.int32), n + m, m)


def measure_neighbors(labels, n_objects: int, *, distance: Optional[int], with_discarded=None) -> dict:
    """Neighbour measurements of each object against the other objects.

    Parameters
    ----------
    labels : int array (H, W)
        Label image, objects 1..N.
    n_objects : int
        N; row ``i`` is label ``i + 1``.
    distance : int or None
        CellProfiler's "Within a specified distance" in pixels (columns
        ``..._<distance>``), or ``None`` for "Adjacent" (columns ``..._Adjacent``,
        computed as distance 1).
    with_discarded : DiscardedObjects, optional
        :func:`with_discarded_labels`: objects 1..N as CellProfiler's
        ``small_removed_segmented`` has them and the discarded objects
        numbered above N; they count as neighbours ("Consider objects
        discarded for touching image border?" = Yes, see the module
        docstring). ``None``: the setting "No".

    Returns
    -------
    dict[str, array of shape (N,), float64]
        Keys as in :func:`neighbor_feature_names`.

    Notes
    -----
    Reproduces CellProfiler 4 ``MeasureObjectNeighbors.run`` with
    "neighbors are objects" (see the module docstring).
    """
    bk = backend_of(labels)
    xp = bk.xp
    n = int(n_objects)
    names = neighbor_feature_names(distance)
    radius = 1 if distance is None else int(distance)
    if radius < 0:
        raise ValueError(f"neighbor distance must be >= 0, got {distance}")
    zeros = {k: xp.zeros(n, dtype=xp.float64) for k in names}
    if with_discarded is None:
        labels = xp.asarray(labels)
        labels = xp.where(labels <= n, labels, 0).astype(xp.int32)
        m = n_cp = n  # objects that exist as neighbours: the final ones only
    else:
        ext = with_discarded.labels
        if tuple(ext.shape) != tuple(labels.shape):
            raise ValueError(f"measure_neighbors: with_discarded has shape {tuple(ext.shape)},"
                             f" the labels {tuple(labels.shape)}")
        labels = xp.asarray(ext).astype(xp.int32)
        m = max(int(with_discarded.n_labels), n)
        n_cp = int(with_discarded.n_cellprofiler)
    # CellProfiler measures nothing unless there are at least two objects
    # (final plus discarded ones)
    if n == 0 or n_cp < 2:
        return zeros
    cy, cx, cnt = object_centers(xp, labels, m)
    has_all = cnt > 0
    has = has_all[:n]
    s = neighbor_scale(distance)

    # --- closest objects by centre distance, angle between them. The numbers
    # name final objects only; the distances and the angle also see the
    # discarded objects (CellProfiler recomputes only the numbers).
    first_all, second_all = _closest(xp, cy, cx, has_all, rows=n)
    if m > n:
        first, second = _closest(xp, cy[:n], cx[:n], has)
    else:
        first, second = first_all, second_all
    cyn, cxn = cy[:n], cx[:n]
    v1y, v1x = cy[first_all] - cyn, cx[first_all] - cxn
    if n_cp > 2:
        v2y, v2x = cy[second_all] - cyn, cx[second_all] - cxn
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = (v1y * v2y + v1x * v2x) / xp.sqrt((v1y**2 + v1x**2) * (v2y**2 + v2x**2))
        angle = xp.degrees(xp.arccos(xp.clip(cos, -1.0, 1.0)))
    else:
        v2y = v2x = xp.zeros(n)
        angle = xp.zeros(n)
    first_number = (first + 1).astype(xp.float64) if n > 1 else xp.zeros(n)
    second_number = (second + 1).astype(xp.float64) if n > 2 else xp.zeros(n)
    first_number[~has] = 0
    second_number[~has] = 0

    # --- neighbours and touching, from the outline pixels
    outline = outline_mask(xp, labels) & (labels <= n)  # outlines of the measured objects
    oy, ox = xp.nonzero(outline)
    own = labels[oy, ox]
    pad = radius + 1
    padded = xp.pad(labels, pad, mode="constant")
    width = padded.shape[1]
    padded = padded.ravel()
    base = (oy + pad) * width + (ox + pad)  # flat index of each outline pixel in ``padded``
    codes, touching = _neighbor_pairs(xp, padded, width, base, own, radius, m)
    n_neighbors = xp.bincount(codes // (m + 1), minlength=n + 1)[1 : n + 1].astype(xp.float64)
    perim = xp.bincount(own, minlength=n + 1)[1 : n + 1].astype(xp.float64)
    touch = xp.bincount(own[touching], minlength=n + 1)[1 : n + 1].astype(xp.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = xp.where(perim > 0, 100.0 * touch / xp.maximum(perim, 1), 0.0)

    nan = xp.asarray(np.nan)
    out = {
        f"Neighbors_NumberOfNeighbors_{s}": n_neighbors,
        f"Neighbors_PercentTouching_{s}": percent,
        f"Neighbors_FirstClosestObjectNumber_{s}": first_number,
        f"Neighbors_FirstClosestDistance_{s}": xp.where(has, xp.sqrt(v1y**2 + v1x**2), nan),
        f"Neighbors_SecondClosestObjectNumber_{s}": second_number,
        f"Neighbors_SecondClosestDistance_{s}": xp.where(has, xp.sqrt(v2y**2 + v2x**2), nan),
        f"Neighbors_AngleBetweenNeighbors_{s}": xp.where(has, angle, nan),
    }
    return {k: xp.asarray(out[k], dtype=xp.float64) for k in names}


# ----------------------------------------------------------------- registry entry
def neighbor_distances(obj: str, params) -> list[Optional[int]]:
    """Neighbour settings measured for ``obj`` (``None`` = adjacent), CPJUMP1 style."""
    nb = params.neighbors
    if obj == "Cells":
        return [nb.cells_distance] + ([None] if nb.cells_adjacent else [])
    if obj == "Nuclei":
        return [nb.nuclei_distance]
    return []


def _neighbors_names(obj, channels, params) -> list[str]:
    return [n for d in neighbor_distances(obj, params) for n in neighbor_feature_names(d)]


def _neighbors_measure(ctx) -> dict:
    ext = None
    if ctx.params.neighbors.count_discarded and ctx.unfiltered is not None:
        ext = with_discarded_labels(ctx.unfiltered, ctx.labels, ctx.n, n_unfiltered=ctx.unfiltered_max)
    out = {}
    for d in neighbor_distances(ctx.obj, ctx.params):
        out.update(measure_neighbors(ctx.labels, ctx.n, distance=d, with_discarded=ext))
    return out


from .registry import Family  # noqa: E402  (the entry closes the module)

FAMILY = Family(name="Neighbors", names=_neighbors_names, measure=_neighbors_measure, per_channel=False)

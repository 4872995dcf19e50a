"""AreaShape features: CellProfiler's MeasureObjectSizeShape (2-D, Zernike on).

Reproduces the per-object columns CellProfiler 4 writes with "Calculate the
Zernike features" on and "advanced features" off: ``AreaShape_{Area,
Perimeter, FormFactor, Eccentricity, Solidity, ConvexArea, Extent, EulerNumber,
Compactness, MajorAxisLength, MinorAxisLength, Orientation, MaximumRadius,
MeanRadius, MedianRadius, MinFeretDiameter, MaxFeretDiameter,
BoundingBoxArea, BoundingBox{Minimum,Maximum}_{X,Y}, Center_{X,Y},
EquivalentDiameter}``, ``AreaShape_Zernike_n_m`` (``n <= 9``, ``0 <= m <= n``,
``n - m`` even) and ``Location_Center_{X,Y}`` (Identify modules write the
centroid there). CellProfiler 4 takes most of these from
``skimage.measure.regionprops``, the radii from a Euclidean distance transform
of each object alone, and the Feret diameters and the Zernike moments from
``centrosome`` (convex hull, rotating calipers, minimum enclosing circle).

How it runs
-----------
* CPU (NumPy labels): moments, bounding boxes and centroids from whole-array
  sums; the rest in numba kernels that walk each object once
  (:func:`_perimeter_euler_kernel`, :func:`_radii_kernel`,
  :func:`_hull_geometry`, :func:`_zernike_kernel`). They reproduce the
  arithmetic of the whole-array versions kept below (``perimeters``,
  ``euler_numbers``, ``convex_hulls``, ``feret_diameters``, ``convex_areas``,
  ``radii_distances``) to the bit - NumPy's pairwise summation included -
  and the tests check it. The enclosing circle stays whole-array NumPy
  (:func:`minimum_enclosing_circles`): its ``arccos`` must be NumPy's, whose
  last bit differs from the C library's that numba calls.
* Device (CuPy labels, or the counting backend of :mod:`hpc_profiler._audit`):
  hulls, Feret diameters, enclosing circles, per-object distance transforms
  and the 3x3/2x2 configuration counts are sequential per object, which a
  GPU does badly. They run on the host, on **one copy of the label images per
  site**: :func:`host_areashape` stacks the label images of all object sets
  (``measure_site`` calls it once) and copies them in one device->host
  transfer; the host columns go back in one host->device copy per object
  set. Only the Zernike moments, which touch every pixel, stay on the device
  (:func:`_zernike_moments_device`, a few dozen launches per object set, none
  per object; equal to the numba kernel to the bit when run on NumPy). The
  device path therefore gives the CPU path's numbers for every column but
  Zernike (CuPy's reductions and fused multiply-adds differ in the last bits).

Algorithms:

* area, bounding box, centroid, second central moments -> axes, eccentricity,
  orientation (``regionprops`` formulas);
* perimeter: ``skimage.measure.perimeter`` (4-neighbourhood border, weights
  of the 3x3 border configurations), label-aware so touching objects are
  measured as if alone;
* Euler number (8-connectivity, ``regionprops``): the 2x2 configuration count
  of ``skimage.measure.euler_number``, label-aware;
* radii: an exact Euclidean distance transform of each object alone in its
  padded bounding box (Meijster's algorithm; SciPy's values);
* convex hulls from the per-row extreme pixels (the only possible hull
  vertices; Andrew's monotone chain, exact on integer and half-integer
  coordinates); Solidity counts the pixel centres inside the hull of the
  pixels' diamond corners, as ``skimage.morphology.convex_hull_image`` does;
  Feret diameters from the hull of pixel centres (maximum vertex distance,
  minimum over hull edges of the farthest vertex); the minimum enclosing
  circle by Chrystal's algorithm (as
  ``centrosome.cpmorphology.minimum_enclosing_circle``), iterated for all
  objects in parallel;
* Zernike: magnitude of the moment of the object's indicator on its minimum
  enclosing circle, divided by the circle's area (``centrosome.zernike``).
* ConvexArea (CellProfiler 5): the pixel count of the convex hull image
  (``regionprops.area_convex``), the denominator of Solidity.
* Zernike exactness: the 2-3 pixels that define an object's enclosing circle lie on it
  exactly; whether ``rho^2 <= 1`` keeps them depends on the last bit of the
  computed centre and radius. :func:`minimum_enclosing_circles` therefore
  follows centrosome's iteration to the letter (start vertex, ``arccos``
  angles, formulas), which gives CellProfiler's circle bit for bit (checked
  against CellProfiler 5 in ``tests/test_cellprofiler_reference.py``).

Deliberate differences
----------------------
* 2-D only (no Volume/SurfaceArea/Z columns).
* An object with no pixel gets NaN for every feature except Area (0).
* Feret diameters and the enclosing circle use only the per-row extreme
  pixels (the only possible hull vertices), which gives the same hull as
  CellProfiler's outline pixels.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from hpc_profiler.backend import backend_of
from hpc_profiler.features._pairwise import pairwise as _pairwise
from hpc_profiler.morphology import edt_columns_up, edt_row_envelope, njit_cached
from hpc_profiler.features._objects import (
    ObjectPixels,
    bounding_boxes,
    centroids,
    edt_at,
    object_pixels,
    pack_objects,
    row_extremes,
    segment_max,
    segment_median,
    segment_sort,
    segment_sum,
)

__all__ = [
    "measure_areashape",
    "zernike_indexes",
    "perimeters",
    "euler_numbers",
    "convex_hulls",
    "minimum_enclosing_circles",
    "feret_diameters",
    "convex_areas",
    "zernike_moments",
]

#: ``skimage.measure.perimeter`` weights of the border-pixel configuration codes
#: (1 for the centre, 2 per 4-neighbour, 10 per diagonal neighbour on the border).
_PERIMETER_WEIGHTS = {5: 1.0, 7: 1.0, 15: 1.0, 17: 1.0, 25: 1.0, 27: 1.0,
                      21: math.sqrt(2), 33: math.sqrt(2),
                      13: (1 + math.sqrt(2)) / 2, 23: (1 + math.sqrt(2)) / 2}
#: ``skimage.measure.euler_number`` coefficients, 2-D, 8-connectivity, per 2x2 code.
_EULER_COEFS_8 = [0, 0, 0, 0, 0, 0, -1, 0, 1, 0, 0, 0, 0, 0, -1, 0]


def zernike_indexes(degree: int = 9):
    """``(n, m)`` pairs CellProfiler measures: ``0 <= m <= n <= degree``, ``n - m`` even."""
    return [(n, m) for n in range(degree + 1) for m in range(n + 1) if (n - m) % 2 == 0]


def perimeters(labels, n_objects: int):
    """Per-object ``skimage.measure.perimeter(object, neighborhood=4)``.

    A border pixel of object L is a pixel of L with a 4-neighbour (or the
    image edge) outside L. Its code is ``1 + 2 * (#4-neighbours on L's border)
    + 10 * (#diagonal neighbours on L's border)`` and contributes the weight of
    that code (``regionprops`` perimeter, used by CellProfiler 4).
    """
    xp = backend_of(labels).xp
    lab = labels.astype(xp.int32, copy=False)  # int32: half the memory traffic of int64
    h, w = lab.shape
    # neighbours read as views of one zero-padded copy (no shifted copies)
    pad = xp.pad(lab, 1)
    inner = lab > 0
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        inner &= pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == lab
    border = (lab > 0) & ~inner
    # the configuration code is needed at the border pixels only (a small part of
    # the image): gathered from the padded border-label image at their 8 neighbours
    bpad = xp.pad(xp.where(border, lab, 0), 1)
    sel = xp.flatnonzero(xp.ravel(border))
    own = xp.ravel(lab)[sel]
    at = (sel // w + 1) * (w + 2) + (sel % w + 1)  # border pixels in the padded image
    bflat = xp.ravel(bpad)
    code = xp.ones(sel.shape[0], dtype=xp.int32)
    for dy, dx, wgt in ((-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2),
                        (-1, -1, 10), (-1, 1, 10), (1, -1, 10), (1, 1, 10)):
        code += wgt * (xp.take(bflat, at + (dy * (w + 2) + dx)) == own)
    lut = xp.zeros(50, dtype=xp.float64)
    for k, v in _PERIMETER_WEIGHTS.items():
        lut[k] = v
    return xp.bincount(own - 1, weights=lut[code], minlength=n_objects)[:n_objects]


def euler_numbers(labels, n_objects: int):
    """Per-object Euler number, 8-connectivity (``regionprops.euler_number``).

    Counts, for every 2x2 window of the zero-padded image and every label
    present in it, the window's configuration code for that label
    (``1`` bottom-right, ``2`` top-right, ``4`` bottom-left, ``8`` top-left)
    and sums ``skimage``'s coefficients per label.
    """
    xp = backend_of(labels).xp
    p = xp.pad(labels.astype(xp.int32, copy=False), 1)
    a, b, c, d = (xp.ravel(q) for q in (p[1:, 1:], p[1:, :-1], p[:-1, 1:], p[:-1, :-1]))
    # a window whose four corners carry one label has code 15 or 0: coefficient 0
    mixed = xp.flatnonzero((a != b) | (a != c) | (a != d))
    a, b, c, d = a[mixed], b[mixed], c[mixed], d[mixed]
    coefs = xp.asarray(_EULER_COEFS_8, dtype=xp.float64)
    total = xp.zeros(n_objects, dtype=xp.float64)
    corners = [a, b, c, d]
    for k, lk in enumerate(corners):
        take = lk > 0
        for prev in corners[:k]:
            take &= prev != lk
        code = (a == lk) * 1 + (b == lk) * 4 + (c == lk) * 2 + (d == lk) * 8
        sel = xp.flatnonzero(take)
        total += xp.bincount(lk[sel] - 1, weights=coefs[code[sel]],
                             minlength=n_objects)[:n_objects]
    return total


def convex_hulls(obj, py, px, n: int, center=None):
    """Convex hulls of many point sets at once.

    Points are sorted by angle around their set's mean (ties: farthest
    first, nearer ones dropped), then every reflex or straight vertex is
    removed, repeatedly, until each polygon is convex (a star-shaped polygon
    around an interior point loses only non-hull points this way).

    Parameters
    ----------
    obj : (M,) int array
        Set index of each point (``0..n-1``).
    py, px : (M,) float arrays
        Coordinates.
    n : int
        Number of sets.
    center : (cy, cx) arrays, optional
        Interior point of each set to sort around (default: the mean of its
        points). Vertices are listed from the smallest angle around it, as
        ``centrosome.cpmorphology.convex_hull`` lists them around the
        object's centroid.

    Returns
    -------
    (obj, py, px) of the hull vertices, grouped by set, counter-clockwise in
    the (x, y) plane.
    """
    xp = backend_of(py).xp
    if center is None:
        cnt = xp.bincount(obj, minlength=n)[:n].astype(xp.float64)
        with _quiet(xp):
            cy = xp.bincount(obj, weights=py, minlength=n)[:n] / cnt
            cx = xp.bincount(obj, weights=px, minlength=n)[:n] / cnt
    else:
        cy, cx = center
    ang = xp.arctan2(py - cy[obj], px - cx[obj])
    d2 = (py - cy[obj]) ** 2 + (px - cx[obj]) ** 2
    order = xp.lexsort(xp.stack([-d2, ang, obj.astype(xp.float64)]))
    obj, py, px, ang = obj[order], py[order], px[order], ang[order]
    if obj.shape[0] > 1:
        keep = xp.ones(obj.shape[0], dtype=bool)
        keep[1:] = ~((obj[1:] == obj[:-1]) & (ang[1:] == ang[:-1]))
        obj, py, px = obj[keep], py[keep], px[keep]
    while obj.shape[0] > 0:
        counts = xp.bincount(obj, minlength=n)[:n]
        starts = xp.cumsum(counts) - counts
        i = xp.arange(obj.shape[0])
        pos = i - starts[obj]
        c = counts[obj]
        prev = xp.where(pos == 0, i + c - 1, i - 1)
        nxt = xp.where(pos == c - 1, i - c + 1, i + 1)
        ax, ay = px - px[prev], py - py[prev]
        bx, by = px[nxt] - px, py[nxt] - py
        cross = ax * by - ay * bx
        back = -(ax * bx + ay * by)  # (prev - p) . (next - p)
        drop = ((cross < 0) | ((cross == 0) & (back < 0))) & (c > 2)
        if not bool(drop.any()):
            break
        obj, py, px = obj[~drop], py[~drop], px[~drop]
    return obj, py, px


class _quiet:
    """Silence divide warnings of the NumPy backend inside a block."""

    def __init__(self, xp):
        self._ctx = xp.errstate(divide="ignore", invalid="ignore") if hasattr(xp, "errstate") else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def _pad_groups(obj, vals, n: int, fill=float("nan")):
    """Ragged grouped values -> ``(n, max_count)`` array padded with ``fill``."""
    xp = backend_of(vals).xp
    counts = xp.bincount(obj, minlength=n)[:n]
    m = int(counts.max()) if n and obj.shape[0] else 1
    starts = xp.cumsum(counts) - counts
    out = xp.full((n, max(m, 3)), fill, dtype=xp.float64)  # >= 3 columns: no shape special cases
    col = xp.arange(obj.shape[0]) - starts[obj]
    out[obj, col] = vals
    return out, counts


def feret_diameters(hobj, hy, hx, n: int):
    """Minimum and maximum Feret diameters from convex hulls (pixel centres).

    Max: the largest distance between two hull vertices. Min: the smallest,
    over hull edges, of the largest distance of a vertex to the edge's line
    (the width of the hull in the direction normal to that edge), as
    ``centrosome.cpmorphology.feret_diameter`` used by CellProfiler. A hull of
    one point has both diameters 0; of two points, min 0 and max their distance.
    """
    xp = backend_of(hy).xp
    Y, counts = _pad_groups(hobj, hy, n)
    X, _ = _pad_groups(hobj, hx, n)
    dy = Y[:, :, None] - Y[:, None, :]
    dx = X[:, :, None] - X[:, None, :]
    dist = xp.sqrt(dy * dy + dx * dx)
    dmax = xp.nanmax(xp.where(xp.isnan(dist), -1.0, dist), axis=(1, 2))
    # edges e: v_e -> v_{e+1} (cyclic inside each hull)
    m = Y.shape[1]
    e = xp.arange(m)
    nxt = (e[None, :] + 1) % xp.maximum(counts[:, None], 1)
    Y1 = xp.take_along_axis(Y, nxt, axis=1)
    X1 = xp.take_along_axis(X, nxt, axis=1)
    ey, ex = Y1 - Y, X1 - X
    elen = xp.sqrt(ey * ey + ex * ex)
    cross = xp.abs(ex[:, :, None] * (Y[:, None, :] - Y[:, :, None])
                   - ey[:, :, None] * (X[:, None, :] - X[:, :, None]))
    with _quiet(xp):
        width = cross / elen[:, :, None]
    width = xp.where(xp.isnan(width), -1.0, width).max(axis=2)
    width = xp.where((elen > 0) & (e[None, :] < counts[:, None]), width, xp.inf)
    dmin = width.min(axis=1)
    dmin = xp.where(counts <= 2, 0.0, dmin)
    dmax = xp.where(counts == 1, 0.0, dmax)
    empty = counts == 0
    dmin = xp.where(empty, xp.nan, dmin)
    dmax = xp.where(empty, xp.nan, dmax)
    return dmin, dmax


def minimum_enclosing_circles(hobj, hy, hx, n: int, max_iter: int = 200):
    """Minimum enclosing circles of convex polygons, all at once (Chrystal's algorithm).

    Start from the hull edge ``S = (S0, S1)`` whose first vertex is the one
    with the smallest x, then y (where ``centrosome.cpmorphology.convex_hull``
    starts its counter-clockwise list), S1 the next one; find the vertex V
    seeing S under the smallest angle. If that angle is not acute, S is a
    diameter of the circle. If the angles at S0 and S1 of triangle S0-S1-V are
    not obtuse, the circle is the circumcircle of S0, S1, V. Otherwise V
    replaces the end of S with the obtuse angle, and the search repeats
    (``centrosome.cpmorphology.minimum_enclosing_circle``). The angles come
    from ``arccos`` of the normalised dot products and the circle from the
    same formulas, in the same order, as centrosome: co-circular pixels make
    exact ties common, and the circle must be the same to the last bit
    (Zernike keeps the pixels with ``rho**2 <= 1``).

    The hull of each set must be listed counter-clockwise (``convex_hulls``).
    Returns ``(cy, cx, radius)`` per set (NaN for empty sets).
    """
    Y, counts = _pad_groups(hobj, hy, n)
    X, _ = _pad_groups(hobj, hx, n)
    return _enclosing_circles_padded(Y, X, counts, max_iter)


def _enclosing_circles_padded(Y, X, counts, max_iter: int = 200):
    """:func:`minimum_enclosing_circles` of hulls given as ``(n, m)`` NaN-padded rows (``m >= 3``)."""
    xp = backend_of(Y).xp
    n, m = Y.shape
    cy = xp.full(n, xp.nan)
    cx = xp.full(n, xp.nan)
    r = xp.full(n, xp.nan)
    cols = xp.arange(m)[None, :]
    valid = cols < counts[:, None]
    # centrosome's first hull vertex: smallest x, then smallest y
    xmin = xp.where(valid, X, xp.inf).min(axis=1) if m else xp.zeros(n)
    first = valid & (X == xmin[:, None])
    s0 = xp.argmin(xp.where(first, Y, xp.inf), axis=1).astype(xp.int64) if m else xp.zeros(n, dtype=xp.int64)
    s1 = (s0 + 1) % xp.maximum(counts, 1)
    rows = xp.arange(n)
    one = counts == 1
    cy[one], cx[one], r[one] = Y[one, 0], X[one, 0], 0.0
    two = counts == 2
    p0y, p0x = Y[rows, s0], X[rows, s0]
    p1y, p1x = Y[rows, s1], X[rows, s1]
    cy[two] = (p0y[two] + p1y[two]) / 2
    cx[two] = (p0x[two] + p1x[two]) / 2
    r[two] = xp.sqrt((cy[two] - p0y[two]) ** 2 + (cx[two] - p0x[two]) ** 2)
    active = counts >= 3
    half_pi = math.pi / 2
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        ia = xp.flatnonzero(active)
        na = ia.shape[0]
        ar = xp.arange(na)
        Ya, Xa = Y[ia], X[ia]
        a0y, a0x = Y[ia, s0[ia]], X[ia, s0[ia]]
        a1y, a1x = Y[ia, s1[ia]], X[ia, s1[ia]]
        s01y, s01x = (a0y - a1y)[:, None], (a0x - a1x)[:, None]
        vs0y, vs0x = Ya - a0y[:, None], Xa - a0x[:, None]
        vs1y, vs1x = Ya - a1y[:, None], Xa - a1x[:, None]
        with _quiet(xp):
            s01n = s01y ** 2 + s01x ** 2
            ang1 = xp.abs(xp.arccos((s01y * vs1y + s01x * vs1x) / xp.sqrt(s01n * (vs1y ** 2 + vs1x ** 2))))
            ang0 = xp.abs(xp.arccos((-s01y * vs0y + -s01x * vs0x) / xp.sqrt(s01n * (vs0y ** 2 + vs0x ** 2))))
            angv = math.pi - ang1 - ang0  # angle at V, seeing S
        cand = valid[ia] & (cols != s0[ia, None]) & (cols != s1[ia, None])
        angv_c = xp.where(cand, angv, xp.inf)
        k = xp.argmin(angv_c, axis=1)
        best = angv_c[ar, k]
        has_v = cand.any(axis=1)
        at0, at1, atv = ang0[ar, k], ang1[ar, k], best
        diameter = (best >= half_pi) | ~has_v
        circum = ~diameter & ~(at1 > half_pi) & ~(at0 > half_pi) & ~(atv > half_pi)
        # diameter circles
        di = ia[diameter]
        cy[di] = (a0y[diameter] + a1y[diameter]) / 2
        cx[di] = (a0x[diameter] + a1x[diameter]) / 2
        ddy = a0y[diameter] - a1y[diameter]
        ddx = a0x[diameter] - a1x[diameter]
        r[di] = xp.sqrt(ddy ** 2 + ddx ** 2) / 2
        # circumcircles (centrosome's formula and operand order)
        ci = ia[circum]
        ay_, ax_ = a0y[circum], a0x[circum]
        by_, bx_ = a1y[circum], a1x[circum]
        qy, qx = Ya[ar, k][circum], Xa[ar, k][circum]
        dd = 2 * (ax_ * (by_ - qy) + bx_ * (qy - ay_) + qx * (ay_ - by_))
        a2, b2, q2 = ay_ ** 2 + ax_ ** 2, by_ ** 2 + bx_ ** 2, qy ** 2 + qx ** 2
        ux_c = (a2 * (by_ - qy) + b2 * (qy - ay_) + q2 * (ay_ - by_)) / dd
        uy_c = (a2 * (qx - bx_) + b2 * (ax_ - qx) + q2 * (bx_ - ax_)) / dd
        cy[ci], cx[ci] = uy_c, ux_c
        r[ci] = xp.sqrt((ay_ - uy_c) ** 2 + (ax_ - ux_c) ** 2)
        # move S: V replaces the end with the obtuse angle
        move = ~diameter & ~circum
        mi = ia[move]
        s0_obtuse = at0[move] > half_pi
        s0[mi[s0_obtuse]] = k[move][s0_obtuse]
        s1[mi[~s0_obtuse]] = k[move][~s0_obtuse]
        active[ia[diameter | circum]] = False
    return cy, cx, r


def convex_areas(op: ObjectPixels):
    """Pixel count of each object's convex hull image (``regionprops.area_convex``).

    ``skimage.morphology.convex_hull_image`` takes the hull of the pixels'
    diamond corners (centre +- 0.5 along each axis) and keeps the pixel
    centres inside it or on its border. The hull comes from the per-row
    extreme pixels only; the count is, per hull row ``y``, the integers in the
    polygon's horizontal section ``[xl(y), xr(y)]``.
    """
    xp = backend_of(op.flat).xp
    n = op.n
    eo, ey, exmin, exmax = row_extremes(op)
    eyf = ey.astype(xp.float64)
    lo = exmin.astype(xp.float64)
    hi = exmax.astype(xp.float64)
    pobj = xp.concatenate([eo] * 6)
    ppy = xp.concatenate([eyf, eyf - 0.5, eyf + 0.5, eyf, eyf - 0.5, eyf + 0.5])
    ppx = xp.concatenate([lo - 0.5, lo, lo, hi + 0.5, hi, hi])
    hobj, hy, hx = convex_hulls(pobj, ppy, ppx, n)
    Y, counts = _pad_groups(hobj, hy, n)
    X, _ = _pad_groups(hobj, hx, n)
    m = Y.shape[1]
    e = xp.arange(m)
    nxt = (e[None, :] + 1) % xp.maximum(counts[:, None], 1)
    Y1 = xp.take_along_axis(Y, nxt, axis=1)
    X1 = xp.take_along_axis(X, nxt, axis=1)
    ymin, _, ymax, _ = bounding_boxes(op)
    nrows = int((ymax - ymin).max()) if n else 0
    if nrows == 0:
        return xp.zeros(n)
    rows = ymin[:, None].astype(xp.float64) + xp.arange(nrows)[None, :]  # (n, R)
    valid_row = rows < ymax[:, None]
    ya, yb = Y[:, None, :], Y1[:, None, :]
    xa, xb = X[:, None, :], X1[:, None, :]
    yr = rows[:, :, None]
    lo_y, hi_y = xp.minimum(ya, yb), xp.maximum(ya, yb)
    spans = (yr >= lo_y) & (yr <= hi_y) & (e[None, None, :] < counts[:, None, None])
    with _quiet(xp):
        t = (yr - ya) / (yb - ya)
    xint = xp.where(ya == yb, xa, xa + t * (xb - xa))
    # horizontal edges contribute both end points
    xint2 = xp.where(ya == yb, xb, xint)
    big = 1e18
    xl = xp.minimum(xp.where(spans, xint, big), xp.where(spans, xint2, big)).min(axis=2)
    xr = xp.maximum(xp.where(spans, xint, -big), xp.where(spans, xint2, -big)).max(axis=2)
    eps = 1e-9
    cnt = xp.floor(xr + eps) - xp.ceil(xl - eps) + 1
    cnt = xp.where(valid_row & (xr >= xl), xp.maximum(cnt, 0), 0)
    return cnt.sum(axis=1)


def _radial_coefficients(n: int, m: int):
    """Coefficients ``c_k`` of ``R_nm(rho) = sum_k c_k rho^(n - 2k)``, ``k = 0..(n-m)/2``."""
    kmax = (n - m) // 2
    return [(-1) ** k * math.factorial(n - k)
            / (math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial(kmax - k))
            for k in range(kmax + 1)]


def zernike_moments(op: ObjectPixels, cy, cx, radius, degree: int = 9):
    """Zernike shape features: ``|sum over pixels of V_nm(p / r)| / (pi r^2)``.

    ``V_nm(rho, theta) = R_nm(rho) exp(i m theta)`` on the unit disk mapped to
    each object's minimum enclosing circle (centre ``cy, cx``, radius ``r``);
    pixels with ``rho^2 > 1`` (rounding) are ignored and the sum is divided by
    the circle's area, as ``centrosome.zernike.zernike`` in CellProfiler.

    Evaluated through the per-object basis sums
    ``M_jm = sum_p rho^(j - m) z^m`` (``z = (x + i y) / r``, ``j - m`` even):
    ``sum_p V_nm = sum_k c_k M_(n-2k) m``. Only the magnitude is reported,
    which does not depend on the angle convention. NumPy arrays go through
    the numba kernel (:func:`_zernike_kernel`, one pass per object), device
    arrays through :func:`_zernike_moments_device` (a few whole-site array
    operations); the two agree to rounding (``tests/test_features_shape.py``).
    """
    xp = backend_of(op.flat).xp
    if xp is not np:
        return _zernike_moments_device(op, cy, cx, radius, degree)
    feats = zernike_indexes(degree)
    ptr, basis, coef = _zernike_tables(degree)
    n = op.n
    out = np.empty((n, len(feats)))
    nonempty = np.flatnonzero(op.counts > 0)
    # segment_sum's reduceat sums the last non-empty object in two parts when empty objects follow it
    cut = int(nonempty[-1]) if nonempty.shape[0] and nonempty[-1] < n - 1 else -1
    _zernike_kernel(op.y, op.x, op.starts, op.counts, np.asarray(cy, np.float64), np.asarray(cx, np.float64),
                    np.asarray(radius, np.float64), degree, ptr, basis, coef, cut, out)
    return {f: out[:, k] for k, f in enumerate(feats)}


def _zernike_tables(degree: int):
    """Basis terms ``(j, m)`` (``m`` ascending, ``j = m, m + 2, ...``) and, per feature of
    :func:`zernike_indexes`, the (basis index, radial coefficient) pairs as CSR arrays."""
    index = {}
    for m in range(degree + 1):
        for j in range(m, degree + 1, 2):
            index[(j, m)] = len(index)
    ptr, basis, coef = [0], [], []
    for nn, mm in zernike_indexes(degree):
        for k, c in enumerate(_radial_coefficients(nn, mm)):
            basis.append(index[(nn - 2 * k, mm)])
            coef.append(c)
        ptr.append(len(basis))
    return (np.asarray(ptr, dtype=np.int64), np.asarray(basis, dtype=np.int64),
            np.asarray(coef, dtype=np.float64))


def _zernike_moments_device(op: ObjectPixels, cy, cx, radius, degree: int = 9):
    """:func:`zernike_moments` as whole-site array operations: the device twin of :func:`_zernike_kernel`.

    The same values in the same order, as a few dozen kernel launches per
    object set and none per object: ``z^m`` as a cumulative product over
    ``m`` and, per ``m``, ``rho^(j - m) z^m`` as a cumulative product of
    ``z^m`` by ``rho^2`` (complex products are the kernel's real formulas),
    all basis terms in one ``(terms, pixels)`` array summed per object by
    one ``add.reduceat`` per real/imaginary part (pairwise inside each
    segment, as :func:`segment_sum`; ``bincount`` where the backend has no
    ``reduceat``), and the radial polynomials accumulated term by term. On
    NumPy it gives the kernel's numbers to the bit (``tests/test_audit.py``).
    """
    xp = backend_of(op.flat).xp
    n = op.n
    obj = op.obj
    fy, fx = op.yx_float
    with _quiet(xp):
        ym = (fy - cy[obj]) / radius[obj]
        xm = (fx - cx[obj]) / radius[obj]
    r2 = xm * xm + ym * ym
    inside = r2 <= 1
    z = xp.where(inside, xm + 1j * ym, 0.0)
    r2 = xp.where(inside, r2, 0.0).astype(xp.complex128)
    npix = z.shape[0]
    zp = xp.empty((degree + 1, npix), dtype=xp.complex128)
    zp[0] = inside
    if degree > 0:
        zp[1:] = xp.cumprod(xp.broadcast_to(z[None, :], (degree, npix)), axis=0)
    blocks = []
    for m in range(degree + 1):
        k = (degree - m) // 2
        if k == 0:
            blocks.append(zp[m:m + 1])
        else:
            blocks.append(xp.cumprod(xp.concatenate([zp[m:m + 1], xp.broadcast_to(r2[None, :], (k, npix))]), axis=0))
    terms = xp.concatenate(blocks, axis=0)
    bre = _term_sums(xp.ascontiguousarray(terms.real), op)
    bim = _term_sums(xp.ascontiguousarray(terms.imag), op)
    ptr, basis, coef = _zernike_tables(degree)
    feats = zernike_indexes(degree)
    kmax = int(np.max(np.diff(ptr)))
    # the k-th radial term of every feature (coefficient 0 where a feature has fewer terms)
    idx = np.zeros((kmax, len(feats)), dtype=np.int64)
    cof = np.zeros((kmax, len(feats)))
    for f in range(len(feats)):
        t = ptr[f + 1] - ptr[f]
        idx[:t, f] = basis[ptr[f]:ptr[f + 1]]
        cof[:t, f] = coef[ptr[f]:ptr[f + 1]]
    tab = xp.asarray(np.concatenate([idx.astype(np.float64), cof]))  # one host->device copy
    re = xp.zeros((len(feats), n))
    im = xp.zeros((len(feats), n))
    for k in range(kmax):
        rows = tab[k].astype(xp.int64)
        c = tab[kmax + k][:, None]
        re = re + c * bre[rows]
        im = im + c * bim[rows]
    with _quiet(xp):
        values = xp.sqrt(re * re + im * im) / (math.pi * radius * radius)[None, :]
    return {f: values[k] for k, f in enumerate(feats)}


def _term_sums(values, op: ObjectPixels):
    """Per-object sums of every row of ``values`` ``(terms, pixels)``, as :func:`segment_sum` sums one row."""
    xp = backend_of(values).xp
    n = op.n
    t, size = values.shape
    if size == 0:
        return xp.zeros((t, n))
    try:
        r = xp.add.reduceat(values, xp.minimum(op.starts, size - 1), axis=1)
    except (AttributeError, NotImplementedError, TypeError):  # backends without ufunc.reduceat
        slot = (xp.arange(t)[:, None] * n + op.obj[None, :]).ravel()
        return xp.bincount(slot, weights=values.ravel(), minlength=t * n)[:t * n].reshape(t, n)
    # trailing empty objects cut the last value off the last non-empty one (see _objects._reduceat_segments)
    j = (n - 1) - xp.argmax(op.counts[::-1] > 0)
    cut = (j < n - 1) & (op.counts[j] >= 2)
    r[:, j] = r[:, j] + xp.where(cut, values[:, size - 1], 0.0)
    return xp.where(op.counts[None, :] > 0, r, 0.0)


def radii_distances(op: ObjectPixels, edge_distance=None):
    """Distance of every object pixel to the nearest pixel outside its object, each object alone.

    The distance transform MeasureObjectSizeShape takes of each object's
    zero-padded crop, computed on one packed canvas. ``edge_distance`` - the
    same distance with the image edge not counted as background
    (``radial.edge_distances``, computed anyway for RadialDistribution) - is
    equal for every object that does not touch the image edge (the nearest
    outside pixel of such an object lies within one pixel of its bounding
    box, inside the image), so only the objects touching the edge are then
    packed and transformed again.
    """
    xp = backend_of(op.flat).xp
    if edge_distance is None:
        packed = pack_objects(op, pad=1)
        return edt_at(packed.canvas > 0, packed.cy, packed.cx)
    ymin, xmin, ymax, xmax = bounding_boxes(op)
    h, w = op.shape
    touch = (op.counts > 0) & ((ymin == 0) | (xmin == 0) | (ymax == h) | (xmax == w))
    sel = xp.flatnonzero(touch[op.obj])
    counts = xp.where(touch, op.counts, 0)
    sub = ObjectPixels(n=op.n, shape=op.shape, flat=op.flat[sel], obj=op.obj[sel], y=op.y[sel], x=op.x[sel],
                       counts=counts, starts=xp.cumsum(counts) - counts)
    packed = pack_objects(sub, pad=1)
    d = edge_distance.astype(xp.float64, copy=True)
    d[sel] = edt_at(packed.canvas > 0, packed.cy, packed.cx)
    return d


def measure_areashape(labels, n_objects: int, *, zernike_degree: int = 9,
                      objects: ObjectPixels | None = None, edge_distance=None, host=None) -> dict:
    """MeasureObjectSizeShape for all objects of a site.

    Parameters
    ----------
    labels : (H, W) int array
        Label image, objects ``1..n_objects``.
    n_objects : int
        Number of objects ``N``; row ``i`` is label ``i + 1``.
    zernike_degree : int
        Highest Zernike degree (CPJUMP1: 9).
    objects : ObjectPixels, optional
        ``object_pixels(labels, n_objects)`` when already computed.
    edge_distance : 1-D float array, optional
        ``radial.edge_distances(objects)[1]``, shared with RadialDistribution
        (see :func:`radii_distances`); the results are the same. NumPy only
        (the device path measures the radii on the host).
    host : tuple, optional
        Device path only: this label image's entry of :func:`host_areashape`
        (computed for all object sets of a site from one copy of their labels);
        without it, this label image is copied to the host alone.

    Returns
    -------
    dict
        ``{column: (N,) float64}`` with ``AreaShape_*`` and ``Location_Center_{X,Y}``.
    """
    bk = backend_of(labels)
    xp = bk.xp
    if labels.ndim != 2:
        raise ValueError(f"measure_areashape: 2-D labels expected, got shape {tuple(labels.shape)}")
    if xp is not np:
        return _measure_areashape_device(labels, n_objects, zernike_degree, objects, host)
    op = objects if objects is not None else object_pixels(labels, n_objects)
    out, (mcy, mcx, mr) = _areashape_host(labels, op, edge_distance)
    if zernike_degree is not None and zernike_degree >= 0:
        for (nn, mm), v in zernike_moments(op, mcy, mcx, mr, zernike_degree).items():
            out[f"AreaShape_Zernike_{nn}_{mm}"] = v
    return out


_CIRCLE = ("circle_y", "circle_x", "circle_r")


def host_areashape(labels: dict, n_objects: int) -> dict:
    """Device path: every AreaShape column but the Zernike moments, on the host, for several label images.

    The label images (one per object set of a site) are copied to the host
    together - one device->host copy per site - and measured there by the
    NumPy/numba path (:func:`_areashape_host`): convex hulls, Feret
    diameters, enclosing circles and per-object distance transforms are
    sequential per object, which a GPU does badly. Returns ``{key: (names,
    values)}``, ``values`` a ``(k, N)`` host array whose rows are the columns
    ``names`` (the enclosing circle last), for :func:`measure_areashape`'s
    ``host``.
    """
    bk = backend_of(*labels.values())
    keys = list(labels)
    stack = bk.to_numpy(bk.xp.stack([labels[k].astype(bk.xp.int32, copy=False) for k in keys]))
    out = {}
    for i, k in enumerate(keys):
        lab = np.ascontiguousarray(stack[i])
        cols, circle = _areashape_host(lab, object_pixels(lab, n_objects), None)
        names = tuple(cols) + _CIRCLE
        out[k] = (names, np.stack([*cols.values(), *circle]) if names else np.zeros((0, n_objects)))
    return out


def _measure_areashape_device(labels, n_objects, zernike_degree, objects, host) -> dict:
    """The device path: host columns (one copy of the labels there, one of the results back) + Zernike."""
    xp = backend_of(labels).xp
    if host is None:
        host = host_areashape({"labels": labels}, n_objects)["labels"]
    names, values = host
    dev = xp.asarray(values)  # one host->device copy of all host columns
    cols = {name: dev[k] for k, name in enumerate(names)}
    mcy, mcx, mr = (cols.pop(c) for c in _CIRCLE)
    if zernike_degree is not None and zernike_degree >= 0:
        op = objects if objects is not None else object_pixels(labels, n_objects)
        cols.update({f"AreaShape_Zernike_{nn}_{mm}": v
                     for (nn, mm), v in _zernike_moments_device(op, mcy, mcx, mr, zernike_degree).items()})
    return cols


def _areashape_host(labels, op: ObjectPixels, edge_distance):
    """Every AreaShape column but Zernike, and the enclosing circles ``(cy, cx, r)``; NumPy + numba."""
    n = op.n
    area = op.counts.astype(np.float64)
    empty = op.counts == 0

    def nan_empty(v):
        return np.where(empty, np.nan, v.astype(np.float64))

    ymin, xmin, ymax, xmax = bounding_boxes(op)
    cy, cx = centroids(op)
    # second central moments
    dy = op.y - cy[op.obj]
    dx = op.x - cx[op.obj]
    with np.errstate(divide="ignore", invalid="ignore"):
        myy = segment_sum(dy * dy, op.starts, op.counts) / area
        mxx = segment_sum(dx * dx, op.starts, op.counts) / area
        mxy = segment_sum(dy * dx, op.starts, op.counts) / area
    # regionprops inertia tensor [[a, b], [b, c]] = [[mxx, -mxy], [-mxy, myy]]
    a, b, c = mxx, -mxy, myy
    root = np.sqrt(((a - c) / 2) ** 2 + b * b)
    l1 = (a + c) / 2 + root
    l2 = np.maximum((a + c) / 2 - root, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 == 0, 0.0, np.sqrt(1 - l2 / l1))
    orient = np.where(a - c == 0, np.where(b < 0, math.pi / 4, -math.pi / 4),
                      0.5 * np.arctan2(-2 * b, c - a))
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    perim = np.zeros(n)
    euler = np.zeros(n)
    lut = np.zeros(50)
    for k, v in _PERIMETER_WEIGHTS.items():
        lut[k] = v
    _perimeter_euler_kernel(lab, n, lut, np.asarray(_EULER_COEFS_8, dtype=np.float64), perim, euler)
    with np.errstate(divide="ignore", invalid="ignore"):
        formfactor = 4 * math.pi * area / perim ** 2
        compactness = perim ** 2 / np.maximum(4 * math.pi * area, 1.0)
    bbox_area = ((ymax - ymin) * (xmax - xmin)).astype(np.float64)

    # radii: distance to the nearest pixel outside the object, each object alone
    d = _radii_host(op, edge_distance)
    max_radius = segment_max(d, op.starts, op.counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_radius = segment_sum(d, op.starts, op.counts) / area
    median_radius = _median_radius_host(d, op)

    # convex hulls (pixel centres; diamond corners for ConvexArea), Feret diameters, enclosing circle
    eo, ey, exmin, exmax = row_extremes(op)
    rcount = np.bincount(eo, minlength=n)[:n].astype(np.int64)
    rstart = np.cumsum(rcount) - rcount
    width = max(3, 2 * int(rcount.max()) if n else 3)
    hull_y = np.full((n, width), np.nan)
    hull_x = np.full((n, width), np.nan)
    hull_n = np.zeros(n, dtype=np.int64)
    fmin, fmax, convex_area = np.empty(n), np.empty(n), np.empty(n)
    _hull_geometry(rstart, rcount, np.ascontiguousarray(ey), np.ascontiguousarray(exmin),
                   np.ascontiguousarray(exmax), cy, cx, ymin, ymax, float(op.shape[1]),
                   hull_y, hull_x, hull_n, fmin, fmax, convex_area)
    m = max(3, int(hull_n.max()) if n else 3)
    circle = _enclosing_circles_padded(hull_y[:, :m], hull_x[:, :m], hull_n)
    with np.errstate(divide="ignore", invalid="ignore"):
        extent = area / bbox_area
        solidity = area / convex_area

    out = {
        "AreaShape_Area": area,
        "AreaShape_Perimeter": nan_empty(perim),
        "AreaShape_FormFactor": nan_empty(formfactor),
        "AreaShape_Eccentricity": nan_empty(ecc),
        "AreaShape_Solidity": nan_empty(solidity),
        "AreaShape_ConvexArea": nan_empty(convex_area),
        "AreaShape_Extent": nan_empty(extent),
        "AreaShape_EulerNumber": nan_empty(euler),
        "AreaShape_Compactness": nan_empty(compactness),
        "AreaShape_MajorAxisLength": nan_empty(4 * np.sqrt(l1)),
        "AreaShape_MinorAxisLength": nan_empty(4 * np.sqrt(l2)),
        "AreaShape_Orientation": nan_empty(orient * (180.0 / math.pi)),
        "AreaShape_MaximumRadius": max_radius,
        "AreaShape_MeanRadius": mean_radius,
        "AreaShape_MedianRadius": median_radius,
        "AreaShape_MinFeretDiameter": fmin,
        "AreaShape_MaxFeretDiameter": fmax,
        "AreaShape_BoundingBoxArea": nan_empty(bbox_area),
        "AreaShape_BoundingBoxMinimum_X": nan_empty(xmin),
        "AreaShape_BoundingBoxMaximum_X": nan_empty(xmax),
        "AreaShape_BoundingBoxMinimum_Y": nan_empty(ymin),
        "AreaShape_BoundingBoxMaximum_Y": nan_empty(ymax),
        "AreaShape_Center_X": cx,
        "AreaShape_Center_Y": cy,
        "AreaShape_EquivalentDiameter": nan_empty(np.sqrt(4 * area / math.pi)),
        "Location_Center_X": cx,
        "Location_Center_Y": cy,
    }
    return out, circle


def _median_radius_host(d, op: ObjectPixels):
    """``segment_median(segment_sort(d, op.obj))`` without the sort, to the bit.

    ``segment_sort`` reads each value back from the sorted key
    ``(d - lo) + object * scale``; the key is monotone in ``d`` inside an
    object, so the two middle keys are those of the two middle distances.
    The distances are square roots of integers (the exact transform's
    squared distances), so the middle ones are found by counting the
    integers (:func:`_median_radius_kernel`) and their keys formed as the
    sort would. Distances that are not such square roots take the sort.
    """
    if d.shape[0] == 0:
        return segment_median(segment_sort(d, op.obj), op.starts, op.counts)
    v = d.astype(np.float64, copy=False)
    lo = v.min()
    scale = 2.0 * (v.max() - lo) + 1.0
    out = np.full(op.n, np.nan)
    if _median_radius_kernel(v, op.starts.astype(np.int64), op.counts.astype(np.int64), lo, scale, out):
        return out
    return segment_median(segment_sort(d, op.obj), op.starts, op.counts)


def _median_radius_kernel(d, starts, counts, lo, scale, out):
    """Per object, the two middle distances by counting their squared values; their sort keys and the
    ``numpy.median`` of the values read back (as :func:`segment_median`). False if a distance is not
    ``sqrt`` of an integer (or their squares exceed the pixel count: the counts would not pay)."""
    maxs = 0
    for p in range(d.shape[0]):
        x = d[p]
        if not (x >= 0.0 and x < 2.0**20):
            return False
        t = np.int64(round(x * x))
        if math.sqrt(float(t)) != x:
            return False
        maxs = max(maxs, t)
    if maxs > d.shape[0] + 1024:  # a disk of radius r inside an object has ~pi r^2 of its pixels: never here
        return False
    hist = np.zeros(maxs + 1, dtype=np.int64)
    for i in range(starts.shape[0]):
        c = counts[i]
        if c == 0:
            continue
        s = starts[i]
        top = 0
        for p in range(s, s + c):
            t = np.int64(round(d[p] * d[p]))
            hist[t] += 1
            top = max(top, t)
        k0 = (c - 1) // 2
        k1 = c // 2
        t0 = -1
        t1 = -1
        acc = 0
        for t in range(top + 1):
            acc += hist[t]
            if t0 < 0 and acc > k0:
                t0 = t
            if acc > k1:
                t1 = t
                break
        for t in range(top + 1):
            hist[t] = 0
        off = np.float64(i) * scale
        v0 = ((math.sqrt(float(t0)) - lo) + off - off) + lo
        v1 = ((math.sqrt(float(t1)) - lo) + off - off) + lo
        out[i] = 0.5 * (v0 + v1)
    return True


_median_radius_kernel = njit_cached(_median_radius_kernel)


def _radii_host(op: ObjectPixels, edge_distance):
    """:func:`radii_distances` on the host: numba's exact per-object transform (:func:`_radii_kernel`).

    With ``edge_distance`` (NumPy) only the objects touching the image edge
    are transformed again (see :func:`radii_distances`).
    """
    ymin, xmin, ymax, xmax = bounding_boxes(op)
    if edge_distance is None:
        d = np.empty(op.flat.shape[0])
        todo = np.ones(op.n, dtype=np.bool_)
    else:
        h, w = op.shape
        d = np.asarray(edge_distance, dtype=np.float64).copy()
        todo = (op.counts > 0) & ((ymin == 0) | (xmin == 0) | (ymax == h) | (xmax == w))
    _radii_kernel(op.y, op.x, op.starts, op.counts, ymin, xmin, ymax, xmax, todo, d)
    return d


# ----------------------------------------------------------------- host kernels (numba)
def _njit(fn):
    """``numba.njit`` (cached, no GIL) with NumPy's float error model: 0 / 0 is NaN, not an exception."""
    try:
        return numba.njit(cache=True, nogil=True, error_model="numpy")(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True, error_model="numpy")(fn)


@_njit
def _monotone_hull(py, px, npts, hy, hx):
    """Strict convex hull (no collinear vertex) of points sorted by ``(y, x)``, exactly.

    Andrew's monotone chain in the ``(y, x)`` plane, which lists the hull
    clockwise in the ``(x, y)`` plane; written reversed into ``hy, hx``, so
    counter-clockwise in ``(x, y)`` as :func:`convex_hulls` lists it (any
    start). Coordinates are integers or halves: every cross product is exact.
    Returns the number of vertices.
    """
    if npts == 0:
        return 0
    sy = np.empty(2 * npts + 1)
    sx = np.empty(2 * npts + 1)
    k = 0
    for i in range(npts):  # lower chain
        while k >= 2 and ((sy[k - 1] - sy[k - 2]) * (px[i] - sx[k - 2])
                          - (sx[k - 1] - sx[k - 2]) * (py[i] - sy[k - 2])) <= 0:
            k -= 1
        sy[k] = py[i]
        sx[k] = px[i]
        k += 1
    lower = k + 1
    for i in range(npts - 2, -1, -1):  # upper chain
        while k >= lower and ((sy[k - 1] - sy[k - 2]) * (px[i] - sx[k - 2])
                              - (sx[k - 1] - sx[k - 2]) * (py[i] - sy[k - 2])) <= 0:
            k -= 1
        sy[k] = py[i]
        sx[k] = px[i]
        k += 1
    m = k - 1 if k > 1 else k  # the last point repeats the first
    if m == 2 and sy[0] == sy[1] and sx[0] == sx[1]:
        m = 1
    for i in range(m):
        hy[i] = sy[m - 1 - i]
        hx[i] = sx[m - 1 - i]
    return m


@_njit
def _hull_geometry(ostart, ocount, ey, exmin, exmax, cy, cx, ymin, ymax, width, hull_y, hull_x, hull_n,
                   fmin, fmax, convex_area):
    """Per object, from its (row, first column, last column) runs: hulls, Feret diameters, ConvexArea.

    ``hull_y/hull_x[i, :hull_n[i]]``: the strict convex hull of the pixel
    centres, counter-clockwise in ``(x, y)``, starting at the vertex of
    smallest angle around the centroid (the list :func:`convex_hulls` gives).
    ``fmin, fmax``: :func:`feret_diameters`' formulas on it. ``convex_area``:
    :func:`convex_areas`' count of pixel centres per row inside the hull of
    the pixels' diamond corners, with its formulas.
    """
    n = ostart.shape[0]
    for i in range(n):
        s = ostart[i]
        c = ocount[i]
        if c == 0:
            hull_n[i] = 0
            fmin[i] = np.nan
            fmax[i] = np.nan
            convex_area[i] = 0.0
            continue
        # --- pixel centres: (y, xmin), (y, xmax) per row, sorted by (y, x)
        py = np.empty(2 * c)
        px = np.empty(2 * c)
        k = 0
        for r in range(s, s + c):
            py[k] = ey[r]
            px[k] = exmin[r]
            k += 1
            if exmax[r] != exmin[r]:
                py[k] = ey[r]
                px[k] = exmax[r]
                k += 1
        hy = np.empty(2 * k + 1)
        hx = np.empty(2 * k + 1)
        m = _monotone_hull(py, px, k, hy, hx)
        # start at the smallest angle around the centroid
        best = 0
        besta = np.inf
        for j in range(m):
            a = math.atan2(hy[j] - cy[i], hx[j] - cx[i])
            if a < besta:
                besta = a
                best = j
        for j in range(m):
            hull_y[i, j] = hy[(best + j) % m]
            hull_x[i, j] = hx[(best + j) % m]
        hull_n[i] = m
        Y = hull_y[i]
        X = hull_x[i]
        # --- Feret diameters
        dmax = -1.0
        for a in range(m):
            for b in range(m):
                dy = Y[a] - Y[b]
                dx = X[a] - X[b]
                d = math.sqrt(dy * dy + dx * dx)
                if d > dmax:
                    dmax = d
        dmin = np.inf
        for e in range(m):
            e1 = (e + 1) % m
            ey_ = Y[e1] - Y[e]
            ex_ = X[e1] - X[e]
            elen = math.sqrt(ey_ * ey_ + ex_ * ex_)
            if not elen > 0:
                continue
            w = -1.0
            for v in range(m):
                cr = abs(ex_ * (Y[v] - Y[e]) - ey_ * (X[v] - X[e])) / elen
                if cr > w:
                    w = cr
            if w < dmin:
                dmin = w
        fmin[i] = 0.0 if m <= 2 else dmin
        fmax[i] = 0.0 if m == 1 else dmax
        # --- ConvexArea: hull of the diamond corners, sorted by (y, x)
        qy = np.empty(6 * c)
        qx = np.empty(6 * c)
        k = 0
        for r in range(s, s + c):
            y = float(ey[r])
            lo = float(exmin[r])
            hi = float(exmax[r])
            qy[k] = y - 0.5
            qx[k] = lo
            qy[k + 1] = y - 0.5
            qx[k + 1] = hi
            qy[k + 2] = y
            qx[k + 2] = lo - 0.5
            qy[k + 3] = y
            qx[k + 3] = hi + 0.5
            qy[k + 4] = y + 0.5
            qx[k + 4] = lo
            qy[k + 5] = y + 0.5
            qx[k + 5] = hi
            k += 6
        # sorted by (y, x): y steps by 0.5, x spans less than width + 2
        order = np.argsort(qy * (width + 2.0) + qx, kind="mergesort")
        sy = qy[order]
        sx = qx[order]
        gy = np.empty(2 * k + 1)
        gx = np.empty(2 * k + 1)
        g = _monotone_hull(sy, sx, k, gy, gx)
        total = 0.0
        for yi in range(ymin[i], ymax[i]):
            yr = float(yi)
            xl = 1e18
            xr = -1e18
            for e in range(g):
                e1 = (e + 1) % g
                ya = gy[e]
                yb = gy[e1]
                if not (yr >= min(ya, yb) and yr <= max(ya, yb)):
                    continue
                xa = gx[e]
                xb = gx[e1]
                if ya == yb:
                    x1 = xa
                    x2 = xb
                else:
                    t = (yr - ya) / (yb - ya)
                    x1 = xa + t * (xb - xa)
                    x2 = x1
                xl = min(xl, min(x1, x2))
                xr = max(xr, max(x1, x2))
            if xr >= xl:
                cnt = math.floor(xr + 1e-9) - math.ceil(xl - 1e-9) + 1
                total += max(cnt, 0.0)
        convex_area[i] = total


@_njit
def _segment_total(a, n, cut_last, istack, left):
    """``add.reduceat`` of one segment ``a[:n]`` as :func:`segment_sum` computes it.

    ``cut_last``: the segment is the last non-empty one and empty objects
    follow it; :func:`_objects._reduceat_segments` then sums all but the last
    value and adds the last one after.
    """
    if n == 0:
        return 0.0
    if cut_last and n >= 2:
        return (a[0] + _pairwise(a, 1, n - 2, istack, left)) + a[n - 1]
    return a[0] + _pairwise(a, 1, n - 1, istack, left)


@_njit
def _zernike_kernel(py, px, starts, counts, cy, cx, radius, degree, feat_ptr, feat_basis, feat_coef,
                    cut_obj, out):
    """Zernike magnitudes of every object with :func:`zernike_moments`' arithmetic, to the bit.

    Per object, the basis values ``rho^(j - m) z^m`` of its pixels (zero
    outside the unit disk) come from the same products in the same order
    (``m`` ascending, ``j = m, m + 2, ...`` inside), are summed with NumPy's
    pairwise summation (what ``add.reduceat`` does), combined with the radial
    coefficients in order and divided by the circle's area. Feature ``f`` is
    ``sum_k feat_coef[k] * basis[feat_basis[k]]``, ``k`` in
    ``feat_ptr[f]:feat_ptr[f + 1]``. ``cut_obj``: the object whose sums
    :func:`_segment_total` takes with ``cut_last`` (-1: none).
    """
    n = starts.shape[0]
    nb = 0
    for m in range(degree + 1):
        nb += (degree - m) // 2 + 1
    nf = feat_ptr.shape[0] - 1
    maxc = 1
    for i in range(n):
        maxc = max(maxc, counts[i])
    xm = np.empty(maxc)
    ym = np.empty(maxc)
    r2 = np.empty(maxc)
    zr = np.empty(maxc)
    zi = np.empty(maxc)
    cr = np.empty(maxc)
    ci = np.empty(maxc)
    bre = np.empty(nb)
    bim = np.empty(nb)
    istack = np.zeros((3, 64), dtype=np.int64)
    left = np.empty(64)
    for i in range(n):
        s = starts[i]
        c = counts[i]
        r = radius[i]
        for p in range(c):
            y = (py[s + p] - cy[i]) / r
            x = (px[s + p] - cx[i]) / r
            q = x * x + y * y
            if q <= 1:
                xm[p] = x
                ym[p] = y
                r2[p] = q
                zr[p] = 1.0
            else:
                xm[p] = 0.0
                ym[p] = 0.0
                r2[p] = 0.0
                zr[p] = 0.0
            zi[p] = 0.0
        cut = i == cut_obj
        b = 0
        for m in range(degree + 1):
            if m > 0:  # z^m = z^(m-1) z
                for p in range(c):
                    t1 = zr[p] * xm[p]
                    t2 = zi[p] * ym[p]
                    nzr = t1 - t2
                    t1 = zr[p] * ym[p]
                    t2 = zi[p] * xm[p]
                    zi[p] = t1 + t2
                    zr[p] = nzr
            for p in range(c):
                cr[p] = zr[p]
                ci[p] = zi[p]
            for j in range(m, degree + 1, 2):  # rho^(j - m) z^m
                bre[b] = _segment_total(cr, c, cut, istack, left)
                bim[b] = _segment_total(ci, c, cut, istack, left) if m > 0 else 0.0  # z^0 is real
                b += 1
                if j + 2 <= degree:
                    for p in range(c):
                        cr[p] = cr[p] * r2[p]
                        ci[p] = ci[p] * r2[p]
        area = math.pi * r * r
        for f in range(nf):
            re = 0.0
            im = 0.0
            for k in range(feat_ptr[f], feat_ptr[f + 1]):
                re = re + feat_coef[k] * bre[feat_basis[k]]
                im = im + feat_coef[k] * bim[feat_basis[k]]
            out[i, f] = math.sqrt(re * re + im * im) / area


@_njit
def _radii_kernel(py, px, starts, counts, ymin, xmin, ymax, xmax, todo, d):
    """Exact Euclidean distance of each pixel of the objects ``todo`` to the nearest pixel outside it.

    Each object alone in its bounding box padded by one background pixel
    (``regionprops``' image, as MeasureObjectSizeShape sees it): Meijster's
    two-pass exact transform on integer squared distances, then
    ``sqrt(float(dy^2 + dx^2))`` - the value of SciPy's exact transform,
    written into ``d`` at the object's pixels. The box buffers are allocated
    once for the largest box; the row pass builds the lower envelope of the
    rows holding object pixels only and reads it at those pixels (the
    object's pixels are in raster order, so left to right along a row).
    """
    n = starts.shape[0]
    maxb = 1
    maxw = 1
    for i in range(n):
        if todo[i] and counts[i] > 0:
            h = ymax[i] - ymin[i] + 2
            w = xmax[i] - xmin[i] + 2
            maxb = max(maxb, h * w)
            maxw = max(maxw, w)
    inside_buf = np.zeros(maxb, dtype=np.bool_)
    g_buf = np.empty(maxb, dtype=np.int64)
    sq = np.empty(maxw, dtype=np.int64)
    tq = np.empty(maxw, dtype=np.int64)
    for i in range(n):
        if not todo[i] or counts[i] == 0:
            continue
        h = ymax[i] - ymin[i] + 2
        w = xmax[i] - xmin[i] + 2
        inside = inside_buf[:h * w].reshape((h, w))
        inside[:, :] = False
        s = starts[i]
        e = s + counts[i]
        for p in range(s, e):
            inside[py[p] - ymin[i] + 1, px[p] - xmin[i] + 1] = True
        g = g_buf[:h * w].reshape((h, w))
        for x in range(w):  # vertical distance to background: downwards, then upwards (rows contiguous)
            g[0, x] = 0
        for y in range(1, h):
            for x in range(w):
                g[y, x] = g[y - 1, x] + 1 if inside[y, x] else 0
        edt_columns_up(g)
        p = s
        while p < e:  # one image row of the object at a time
            y = py[p] - ymin[i] + 1
            gy = g[y]
            last = edt_row_envelope(gy, w, sq, tq)  # lower envelope of the parabolas (x - u)^2 + g(u)^2
            q = 0
            while p < e and py[p] - ymin[i] + 1 == y:
                x = px[p] - xmin[i] + 1
                while q < last and tq[q + 1] <= x:  # the parabola lowest at x (tq strictly increases)
                    q += 1
                a = x - sq[q]
                d[p] = math.sqrt(float(a * a + gy[sq[q]] * gy[sq[q]]))
                p += 1


@_njit
def _perimeter_euler_kernel(lab, n, lut, coefs, perim, euler):
    """``skimage`` perimeter (4-neighbourhood) and Euler number (8-connectivity) of every label.

    As :func:`perimeters` and :func:`euler_numbers`: a raster pass marks
    each object's border pixels; a second adds, in raster order (the order of
    their ``bincount``), the weight of each border pixel's configuration code;
    every 2x2 window of the zero-padded image adds the coefficient of its
    code to each label present in it. Labels above ``n`` count as other
    objects and are not measured.
    """
    H, W = lab.shape
    border = np.zeros((H, W), dtype=np.bool_)
    for y in range(H):
        for x in range(W):
            v = lab[y, x]
            if v <= 0:
                continue
            if (y == 0 or lab[y - 1, x] != v or y == H - 1 or lab[y + 1, x] != v
                    or x == 0 or lab[y, x - 1] != v or x == W - 1 or lab[y, x + 1] != v):
                border[y, x] = True
    for y in range(H):
        for x in range(W):
            if not border[y, x]:
                continue
            v = lab[y, x]
            if v > n:
                continue
            code = 1
            for dy in range(-1, 2):
                yy = y + dy
                if yy < 0 or yy >= H:
                    continue
                for dx in range(-1, 2):
                    xx = x + dx
                    if (dy == 0 and dx == 0) or xx < 0 or xx >= W:
                        continue
                    if border[yy, xx] and lab[yy, xx] == v:
                        code += 2 if (dy == 0 or dx == 0) else 10
            perim[v - 1] += lut[code]
    for y in range(H + 1):
        for x in range(W + 1):
            # corners of the window (y - 1 .. y, x - 1 .. x) of the image
            d = lab[y - 1, x - 1] if (y >= 1 and x >= 1) else 0
            c = lab[y - 1, x] if (y >= 1 and x < W) else 0
            b = lab[y, x - 1] if (y < H and x >= 1) else 0
            a = lab[y, x] if (y < H and x < W) else 0
            if a == b and a == c and a == d:
                continue
            for k in range(4):
                lk = a if k == 0 else (b if k == 1 else (c if k == 2 else d))
                if lk <= 0 or lk > n:
                    continue
                if k >= 1 and a == lk:
                    continue
                if k >= 2 and b == lk:
                    continue
                if k == 3 and c == lk:
                    continue
                code = (1 if a == lk else 0) + (4 if b == lk else 0) + (2 if c == lk else 0) + (8 if d == lk else 0)
                euler[lk - 1] += coefs[code]



# ----------------------------------------------------------------- registry entry
#: AreaShape columns other than the Zernike moments (CellProfiler 4, 2-D; ConvexArea from CellProfiler 5).
AREASHAPE_FEATURES = (
    "Area", "BoundingBoxArea", "BoundingBoxMaximum_X", "BoundingBoxMaximum_Y", "BoundingBoxMinimum_X",
    "BoundingBoxMinimum_Y", "Center_X", "Center_Y", "Compactness", "ConvexArea", "Eccentricity",
    "EquivalentDiameter", "EulerNumber", "Extent", "FormFactor", "MajorAxisLength", "MaxFeretDiameter",
    "MaximumRadius", "MeanRadius", "MedianRadius", "MinFeretDiameter", "MinorAxisLength", "Orientation",
    "Perimeter", "Solidity",
)


def _areashape_names(obj, channels, params) -> list[str]:
    zernike = [f"AreaShape_Zernike_{n}_{m}" for n in range(params.zernike_degree + 1) for m in range(n + 1)
               if (n - m) % 2 == 0]
    return [f"AreaShape_{f}" for f in AREASHAPE_FEATURES] + zernike


def _areashape_measure(ctx) -> dict:
    # MeasureObjectSizeShape also returns Location_Center_X/Y
    return measure_areashape(ctx.labels, ctx.n, zernike_degree=ctx.params.zernike_degree, objects=ctx.objects,
                             host=ctx.shape_host)


from hpc_profiler.features.registry import Family  # noqa: E402  (the entry closes the module)

FAMILY = Family(name="AreaShape", names=_areashape_names, measure=_areashape_measure, per_channel=False)

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

Here every feature is computed for all objects of a site at once, on the
backend of ``labels`` (NumPy or CuPy), with no loop over objects:

* area, bounding box, centroid, second central moments -> axes, eccentricity,
  orientation (``regionprops`` formulas) from ``bincount`` sums;
* perimeter: ``skimage.measure.perimeter`` (4-neighbourhood border, weights
  of the 3x3 border configurations), made label-aware so touching objects are
  measured as if alone;
* Euler number (8-connectivity, ``regionprops``): the 2x2 configuration count
  of ``skimage.measure.euler_number``, made label-aware;
* radii: one Euclidean distance transform of :func:`pack_objects`' canvas;
* convex hulls of all objects together by iterated removal of reflex
  vertices from the angularly sorted candidate points (per-row extreme
  pixels); Solidity counts the pixel centres inside the hull of the pixels'
  diamond corners, as ``skimage.morphology.convex_hull_image`` does; Feret
  diameters from the hull of pixel centres (maximum vertex distance, minimum
  over hull edges of the farthest vertex); the minimum enclosing circle by
  Chrystal's algorithm (as ``centrosome.cpmorphology.minimum_enclosing_circle``)
  iterated for all objects in parallel;
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

from hpc_profiler.backend import backend_of
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
    xp = backend_of(hy).xp
    Y, counts = _pad_groups(hobj, hy, n)
    X, _ = _pad_groups(hobj, hx, n)
    m = Y.shape[1]
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
    ``M_jm = sum_p rho^(j - m) z^m`` (``z = (x + i y) / r``, ``j - m`` even),
    each one ``bincount``: ``sum_p V_nm = sum_k c_k M_(n-2k) m``. Only the
    magnitude is reported, which does not depend on the angle convention.
    """
    xp = backend_of(op.flat).xp
    n = op.n
    obj = op.obj
    with _quiet(xp):
        ym = (op.y - cy[obj]) / radius[obj]
        xm = (op.x - cx[obj]) / radius[obj]
    r2 = xm * xm + ym * ym
    inside = r2 <= 1
    xm = xp.where(inside, xm, 0.0)
    ym = xp.where(inside, ym, 0.0)
    r2 = xp.where(inside, r2, 0.0)
    zr = inside.astype(xp.float64)  # z^0 inside the disk
    zi = xp.zeros_like(zr)
    # work buffers reused for every power (no per-step allocation of pixel-sized arrays)
    t1, t2, nzr, nzi = (xp.empty_like(zr) for _ in range(4))
    wr, wi = xp.empty_like(zr), xp.empty_like(zr)
    basis = {}
    for m in range(degree + 1):
        if m > 0:  # z^m = z^(m-1) * z
            xp.multiply(zr, xm, out=t1)
            xp.multiply(zi, ym, out=t2)
            xp.subtract(t1, t2, out=nzr)
            xp.multiply(zr, ym, out=t1)
            xp.multiply(zi, xm, out=t2)
            xp.add(t1, t2, out=nzi)
            zr, nzr = nzr, zr
            zi, nzi = nzi, zi
        cr, ci = zr, zi  # rho^(j - m) z^m, starting at j = m
        for j in range(m, degree + 1, 2):
            re = segment_sum(cr, op.starts, op.counts)
            im = segment_sum(ci, op.starts, op.counts) if m > 0 else xp.zeros(n)
            basis[(j, m)] = (re, im)
            if j + 2 <= degree:
                xp.multiply(cr, r2, out=wr)
                xp.multiply(ci, r2, out=wi)
                cr, ci = wr, wi
    out = {}
    area = math.pi * radius * radius
    for nn, mm in zernike_indexes(degree):
        re = xp.zeros(n)
        im = xp.zeros(n)
        for k, c in enumerate(_radial_coefficients(nn, mm)):
            bre, bim = basis[(nn - 2 * k, mm)]
            re = re + c * bre
            im = im + c * bim
        with _quiet(xp):
            out[(nn, mm)] = xp.sqrt(re * re + im * im) / area
    return out


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
                      objects: ObjectPixels | None = None, edge_distance=None) -> dict:
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
        (see :func:`radii_distances`); the results are the same.

    Returns
    -------
    dict
        ``{column: (N,) float64}`` with ``AreaShape_*`` and ``Location_Center_{X,Y}``.
    """
    bk = backend_of(labels)
    xp = bk.xp
    if labels.ndim != 2:
        raise ValueError(f"measure_areashape: 2-D labels expected, got shape {tuple(labels.shape)}")
    op = objects if objects is not None else object_pixels(labels, n_objects)
    n = op.n
    area = op.counts.astype(xp.float64)
    empty = op.counts == 0

    def nan_empty(v):
        return xp.where(empty, xp.nan, v.astype(xp.float64))

    ymin, xmin, ymax, xmax = bounding_boxes(op)
    cy, cx = centroids(op)
    # second central moments
    dy = op.y - cy[op.obj]
    dx = op.x - cx[op.obj]
    with _quiet(xp):
        myy = segment_sum(dy * dy, op.starts, op.counts) / area
        mxx = segment_sum(dx * dx, op.starts, op.counts) / area
        mxy = segment_sum(dy * dx, op.starts, op.counts) / area
    # regionprops inertia tensor [[a, b], [b, c]] = [[mxx, -mxy], [-mxy, myy]]
    a, b, c = mxx, -mxy, myy
    root = xp.sqrt(((a - c) / 2) ** 2 + b * b)
    l1 = (a + c) / 2 + root
    l2 = xp.maximum((a + c) / 2 - root, 0.0)
    with _quiet(xp):
        ecc = xp.where(l1 == 0, 0.0, xp.sqrt(1 - l2 / l1))
    orient = xp.where(a - c == 0, xp.where(b < 0, math.pi / 4, -math.pi / 4),
                      0.5 * xp.arctan2(-2 * b, c - a))
    perim = perimeters(labels, n)
    with _quiet(xp):
        formfactor = 4 * math.pi * area / perim ** 2
        compactness = perim ** 2 / xp.maximum(4 * math.pi * area, 1.0)
    bbox_area = ((ymax - ymin) * (xmax - xmin)).astype(xp.float64)
    with _quiet(xp):
        extent = area / bbox_area
        convex_area = convex_areas(op).astype(xp.float64)
        solidity = area / convex_area

    # radii: distance to the nearest pixel outside the object, each object alone
    d = radii_distances(op, edge_distance)
    dsorted = segment_sort(d, op.obj)
    max_radius = segment_max(d, op.starts, op.counts)
    with _quiet(xp):
        mean_radius = segment_sum(d, op.starts, op.counts) / area
    median_radius = segment_median(dsorted, op.starts, op.counts)

    # convex hull of pixel centres -> Feret diameters, minimum enclosing circle
    eo, ey, exmin, exmax = row_extremes(op)
    hobj, hy, hx = convex_hulls(
        xp.concatenate([eo, eo]),
        xp.concatenate([ey, ey]).astype(xp.float64),
        xp.concatenate([exmin, exmax]).astype(xp.float64),
        n,
        center=(cy, cx),
    )
    fmin, fmax = feret_diameters(hobj, hy, hx, n)
    mcy, mcx, mr = minimum_enclosing_circles(hobj, hy, hx, n)

    out = {
        "AreaShape_Area": area,
        "AreaShape_Perimeter": nan_empty(perim),
        "AreaShape_FormFactor": nan_empty(formfactor),
        "AreaShape_Eccentricity": nan_empty(ecc),
        "AreaShape_Solidity": nan_empty(solidity),
        "AreaShape_ConvexArea": nan_empty(convex_area),
        "AreaShape_Extent": nan_empty(extent),
        "AreaShape_EulerNumber": nan_empty(euler_numbers(labels, n)),
        "AreaShape_Compactness": nan_empty(compactness),
        "AreaShape_MajorAxisLength": nan_empty(4 * xp.sqrt(l1)),
        "AreaShape_MinorAxisLength": nan_empty(4 * xp.sqrt(l2)),
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
        "AreaShape_EquivalentDiameter": nan_empty(xp.sqrt(4 * area / math.pi)),
        "Location_Center_X": cx,
        "Location_Center_Y": cy,
    }
    if zernike_degree is not None and zernike_degree >= 0:
        for (nn, mm), v in zernike_moments(op, mcy, mcx, mr, zernike_degree).items():
            out[f"AreaShape_Zernike_{nn}_{mm}"] = v
    return out

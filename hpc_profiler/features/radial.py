"""RadialDistribution features: CellProfiler's MeasureObjectIntensityDistribution.

Reproduces ``RadialDistribution_{FracAtD,MeanFrac,RadialCV}_{ch}_{i}of{bins}``
(CPJUMP1: 4 scaled bins, no Zernike, no heat maps), for all objects of a site
at once.

CellProfiler's recipe, per object: the centre is the pixel farthest from the
object's edge (``distance_to_edge``: Euclidean distance transform of each
object alone, the image edge not counting as background); ``d_from_center``
is the geodesic distance from the centre inside the object along 8-connected
steps of length 1 and sqrt(2) (``centrosome.propagate`` on a zero image);
each pixel's normalised distance ``d_c / (d_c + d_e + 0.001)`` (scaled) or
``d_c / max_radius`` (unscaled) picks its bin ``floor(bins * distance)``
(``bins`` is the overflow bin of unscaled binning). Per bin: FracAtD = fraction
of the object's intensity, MeanFrac = FracAtD / fraction of the object's
pixels, RadialCV = coefficient of variation (``std / mean``, ``ddof=0``) of
the mean intensities of the 8 wedges (by ``y > yc``, ``x > xc``,
``|dy| > |dx|``) that have pixels in the bin (0 when none has).

Vectorized equivalent
---------------------
CellProfiler colours touching objects and runs one distance transform and one
propagation per colour. Here every object is copied alone into a tile of one
canvas (tiles side by side in one row, with margins where an object touches
the image edge so that, as in CellProfiler, the image edge is not
background): one Euclidean distance transform of the canvas gives ``d_e``
for all objects; the centres come from a scatter-max; Jacobi rounds over
the object pixels (each pixel pulls the float sums of its 1- and 2-step
paths from the pixels of its own object, in image coordinates) give the
exact ``d_c`` - the same shortest paths as ``centrosome.propagate``. The
whole family stays on the device with no loop over objects and no output
whose size depends on the data: one host read of the canvas size per object
set and one per chunk of rounds (:func:`_device_geometry`). The
channel-independent parts of the per-channel sums (bin and wedge keys, pixel
counts) are computed once per object set (``RadialGeometry.sums``), and the
sums of all channels are scatter-adds of known length
(:func:`measure_radial_channels`). The packed canvas of
:func:`edge_distances` with :func:`geodesic_from_seeds` (Bellman-Ford rounds
from the seeds) is a third, independent path the tests compare with both.

That is the device path. On the CPU the same quantities come from one numba
pass over the objects (:func:`_geometry_objects`): each object alone in its
bounding box, grown by one background pixel on every side that does not
touch the image edge (beyond the image edge nothing is background), gets an
exact Euclidean transform on integer squared distances (Meijster; the value
``sqrt(dy^2 + dx^2)`` SciPy's exact transform gives), its first farthest
pixel, the FIFO label-correcting geodesic from it, the bins and wedges of
its pixels and the sums' keys - equal to the bit to the packed canvas path
and to the device path (the tests compare them), several times cheaper than
a SciPy transform of a packed canvas. The per-channel float32 sums of every
channel are then formed in one pass over the pixels (:func:`_channel_sums`).

Summation order and precision
-----------------------------
CellProfiler sums the float32 image per (object, bin) and per (object, bin,
wedge) with ``scipy.sparse.coo_matrix((values, (rows, cols))).toarray()``,
which accumulates in the values' dtype (float32), one pixel at a time in the
order of the pixels (raster order, ``pixel_data[good_mask]``); FracAtD is the
float32 quotient of that histogram by its float32 row sum
(``numpy.sum(histogram, 1)``). On the CPU the same sums are formed here in
the same order and precision (:func:`float32_sums`: a numba loop adding the
pixels one by one in float32, as ``numpy.add.at`` would; the object pixels are
in raster order within each object,
:func:`~hpc_profiler.features._objects.object_pixels`), so the values
equal CellProfiler's to the last bit where the masks and centres agree. On
the GPU an in-order float32 accumulation would serialise; there the sums are
formed in float64 (one ``bincount``) and rounded to float32 once, which is
deterministic and differs from the CPU's raster-order float32 sums by the
float32 rounding of the sums only (relative ~1e-7 per sum, far inside the
CPU vs GPU parity bound).

Deliberate differences
----------------------
* Ties for the centre (several pixels equally far from the edge) take the
  first pixel in raster order (as cp_measure does; CellProfiler's
  ``scipy.ndimage.maximum_position`` order depends on the SciPy version).
* Pixels the propagation cannot reach (a second piece of a split object) are
  left out, as in CellProfiler; an object with no pixel gets NaN everywhere.
* Only CellProfiler's "These objects" centre choice (the CPJUMP1 setting);
  "Centers/Edges of other objects" (a propagation over the whole foreground
  from other objects' centroids) is not implemented.
"""
from __future__ import annotations

import math

import numpy as np

from hpc_profiler.backend import backend_of
from hpc_profiler.morphology import edt_columns_up, edt_row_envelope, njit_cached
from hpc_profiler.features._objects import (
    check_image_shape,
    ObjectPixels,
    edt_at,
    object_pixels,
    pack_objects,
    segment_argmax,
)

__all__ = ["measure_radial_distribution", "measure_radial_channels", "radial_geometry", "RadialGeometry", "geodesic_from_seeds"]


class RadialGeometry:
    """Per-pixel centre, bin and wedge of every object (channel independent).

    Attributes
    ----------
    op : ObjectPixels
    good : 1-D bool array
        Pixels reached from their object's centre (aligned with ``op.flat``).
    bin : 1-D int array
        Bin of each pixel, ``0..bins`` (``bins`` = overflow, unscaled only).
    wedge : 1-D int array
        Wedge ``0..7`` of each pixel.
    center_y, center_x : (N,) arrays
        Centre of each object.
    bins : int
    scaled : bool
    """

    def __init__(self, op, good, bin_, wedge, center_y, center_x, bins, scaled):
        self.op = op
        self.good = good
        self.bin = bin_
        self.wedge = wedge
        self.center_y = center_y
        self.center_x = center_x
        self.bins = bins
        self.scaled = scaled
        self._sums = None

    @property
    def sums(self) -> dict:
        """Channel-independent parts of the per-channel sums, computed once.

        ``flat`` (image indices of the reached pixels), ``bin_key``
        (``object * (bins + 1) + bin``) and ``wedge_key`` (``bin_key * 8 +
        wedge``) of those pixels (on the device: of every pixel, those not reached in the
        extra last slot ``bin_slots - 1`` / ``wedge_slots - 1``), the pixel fraction per bin ``pix_frac``
        (N, bins + 1), the pixel count per wedge ``wcnt`` (N, bins + 1, 8,
        at least 1), ``present`` (wedges with pixels), ``k`` (wedges with
        pixels per bin) and ``empty`` (objects without a reached pixel).
        """
        if self._sums is None and not backend_of(self.op.flat).is_gpu:
            n, nb = self.op.n, self.bins + 1
            m = int(np.count_nonzero(self.good))
            flat = np.empty(m, dtype=np.int64)
            bin_key = np.empty(m, dtype=np.int64)
            wedge_key = np.empty(m, dtype=np.int64)
            wcnt = np.zeros(n * nb * 8, dtype=np.int64)
            _sum_keys_jit(self.op.obj, self.good, self.bin, self.wedge, self.op.flat, nb,
                          flat, bin_key, wedge_key, wcnt)
            self._sums = _cpu_sums(n, nb, flat, bin_key, wedge_key, wcnt)
        if self._sums is None:
            # device: every pixel keeps its slot; pixels not reached go to one extra slot at
            # the end (no boolean-mask read, whose size the host would have to learn), and
            # the counts are scatter-adds into arrays of known length (no bincount sizing)
            xp = backend_of(self.op.flat).xp
            n, nb = self.op.n, self.bins + 1
            good = self.good
            obj = self.op.obj
            bin_key = xp.where(good, obj * nb + self.bin, n * nb)
            wedge_key = xp.where(good, (obj * nb + self.bin) * 8 + self.wedge, n * nb * 8)
            ones = xp.ones(bin_key.shape[0], dtype=xp.float64)
            count = xp.zeros(n * nb + 1, dtype=xp.float64)
            xp.add.at(count, bin_key, ones)
            count = count[: n * nb].reshape(n, nb)
            wcnt = xp.zeros(n * nb * 8 + 1, dtype=xp.float64)  # float64 scatter-add, exact counts
            xp.add.at(wcnt, wedge_key, ones)
            wcnt = wcnt[: n * nb * 8].reshape(n, nb, 8).astype(xp.int64)
            present = wcnt > 0
            total = count.sum(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                pix_frac = count / total
            self._sums = {
                "flat": self.op.flat,
                "bin_key": bin_key,
                "wedge_key": wedge_key,
                "bin_slots": n * nb + 1,
                "wedge_slots": n * nb * 8 + 1,
                "pix_frac": pix_frac,
                "wcnt": xp.maximum(wcnt, 1),
                "present": present,
                "k": present.sum(axis=2),
                "empty": ~(total[:, 0] > 0),
            }
        return self._sums


def _cpu_sums(n: int, nb: int, flat, bin_key, wedge_key, wcnt) -> dict:
    """:attr:`RadialGeometry.sums` on the CPU from the reached pixels' keys and the wedge counts."""
    wcnt = wcnt.reshape(n, nb, 8)
    count = wcnt.sum(axis=2).astype(np.float64)
    present = wcnt > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pix_frac = count / count.sum(axis=1, keepdims=True)
    return {
        "flat": flat,
        "bin_key": bin_key,
        "wedge_key": wedge_key,
        "bin_slots": n * nb,
        "wedge_slots": n * nb * 8,
        "pix_frac": pix_frac,
        "wcnt": np.maximum(wcnt, 1),
        "present": present,
        "k": present.sum(axis=2),
        "empty": ~(count.sum(axis=1) > 0),
    }


def _sum_keys(obj, good, bin_, wedge, flat_all, nb, flat, bin_key, wedge_key, wcnt):
    """The reached pixels' image index, ``bin_key`` and ``wedge_key`` in pixel order, and the
    pixel count per wedge key (numba, CPU; :attr:`RadialGeometry.sums`)."""
    j = 0
    for i in range(obj.shape[0]):
        if good[i]:
            bk = obj[i] * nb + bin_[i]
            wk = bk * 8 + wedge[i]
            flat[j] = flat_all[i]
            bin_key[j] = bk
            wedge_key[j] = wk
            wcnt[wk] += 1
            j += 1


_sum_keys_jit = njit_cached(_sum_keys)


#: 8-neighbour offsets and CellProfiler's step lengths (``centrosome.propagate`` on a
#: zero image: ``sqrt(manhattan distance)``, i.e. 1 and sqrt(2)).
_STEPS = [(dy, dx, float(np.sqrt(abs(dy) + abs(dx))))
          for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
_DY = np.array([dy for dy, _, _ in _STEPS], dtype=np.int64)
_DX = np.array([dx for _, dx, _ in _STEPS], dtype=np.int64)
_STEP_LENGTHS = np.array([step for _, _, step in _STEPS], dtype=np.float64)


def _ordered_float32_sums(keys, values, out):
    """``out[keys[i]] += values[i]`` for i = 0, 1, ... in float32 (numba: no reassociation)."""
    for i in range(keys.shape[0]):
        out[keys[i]] += values[i]
    return out


_ordered_float32_sums_jit = njit_cached(_ordered_float32_sums)


def float32_sums(bk, keys, values, size: int):
    """``size`` per-key sums of ``values`` as float32, CellProfiler's way.

    CPU: float32 accumulation one value at a time in the order given
    (``scipy.sparse.coo_matrix(...).toarray()``'s loop ``Bx[i] += Ax[n]``), a
    numba loop (equal to ``numpy.add.at`` on a float32 array, which the tests
    check). GPU: float64 sums rounded to float32 (see the module docstring).
    """
    xp = bk.xp
    if bk.is_gpu:
        return xp.bincount(keys, weights=values.astype(xp.float64), minlength=size)[:size].astype(xp.float32)
    out = np.zeros(size, dtype=np.float32)
    return _ordered_float32_sums_jit(np.ascontiguousarray(keys, dtype=np.int64),
                                     np.ascontiguousarray(values, dtype=np.float32), out)


def _channel_sums(images, flat, bin_key, wedge_key, hist, wsum):
    """Both per-channel float32 sums of every channel in one pass over the pixels (numba,
    CPU): ``hist[c, bin_key[i]]`` and ``wsum[c, wedge_key[i]]`` += ``float32(images[c][flat[i]])``
    for i = 0, 1, ... - per channel the ordered float32 accumulation of
    :func:`float32_sums`, to the bit (the channels only share the pass)."""
    nc = len(images)
    for i in range(flat.shape[0]):
        f = flat[i]
        bk = bin_key[i]
        wk = wedge_key[i]
        for c in range(nc):
            v = np.float32(images[c][f])
            hist[c, bk] += v
            wsum[c, wk] += v


_channel_sums_jit = njit_cached(_channel_sums)


def _label_correcting(nbrs, steps, seeds, n_pixels):
    """Shortest distances from ``seeds`` over the neighbour lists ``nbrs`` (8, P + 1;
    ``n_pixels`` = missing), a FIFO label-correcting loop (numba, CPU).

    Every offer is ``dist[u] + step`` in float64, as in the rounds of
    :func:`geodesic_from_seeds`; ``fl(x + step)`` is monotone in ``x``, so any
    label-correcting order ends at the same fixed point, the minimum over paths
    of the left-to-right float sums: the distances are equal to the bit.
    """
    dist = np.full(n_pixels + 1, np.inf)
    inq = np.zeros(n_pixels + 1, np.bool_)
    cap = n_pixels + 1
    queue = np.empty(cap, np.int64)  # every pixel is at most once in the queue
    head = 0
    size = 0
    for i in range(seeds.shape[0]):
        s = seeds[i]
        if not inq[s]:
            dist[s] = 0.0
            inq[s] = True
            queue[(head + size) % cap] = s
            size += 1
    while size > 0:
        u = queue[head]
        head = (head + 1) % cap
        size -= 1
        inq[u] = False
        du = dist[u]
        for k in range(nbrs.shape[0]):
            v = nbrs[k, u]
            if v == n_pixels:
                continue
            nd = du + steps[k]
            if nd < dist[v]:
                dist[v] = nd
                if not inq[v]:
                    inq[v] = True
                    queue[(head + size) % cap] = v
                    size += 1
    return dist[:n_pixels]


_label_correcting_jit = njit_cached(_label_correcting)


def geodesic_from_seeds(packed, n_pixels: int, seeds, *, backend=None):
    """Geodesic distance inside each object from its seed pixel, all objects at once.

    Shortest 8-connected paths with steps of 1 and sqrt(2) that stay inside
    the object (``centrosome.propagate`` with a zero image, as CellProfiler's
    MeasureObjectIntensityDistribution uses it). Bellman-Ford relaxation on
    the object pixels of a packed canvas (objects isolated by background):
    each round, every pixel improved in the previous round offers
    ``d(pixel) + step`` to its 8 neighbours and ``(d(pixel) + step) + step``
    to the ends of its 64 two-step paths (``minimum.at``, a scatter-min);
    the rounds stop when nothing improves (exact shortest paths; the same
    fixed point as relaxing each pixel from its neighbours). Gathers and
    ``minimum.at`` only, so it runs unchanged on NumPy and CuPy (whose
    ``ufunc.at`` provides the scatter-min since CuPy 13).

    Parameters
    ----------
    packed : PackedObjects
        From :func:`~hpc_profiler.features._objects.pack_objects`.
    n_pixels : int
        Number of object pixels (``packed.cy.shape[0]``).
    seeds : 1-D int array
        Pixel indices (into the packed pixel list) of the seeds.
    backend : Backend, optional
        Defaults to the canvas's. On the CPU the rounds are replaced by a numba
        label-correcting loop over the same neighbour lists
        (:func:`_label_correcting`, the same distances to the bit, one pass
        instead of a Python loop of rounds).

    Returns
    -------
    1-D float64 array of distances per pixel; ``inf`` where no seed reaches.
    """
    bk = backend if backend is not None else backend_of(packed.canvas)
    xp = bk.xp
    # neighbour lists, int32; a missing neighbour points at the sentinel slot
    # n_pixels, which is reset to inf after every round and never propagates
    index = xp.full(packed.canvas.size, n_pixels, dtype=xp.int32)
    flat = packed.cy * packed.canvas.shape[1] + packed.cx
    index[flat] = xp.arange(n_pixels, dtype=xp.int32)
    # every object pixel has a background margin inside the canvas: no bounds checks
    width = packed.canvas.shape[1]
    nbrs = xp.stack([index[flat + (dy * width + dx)] for dy, dx, _ in _STEPS])  # (8, pixels)
    if not bk.is_gpu:
        return _label_correcting_jit(np.ascontiguousarray(nbrs, dtype=np.int32),
                                     np.asarray([step for _, _, step in _STEPS], dtype=np.float64),
                                     np.ascontiguousarray(seeds, dtype=np.int64), int(n_pixels))
    # Device: rounds that push along every 1- and 2-step path at once (72 offers
    # per pixel), about half the rounds of a 1-step push and fewer launches per
    # round. A 2-step offer is ``(d + s1) + s2`` added in that order, the float
    # sum of a real path, so the fixed point is the one of the 1-step rounds (and
    # of the CPU loop; see _label_correcting). The sentinel column points at
    # itself, so the sentinel slot only ever offers to itself, never improving.
    nbrs = xp.concatenate([nbrs, xp.full((8, 1), n_pixels, dtype=xp.int32)], axis=1)  # (8, P + 1)
    # two[j, i] = nbrs[j][nbrs[i]]: step i, then step j (row 8 * j + i once flattened)
    two = nbrs[:, nbrs].reshape(64, n_pixels + 1)
    hops = xp.concatenate([nbrs, two], axis=0)  # (72, P + 1)
    s = [step for _, _, step in _STEPS]
    first = xp.asarray(s + [s[i] for j in range(8) for i in range(8)], dtype=xp.float64)[:, None]
    second = xp.asarray([0.0] * 8 + [s[j] for j in range(8) for i in range(8)], dtype=xp.float64)[:, None]
    dist = xp.full(n_pixels + 1, xp.inf)
    dist[seeds] = 0.0
    changed = seeds
    while changed.shape[0] > 0:
        # push: every pixel improved in the last round offers its paths' sums;
        # a pixel whose distance drops is improved in this round
        targets = hops[:, changed].ravel()
        offers = ((dist[changed][None, :] + first) + second).ravel()
        before = dist[targets]
        xp.minimum.at(dist, targets, offers)
        changed = xp.unique(targets[dist[targets] < before])
    return dist[:n_pixels]


def _geometry_objects(py, px, starts, counts, height, width, steps,
                      bins, scaled, max_radius, d_edge, d_center, seed, good, bin_, wedge,
                      flat_all, key_flat, bin_key, wedge_key, wcnt):
    """Per object alone (numba, CPU): ``d_edge``, the seed and ``d_center`` of its pixels.

    For each object, in its bounding box grown by one pixel on every side that
    does not touch the image edge (the nearest pixel outside an object lies
    there; beyond the image edge there is none, the image edge not being
    background): ``d_edge`` = Meijster's exact Euclidean transform on integer
    squared distances, ``sqrt(float(dy^2 + dx^2))`` (SciPy's value, as
    :func:`edt_at`); ``seed`` = the first pixel in the object's order (raster)
    with the largest squared distance (:func:`segment_argmax`'s tie rule);
    ``d_center`` = the geodesic distance from the seed inside the object, a
    FIFO label-correcting loop with the steps of ``_STEPS`` (the fixed point of
    :func:`_label_correcting`, equal to the bit: see there; ``inf`` where the
    seed does not reach). Objects without pixels get ``seed`` -1. Then per
    pixel, as :func:`radial_geometry`'s array expressions in the same float64
    operations: ``good`` (reached), ``bin_`` and ``wedge``. The bounding box
    comes from the object's pixels here (raster order: the first and last
    pixels give the rows), cheaper than ``bounding_boxes`` of the whole set.
    In the same pass, as :func:`_sum_keys`: the reached pixels' image index
    ``key_flat`` (from ``flat_all``), ``bin_key`` and ``wedge_key`` in pixel
    order and the pixel count per wedge key ``wcnt``; returns their number.
    """
    nb = bins + 1
    j = 0
    n = starts.shape[0]
    for i in range(n):
        c = counts[i]
        s = starts[i]
        if c == 0:
            seed[i] = -1
            continue
        bymin = py[s]
        bymax = py[s + c - 1] + 1
        bxmin = px[s]
        bxmax = px[s]
        for p in range(s + 1, s + c):
            xv = px[p]
            if xv < bxmin:
                bxmin = xv
            elif xv > bxmax:
                bxmax = xv
        bxmax += 1
        top = 1 if bymin > 0 else 0
        left = 1 if bxmin > 0 else 0
        y0 = bymin - top
        x0 = bxmin - left
        h = bymax + (1 if bymax < height else 0) - y0
        w = bxmax + (1 if bxmax < width else 0) - x0
        big = h + w + 2  # above any in-crop distance: "no background in this column"
        # pixel index within the object, -1 outside, in the box with one more -1 pixel on every
        # side (the geodesic's neighbour reads then need no bounds checks)
        wp = w + 2
        padded = np.full((h + 2) * wp, -1, dtype=np.int32)
        pos = np.empty(c, dtype=np.int64)  # each pixel's position in ``padded``
        for p in range(c):
            q = (py[s + p] - y0 + 1) * wp + (px[s + p] - x0 + 1)
            padded[q] = p
            pos[p] = q
        local = padded.reshape(h + 2, wp)[1:h + 1, 1:w + 1]
        g = np.empty((h, w), dtype=np.int64)
        for x in range(w):  # vertical distance to background, downwards then upwards
            g[0, x] = big if local[0, x] >= 0 else 0
        for y in range(1, h):
            for x in range(w):
                if local[y, x] < 0:
                    g[y, x] = 0
                else:
                    g[y, x] = min(g[y - 1, x] + 1, big)
        edt_columns_up(g)
        sq = np.empty(w, dtype=np.int64)
        tq = np.empty(w, dtype=np.int64)
        best = -1
        arg = 0
        for y in range(h):  # lower envelope of the parabolas (x - u)^2 + g(u)^2 (columns beyond: none)
            gy = g[y]
            q = edt_row_envelope(gy, w, sq, tq)
            ly = local[y]
            for x in range(w - 1, -1, -1):
                p = ly[x]
                if p >= 0:  # an object pixel: its squared distance, and the first farthest pixel
                    a = x - sq[q]
                    v2 = a * a + gy[sq[q]] * gy[sq[q]]
                    d_edge[s + p] = math.sqrt(float(v2))
                    d_center[s + p] = np.inf
                    if v2 > best or (v2 == best and p < arg):
                        best = v2
                        arg = p
                if x == tq[q]:
                    q -= 1
        seed[i] = s + arg
        # geodesic distance from the seed (FIFO label-correcting, every pixel at most once queued)
        queue = np.empty(c, dtype=np.int64)
        inq = np.zeros(c, dtype=np.bool_)
        head = 0
        size = 0
        d_center[s + arg] = 0.0
        inq[arg] = True
        queue[0] = arg
        size = 1
        while size > 0:
            u = queue[head]
            head = head + 1 if head + 1 < c else 0
            size -= 1
            inq[u] = False
            du = d_center[s + u]
            pu = pos[u]
            for k in range(8):
                v = padded[pu + _DY[k] * wp + _DX[k]]
                if v < 0:
                    continue
                nd = du + steps[k]
                if nd < d_center[s + v]:
                    d_center[s + v] = nd
                    if not inq[v]:
                        inq[v] = True
                        t = head + size
                        queue[t if t < c else t - c] = v
                        size += 1
        cy = float(py[s + arg])
        cx = float(px[s + arg])
        for p in range(s, s + c):
            dc = d_center[p]
            ok = dc < np.inf
            good[p] = ok
            if not ok:
                dc = 0.0
            if scaled:
                norm = dc / (dc + d_edge[p] + 0.001)
            else:
                norm = dc / max_radius
            if not ok:
                norm = 0.0
            b = np.int64(norm * bins)
            b = b if b < bins else bins
            bin_[p] = b
            dy = py[p] - cy
            dx = px[p] - cx
            wd = (1 if dy > 0 else 0) + (2 if dx > 0 else 0) + (4 if abs(dy) > abs(dx) else 0)
            wedge[p] = wd
            if ok:
                bk = i * nb + b
                wk = bk * 8 + wd
                key_flat[j] = flat_all[p]
                bin_key[j] = bk
                wedge_key[j] = wk
                wcnt[wk] += 1
                j += 1
    return j


_geometry_objects_jit = njit_cached(_geometry_objects)


def _pull_table(nbrs, n_pixels: int):
    """``(pulls, first, second)`` of the device rounds (:func:`_device_geometry`).

    ``nbrs`` (8, P): the neighbour of each pixel in each step of ``_STEPS``
    inside its object, ``P`` where none. A pixel ``v`` pulls from itself
    (cost 0), from the pixel one step back and from the pixel two steps
    back along ``u --a--> w --b--> v`` for every pair of steps (a step and
    its reverse left out: they return to ``v``) the path's float sum in its
    order, ``(d[u] + s_a) + s_b``, as the CPU's label-correcting loop adds
    it. ``first`` (3, 1) holds the first step's lengths ``0, 1, sqrt(2)``;
    ``pulls`` (rows, P + 1) indexes the flattened ``d + first`` (3, P + 1),
    so each round adds the first step on 3 rows only; ``second`` (rows, 1) is
    the second step's length (0 for the one-step rows). The sentinel column
    ``P`` pulls only from itself.
    """
    bk = backend_of(nbrs)
    xp = bk.xp
    size = n_pixels + 1
    nb1 = xp.concatenate([nbrs, xp.full((8, 1), n_pixels, dtype=nbrs.dtype)], axis=1)
    back = nb1[::-1]  # back[k][v] = u with v = u + offset k (offsets of _STEPS are symmetric)
    s = [step for _, _, step in _STEPS]
    code = [1 if step == 1.0 else 2 for step in s]  # row of d + first holding d + s_a
    pairs = [(a, b) for a in range(8) for b in range(8) if a != 7 - b]
    rows = xp.asarray([8 * a + b for a, b in pairs], dtype=xp.int64)
    two = back[:, back].reshape(64, size)[rows]
    offset = xp.asarray([0] + [code[a] * size for a in range(8)] + [code[a] * size for a, _ in pairs],
                        dtype=xp.int64)[:, None]
    pulls = xp.concatenate([xp.arange(size, dtype=nbrs.dtype)[None, :], back, two], axis=0) + offset
    first = xp.asarray([0.0, 1.0, math.sqrt(2.0)], dtype=xp.float64)[:, None]
    second = xp.asarray([0.0] * 9 + [s[b] for _, b in pairs], dtype=xp.float64)[:, None]
    return pulls, first, second


def _pull_rounds(dist, pulls, first, second, rounds: int):
    """``rounds`` Jacobi rounds: every pixel takes the least of its pulled path sums."""
    for _ in range(rounds):
        dist = ((dist[None, :] + first).ravel()[pulls] + second).min(axis=0)
    return dist


def _radial_bins(d_center, d_edge, good, scaled: bool, bins: int, max_radius, xp):
    """Each pixel's bin (0..bins; ``bins`` = beyond ``max_radius``) from its distances to the
    centre and to the edge, CellProfiler's normalisation: ``d_c / (d_c + d_e + 0.001)`` when
    ``scaled``, else ``d_c / max_radius``; pixels not ``good`` go to bin 0."""
    d_center = xp.where(good, d_center, 0.0)
    if scaled:
        norm = d_center / (d_center + d_edge + 0.001)
    else:
        norm = d_center / max_radius
    norm = xp.where(good, norm, 0.0)
    return xp.minimum((norm * bins).astype(xp.int64), bins)


def _device_geometry(bk, op: ObjectPixels, bins: int, scaled: bool, max_radius) -> RadialGeometry:
    """:func:`radial_geometry` on the device: no loop over objects, one host read of sizes.

    * Boxes from the raster order (rows) and scatter-min/max (columns).
    * Each object's tile (box, one background pixel on sides inside the
      image, a foreground margin of ``max(h, w) + 1`` on sides at the image
      edge, as :func:`~hpc_profiler.features._objects.pack_objects` with the
      image edge not background) laid side by side in one row of tiles: the
      canvas size (total width, tallest tile) and the largest box extent are
      the one device->host copy; the margins are drawn by per-pixel tests
      of the canvas, the objects by one scatter; one Euclidean transform
      (:func:`~hpc_profiler.features._objects.edt_at`) gives ``d_edge``.
    * Seed = first pixel with the largest ``d_edge`` (scatter-max, then a
      scatter-min of the candidates' indices; raster order inside an object).
    * ``d_center``: Jacobi rounds over the pixels' neighbours inside their
      object (same label, 8-connected, in image coordinates) pulling every
      1- and 2-step path sum (:func:`_pull_table`); the fixed point is the
      CPU loop's to the bit (see :func:`_label_correcting`). The rounds run
      in chunks without host reads, ``extent / 2 + 2`` first (shortest
      paths up to about the box's extent in steps), then chunks of
      ``extent / 4``; one read after each chunk tells whether its last round
      changed anything.
    """
    xp = bk.xp
    n = op.n
    P = int(op.flat.shape[0])
    H, W = op.shape
    if P == 0:
        nothing = xp.zeros(0, dtype=xp.int64)
        return RadialGeometry(op, xp.zeros(0, dtype=bool), nothing, nothing, xp.full(n, xp.nan),
                              xp.full(n, xp.nan), bins, scaled)
    obj = op.obj
    has = op.counts > 0
    first_px = xp.minimum(op.starts, P - 1)
    last_px = xp.clip(op.starts + op.counts - 1, 0, P - 1)
    ymin = xp.where(has, op.y[first_px], 0)
    ymax = xp.where(has, op.y[last_px] + 1, 0)
    # scatter-min/max in float64 (exact for these integers; CuPy's ufunc.at covers float64)
    xf = op.x.astype(xp.float64)
    xmin = xp.full(n, float(W))
    xp.minimum.at(xmin, obj, xf)
    xmin = xp.where(has, xmin.astype(xp.int64), 0)
    xmax = xp.zeros(n, dtype=xp.float64)
    xp.maximum.at(xmax, obj, xf + 1.0)
    xmax = xmax.astype(xp.int64)
    extent = xp.maximum(ymax - ymin, xmax - xmin)
    margin = extent + 1
    pt = xp.where(ymin == 0, margin, 1)
    pb = xp.where(ymax == H, margin, 1)
    pl = xp.where(xmin == 0, margin, 1)
    pr = xp.where(xmax == W, margin, 1)
    th = xp.where(has, ymax - ymin + pt + pb, 0)
    tw = xp.where(has, xmax - xmin + pl + pr, 0)
    x0 = xp.cumsum(tw) - tw
    sizes = bk.to_numpy(xp.stack([tw.sum(), th.max(), extent.max()]))  # the one host read of sizes
    width_c, height_c, longest = (int(v) for v in sizes)
    # canvas: margins at the image edge (foreground of no object), then the objects
    t = xp.searchsorted(x0 + tw, xp.arange(width_c), side="right")  # tile of each canvas column
    lx = xp.arange(width_c) - x0[t]
    r = xp.arange(height_c)[:, None]
    tt, pt_t, pb_t, pl_t, pr_t = th[t], pt[t], pb[t], pl[t], pr[t]
    mask = (r < tt) & (((r < pt_t) & (ymin[t] == 0)) | ((r >= tt - pb_t) & (ymax[t] == H))
                       | ((lx < pl_t) & (xmin[t] == 0)) | ((lx >= tw[t] - pr_t) & (xmax[t] == W)))
    cy = op.y - ymin[obj] + pt[obj]
    cx = op.x - xmin[obj] + pl[obj] + x0[obj]
    mask[cy, cx] = True
    d_edge = edt_at(mask, cy, cx)
    # seed: the first pixel (raster order) with the largest distance to the edge
    best = xp.full(n, -1.0)
    xp.maximum.at(best, obj, d_edge)
    cand = xp.where(d_edge == best[obj], xp.arange(P, dtype=xp.float64), float(P))
    idx = xp.full(n, float(P))
    xp.minimum.at(idx, obj, cand)
    ok = has
    idx = xp.where(ok, idx.astype(xp.int64), 0)
    # neighbours inside the object, in image coordinates
    index = xp.full(H * W, P, dtype=xp.int64)
    index[op.flat] = xp.arange(P, dtype=xp.int64)
    ny = op.y[None, :] + xp.asarray(_DY)[:, None]
    nx = op.x[None, :] + xp.asarray(_DX)[:, None]
    inside = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
    j = index[xp.where(inside, ny * W + nx, 0)]
    same = inside & (j < P) & (obj[xp.minimum(j, P - 1)] == obj[None, :])
    pulls, first, second = _pull_table(xp.where(same, j, P), P)
    dist = xp.full(P + 1, xp.inf)
    dist[xp.where(ok, idx, P)] = 0.0
    dist[P] = xp.inf
    # a round moves the distances two steps: ~extent / 2 rounds cover shortest paths of
    # up to about the box's extent in steps (the bench site's objects, nuclei, cells and
    # cytoplasm rings alike: one read per object set); longer paths take further chunks.
    # (extent / 4 first, then extent / 8, saved 10% of the rounds there for 4 more reads.)
    chunk = longest // 2 + 2
    while True:
        dist = _pull_rounds(dist, pulls, first, second, chunk - 1)
        before = dist
        dist = _pull_rounds(dist, pulls, first, second, 1)
        if not bool(bk.to_numpy((dist < before).any())):  # one read per chunk
            break
        chunk = max(longest // 4, 4)
    d_center = dist[:P]
    good = xp.isfinite(d_center)
    bin_ = _radial_bins(d_center, d_edge, good, scaled, bins, max_radius, xp)
    center_y = xp.where(ok, op.y[idx].astype(xp.float64), xp.nan)
    center_x = xp.where(ok, op.x[idx].astype(xp.float64), xp.nan)
    dy = op.y - center_y[obj]
    dx = op.x - center_x[obj]
    wedge = (dy > 0).astype(xp.int64) + 2 * (dx > 0) + 4 * (xp.abs(dy) > xp.abs(dx))
    return RadialGeometry(op, good, bin_, wedge, center_y, center_x, bins, scaled)


def edge_distances(op: ObjectPixels):
    """``(packed, d_edge)``: each object alone on a packed canvas, and the distance of
    each of its pixels to the nearest pixel outside it within the image
    (CellProfiler's ``distance_to_edge``; the image edge is not background).

    For an object that does not touch the image edge this is also
    MeasureObjectSizeShape's distance (the object alone, zero-padded), which
    lets AreaShape share it (``shape.measure_areashape(edge_distance=...)``).
    :func:`radial_geometry` uses it on the device and where ``edges`` is
    given; the CPU otherwise computes the same distances per object
    (:func:`_geometry_objects`).
    """
    packed = pack_objects(op, pad=1, image_edge_is_background=False)
    return packed, edt_at(packed.canvas != 0, packed.cy, packed.cx)


def radial_geometry(labels, n_objects: int, *, bins: int = 4, scaled: bool = True,
                    max_radius: int = 100, objects: ObjectPixels | None = None,
                    edges=None) -> RadialGeometry:
    """Centres, distances, bins and wedges of every object (see the module docstring).

    Computed once per object set and reused for every channel. Three paths,
    equal to the bit (the tests compare them): ``edges`` given
    (:func:`edge_distances` of the objects, already computed): the packed
    canvas, :func:`segment_argmax` and :func:`geodesic_from_seeds`; otherwise
    on the device :func:`_device_geometry` (no loop over objects, one host read
    of sizes and one per chunk of rounds), on the CPU the numba per-object pass
    :func:`_geometry_objects`.
    """
    bk = backend_of(labels)
    xp = bk.xp
    op = objects if objects is not None else object_pixels(labels, n_objects)
    n = op.n
    if bk.is_gpu and edges is None:
        return _device_geometry(bk, op, bins, scaled, max_radius)
    if edges is not None:
        packed, d_edge = edges
        idx, ok = segment_argmax(d_edge, op.obj, n)
        d_center = geodesic_from_seeds(packed, op.flat.shape[0], idx[ok])
    else:
        # CPU: each object alone in its box, one numba pass (the same distances, seeds and
        # geodesic to the bit as the packed canvas + SciPy transform + label-correcting loop)
        n_pix = op.flat.shape[0]
        d_edge = np.empty(n_pix)
        d_center = np.empty(n_pix)
        idx = np.empty(n, dtype=np.int64)
        good = np.empty(n_pix, dtype=np.bool_)
        bin_ = np.empty(n_pix, dtype=np.int64)
        wedge = np.empty(n_pix, dtype=np.int64)
        key_flat = np.empty(n_pix, dtype=np.int64)
        bin_key = np.empty(n_pix, dtype=np.int64)
        wedge_key = np.empty(n_pix, dtype=np.int64)
        wcnt = np.zeros(n * (int(bins) + 1) * 8, dtype=np.int64)
        m = _geometry_objects_jit(op.y, op.x, op.starts, op.counts,
                                  int(op.shape[0]), int(op.shape[1]), _STEP_LENGTHS, int(bins), bool(scaled),
                                  float(max_radius), d_edge, d_center, idx, good, bin_, wedge,
                                  op.flat, key_flat, bin_key, wedge_key, wcnt)
        ok = idx >= 0
        center_y = np.full(n, np.nan)
        center_x = np.full(n, np.nan)
        center_y[ok] = op.y[idx[ok]].astype(np.float64)
        center_x[ok] = op.x[idx[ok]].astype(np.float64)
        geometry = RadialGeometry(op, good, bin_, wedge, center_y, center_x, bins, scaled)
        geometry._sums = _cpu_sums(n, int(bins) + 1, key_flat[:m], bin_key[:m], wedge_key[:m], wcnt)
        return geometry
    good = xp.isfinite(d_center) & ok[op.obj]
    bin_ = _radial_bins(d_center, d_edge, good, scaled, bins, max_radius, xp)
    center_y = xp.full(n, xp.nan)
    center_x = xp.full(n, xp.nan)
    center_y[ok] = op.y[idx[ok]].astype(xp.float64)
    center_x[ok] = op.x[idx[ok]].astype(xp.float64)
    dy = op.y - center_y[op.obj]
    dx = op.x - center_x[op.obj]
    wedge = (dy > 0).astype(xp.int64) + 2 * (dx > 0) + 4 * (xp.abs(dy) > xp.abs(dx))
    return RadialGeometry(op, good, bin_, wedge, center_y, center_x, bins, scaled)


def measure_radial_distribution(labels, n_objects: int, image, channel: str, *, bins: int = 4,
                                scaled: bool = True, max_radius: int = 100,
                                geometry: RadialGeometry | None = None) -> dict:
    """MeasureObjectIntensityDistribution for one channel, all objects at once.

    Parameters
    ----------
    labels : (H, W) int array
        Label image, objects ``1..n_objects``.
    n_objects : int
        Number of objects ``N``; row ``i`` is label ``i + 1``.
    image : (H, W) float array
        Intensities.
    channel : str
        Channel name for the column names.
    bins, scaled, max_radius
        CellProfiler's settings (CPJUMP1: 4, True, 100).
    geometry : RadialGeometry, optional
        ``radial_geometry(...)`` when already computed for these labels.

    Returns
    -------
    dict
        ``RadialDistribution_{FracAtD,MeanFrac,RadialCV}_{channel}_{i}of{bins}``
        (and ``..._Overflow`` columns for unscaled bins) -> (N,) float64.
    """
    return measure_radial_channels(labels, n_objects, {channel: image}, bins=bins, scaled=scaled,
                                   max_radius=max_radius, geometry=geometry)


def _stacked_pixels(bk, images: list, flat):
    """``(C, M)`` float32 values of the channels at the image indices ``flat`` (device path):
    one stack of the images and one gather."""
    xp = bk.xp
    stack = xp.stack([xp.ravel(im) for im in images])
    return stack[:, flat].astype(xp.float32)


def measure_radial_channels(labels, n_objects: int, images, *, bins: int = 4, scaled: bool = True,
                            max_radius: int = 100, geometry: RadialGeometry | None = None) -> dict:
    """:func:`measure_radial_distribution` of several channels at once (``images``: channel -> image).

    The per-channel sums of all channels are formed together - on the CPU in one
    numba pass over the pixels (:func:`_channel_sums`, each channel's sums in
    the same order and precision as alone), on the device with one gather of
    all channels and one scatter-add per sum of known length (no data-sized
    output) - and the features of every channel come from array expressions
    over a leading channel axis (the same operations per channel, so the
    same bits as channel by channel).
    """
    channels = list(images)
    for c in channels:
        check_image_shape("measure_radial_distribution", c, images[c], labels)
    bk = backend_of(labels, *[images[c] for c in channels])
    xp = bk.xp
    g = geometry if geometry is not None else radial_geometry(
        labels, n_objects, bins=bins, scaled=scaled, max_radius=max_radius)
    n = g.op.n
    nb = g.bins + 1
    nc = len(channels)
    s = g.sums
    # CellProfiler's float32 image values, summed in float32 (module docstring)
    if bk.is_gpu:
        # float64 sums (scatter-adds into arrays of known length) rounded to float32 once
        v = _stacked_pixels(bk, [images[c] for c in channels], s["flat"]).astype(xp.float64).ravel()
        chan = xp.arange(nc, dtype=xp.int64)[:, None]
        bs, ws = s["bin_slots"], s["wedge_slots"]
        hist = xp.zeros(nc * bs, dtype=xp.float64)
        xp.add.at(hist, (chan * bs + s["bin_key"][None, :]).ravel(), v)
        wsum32 = xp.zeros(nc * ws, dtype=xp.float64)
        xp.add.at(wsum32, (chan * ws + s["wedge_key"][None, :]).ravel(), v)
        hist = hist.reshape(nc, bs)[:, : n * nb].astype(xp.float32).reshape(nc, n, nb)
        wsum32 = wsum32.reshape(nc, ws)[:, : n * nb * 8].astype(xp.float32)
    else:  # the ordered float32 sums of every channel, one pass over the pixels
        hist = np.zeros((nc, n * nb), dtype=np.float32)
        wsum32 = np.zeros((nc, n * nb * 8), dtype=np.float32)
        ims = tuple(np.ravel(images[c]) for c in channels)
        if len({a.dtype for a in ims}) > 1:  # one tuple type for numba (float64 holds any float32 exactly)
            ims = tuple(a.astype(np.float64) for a in ims)
        _channel_sums_jit(ims, s["flat"], s["bin_key"], s["wedge_key"], hist, wsum32)
        hist = hist.reshape(nc, n, nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (hist / hist.sum(axis=2, keepdims=True)).astype(xp.float64)  # float32 quotient
        mean_frac = frac / (s["pix_frac"] + np.finfo(float).eps)
        # wedge means per (channel, object, bin, wedge)
        wsum = wsum32.reshape(nc, n, nb, 8).astype(xp.float64)
        present, k = s["present"], s["k"]
        means = xp.where(present, wsum / s["wcnt"], 0.0)
        mu = means.sum(axis=3) / k
        var = (xp.where(present, (means - mu[..., None]) ** 2, 0.0)).sum(axis=3) / k
        cv = xp.sqrt(var) / mu
    cv = xp.where(k == 0, 0.0, cv)
    cv = xp.where(s["empty"][:, None], xp.nan, cv)
    out = {}
    n_out = g.bins + (0 if g.scaled else 1)
    for j, channel in enumerate(channels):
        for i in range(n_out):
            suffix = f"{i + 1}of{g.bins}" if i < g.bins else "Overflow"
            out[f"RadialDistribution_FracAtD_{channel}_{suffix}"] = frac[j, :, i]
            out[f"RadialDistribution_MeanFrac_{channel}_{suffix}"] = mean_frac[j, :, i]
            out[f"RadialDistribution_RadialCV_{channel}_{suffix}"] = cv[j, :, i]
    return out


# ----------------------------------------------------------------- registry entry
RADIAL_FEATURES = ("FracAtD", "MeanFrac", "RadialCV")


def _radial_names(obj, channels, params) -> list[str]:
    b = params.radial.bins
    return [f"RadialDistribution_{f}_{c}_{i}of{b}" for c in channels for f in RADIAL_FEATURES for i in range(1, b + 1)]


def _radial_measure(ctx) -> dict:
    # RadialDistribution computes its own distance transform: AreaShape's per-object
    # transform (numba) costs several times less, so sharing it no longer pays
    r = ctx.params.radial
    geometry = radial_geometry(ctx.labels, ctx.n, bins=r.bins, scaled=r.scaled, max_radius=r.max_radius,
                               objects=ctx.objects, edges=None)
    return measure_radial_channels(ctx.labels, ctx.n, {c: ctx.images[c] for c in ctx.channels}, bins=r.bins,
                                   scaled=r.scaled, max_radius=r.max_radius, geometry=geometry)


from hpc_profiler.features.registry import Family  # noqa: E402  (the entry closes the module)

FAMILY = Family(name="RadialDistribution", names=_radial_names, measure=_radial_measure, per_channel=True)

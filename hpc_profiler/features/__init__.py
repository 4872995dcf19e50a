"""Single-cell features of one site: the feature families and their assembler.

Each family is a module of pure array functions (CPU or GPU through
:mod:`hpc_profiler.backend`) reproducing one CellProfiler 4 measurement module:

==================  ====================================  ==================================
family              CellProfiler module                   module / function
==================  ====================================  ==================================
AreaShape           MeasureObjectSizeShape                ``shape.measure_areashape``
Intensity           MeasureObjectIntensity                ``intensity.measure_intensity``
RadialDistribution  MeasureObjectIntensityDistribution    ``radial.measure_radial_distribution``
Texture             MeasureTexture                        ``texture.measure_texture``
Granularity         MeasureGranularity                    ``granularity.measure_granularity``
Correlation         MeasureColocalization                 ``correlation.measure_correlation``
Neighbors           MeasureObjectNeighbors                ``neighbors.measure_neighbors``
==================  ====================================  ==================================

Each family module ends with its :class:`registry.Family` entry (column names,
per-object measure function, whether per channel); :data:`FAMILIES` collects
them and the assembler loops over that registry for the names and the
per-object measurements. The per-site preparations shared by the object sets
(Texture's gray levels and image texture, Granularity of every object set at
once, Correlation's image ranks, AreaShape's host part on the GPU) stay in
:func:`measure_site`.

:func:`measure_site` runs the families selected in
:class:`hpc_profiler.config.FeaturesConfig` on the objects Nuclei, Cells and
Cytoplasm of a site (label images sharing the numbers 1..N) and returns one
:class:`hpc_profiler.sitefile.ObjectTable` per object, with CellProfiler's
column names prefixed by the compartment as pycytominer writes them
(``Cells_Intensity_MeanIntensity_DNA``), plus the image-level measurements
(``Image_Count_Cells``, ``Image_Texture_*``, ``Image_Granularity_*``) and the
seconds spent per family.

:func:`feature_names` gives the same column lists without computing anything:
a site with zero cells still yields tables with every column and no row.

The CPJUMP1 choices made here (see ``docs/feature_differences.md``):

* Neighbors: Cells within ``neighbors.cells_distance`` (5) px and adjacent,
  Nuclei within ``neighbors.nuclei_distance`` (1) px, none for Cytoplasm.
* ``Location_Center_X/Y`` (written by CellProfiler's Identify modules) are the
  object centroids (from ``shape.measure_areashape``, or
  ``_objects.centroids`` when AreaShape is not selected); the ``*_Z`` location columns of 2-D images,
  ``Number_Object_Number``/``ObjectNumber`` (the ``object_number`` array),
  ``Parent_*`` (the ``parents`` arrays) and ``Children_*_Count`` (always 1
  with shared numbering) are not feature columns.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from ..backend import backend_of
from ..config import FEATURE_FAMILIES, OBJECTS, FeaturesConfig
from ..sitefile import ObjectTable
from . import correlation, granularity, intensity, neighbors, radial, shape, texture
from .neighbors import neighbor_distances
from .registry import Family, ObjectContext
from .shape import AREASHAPE_FEATURES

__all__ = [
    "SiteFeatures",
    "measure_site",
    "feature_names",
    "image_feature_names",
    "family_feature_names",
    "family_of",
    "neighbor_distances",
    "AREASHAPE_FEATURES",
    "FAMILIES",
    "Family",
]

#: The registry: one :class:`registry.Family` per family, from the end of its module, in
#: :data:`hpc_profiler.config.FEATURE_FAMILIES` order.
_ENTRIES = {m.FAMILY.name: m.FAMILY for m in (shape, intensity, radial, texture, granularity, correlation, neighbors)}
FAMILIES: dict[str, Family] = {f: _ENTRIES[f] for f in FEATURE_FAMILIES}
#: Columns the assembler computes itself (CellProfiler's Identify modules write them).
LOCATION_CENTER = ("Location_Center_X", "Location_Center_Y")


@dataclass
class SiteFeatures:
    """The features of one site.

    Attributes
    ----------
    objects : dict[str, ObjectTable]
        Per object (Nuclei, Cells, Cytoplasm): prefixed column names, float32
        values on the host, object numbers 1..N and parent links.
    image : dict[str, float]
        Image-level measurements, ``Image_`` prefixed.
    seconds : dict[str, float]
        Wall seconds per family (device synchronised before each reading).
    cpu_seconds : dict[str, float]
        CPU seconds of this process per family (``time.process_time``; all
        threads, so limit BLAS/OpenMP threads to read one core's time).
    """

    objects: dict[str, ObjectTable]
    image: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------- names
def _family(family: str) -> Family:
    if family not in FAMILIES:
        raise ValueError(f"unknown feature family {family!r}; known: {FEATURE_FAMILIES}")
    return FAMILIES[family]


def family_feature_names(family: str, obj: str, channels: Sequence[str], params: FeaturesConfig) -> list[str]:
    """Column names (without the object prefix) of one family for one object."""
    fam = _family(family)
    if len(channels) < fam.min_channels:
        return []
    return fam.names(obj, channels, params)


def family_of(name: str) -> str:
    """Family of an unprefixed column name (``Location_Center_X`` -> ``Location``)."""
    head = name.split("_", 1)[0]
    if head == "Location":
        return "Location" if name in LOCATION_CENTER else "Intensity"
    return head


def feature_names(channels: Sequence[str], params: FeaturesConfig) -> dict[str, list[str]]:
    """Exact column lists of :func:`measure_site`, per object, without computing.

    Returns
    -------
    dict[str, list[str]]
        ``{object: ["Cells_AreaShape_Area", ...]}`` for each of
        ``params.objects``, families in :data:`hpc_profiler.config.FEATURE_FAMILIES`
        order (``Location_Center_X/Y`` first).
    """
    out = {}
    for obj in params.objects:
        names = list(LOCATION_CENTER)
        for fam in FEATURE_FAMILIES:
            if fam in params.families:
                names += family_feature_names(fam, obj, channels, params)
        out[obj] = [f"{obj}_{n}" for n in names]
    return out


def image_feature_names(channels: Sequence[str], params: FeaturesConfig) -> list[str]:
    """Image-level columns of :func:`measure_site` (``Image_`` prefixed)."""
    names = [f"Image_Count_{o}" for o in params.objects]
    for fam in FAMILIES.values():
        if fam.name in params.families and fam.image_names is not None and len(channels) >= fam.min_channels:
            names += [f"Image_{n}" for n in fam.image_names(channels, params)]
    return names


# ----------------------------------------------------------------- compute
class _Timer:
    """Accumulate synchronised wall seconds and process CPU seconds per family."""

    def __init__(self, bk):
        self.bk = bk
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    def __call__(self, family: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                timer.bk.synchronize()
                # a counting backend (hpc_profiler._audit) attributes its counts to the family
                counter = getattr(timer.bk, "counter", None)
                self.section = counter.section(family) if counter is not None else None
                if self.section is not None:
                    self.section.__enter__()
                self.t0 = time.perf_counter()
                self.c0 = time.process_time()

            def __exit__(self, *exc):
                if self.section is not None:
                    self.section.__exit__(*exc)
                timer.bk.synchronize()
                timer.seconds[family] = timer.seconds.get(family, 0.0) + time.perf_counter() - self.t0
                timer.cpu_seconds[family] = timer.cpu_seconds.get(family, 0.0) + time.process_time() - self.c0
                return False

        return _Ctx()


def _object_features(obj, lab, n, images, channels, params, timer, image_ranks=None, texture_levels=None,
                     shape_host=None, unfiltered=None, unfiltered_max=None) -> dict:
    """Unprefixed columns of one object from every selected family measured per object.

    ``image_ranks`` (channel -> dense ranks of the image's pixels, see
    ``correlation.image_dense_ranks``) and ``texture_levels``
    (``texture.texture_levels``) are shared by the object sets of a site;
    ``shape_host`` (device path) is this object's ``shape.host_areashape`` entry.
    ``unfiltered``: the object set's label image before the identification's
    filters (``Segmentation.unfiltered``) or None, ``unfiltered_max`` its largest
    label when already read. Each family runs under its
    own timer; ``Location_Center_X/Y`` come from AreaShape when it is selected.
    """
    from ._objects import centroids, object_pixels

    op = object_pixels(lab, n)
    ctx = ObjectContext(obj=obj, labels=lab, n=n, images=images, channels=channels, params=params, objects=op,
                        image_ranks=image_ranks, texture_levels=texture_levels, shape_host=shape_host,
                        unfiltered=unfiltered, unfiltered_max=unfiltered_max)
    out = {}
    if "AreaShape" not in params.families:
        cy, cx = centroids(op)
        out["Location_Center_X"], out["Location_Center_Y"] = cx, cy
    for fam in FAMILIES.values():
        if fam.name in params.families and fam.measure is not None and len(channels) >= fam.min_channels:
            with timer(fam.name):
                out.update(fam.measure(ctx))
    return out


#: Columns CellProfiler writes as 0 for an object without pixels: MeasureObjectIntensity
#: starts from zeros and fills the objects it finds; MeasureObjectIntensityDistribution's
#: RadialCV is set to 0 where no wedge has pixels. AreaShape (filled with NaN for missing
#: labels), FracAtD / MeanFrac (0 / 0), Granularity and Correlation (``scipy.ndimage.mean``
#: of nothing), Location_Center (``centers_of_labels``) are NaN there as ours.
_EMPTY_ZERO_PREFIXES = ("Intensity_", "Location_CenterMassIntensity_", "Location_MaxIntensity_",
                        "RadialDistribution_RadialCV_")


def empty_objects_as_cellprofiler(lab, n: int, cols: dict) -> dict:
    """``cols`` with the values of objects without pixels set as CellProfiler writes them.

    ``features.empty_objects: cellprofiler``: 0 for the columns of
    ``_EMPTY_ZERO_PREFIXES``, NaN for ``AreaShape_*`` (CellProfiler fills
    missing objects with NaN, where we write an area of 0), the rest unchanged
    (already NaN as CellProfiler's, or Texture, which ``texture.undefined_as_nan``
    governs).
    """
    xp = backend_of(lab).xp
    empty = xp.bincount(xp.ravel(lab), minlength=n + 1)[1 : n + 1] == 0
    out = {}
    for k, v in cols.items():
        if k.startswith(_EMPTY_ZERO_PREFIXES):
            v = xp.where(empty, 0.0, v)
        elif k.startswith("AreaShape_"):
            v = xp.where(empty, xp.nan, v)
        out[k] = v
    return out


def _granularity(images, labels, n, channels, params, timer):
    """Per-object and image-level granularity of every channel and object set.

    :func:`granularity.measure_granularity_channels` batches the channels'
    reconstructions on the GPU (one stack per scale) and goes channel by
    channel on the CPU.
    """
    mod = granularity
    g = params.granularity
    with timer("Granularity"):
        # the per-object upsampling weights depend on the labels only: once per object set
        samplers = {o: mod.object_sampler(labels[o], n, g.subsample_size) for o in labels}
        per_object, image = mod.measure_granularity_channels(
            {c: images[c] for c in channels}, labels, {o: n for o in labels},
            spectrum_length=g.spectrum_length, subsample_size=g.subsample_size,
            image_sample_size=g.image_sample_size, element_size=g.element_size,
            samplers=samplers,
        )
    return per_object, image


def _device_table(bk, obj: str, cols: dict, expected: Sequence[str], n: int):
    """``(n, len(expected))`` float64 device stack of the columns (a column of the wrong length
    is named in a ValueError); :func:`_host_site` copies it to the host."""
    xp = bk.xp
    parts = []
    for k in expected:
        v = xp.asarray(cols[k], dtype=xp.float64).reshape(-1)
        if v.shape[0] != n:
            raise ValueError(f"measure_site: {obj} column {k}: expected {n} values, got {v.shape[0]}")
        parts.append(v)
    return xp.stack(parts, axis=1) if parts else xp.zeros((n, 0), dtype=xp.float64)


def _host_site(bk, tables: dict, values: dict) -> tuple[dict, dict[str, float]]:
    """Host float32 tables ``{object: (n, k)}`` and ``{name: float}`` scalars with ONE device->host copy.

    ``tables``: device tables of :func:`_device_table`; ``values``: device scalars or
    Python numbers. Everything on the device is raveled into one float64 vector, copied
    once and split on the host (float32 tables, as the values were computed in float64).
    """
    xp = bk.xp
    names = list(values)
    dev = [k for k in names if not isinstance(values[k], (int, float))]
    scalars = {k: float(values[k]) for k in names if k not in dev}
    parts = [t.reshape(-1) for t in tables.values() if t.size]
    if dev:
        parts.append(xp.stack([xp.asarray(values[k], dtype=xp.float64).reshape(()) for k in dev]))
    host = np.asarray(bk.to_numpy(xp.concatenate(parts)), dtype=np.float64) if parts else np.zeros(0)
    out, at = {}, 0
    for o, t in tables.items():
        size = int(t.shape[0]) * int(t.shape[1])
        out[o] = host[at:at + size].reshape(t.shape).astype(np.float32)
        at += size
    scalars.update({k: float(v) for k, v in zip(dev, host[at:].tolist())})
    return out, {k: scalars[k] for k in names}


def measure_site(
    images: Mapping[str, object],
    labels: Mapping[str, object],
    params: FeaturesConfig,
    channels: Sequence[str],
    *,
    n_objects: Optional[int] = None,
    unfiltered: Optional[Mapping[str, object]] = None,
) -> SiteFeatures:
    """All selected feature families for the objects of one site.

    Parameters
    ----------
    images : mapping channel -> (H, W) float array in [0, 1]
        Illumination-corrected images (NumPy or CuPy: the backend follows them).
    labels : mapping object -> (H, W) int array
        Label images of ``params.objects`` sharing the numbers 1..N (a cytoplasm
        may be empty; its features are then NaN).
    params : FeaturesConfig
        Families, objects and the families' parameters.
    channels : sequence of str
        Channels measured, in the configured order.
    n_objects : int, optional
        N; defaults to the largest label over the label images.
    unfiltered : mapping object -> (H, W) int array, optional
        ``Segmentation.unfiltered``: the objects before the identification's
        final filters (CellProfiler's ``small_removed_segmented``). With
        ``params.neighbors.count_discarded`` the Neighbors family counts the
        discarded ones as neighbours, as CellProfiler's "Consider objects
        discarded for touching image border?" = Yes.

    Returns
    -------
    SiteFeatures
        Tables whose columns equal :func:`feature_names` (ValueError naming the
        object and the columns otherwise).
    """
    missing = [o for o in params.objects if o not in labels]
    if missing:
        raise ValueError(f"measure_site: no label image for object(s) {missing}; got {sorted(labels)}")
    missing = [c for c in channels if c not in images]
    if missing:
        raise ValueError(f"measure_site: no image for channel(s) {missing}; got {sorted(images)}")
    unknown = [o for o in params.objects if o not in OBJECTS]
    if unknown:
        raise ValueError(f"measure_site: unknown object(s) {unknown}; known: {OBJECTS}")
    bk = backend_of(*[labels[o] for o in params.objects], *[images[c] for c in channels])
    xp = bk.xp
    labs = {o: xp.asarray(labels[o]).astype(xp.int32, copy=False) for o in params.objects}
    imgs = {c: xp.asarray(images[c], dtype=xp.float64) for c in channels}
    shapes = {tuple(a.shape) for a in (*labs.values(), *imgs.values())}
    if len(shapes) != 1:
        raise ValueError(f"measure_site: images and labels differ in shape: {sorted(shapes)}")
    unf_labs = {}
    if unfiltered is not None and "Neighbors" in params.families and params.neighbors.count_discarded:
        for o in params.objects:
            if unfiltered.get(o) is not None:
                unf_labs[o] = xp.asarray(unfiltered[o])
                if tuple(unf_labs[o].shape) != tuple(labs[o].shape):
                    raise ValueError(f"measure_site: unfiltered {o} labels have shape {tuple(unf_labs[o].shape)},"
                                     f" the labels {tuple(labs[o].shape)}")
    # one device->host copy for the largest label of all label images (and of the unfiltered ones)
    sized = [o for o in labs if labs[o].size] if n_objects is None else []
    unf_sized = [o for o in unf_labs if unf_labs[o].size]
    maxima = [labs[o].max().astype(xp.int64) for o in sized] + [unf_labs[o].max().astype(xp.int64) for o in unf_sized]
    host_max = [int(v) for v in bk.to_numpy(xp.stack(maxima))] if maxima else []
    if n_objects is None:
        n_objects = max(host_max[:len(sized)], default=0)
    unf_max = {o: 0 for o in unf_labs}
    unf_max.update(dict(zip(unf_sized, host_max[len(sized):])))
    n = int(n_objects)
    names = feature_names(channels, params)
    timer = _Timer(bk)

    # image-level values stay on the device until the one copy of _host_site
    image: dict = {f"Image_Count_{o}": float(n) for o in params.objects}
    texture_levels = None
    if "Texture" in params.families:
        mod = texture
        t = params.texture
        with timer("Texture"):  # the channels' gray levels, shared by the object sets and the image
            texture_levels = mod.texture_levels({c: imgs[c] for c in channels}, t.gray_levels)
            if t.image_texture:
                for k, v in mod.image_texture_channels({c: imgs[c] for c in channels}, scales=t.scales,
                                                       gray_levels=t.gray_levels, levels=texture_levels).items():
                    image[f"Image_{k}"] = v

    per_object = {o: {} for o in params.objects}
    if "Granularity" in params.families:
        gran_obj, gran_img = _granularity(imgs, labs, n, channels, params, timer)
        image.update({f"Image_{k}": v for k, v in gran_img.items()})
        for o in params.objects:
            per_object[o].update(gran_obj[o])

    image_ranks = None
    if "Correlation" in params.families and len(channels) > 1 and n > 0:
        with timer("Correlation"):  # one value sort per channel, shared by the object sets
            labelled = functools.reduce(lambda a, b: a | b, [labs[o] > 0 for o in params.objects])
            image_ranks = {c: correlation.image_dense_ranks(imgs[c], mask=labelled)
                           for c in channels}
    shape_host = {}
    if "AreaShape" in params.families and n > 0 and bk.xp is not np:
        with timer("AreaShape"):  # the hull/transform part on the host: one copy of all label images
            shape_host = shape.host_areashape({o: labs[o] for o in params.objects}, n)
    device_tables = {}
    for o in params.objects:
        cols = per_object[o]
        if n > 0:
            cols.update(_object_features(o, labs[o], n, imgs, channels, params, timer, image_ranks,
                                         texture_levels, shape_host=shape_host.get(o), unfiltered=unf_labs.get(o),
                                         unfiltered_max=unf_max.get(o)))
        if n > 0 and params.empty_objects == "cellprofiler":
            cols = empty_objects_as_cellprofiler(labs[o], n, cols)
        expected = [k[len(o) + 1:] for k in names[o]]
        if n > 0 and set(cols) != set(expected):
            extra = sorted(set(cols) - set(expected))
            lost = sorted(set(expected) - set(cols))
            raise ValueError(
                f"measure_site: {o} columns differ from feature_names: unexpected {extra[:5]}"
                f"{'...' if len(extra) > 5 else ''}, missing {lost[:5]}{'...' if len(lost) > 5 else ''}"
            )
        device_tables[o] = _device_table(bk, o, cols, expected, n) if n else xp.zeros((0, len(expected)))
    expected_image = image_feature_names(channels, params)
    if set(image) != set(expected_image):
        raise ValueError(
            f"measure_site: image columns differ from image_feature_names: "
            f"unexpected {sorted(set(image) - set(expected_image))[:5]}, "
            f"missing {sorted(set(expected_image) - set(image))[:5]}"
        )
    # every object's table and the image-level values: one device->host copy in all
    host, image = _host_site(bk, device_tables, {k: image[k] for k in expected_image})
    tables = {}
    numbers = np.arange(1, n + 1, dtype=np.int32)
    for o in params.objects:
        parents = {}
        if o == "Cells":
            parents = {"Nuclei": numbers.copy()}
        elif o == "Cytoplasm":
            parents = {"Nuclei": numbers.copy(), "Cells": numbers.copy()}
        tables[o] = ObjectTable(names=list(names[o]), values=host[o], object_number=numbers.copy(), parents=parents)
    return SiteFeatures(objects=tables, image=image, seconds=timer.seconds, cpu_seconds=timer.cpu_seconds)

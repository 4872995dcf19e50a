"""The feature-family registry: what the assembler needs to know of one family.

Each family module (``shape``, ``intensity``, ``radial``, ``texture``,
``granularity``, ``correlation``, ``neighbors``) ends with one
:class:`Family` entry named ``FAMILY``; :mod:`hpc_profiler.features` collects
them (:data:`hpc_profiler.features.FAMILIES`) and loops over them, in
:data:`hpc_profiler.config.FEATURE_FAMILIES` order, for the column names and
the per-object measurements. This module imports no family module (they import
it), so the registry adds no import circle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["Family", "ObjectContext"]


@dataclass(frozen=True)
class ObjectContext:
    """Everything a family's ``measure`` may use for one object set of a site.

    Attributes
    ----------
    obj : str
        Object name (Nuclei, Cells, Cytoplasm).
    labels : (H, W) int32 array
        The object set's label image (numbers 1..n).
    n : int
        Number of objects.
    images : mapping channel -> (H, W) float64 array
        The site's images (NumPy or CuPy).
    channels : sequence of str
        Channels measured, in the configured order.
    params : FeaturesConfig
        The features configuration.
    objects : ObjectPixels
        ``_objects.object_pixels(labels, n)``, shared by the families.
    image_ranks : mapping or None
        Correlation's per-channel dense ranks of the image's pixels, shared by the object sets.
    texture_levels : mapping or None
        ``texture.texture_levels`` of the channels, shared by the object sets and the image.
    shape_host : object or None
        This object's ``shape.host_areashape`` entry (device path) or None.
    unfiltered : (H, W) int array or None
        The object set before the identification's filters (``Segmentation.unfiltered``).
    unfiltered_max : int or None
        The largest label of ``unfiltered`` when :func:`measure_site` read it already
        (with the largest labels of the final sets, in one device->host copy).
    """

    obj: str
    labels: Any
    n: int
    images: Mapping[str, Any]
    channels: Sequence[str]
    params: Any
    objects: Any
    image_ranks: Optional[Mapping[str, Any]] = None
    texture_levels: Optional[Mapping[str, Any]] = None
    shape_host: Any = None
    unfiltered: Any = None
    unfiltered_max: Optional[int] = None


@dataclass(frozen=True)
class Family:
    """One feature family.

    Attributes
    ----------
    name : str
        CellProfiler's family name, the column prefix (``AreaShape``) and the timer's name.
    names : callable ``(obj, channels, params) -> list[str]``
        Unprefixed per-object column names, in table order.
    measure : callable ``(ObjectContext) -> dict`` or None
        Unprefixed per-object columns (``{name: (n,) array}``); None for a family
        the assembler measures for the whole site at once (Granularity).
    per_channel : bool
        Whether the columns are per channel (``..._<channel>``).
    min_channels : int
        Fewest channels the family measures (Correlation: 2); with fewer it has no column.
    image_names : callable ``(channels, params) -> list[str]`` or None
        Unprefixed image-level column names, or None for a family without any.
    """

    name: str
    names: Callable[[str, Sequence[str], Any], list]
    measure: Optional[Callable[[ObjectContext], dict]]
    per_channel: bool
    min_channels: int = 1
    image_names: Optional[Callable[[Sequence[str], Any], list]] = None

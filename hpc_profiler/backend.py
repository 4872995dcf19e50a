"""The one place where CPU or GPU is chosen.

Stage code never imports NumPy/SciPy/scikit-image or CuPy/cuCIM directly for
array work: it asks this module for a :class:`Backend` and uses its namespaces

========  ===========================  ==============================
field     CPU                          GPU
========  ===========================  ==============================
``xp``    ``numpy``                    ``cupy``
``ndi``   ``scipy.ndimage``            ``cupyx.scipy.ndimage``
``ski``   ``skimage``                  ``cucim.skimage``
========  ===========================  ==============================

so that one implementation of every algorithm runs on both devices (the idea of
cuCIM, which mirrors the scikit-image API on CuPy under the same names).

Two ways to get a backend:

* :func:`get_backend` from the configured ``device: auto|cpu|gpu``;
  ``auto`` picks the GPU when CuPy imports and sees at least one device.
* :func:`backend_of` from arrays already in hand, so a pure stage function
  called from a notebook with two NumPy arrays runs on the CPU and with two
  CuPy arrays on the GPU, without a configuration.
"""
from __future__ import annotations

import functools
import importlib
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEVICES = ("auto", "cpu", "gpu")


class BackendUnavailable(RuntimeError):
    """The GPU backend was asked for but CuPy, cuCIM or a device is missing."""


class _SkimageNamespace:
    """Lazy ``skimage``/``cucim.skimage`` namespace: ``ski.filters`` etc.

    Submodules are imported on first attribute access, so the CPU backend does
    not pay for importing every scikit-image submodule at start-up.
    """

    def __init__(self, root: str):
        self._root = root

    def __getattr__(self, name: str) -> types.ModuleType:
        if name.startswith("_"):
            raise AttributeError(name)
        mod = importlib.import_module(f"{self._root}.{name}")
        setattr(self, name, mod)
        return mod

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"<skimage namespace {self._root}>"


@dataclass(frozen=True)
class Backend:
    """Array namespaces for one device.

    Attributes
    ----------
    name : {"cpu", "gpu"}
    xp : module
        ``numpy`` or ``cupy``.
    ndi : module
        ``scipy.ndimage`` or ``cupyx.scipy.ndimage``.
    ski : namespace
        ``skimage`` or ``cucim.skimage`` (``ski.filters``, ``ski.measure``,
        ``ski.morphology``, ``ski.segmentation``, ``ski.feature``, ...).
    """

    name: str
    xp: Any
    ndi: Any
    ski: Any = field(repr=False)

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    def asarray(self, a, dtype=None):
        """Move ``a`` onto this backend's device (no copy when already there)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        """Return ``a`` as a NumPy array on the host (scalars stay scalars)."""
        return to_numpy(a)

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on the CPU); use before timing."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()


def to_numpy(a):
    """Host copy of a NumPy or CuPy array; other objects are returned as is."""
    owner = getattr(a, "__hpc_backend__", None)  # arrays of a counting backend (hpc_profiler._audit)
    if owner is not None:
        return owner.to_numpy(a)
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return a


@functools.lru_cache(maxsize=None)
def cpu_backend() -> Backend:
    import scipy.ndimage as ndi

    return Backend("cpu", np, ndi, _SkimageNamespace("skimage"))


@functools.lru_cache(maxsize=None)
def gpu_backend() -> Backend:
    """The CuPy/cuCIM backend; raises :class:`BackendUnavailable` with the reason."""
    try:
        import cupy
        import cupyx.scipy.ndimage as ndi
    except Exception as exc:  # ImportError, or CUDA libraries missing
        raise BackendUnavailable(
            f"device 'gpu' needs CuPy: {exc!s}. Install the extra "
            "'pip install hpc_profiler[gpu]' (CUDA 12) or '[gpu-cuda13]'."
        ) from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendUnavailable(f"device 'gpu': CuPy sees no CUDA device ({exc!s})") from exc
    if n < 1:
        raise BackendUnavailable("device 'gpu': CuPy sees no CUDA device")
    try:
        importlib.import_module("cucim.skimage")
    except Exception as exc:
        raise BackendUnavailable(
            f"device 'gpu' needs cuCIM (cucim-cu12 or cucim-cu13): {exc!s}"
        ) from exc
    return Backend("gpu", cupy, ndi, _SkimageNamespace("cucim.skimage"))


def gpu_available() -> bool:
    """True when the GPU backend can be built (CuPy + cuCIM + a device)."""
    try:
        gpu_backend()
    except BackendUnavailable:
        return False
    return True


def get_backend(device: str = "auto") -> Backend:
    """Backend for ``device`` in ``{"auto", "cpu", "gpu"}``.

    ``auto`` returns the GPU backend when it is available and the CPU backend
    otherwise; ``gpu`` raises :class:`BackendUnavailable` naming what is missing.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return cpu_backend()
    if device == "gpu":
        return gpu_backend()
    return gpu_backend() if gpu_available() else cpu_backend()


def backend_of(*arrays) -> Backend:
    """Backend that owns ``arrays``: GPU if any is a CuPy array, else CPU.

    Arrays that name their backend in ``__hpc_backend__`` (the counting
    proxies of :mod:`hpc_profiler._audit`) get that backend.
    """
    for a in arrays:
        owner = getattr(a, "__hpc_backend__", None)
        if owner is not None:
            return owner
        if type(a).__module__.startswith("cupy"):
            return gpu_backend()
    return cpu_backend()

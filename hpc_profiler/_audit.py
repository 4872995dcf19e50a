"""A GPU-free audit of device work: counts what the same code would do on a GPU.

The package's array code runs on NumPy or CuPy through the namespaces of
:class:`hpc_profiler.backend.Backend` (``xp``, ``ndi``, ``ski``). On a GPU two
things set the pace besides the arithmetic: the number of **kernel launches**
(~10 us each, whatever the array size) and the number of **device -> host
transfers** (each one a synchronisation of the stream). Both can be counted on
the CPU: :func:`audit_backend` returns a backend whose namespaces are thin
counting wrappers around NumPy/SciPy/scikit-image and whose arrays are
:class:`DeviceArray` proxies - NumPy arrays that behave like CuPy arrays with
respect to the host:

* every call of an ``xp``/``ndi``/``ski`` function, every ufunc (operators
  included), every array method that computes (``sum``, ``astype``,
  ``argsort``...), every advanced-index read or write counts as one
  **launch** (a view - basic slicing, ``reshape`` of a contiguous array - is
  free, as on CuPy). A scipy/scikit-image call counts as one launch although
  its cuCIM twin may launch several kernels: the counts are a lower bound for
  those calls;
* ``float()``, ``int()``, ``bool()``, ``operator.index()``, ``.item()``,
  ``.tolist()``, ``.get()``, ``Backend.to_numpy``, ``np.asarray(a)`` (CuPy
  refuses that implicit conversion), ``repr``, and Python iteration over an
  array (a host-driven loop) count as one **device -> host copy** each;
* the operations whose output size depends on the data - boolean-mask reads,
  ``nonzero``/``flatnonzero``/``argwhere``, ``unique``, ``compress``/
  ``extract``, ``bincount`` (CuPy reads ``max(x) + 1`` on the host to size its
  output), ``ndi.label``/``find_objects`` - count as one **implicit sync**
  each: CuPy copies a size to the host there, a round trip that is not a data
  copy but stalls the stream all the same;
* ``Backend.asarray`` / ``xp.asarray`` of host data counts a **host ->
  device** copy.

Counts are attributed to the innermost open :meth:`AuditCounter.section`
(``measure_site`` opens one per feature family through its timer; the
watershed's host round trip of :mod:`hpc_profiler.segmentation` is put in its
own ``watershed`` section, the one transfer the issue's budget exempts).

Results are the NumPy results: the proxies only count, so audited code must
return exactly what it returns on the CPU backend (``tests/test_audit.py``).

Used by ``scripts/bench_site.py --audit``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types
from dataclasses import dataclass, field
import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from .backend import Backend

__all__ = ["AuditCounter", "DeviceArray", "audit_backend", "counts_table", "Counts", "KINDS"]

#: Counted quantities, in the order printed.
KINDS = ("launches", "syncs", "d2h", "h2d")

#: ``xp`` functions whose output size depends on the data (CuPy syncs to size them).
SYNC_FUNCTIONS = frozenset({
    "nonzero", "flatnonzero", "argwhere", "unique", "compress", "extract", "bincount",
    "histogram", "trim_zeros", "setdiff1d", "intersect1d", "union1d",
})
#: ``ndi`` functions returning host values or data-sized outputs.
NDI_SYNC_FUNCTIONS = frozenset({"label", "find_objects"})
#: ``xp`` functions that only look at metadata (no kernel).
METADATA_FUNCTIONS = frozenset({
    "result_type", "dtype", "can_cast", "promote_types", "shape", "ndim", "size", "isscalar", "iinfo",
    "finfo", "broadcast_shapes", "errstate", "may_share_memory", "shares_memory", "get_printoptions",
    "set_printoptions", "seterr", "geterr", "issubdtype", "min_scalar_type", "mintypecode",
})
#: ``xp`` functions and array methods that return views when they can (free on a GPU).
VIEW_FUNCTIONS = frozenset({
    "reshape", "ravel", "transpose", "squeeze", "expand_dims", "swapaxes", "moveaxis", "atleast_1d",
    "atleast_2d", "atleast_3d", "broadcast_to", "broadcast_arrays", "view", "real", "imag", "diagonal",
    "asarray", "asanyarray", "ascontiguousarray",
})
#: Array methods that are host transfers.
HOST_METHODS = frozenset({"tolist", "item", "tobytes", "tofile", "dump", "dumps", "__reduce__", "__reduce_ex__"})
#: Array methods whose output size depends on the data.
SYNC_METHODS = frozenset({"nonzero", "compress"})


@dataclass
class Counts:
    """Launches, implicit syncs, device->host and host->device copies of one section."""

    launches: int = 0
    syncs: int = 0
    d2h: int = 0
    h2d: int = 0

    def add(self, other: "Counts") -> "Counts":
        return Counts(*(getattr(self, k) + getattr(other, k) for k in KINDS))


@dataclass
class AuditCounter:
    """Counts per section; :meth:`section` opens a (nested) section."""

    sections: dict = field(default_factory=dict)
    stack: list = field(default_factory=lambda: ["other"])
    depth: int = 0  # > 0 while inside a counted call (nested NumPy work is not counted again)
    #: with ``track`` on, ``where[(kind, "module.py:line")]`` counts the package lines responsible
    track: bool = False
    where: dict = field(default_factory=dict)

    def current(self) -> Counts:
        name = self.stack[-1]
        c = self.sections.get(name)
        if c is None:
            c = self.sections[name] = Counts()
        return c

    def count(self, kind: str, k: int = 1) -> None:
        c = self.current()
        setattr(c, kind, getattr(c, kind) + k)
        if self.track:
            key = (kind, _package_line())
            self.where[key] = self.where.get(key, 0) + k

    def top(self, kind: str, k: int = 10) -> list[tuple[str, int]]:
        """The ``k`` package lines with the most counts of ``kind`` (needs ``track``)."""
        rows = [(line, v) for (kd, line), v in self.where.items() if kd == kind]
        return sorted(rows, key=lambda r: -r[1])[:k]

    @contextlib.contextmanager
    def section(self, name: str):
        self.stack.append(name)
        self.current()
        try:
            yield self
        finally:
            self.stack.pop()

    def total(self, exclude=()) -> Counts:
        out = Counts()
        for name, c in self.sections.items():
            if name not in exclude:
                out = out.add(c)
        return out

    def reset(self) -> None:
        self.sections.clear()
        self.stack[:] = ["other"]
        self.depth = 0


# ------------------------------------------------------------------ wrapping
def _unwrap(x):
    """Plain NumPy objects inside ``x`` (proxies replaced by their arrays)."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x, backend):
    """Proxies for the NumPy arrays and scalars in ``x`` (CuPy returns 0-d arrays, not scalars)."""
    if isinstance(x, np.ndarray):
        return DeviceArray(x, backend)
    if isinstance(x, np.generic):
        return DeviceArray(np.asarray(x), backend)
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(_wrap(v, backend) for v in x)
    if isinstance(x, tuple):  # named tuple (e.g. a scipy result)
        return type(x)(*(_wrap(v, backend) for v in x))
    if isinstance(x, list):
        return [_wrap(v, backend) for v in x]
    return x


def _has_proxy(x) -> bool:
    if isinstance(x, DeviceArray):
        return True
    if isinstance(x, (tuple, list)):
        return any(_has_proxy(v) for v in x)
    return False


def _shares(result, args) -> bool:
    """True when ``result`` is a view of one of the array ``args`` (no kernel on a GPU)."""
    if not isinstance(result, np.ndarray):
        return False
    for a in args:
        if isinstance(a, np.ndarray) and np.may_share_memory(result, a):
            return True
    return False


def _call(backend, fn, args, kwargs, *, launch=True, sync=False, view_ok=False, base=None):
    """Call ``fn`` on unwrapped arguments, counting one launch (and a sync) at depth 0."""
    counter = backend.counter
    top = counter.depth == 0
    uargs, ukw = _unwrap(args), _unwrap(kwargs)
    counter.depth += 1
    try:
        result = fn(*uargs, **ukw)
    finally:
        counter.depth -= 1
    if top:
        if launch and not (view_ok and _shares(result, uargs if base is None else (base,))):
            counter.count("launches")
        if sync:
            counter.count("syncs")
    return _wrap(result, backend)


class DeviceArray(NDArrayOperatorsMixin):
    """A NumPy array standing in for a CuPy array: computes with NumPy, counts like a GPU.

    Host conversions (``float``, ``int``, ``bool``, ``index``, ``item``,
    ``tolist``, ``get``, ``np.asarray``, iteration, ``repr``) count a
    device->host copy; computations count launches (see the module docstring).
    """

    __slots__ = ("_a", "__hpc_backend__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, a: np.ndarray, backend: "AuditBackend"):
        object.__setattr__(self, "_a", a)
        object.__setattr__(self, "__hpc_backend__", backend)

    # -- metadata: free
    @property
    def shape(self):
        return self._a.shape

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size

    @property
    def nbytes(self):
        return self._a.nbytes

    @property
    def itemsize(self):
        return self._a.itemsize

    @property
    def strides(self):
        return self._a.strides

    @property
    def flags(self):
        return self._a.flags

    @property
    def T(self):
        return DeviceArray(self._a.T, self.__hpc_backend__)

    def __len__(self):
        return len(self._a)

    # -- host transfers
    def _d2h(self):
        if self.__hpc_backend__.counter.depth == 0:
            self.__hpc_backend__.counter.count("d2h")

    def __float__(self):
        self._d2h()
        return float(self._a)

    def __int__(self):
        self._d2h()
        return int(self._a)

    def __bool__(self):
        self._d2h()
        return bool(self._a)

    def __index__(self):
        self._d2h()
        return self._a.__index__()

    def __complex__(self):
        self._d2h()
        return complex(self._a)

    def __array__(self, dtype=None, copy=None):
        self._d2h()  # an implicit conversion: CuPy raises, a GPU would copy
        return self._a if dtype is None else self._a.astype(dtype, copy=False)

    def get(self):
        """Host copy (``cupy.ndarray.get``)."""
        self._d2h()
        return self._a.copy()

    def item(self, *args):
        self._d2h()
        return self._a.item(*args)

    def tolist(self):
        self._d2h()
        return self._a.tolist()

    def __iter__(self):
        self._d2h()  # a Python loop over a device array: driven from the host
        b = self.__hpc_backend__
        return iter([_wrap(v, b) for v in self._a])

    def __repr__(self):
        self._d2h()
        return f"DeviceArray({self._a!r})"

    __str__ = __repr__

    def __format__(self, spec):
        self._d2h()
        return format(self._a, spec)

    def __contains__(self, v):
        self._d2h()
        return _unwrap(v) in self._a

    # -- computations
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        result = _call(self.__hpc_backend__, getattr(ufunc, method), inputs, kwargs)
        if out is not None:  # in-place: hand back the proxies given as ``out``
            return out[0] if len(out) == 1 else out
        return result

    def __array_function__(self, func, types_, args, kwargs):
        name = func.__name__
        return _call(self.__hpc_backend__, func, args, kwargs, launch=name not in METADATA_FUNCTIONS,
                     sync=name in SYNC_FUNCTIONS, view_ok=name in VIEW_FUNCTIONS)

    def __getitem__(self, key):
        ukey = _unwrap(key)
        keys = ukey if isinstance(ukey, tuple) else (ukey,)
        advanced = any(isinstance(k, (np.ndarray, list)) for k in keys)
        boolean = any(isinstance(k, np.ndarray) and k.dtype == bool for k in keys)
        counter = self.__hpc_backend__.counter
        result = self._a[ukey]
        if counter.depth == 0:
            if advanced:
                counter.count("launches")
            if boolean:
                counter.count("syncs")
        return _wrap(result, self.__hpc_backend__)

    def __setitem__(self, key, value):
        counter = self.__hpc_backend__.counter
        self._a[_unwrap(key)] = _unwrap(value)
        if counter.depth == 0:
            counter.count("launches")

    def __getattr__(self, name):
        if name.startswith("__"):  # __array_interface__ etc. would let NumPy read the data uncounted
            raise AttributeError(name)
        attr = getattr(self._a, name)
        backend = self.__hpc_backend__
        if not callable(attr):
            return _wrap(attr, backend) if isinstance(attr, np.ndarray) else attr
        if name in HOST_METHODS:
            def host(*args, **kwargs):
                self._d2h()
                return attr(*_unwrap(args), **_unwrap(kwargs))
            return host

        def method(*args, **kwargs):
            if name == "astype" and (args[0] if args else kwargs.get("dtype")) is not None:
                dtype = np.dtype(args[0] if args else kwargs["dtype"])
                if dtype == self._a.dtype and not kwargs.get("copy", True):
                    return self
            result = _call(backend, attr, args, kwargs, sync=name in SYNC_METHODS,
                           view_ok=name in VIEW_FUNCTIONS, base=self._a)
            return result
        return method

    def __setattr__(self, name, value):
        raise AttributeError(f"DeviceArray attributes are read-only ({name})")


class _UfuncProxy:
    """A ufunc whose calls and methods (``reduce``, ``reduceat``, ``at``...) count launches."""

    def __init__(self, ufunc, backend):
        self._u = ufunc
        self._b = backend

    def __call__(self, *args, **kwargs):
        out = kwargs.get("out")
        result = _call(self._b, self._u, args, kwargs)
        return (out[0] if isinstance(out, tuple) and len(out) == 1 else out) if out is not None else result

    def __getattr__(self, name):
        attr = getattr(self._u, name)
        if not callable(attr):
            return attr
        return lambda *a, **k: _call(self._b, attr, a, k)


class _NamespaceProxy:
    """``xp`` (NumPy), ``ndi`` (scipy.ndimage) or a scikit-image module, counting its calls."""

    def __init__(self, module, backend, kind: str, root: str | None = None):
        self._m = module
        self._b = backend
        self._kind = kind  # "xp", "ndi", "ski"
        self._root = root

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            attr = getattr(self._m, name)
        except AttributeError:
            if self._kind != "ski":
                raise
            attr = importlib.import_module(f"{self._root}.{name}")
        if isinstance(attr, types.ModuleType):
            root = f"{self._root}.{name}" if self._root else attr.__name__
            proxy = _NamespaceProxy(attr, self._b, self._kind, root)
        elif isinstance(attr, np.ufunc):
            proxy = _UfuncProxy(attr, self._b)
        elif isinstance(attr, type) or not callable(attr):
            return attr  # dtypes, classes, constants
        else:
            proxy = self._function(name, attr)
        setattr(self, name, proxy)
        return proxy

    def _function(self, name, fn):
        b = self._b
        if self._kind == "xp" and name in ("asarray", "array", "asanyarray", "ascontiguousarray"):
            def to_device(a, *args, **kwargs):
                if not _has_proxy(a) and b.counter.depth == 0:
                    b.counter.count("h2d")  # host data onto the device
                    b.counter.count("launches")
                    return _wrap(fn(a, *_unwrap(args), **_unwrap(kwargs)), b)
                return _call(b, fn, (a,) + args, kwargs, view_ok=name != "array")
            return to_device
        launch = not (self._kind == "xp" and name in METADATA_FUNCTIONS)
        sync = name in (SYNC_FUNCTIONS if self._kind == "xp" else NDI_SYNC_FUNCTIONS if self._kind == "ndi" else ())
        view_ok = self._kind == "xp" and name in VIEW_FUNCTIONS

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            return _call(b, fn, args, kwargs, launch=launch, sync=sync, view_ok=view_ok)
        return counted

    def __repr__(self):  # pragma: no cover - cosmetic
        return f"<audited {self._kind} {getattr(self._m, '__name__', self._m)}>"


class AuditBackend(Backend):
    """The CPU backend with counting namespaces (:func:`audit_backend`)."""

    counter: AuditCounter

    @property
    def is_gpu(self) -> bool:
        """True: stage code takes its GPU branches (e.g. granularity's batched
        iterated reconstruction instead of the numba one), which is what the
        audit counts."""
        return True

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        if isinstance(a, DeviceArray):
            c = self.counter
            if c.depth == 0:
                section = "watershed" if _called_from_watershed() else None
                if section:
                    with c.section(section):
                        c.count("d2h")
                else:
                    c.count("d2h")
            return a._a
        return a

    def synchronize(self) -> None:
        return None

    def custom_kernel(self, twin, *arrays, **kwargs):
        """A fused device kernel (:mod:`hpc_profiler._device_kernels`): one launch, computed by
        its array-call ``twin(*arrays, np, scipy.ndimage, **kwargs)`` on the plain NumPy arrays
        (in place into the output argument, as the kernel)."""
        import scipy.ndimage

        c = self.counter
        if c.depth == 0:
            c.count("launches")
        c.depth += 1
        try:
            twin(*_unwrap(arrays), np, scipy.ndimage, **kwargs)
        finally:
            c.depth -= 1
        return arrays[-1]


def _package_line() -> str:
    """``module.py:line`` of the innermost hpc_profiler frame outside this module."""
    f = sys._getframe(2)
    while f is not None:
        mod = f.f_globals.get("__name__", "")
        if mod.startswith("hpc_profiler") and mod != __name__:
            return f"{mod.rsplit('.', 1)[-1]}.py:{f.f_lineno}"
        f = f.f_back
    return "?"


def _called_from_watershed() -> bool:
    """True when the caller of ``to_numpy`` is segmentation's host watershed."""
    f = sys._getframe(2)
    for _ in range(3):
        if f is None:
            return False
        if "watershed" in f.f_code.co_name and f.f_globals.get("__name__", "").endswith("segmentation"):
            return True
        f = f.f_back
    return False


def audit_backend(counter: AuditCounter | None = None) -> AuditBackend:
    """A backend computing with NumPy/SciPy/scikit-image while counting like a GPU.

    Arrays made by it (``bk.asarray``, ``bk.xp.*``) are :class:`DeviceArray`;
    :func:`hpc_profiler.backend.backend_of` and ``to_numpy`` recognise them, so
    package functions called with them run on this backend.
    """
    import scipy.ndimage

    counter = counter or AuditCounter()
    bk = AuditBackend.__new__(AuditBackend)
    object.__setattr__(bk, "name", "audit")
    object.__setattr__(bk, "counter", counter)
    object.__setattr__(bk, "xp", _NamespaceProxy(np, bk, "xp", "numpy"))
    object.__setattr__(bk, "ndi", _NamespaceProxy(scipy.ndimage, bk, "ndi", "scipy.ndimage"))
    object.__setattr__(bk, "ski", _NamespaceProxy(importlib.import_module("skimage"), bk, "ski", "skimage"))
    return bk


def counts_table(counter: AuditCounter, order=()) -> list[tuple[str, Counts]]:
    """``(section, counts)`` rows: ``order`` first, then the others alphabetically."""
    names = [n for n in order if n in counter.sections]
    names += sorted(n for n in counter.sections if n not in names)
    return [(n, counter.sections[n]) for n in names]


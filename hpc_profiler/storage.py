"""Reading screens where they lie: local paths, shared file systems, object storage.

All file access for inputs goes through :func:`read_bytes`, which uses fsspec
(``s3fs`` for ``s3://`` URLs; plain paths through fsspec's local file system),
never hand-written HTTP. Remote reads get bounded retries with exponential
backoff on transient errors; a missing object is not transient and fails at
once with :class:`MissingObjectError` naming the URL. An optional local cache
(fsspec ``filecache``) serves repeated reads, e.g. the same illumination files
for every site of a plate.

Options for a source (anonymous access for public buckets, the way
``--no-sign-request`` works; a custom endpoint for S3-compatible servers) are
registered once per process with :func:`configure`, so worker code can call
``read_bytes(url)`` without threading options through every stage.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class StorageError(OSError):
    """A read failed after its retries; the message names the URL."""


class MissingObjectError(StorageError, FileNotFoundError):
    """The file or object does not exist."""


@dataclass
class StorageOptions:
    anonymous: bool = False
    endpoint_url: Optional[str] = None
    retries: int = 4
    backoff_s: float = 0.25
    cache_dir: Optional[str] = None
    extra: dict = field(default_factory=dict)


_OPTIONS = StorageOptions()
_FS_CACHE: dict = {}
_LOCK = threading.Lock()


def configure(options: Optional[StorageOptions] = None, **kwargs) -> StorageOptions:
    """Set the process-wide storage options (returns them)."""
    global _OPTIONS
    with _LOCK:
        _OPTIONS = options if options is not None else StorageOptions(**kwargs)
        _FS_CACHE.clear()
    return _OPTIONS


def options() -> StorageOptions:
    return _OPTIONS


def is_url(path) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _protocol(url: str) -> str:
    return str(url).split("://", 1)[0] if "://" in str(url) else "file"


def filesystem(url: str):
    """The fsspec file system for ``url`` under the configured options."""
    import fsspec

    proto = _protocol(url)
    key = (proto, _OPTIONS.anonymous, _OPTIONS.endpoint_url, _OPTIONS.cache_dir)
    with _LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            kw = dict(_OPTIONS.extra)
            if proto in ("s3", "s3a"):
                kw.setdefault("anon", _OPTIONS.anonymous)
                if _OPTIONS.endpoint_url:
                    kw.setdefault("client_kwargs", {})["endpoint_url"] = _OPTIONS.endpoint_url
                # botocore retries connection errors itself (legacy mode: up to 5
                # attempts); one attempt per call here, ours is the bounded loop
                cfg_kw = dict(kw.get("config_kwargs") or {})
                cfg_kw.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
                kw["config_kwargs"] = cfg_kw
                kw.setdefault("skip_instance_cache", True)
            if _OPTIONS.cache_dir and proto != "file":
                fs = fsspec.filesystem(
                    "filecache", target_protocol=proto, target_options=kw, cache_storage=_OPTIONS.cache_dir
                )
                target = fs.fs
            else:
                fs = fsspec.filesystem(proto, **kw)
                target = fs
            if proto in ("s3", "s3a"):
                # s3fs's own retry loop (class attribute ``retries``, 5 by default,
                # not a constructor argument) is switched off the same way
                target.retries = 1
            _FS_CACHE[key] = fs
    return fs


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    text = f"{type(exc).__name__} {exc}"
    return "NoSuchKey" in text or "NoSuchBucket" in text or "404" in text and "Not Found" in text


def read_bytes(url, *, retries: Optional[int] = None, backoff_s: Optional[float] = None) -> bytes:
    """All bytes of a local path or URL, with bounded retries for transient errors.

    Raises :class:`MissingObjectError` at once for a missing file/object and
    :class:`StorageError` after ``retries`` failed attempts; both name ``url``.
    """
    url = str(url)
    retries = _OPTIONS.retries if retries is None else retries
    backoff_s = _OPTIONS.backoff_s if backoff_s is None else backoff_s
    last: Optional[BaseException] = None
    for attempt in range(max(1, retries)):
        try:
            fs = filesystem(url)
            with fs.open(url, "rb") as fh:
                return fh.read()
        except Exception as exc:  # network, server errors, permission, ...
            if _is_missing(exc):
                raise MissingObjectError(f"{url}: no such file or object") from exc
            last = exc
            if attempt + 1 < max(1, retries):
                time.sleep(backoff_s * (2**attempt))
    raise StorageError(f"{url}: read failed after {max(1, retries)} attempts: {type(last).__name__}: {last}") from last


def exists(url) -> bool:
    try:
        return bool(filesystem(str(url)).exists(str(url)))
    except Exception:
        return False


def write_bytes(url, data: bytes) -> None:
    """Write ``data`` to a local path (atomically) or a URL (one PUT)."""
    url = str(url)
    if not is_url(url):
        from ._atomic import write_bytes_atomic

        write_bytes_atomic(url.removeprefix("file://"), data)
        return
    fs = filesystem(url)
    with fs.open(url, "wb") as fh:
        fh.write(data)


def prefetched(items: Iterable[T], load: Callable[[T], R], depth: int = 1) -> Iterator[tuple[T, Future]]:
    """Yield ``(item, future)`` with ``load(item)`` started ``depth`` items ahead.

    While the caller computes on item *k*, the loads of items *k+1..k+depth*
    run in a background thread, so a GPU does not wait on the network.
    ``future.result()`` re-raises the load's exception for that item alone.
    ``depth=0`` loads synchronously (prefetch off).
    """
    items = list(items)
    if depth <= 0:
        for it in items:
            f: Future = Future()
            try:
                f.set_result(load(it))
            except BaseException as exc:  # delivered to the caller via the future
                f.set_exception(exc)
            yield it, f
        return
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="prefetch") as pool:
        futures: list[Future] = []
        for i, it in enumerate(items):
            while len(futures) <= min(i + depth, len(items) - 1):
                futures.append(pool.submit(load, items[len(futures)]))
            yield it, futures[i]
            futures[i] = None  # type: ignore[call-overload]  # free the payload

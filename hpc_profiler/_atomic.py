"""Atomic file replacement: the one way this package writes a result file.

A writer gets a temporary path in the destination folder
(``.<name>.<random>.tmp<suffix>``), writes there with whatever library it
uses (h5py, pyarrow, json), and on success the file is flushed to disk and
renamed over the destination with :func:`os.replace`, which is atomic on POSIX
file systems: a reader sees the old file or the new one, never half of one.
On any error, or a ``KeyboardInterrupt``, the temporary file is removed.
A writer killed outright leaves its temporary behind;
:func:`hpc_profiler.workflow.tasks.remove_stale_temps` removes such files before a site is
written again.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path


def temp_path(path, suffix: str = "") -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path; on success fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def write_bytes_atomic(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)

"""The fused device kernels of hpc_profiler._device_kernels against their twins and by hand."""
import numpy as np
import pytest

from hpc_profiler._audit import AuditCounter, audit_backend
from hpc_profiler._device_kernels import geodesic_dilation_step, geodesic_dilation_step_twin
from hpc_profiler.backend import cpu_backend, gpu_available


def _by_hand(cur, msk, full):
    """min(max over the in-image cross / square neighbours, mask), by shifted views of an edge-padded copy."""
    b, h, w = cur.shape
    p = np.pad(cur, ((0, 0), (1, 1), (1, 1)), mode="edge")
    offs = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    if full:
        offs += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    v = np.max([p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in offs], axis=0)
    return np.minimum(v, msk)


def _case(seed, shape=(3, 17, 23), dtype=np.float32):
    rng = np.random.default_rng(seed)
    msk = rng.integers(0, 6, shape).astype(dtype)  # plateaus and ties
    cur = np.minimum(msk, rng.integers(0, 6, shape).astype(dtype))
    return cur, msk


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_twin_equals_the_step_by_hand(full, dtype):
    bk = cpu_backend()
    for seed in range(4):
        cur, msk = _case(seed, dtype=dtype)
        out = np.empty_like(cur)
        geodesic_dilation_step(cur, msk, out, bk, full)
        np.testing.assert_array_equal(out, _by_hand(cur, msk, full))
    # one-pixel-wide and one-row images (the borders on both sides at once)
    for shape in [(2, 1, 9), (2, 9, 1), (1, 1, 1)]:
        cur, msk = _case(7, shape, dtype)
        out = np.empty_like(cur)
        geodesic_dilation_step_twin(cur, msk, out, np, bk.ndi, full)
        np.testing.assert_array_equal(out, _by_hand(cur, msk, full))


def test_audit_counts_one_launch_per_step():
    counter = AuditCounter()
    bk = audit_backend(counter)
    cur, msk = _case(1)
    c, m, o = bk.asarray(cur), bk.asarray(msk), bk.asarray(np.empty_like(cur))
    before = counter.total().launches
    geodesic_dilation_step(c, m, o, bk)
    assert counter.total().launches - before == 1
    np.testing.assert_array_equal(bk.to_numpy(o), _by_hand(cur, msk, False))


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_kernel_equals_twin(full, dtype):
    import cupy

    for seed, shape in [(0, (3, 17, 23)), (1, (80, 270, 270)), (2, (2, 1, 9)), (3, (2, 9, 1))]:
        cur, msk = _case(seed, shape, dtype)
        out = cupy.empty(cur.shape, dtype)
        geodesic_dilation_step(cupy.asarray(cur), cupy.asarray(msk), out, None, full)
        np.testing.assert_array_equal(out.get(), _by_hand(cur, msk, full))

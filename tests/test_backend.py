"""Backend switch: one module picks NumPy/SciPy/skimage or CuPy/cupyx/cuCIM."""
import numpy as np
import pytest
import scipy.ndimage
import skimage.filters

from hpc_profiler import backend as B


def test_cpu_backend_namespaces():
    bk = B.get_backend("cpu")
    assert bk.name == "cpu" and not bk.is_gpu
    assert bk.xp is np and bk.ndi is scipy.ndimage
    assert bk.ski.filters is skimage.filters
    a = np.arange(6.0).reshape(2, 3)
    assert bk.asarray(a) is a or np.shares_memory(bk.asarray(a), a)
    assert bk.to_numpy(a) is a


def test_auto_falls_back_to_cpu_without_gpu():
    bk = B.get_backend("auto")
    assert bk.name == ("gpu" if B.gpu_available() else "cpu")


def test_backend_of_numpy_arrays_is_cpu():
    assert B.backend_of(np.zeros(3), np.ones(2)).name == "cpu"


def test_unknown_device_rejected():
    with pytest.raises(ValueError, match="device must be one of"):
        B.get_backend("tpu")


def test_stage_code_runs_on_cpu_backend_like_scipy():
    # the same call through the backend equals the library call
    rng = np.random.default_rng(0)
    img = rng.random((64, 64))
    bk = B.get_backend("cpu")
    np.testing.assert_array_equal(bk.ndi.gaussian_filter(img, 2), scipy.ndimage.gaussian_filter(img, 2))
    assert bk.ski.filters.threshold_li(img) == skimage.filters.threshold_li(img)


@pytest.mark.skipif(B.gpu_available(), reason="only meaningful where no GPU is present")
def test_gpu_request_without_gpu_says_why():
    with pytest.raises(B.BackendUnavailable) as e:
        B.get_backend("gpu")
    assert "gpu" in str(e.value).lower()


@pytest.mark.gpu
@pytest.mark.skipif(not B.gpu_available(), reason="no GPU backend: CuPy, cuCIM or a CUDA device is missing")
def test_gpu_backend_matches_cpu():
    gpu, cpu = B.get_backend("gpu"), B.get_backend("cpu")
    import cupy

    assert gpu.xp is cupy
    rng = np.random.default_rng(1)
    img = rng.random((128, 128)).astype(np.float32)
    g = gpu.to_numpy(gpu.ndi.gaussian_filter(gpu.asarray(img), 3))
    c = cpu.ndi.gaussian_filter(img, 3)
    np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)
    tg = float(gpu.ski.filters.threshold_li(gpu.asarray(img)))
    tc = float(cpu.ski.filters.threshold_li(img))
    assert abs(tg - tc) < 1e-5
    assert B.backend_of(gpu.asarray(img)).name == "gpu"

#!/usr/bin/env python3
"""Regenerate ``tests/data/cellprofiler/watershed_skimage024.npz``: scikit-image 0.24's watershed
(the version CellProfiler 5 runs with) on small images with many tied values, the reference of
``hpc_profiler.watershed`` in ``tests/test_cellprofiler_reference.py``.

Run it with the Python of the CellProfiler venv (``../shared/cellprofiler/install_cellprofiler.sh``
installs scikit-image 0.24 there):

    /work/cpvenv/bin/python scripts/make_watershed_reference.py tests/data/cellprofiler/watershed_skimage024.npz
"""
import sys

import numpy as np
import scipy.ndimage as ndi
import skimage
from skimage.segmentation import watershed

assert skimage.__version__.startswith("0.24"), f"needs scikit-image 0.24, found {skimage.__version__}"
rng = np.random.RandomState(7)
cases = {}
for k, (size, levels, nm) in enumerate([(48, 4, 6), (64, 8, 10), (64, 1000, 12), (40, 2, 8)]):  # levels: few = many ties; odd cases use negative markers
    img = np.round(ndi.gaussian_filter(rng.rand(size, size), 2) * 40) % levels / levels
    img = img.astype(np.float64)
    markers = np.zeros((size, size), np.int32)
    for m in range(1, nm + 1):
        y, x = rng.randint(2, size - 4, 2)
        markers[y:y + rng.randint(1, 4), x:x + rng.randint(1, 4)] = m if k % 2 == 0 else -m
    mask = ndi.gaussian_filter(rng.rand(size, size), 3) > 0.47
    mask |= markers != 0
    out = watershed(img, markers, connectivity=np.ones((3, 3), bool), mask=mask)
    cases[f"image{k}"], cases[f"markers{k}"], cases[f"mask{k}"] = img, markers, mask
    cases[f"labels{k}"] = out.astype(np.int32)
np.savez_compressed(sys.argv[1], skimage_version=skimage.__version__, **cases)
print(f"wrote {sys.argv[1]}")

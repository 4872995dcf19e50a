"""Speed of Texture + Granularity against cp_measure 0.3.0 on one synthetic site.

Usage: ``python scripts/bench_texture_granularity.py [--size 1080] [--cells 200]
[--channels 5] [--ref-channels 1]``

Builds a deterministic CPJUMP1-like site (Nuclei, Cells, Cytoplasm label images,
``--channels`` textured channels), times hpc_profiler's
``measure_texture`` (scales 3, 5, 10; 256 levels) and ``measure_granularity``
(16 / 0.5 / 0.5 / 10) for every channel and object set, and cp_measure's
``get_texture`` / ``get_granularity`` with the same parameters for
``--ref-channels`` channels (cp_measure is linear in the channels; its time is
scaled to all channels and the scaling is printed). Prints seconds and ratios;
it asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.ndimage as ndi
from skimage.segmentation import expand_labels

from hpc_profiler.features.granularity import measure_granularity, object_sampler
from hpc_profiler.features.texture import measure_texture, texture_geometry

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito", "Extra1", "Extra2"]


def synthetic_site(size: int, n_cells: int, n_channels: int, seed: int = 0):
    """Nuclei/Cells/Cytoplasm labels (1..N shared) and textured float channels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    nuclei = np.zeros((size, size), np.int32)
    k = 0
    for _ in range(n_cells * 20):
        cy, cx = rng.uniform(20, size - 20, 2)
        a, b = rng.uniform(7, 14, 2)
        th = rng.uniform(0, np.pi)
        y0, y1, x0, x1 = int(cy - 16), int(cy + 17), int(cx - 16), int(cx + 17)
        y, x = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (x * np.cos(th) + y * np.sin(th)) / a
        v = (-x * np.sin(th) + y * np.cos(th)) / b
        m = (u * u + v * v) <= 1
        win = nuclei[y0:y1, x0:x1]
        if (win[m] > 0).any() or ndi.binary_dilation(m, iterations=6)[win > 0].any():
            continue
        k += 1
        win[m] = k
        if k == n_cells:
            break
    cells = expand_labels(nuclei, distance=22).astype(np.int32)
    cyto = np.where(nuclei > 0, 0, cells).astype(np.int32)
    images = {}
    for c in range(n_channels):
        noise = ndi.gaussian_filter(rng.random((size, size)), 1.0 + c % 3)
        noise = (noise - noise.min()) / (noise.max() - noise.min())
        base = np.where(nuclei > 0, 0.25, 0.0) if c == 0 else np.where(cells > 0, 0.12, 0.0)
        img = 0.01 + base * (0.5 + noise) + 0.02 * rng.random((size, size))
        images[CHANNELS[c]] = np.clip(img, 0, 1)
    return {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cyto}, k, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--channels", type=int, default=5)
    ap.add_argument("--ref-channels", type=int, default=1)
    ap.add_argument("--numba", action="store_true", help="also time cp_measure's numba texture backend")
    args = ap.parse_args()
    labels, n, images = synthetic_site(args.size, args.cells, args.channels)
    print(f"site {args.size}x{args.size}, {n} objects per set, {len(images)} channels, 3 object sets")
    scales = (3, 5, 10)

    t0 = time.perf_counter()
    geoms = {o: texture_geometry(lab, scales) for o, lab in labels.items()}
    for ch, img in images.items():
        for o, lab in labels.items():
            measure_texture(lab, n, img, ch, scales=scales, gray_levels=256, geometry=geoms[o])
    t_tex = time.perf_counter() - t0

    t0 = time.perf_counter()
    samplers = {o: object_sampler(lab, n, 0.5) for o, lab in labels.items()}
    for ch, img in images.items():
        measure_granularity(img, ch, labels, {o: n for o in labels}, samplers=samplers)
    t_gran = time.perf_counter() - t0
    print(f"hpc_profiler: texture {t_tex:.2f} s, granularity {t_gran:.2f} s")

    from cp_measure.core.measuregranularity import get_granularity
    from cp_measure.core.measuretexture import get_texture

    ref_channels = list(images)[: args.ref_channels]
    factor = len(images) / len(ref_channels)
    backends = [("mahotas", get_texture)]
    if args.numba:
        try:
            from cp_measure.core.numba.measuretexture import get_texture as numba_texture
        except ImportError as exc:
            print(f"cp_measure numba texture backend unavailable: {exc}")
        else:
            numba_texture(labels["Nuclei"][:64, :64], images["DNA"][:64, :64], 3, 256)  # compile
            backends.append(("numba", numba_texture))
    for name, fn in backends:
        t0 = time.perf_counter()
        for ch in ref_channels:
            for lab in labels.values():
                for s in scales:
                    fn(lab, images[ch], s, 256)
        r_tex = (time.perf_counter() - t0) * factor
        print(f"cp_measure texture ({name}) {r_tex:.2f} s (x{factor:g} from {len(ref_channels)} channel(s)); "
              f"ratio {r_tex / t_tex:.1f}x")
    t0 = time.perf_counter()
    for ch in ref_channels:
        for lab in labels.values():
            get_granularity(lab, images[ch], subsample_size=0.5, image_sample_size=0.5, element_size=10,
                            granular_spectrum_length=16)
    r_gran = (time.perf_counter() - t0) * factor
    print(f"cp_measure granularity {r_gran:.2f} s (x{factor:g}); ratio {r_gran / t_gran:.1f}x")
    print(f"texture+granularity: ours {t_tex + t_gran:.2f} s, cp_measure {r_tex + r_gran:.2f} s, "
          f"ratio {(r_tex + r_gran) / (t_tex + t_gran):.1f}x")


if __name__ == "__main__":
    main()

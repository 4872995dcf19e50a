"""Speed of Texture + Granularity against cp_measure 0.3.0 on one synthetic site.

Usage: ``python scripts/bench_texture_granularity.py [--size 1080] [--cells 220]
[--channels 5] [--ref-channels 1]``

Builds a deterministic CPJUMP1-like site with ``hpc_profiler.synth`` (Nuclei,
Cells, Cytoplasm label images, ``--channels`` channels), times hpc_profiler's
``measure_texture`` / ``measure_image_texture`` (scales 3, 5, 10; 256 levels)
and granularity (16 / 0.5 / 0.5 / 10) for every channel and object set, and cp_measure's
``get_texture`` / ``get_granularity`` with the same parameters for
``--ref-channels`` channels (cp_measure is linear in the channels; its time is
scaled to all channels and the scaling is printed). Prints seconds and ratios;
it asserts nothing.

Granularity is timed three times in the same run: as shipped (the 16
markers of a channel on one max-tree of the mask,
:func:`hpc_profiler.morphology.reconstruct_markers`), scale by scale with
:func:`hpc_profiler.morphology.reconstruct_by_dilation` (Vincent's hybrid
algorithm in numba, the previous CPU path) and with
``skimage.morphology.reconstruction`` swapped in (the one before), and the
results are compared bit for bit.
A last block times single 540 x 540 reconstructions (the 16 of one channel of
the site, each under the fixed mask): scikit-image, ours and SimpleITK's
``ReconstructionByDilationImageFilter`` when SimpleITK is installed (it is not
a dependency), with the first-call cost of the numba kernels in this process
(loading the on-disk cache, or compiling when there is none), which is paid
before the timed runs.

CPU seconds (``time.process_time``) are printed per step for ONE thread: the
script pins OpenMP/BLAS to one thread unless the environment already sets it
(wall time is unreliable on a shared machine). ``--ref-channels 0`` skips
cp_measure.
"""
from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: CPU seconds comparable between runs

import numpy as np

from hpc_profiler.config import CPJUMP1_CHANNELS
import hpc_profiler.features.granularity as granularity
from hpc_profiler.features.granularity import granular_spectrum, object_sampler, object_spectrum
from hpc_profiler.features.texture import measure_image_texture, measure_texture
from hpc_profiler.synth import synthesize_site

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito", "Extra1", "Extra2"]


def synthetic_site(size: int, n_cells: int, n_channels: int, seed: int = 0):
    """Nuclei/Cells/Cytoplasm labels (1..N shared) and float32 channels in [0, 1].

    :func:`hpc_profiler.synth.synthesize_site` (CPJUMP1-like; ``n_cells`` per
    site); channels beyond the five CPJUMP1 ones reuse them in turn.
    """
    s = synthesize_site(seed, size=size, n_cells=n_cells)
    nuclei = s.nuclei.astype(np.int32)
    cells = s.cells.astype(np.int32)
    cyto = np.where(nuclei > 0, 0, cells).astype(np.int32)
    images = {
        CHANNELS[c]: s.images[CPJUMP1_CHANNELS[c % len(CPJUMP1_CHANNELS)]].astype(np.float32) / 65535.0
        for c in range(n_channels)
    }
    return {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cyto}, int(cells.max()), images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--cells", type=int, default=220)
    ap.add_argument("--channels", type=int, default=5)
    ap.add_argument("--ref-channels", type=int, default=1)
    ap.add_argument("--numba", action="store_true", help="also time cp_measure's numba texture backend")
    ap.add_argument("--no-texture", action="store_true", help="granularity only")
    args = ap.parse_args()
    labels, n, images = synthetic_site(args.size, args.cells, args.channels)
    # numba's kernels (reconstruction, per-object sums): loaded from the on-disk
    # cache or compiled, once per process; timed apart from the steady state
    c0 = time.process_time()
    small = {o: lab[:64, :64] for o, lab in labels.items()}
    img0 = next(iter(images.values()))[:64, :64]
    spec0 = granular_spectrum(img0)
    for o, lab in small.items():
        object_spectrum(spec0, img0, lab, n, object_sampler(lab, n, 0.5))
    first_call = time.process_time() - c0
    print(f"site {args.size}x{args.size}, {n} objects per set, {len(images)} channels, 3 object sets")
    scales = (3, 5, 10)

    cpu = {}

    def step(name, fn):
        c0 = time.process_time()
        out = fn()
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0
        return out

    t0 = time.perf_counter()
    if not args.no_texture:
        for ch, img in images.items():  # (the CPU path builds no pair geometry: texture_geometry is the GPU's)
            for o, lab in labels.items():
                step("texture objects", lambda: measure_texture(lab, n, img, ch, scales=scales, gray_levels=256))
            step("texture image", lambda: measure_image_texture(img, ch, scales=scales, gray_levels=256))
    t_tex = time.perf_counter() - t0

    def run_granularity(prefix):
        t0 = time.perf_counter()
        samplers = step(f"{prefix} samplers",
                        lambda: {o: object_sampler(lab, n, 0.5) for o, lab in labels.items()})
        out = {}
        for ch, img in images.items():
            spec = step(f"{prefix} spectrum", lambda: granular_spectrum(img))
            for o, lab in labels.items():
                out[ch, o] = step(f"{prefix} objects", lambda: object_spectrum(spec, img, lab, n, samplers[o]))
            out[ch] = np.array(spec.image_values)
        return time.perf_counter() - t0, out

    t_gran, ours = run_granularity("granularity")
    shipped = granularity.reconstruct
    granularity.reconstruct = skimage_reconstruct
    try:
        t_ski, theirs = run_granularity("granularity (skimage rec.)")
    finally:
        granularity.reconstruct = shipped
    granularity.reconstruct = hybrid_reconstruct
    try:
        t_hyb, hybrid = run_granularity("granularity (hybrid per scale)")
    finally:
        granularity.reconstruct = shipped
    same = all(np.array_equal(ours[k], theirs[k], equal_nan=True) for k in ours)
    same_hybrid = all(np.array_equal(ours[k], hybrid[k], equal_nan=True) for k in ours)
    print(f"{'step (all channels and object sets)':38s} {'CPU s':>7s}")
    for name, sec in cpu.items():
        print(f"{name:38s} {sec:7.2f}")
    tex_cpu = sum(v for k, v in cpu.items() if k.startswith("texture"))
    gran_cpu = sum(v for k, v in cpu.items() if k.startswith("granularity") and "(" not in k)
    hyb_cpu = sum(v for k, v in cpu.items() if k.startswith("granularity (hybrid"))
    ski_cpu = sum(v for k, v in cpu.items() if k.startswith("granularity (skimage"))
    print(f"{'texture total':38s} {tex_cpu:7.2f}\n{'granularity total':38s} {gran_cpu:7.2f}")
    print(f"{'granularity with skimage reconstruction':38s} {ski_cpu:7.2f}  "
          f"(ratio {ski_cpu / max(gran_cpu, 1e-9):.1f}x; results bit-identical: {same})")
    print(f"{'granularity with the hybrid per scale':38s} {hyb_cpu:7.2f}  "
          f"(ratio {hyb_cpu / max(gran_cpu, 1e-9):.1f}x; the previous CPU path; bit-identical: {same_hybrid})")
    print(f"hpc_profiler wall: texture {t_tex:.2f} s, granularity {t_gran:.2f} s "
          f"(skimage reconstruction {t_ski:.2f} s)")
    reconstruction_line(images, first_call)
    if args.ref_channels < 1:
        return

    from cp_measure.core.measuregranularity import get_granularity
    from cp_measure.core.measuretexture import get_texture

    ref_channels = list(images)[: args.ref_channels]
    factor = len(images) / len(ref_channels)
    backends = [] if args.no_texture else [("mahotas", get_texture)]
    if args.numba and not args.no_texture:
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
    print(f"cp_measure granularity {r_gran:.2f} s (x{factor:g}); ratio {r_gran / t_gran:.1f}x "
          f"(with skimage's reconstruction {r_gran / t_ski:.1f}x)")
    if args.no_texture:
        return
    print(f"texture+granularity: ours {t_tex + t_gran:.2f} s, cp_measure {r_tex + r_gran:.2f} s, "
          f"ratio {(r_tex + r_gran) / (t_tex + t_gran):.1f}x")


def skimage_reconstruct(marker, mask, bk):
    """The previous reconstruction: scikit-image's, image by image of the stack."""
    import skimage.morphology

    out = np.empty_like(marker)
    for c in range(marker.shape[0]):
        out[c] = skimage.morphology.reconstruction(marker[c], mask[c], method="dilation",
                                                   footprint=granularity.CROSS)
    return out


def hybrid_reconstruct(marker, mask, bk):
    """The previous CPU reconstruction: Vincent's hybrid algorithm (numba), image by image."""
    from hpc_profiler.morphology import reconstruct_by_dilation

    return reconstruct_by_dilation(marker, mask, connectivity=1)


def reconstruction_line(images, first_call: float) -> None:
    """ms per reconstruction of one channel's 16 granularity markers under its fixed mask."""
    import skimage.morphology

    from hpc_profiler.backend import cpu_backend
    from hpc_profiler.features.granularity import background_subtracted, erode_cross
    from hpc_profiler.morphology import reconstruct_by_dilation

    img = images.get("Mito", next(iter(images.values())))
    pixels, _ = background_subtracted(img)
    markers, ero = [], pixels
    for _ in range(16):
        ero = erode_cross(ero, cpu_backend())
        markers.append(ero)
    impls = [
        ("skimage", lambda m: skimage.morphology.reconstruction(m, pixels, footprint=granularity.CROSS)),
        ("ours (numba hybrid)", lambda m: reconstruct_by_dilation(m, pixels)),
    ]
    try:
        import SimpleITK as sitk
    except ImportError:
        sitk = None
    if sitk is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

        def itk(m):
            f = sitk.ReconstructionByDilationImageFilter()
            f.SetFullyConnected(False)
            return sitk.GetArrayFromImage(f.Execute(sitk.GetImageFromArray(m), sitk.GetImageFromArray(pixels)))

        impls.append((f"SimpleITK {sitk.Version.VersionString()}", itk))
    ref, ms = None, {}
    for name, fn in impls:
        c0 = time.process_time()
        outs = [fn(m) for m in markers]
        ms[name] = (time.process_time() - c0) / len(markers) * 1e3
        if ref is None:
            ref = outs
        equal = all(np.array_equal(a, b) for a, b in zip(outs, ref))
        print(f"reconstruction {pixels.shape[0]}x{pixels.shape[1]} {name:24s} {ms[name]:7.1f} ms "
              f"(skimage/this {ms['skimage'] / ms[name]:.1f}x; bit-identical to skimage: {equal})")
    from hpc_profiler.morphology import reconstruct_markers

    reconstruct_markers(np.stack(markers)[:, :8, :8], pixels[:8, :8])  # its kernels' first call, untimed
    c0 = time.process_time()
    outs = reconstruct_markers(np.stack(markers), pixels)
    tree_ms = (time.process_time() - c0) / len(markers) * 1e3
    equal = all(np.array_equal(a, b) for a, b in zip(outs, ref))
    print(f"reconstruction {pixels.shape[0]}x{pixels.shape[1]} {'ours (max-tree, 16 on 1)':24s} {tree_ms:7.1f} ms "
          f"(skimage/this {ms['skimage'] / tree_ms:.1f}x; bit-identical to skimage: {equal})")
    if sitk is None:
        print("reconstruction SimpleITK: not installed (pip install SimpleITK to time it)")
    print(f"numba kernels' first call in this process (cache load or compile, not in the times above): "
          f"{first_call:.2f} s CPU")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Benchmark: sites/s reading a Gallery screen from a local S3 server vs a local folder, prefetch on/off.

    python scripts/bench_s3.py                       # 12 sites of 256 px (short)
    python scripts/bench_s3.py --wells 8 --sites 3 --size 540 --depth 2
    python scripts/bench_s3.py --families Intensity --repeat 3   # read ~ compute

What is timed, in this one process, for each source (local folder, s3://):

* ``read``: :func:`images.load_site_images` of every site, nothing else
  (every TIFF fetched through :func:`storage.read_bytes`; for s3:// over HTTP
  from moto's S3 server on 127.0.0.1);
* ``compute`` (once, shared by both sources; the images are already in memory):
  :func:`pipeline.process_images` of every site: the real per-site work
  (illumination apply with the plate's ``.npy`` functions, segmentation, all
  feature families), on the configured device (CPU here);
* ``wall(depth=0)``: read then compute, site after site
  (:func:`storage.prefetched` with ``depth=0``, prefetch off);
* ``wall(depth=d)``: the same with reads started ``d`` sites ahead in a thread.

Overlap achieved by prefetch, as a fraction of the time that could be hidden::

    overlap = 1 - (wall_prefetch - max(read, compute)) / min(read, compute)

1 means the shorter of read and compute was hidden completely (wall = the
longer one); 0 means no better than doing them one after the other (wall =
read + compute). The S3 server runs in its own process by default
(``python -m moto.server``), so that serving requests does not take the GIL of
the process being measured; ``--server thread`` runs ``ThreadedMotoServer`` in
this process instead. Loopback has no network latency, so reads here are much
faster than from AWS; the ratios, not the absolute numbers, are the point.
Nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from s3_server import DUMMY_AWS_ENV, LocalS3, free_port, gallery_config, upload_tree, write_gallery_layout  # noqa: E402

CH = ["DNA", "ER", "RNA", "AGP", "Mito"]
BUCKET, PREFIX = "cellpainting-gallery", "cpg0000-jump-pilot/source_4"


class ProcessS3:
    """``python -m moto.server`` in a child process on 127.0.0.1:<free port>."""

    def __init__(self):
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto server exited with {self.proc.returncode}")
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto server on port {self.port} did not start within 60 s")

    client = LocalS3.client

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_source(name, cfg, compute, depths, repeat=1):
    """Read-only time, then for each prefetch depth: wall, time blocked on reads, compute time.

    Each measurement is repeated ``repeat`` times, alternating the depths, and the
    fastest wall (with its own read and compute times) is kept.
    """
    from hpc_profiler import gallery, storage
    from hpc_profiler.images import load_site_images
    from hpc_profiler.sources import build_manifest

    sites, problems = build_manifest(cfg)  # also configures storage for this source
    if problems:
        raise RuntimeError(f"{name}: {problems}")
    illum = {s.plate: gallery.load_illum_npy(s.illum_files, CH) for s in sites}

    def load(site):
        return load_site_images(site, CH)

    load(sites[0])  # warm the file system instance / connection pool
    t_read = min(timed(lambda: [load(s) for s in sites])[0] for _ in range(repeat))
    res = {"n": len(sites), "read": t_read}
    for d in [d for _ in range(repeat) for d in depths]:
        wait = busy = 0.0
        t0 = time.perf_counter()
        mark = t0
        for site, fut in storage.prefetched(sites, load, depth=d):
            images = fut.result()
            t1 = time.perf_counter()
            wait += t1 - mark  # blocked on the read (the generator's load when d == 0)
            compute(images, illum[site.plate])
            mark = time.perf_counter()
            busy += mark - t1
        if mark - t0 < res.get(f"wall{d}", float("inf")):
            res[f"wall{d}"], res[f"wait{d}"], res[f"compute{d}"] = mark - t0, wait, busy
    return sites, illum, res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wells", type=int, default=6, help="wells per plate (>= 3)")
    p.add_argument("--sites", type=int, default=2, help="sites per well")
    p.add_argument("--size", type=int, default=256, help="site width/height, pixels")
    p.add_argument("--cells", type=int, default=20, help="mean cells per site")
    p.add_argument("--depth", type=int, default=1, help="prefetch depth compared with 0")
    p.add_argument("--server", choices=["process", "thread"], default="process")
    p.add_argument("--repeat", type=int, default=1, help="repetitions of each measurement; the fastest is kept")
    p.add_argument("--families", nargs="+", metavar="F",
                   help="feature families to measure (default: all configured); fewer makes compute cheaper, "
                        "e.g. --families Intensity, to see overlap when read and compute are comparable")
    args = p.parse_args(argv)

    os.environ.update(DUMMY_AWS_ENV)
    from hpc_profiler import pipeline, storage, synth
    from hpc_profiler.config import SynthConfig
    from hpc_profiler.images import load_site_images

    sc = SynthConfig(replicate_plates=1, wells=args.wells, sites_per_well=args.sites, size=args.size,
                     cells_per_site=args.cells, seed=1)
    # nuclei scale with the site size (11 px semi-axis at 540 px): scale the size filter alike
    seg = {"nuclei": {"min_diameter": max(3.0, round(10.0 * args.size / 540.0, 1))}}
    with tempfile.TemporaryDirectory(prefix="bench_s3_") as tmp:
        tmp = Path(tmp)
        synth.generate_batch(sc, tmp / "synth", CH)
        layout = write_gallery_layout(tmp / "synth", tmp / "gallery", sc, CH)
        server = ProcessS3() if args.server == "process" else LocalS3().start()
        try:
            t_up, keys = timed(lambda: upload_tree(layout.root, server, BUCKET, PREFIX))
            mb = sum(f.stat().st_size for f in layout.root.rglob("*") if f.is_file()) / 1e6
            print(f"screen: {layout.n_sites} sites of {args.size} px x {len(CH)} channels, {len(keys)} objects, "
                  f"{mb:.1f} MB; uploaded in {t_up:.2f} s; server: moto ({args.server}) at {server.endpoint_url}")
            extra = {"segmentation": seg}
            if args.families:
                extra["features"] = {"families": list(args.families)}
            cfg_local = gallery_config(layout.root, tmp / "out_local", **extra)
            cfg_s3 = gallery_config(f"s3://{BUCKET}/{PREFIX}", tmp / "out_s3", endpoint_url=server.endpoint_url,
                                    **extra)
            print(f"compute: pipeline.process_images (illumination apply, segmentation, feature families "
                  f"{', '.join(cfg_local.features.families)})")

            def compute(images, illum):
                return pipeline.process_images(cfg_local, images, illum)

            # compute alone, on images already in memory
            from hpc_profiler.sources import build_manifest

            sites, _ = build_manifest(cfg_local)
            from hpc_profiler import gallery

            illum = {s.plate: gallery.load_illum_npy(s.illum_files, CH) for s in sites}
            imgs = [load_site_images(s, CH) for s in sites]
            compute(imgs[0], illum[sites[0].plate])  # warm-up (imports, caches)
            t_compute = min(
                timed(lambda: [compute(im, illum[s.plate]) for s, im in zip(sites, imgs)])[0]
                for _ in range(args.repeat)
            )
            n = len(sites)
            print(f"compute (pipeline.process_images, in memory): {t_compute:.2f} s = {n / t_compute:.2f} sites/s")
            depths = [0, args.depth]
            rows = []
            for name, cfg in (("local", cfg_local), ("s3", cfg_s3)):
                _, _, r = run_source(name, cfg, compute, depths, args.repeat)
                rows.append((name, r))
        finally:
            server.stop()
            storage.configure(storage.StorageOptions())

    d = args.depth
    print(f"\n{'source':<7}{'read':>7}{'wall d=0':>10}{'sites/s':>9}{f'wall d={d}':>10}{'sites/s':>9}"
          f"{'speed-up':>10}{'read':>7}{'compute':>9}{'waited':>8}{'overlap':>9}")
    print(f"{'':<7}{'alone':>7}{'':>10}{'':>9}{'':>10}{'':>9}{'':>10}{'d=0':>7}{f'd={d}':>9}{f'd={d}':>8}")
    for name, r in rows:
        # R: reading as it happened without prefetch; C: computing in the prefetch run
        # (both measured in-run, so the contention of that moment is in both)
        R, C, W = r["wait0"], r[f"compute{d}"], r[f"wall{d}"]
        overlap = 1.0 - (W - max(R, C)) / min(R, C) if min(R, C) > 0 else float("nan")
        print(f"{name:<7}{r['read']:>7.2f}{r['wall0']:>10.2f}{n / r['wall0']:>9.2f}{W:>10.2f}{n / W:>9.2f}"
              f"{r['wall0'] / W:>10.2f}{R:>7.2f}{C:>9.2f}{r[f'wait{d}']:>8.2f}{overlap:>9.2f}")
    (_, loc), (_, s3) = rows
    print(f"\ncompute alone (in memory): {t_compute:.2f} s = {n / t_compute:.2f} sites/s; "
          f"s3 / local read time: {s3['read'] / loc['read']:.1f}x; "
          f"s3 / local wall with prefetch {d}: {s3[f'wall{d}'] / loc[f'wall{d}']:.2f}x")
    print(f"overlap = 1 - (wall(d={d}) - max(R, C)) / min(R, C), R = read time of the d=0 run, C = compute time "
          f"of the d={d} run; 1: the shorter phase fully hidden, 0: none. 'waited': time the compute loop "
          f"spent blocked on reads in the d={d} run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

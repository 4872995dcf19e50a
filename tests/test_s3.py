"""Object storage: a Cell Painting Gallery screen read from a real S3 server equals the local copy.

The server is moto's ``ThreadedMotoServer`` on loopback (``tests/s3_server.py``):
s3fs/botocore talk HTTP to it exactly as to AWS, with dummy credentials in the
environment. The screen is a small synthetic batch (2 plates x 4 wells x 1
site, 160 px) laid out as ``s3://cellpainting-gallery/cpg0000-jump-pilot/
source_4``: plate folders, ``<plate>_Illum<Ch>.npy`` functions, per-plate
LoadData CSVs with the old ``/home/ubuntu/bucket/projects/...`` PathNames. The
same layout is kept in a local folder, the reference for every comparison.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hpc_profiler import gallery, illumination, pipeline, sitefile, storage, synth
from hpc_profiler.config import SynthConfig
from hpc_profiler.images import SiteInputError, load_site_images
from hpc_profiler.sources import build_manifest

from s3_server import BATCH, CHANNELS, LocalS3, aws_env, gallery_config, upload_tree, write_gallery_layout

pytest.importorskip("moto.server", reason="moto[server] is needed for the local S3 server")
pytest.importorskip("s3fs", reason="s3fs is needed to read s3:// URLs")

CH = list(CHANNELS)
BUCKET = "cellpainting-gallery"
PREFIX = "cpg0000-jump-pilot/source_4"
SYNTH = SynthConfig(replicate_plates=2, wells=4, sites_per_well=1, size=160, cells_per_site=12, seed=3)
#: Nuclei at 160 px are ~3.4x smaller than at the synth's 540 px scale: scale the size filter too.
SEGMENTATION = {"nuclei": {"min_diameter": 4}}


class Screen:
    """The local Gallery copy, the S3 server holding the same files, and helpers."""

    def __init__(self, tmp: Path, s3: LocalS3, layout):
        self.tmp, self.s3, self.layout = tmp, s3, layout
        self.local_root = layout.root
        self.s3_root = f"s3://{BUCKET}/{PREFIX}"

    def cfg(self, where: str, name: str, **kw):
        root = self.s3_root if where == "s3" else self.local_root
        endpoint = self.s3.endpoint_url if str(root).startswith("s3://") else None
        return gallery_config(root, self.tmp / name, endpoint_url=endpoint, segmentation=SEGMENTATION, **kw)

    def local_twin(self, url: str) -> Path:
        """The local file that an s3:// URL of the screen mirrors."""
        assert url.startswith(self.s3_root + "/"), url
        return self.local_root / url[len(self.s3_root) + 1 :]


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    aws_env(mp)
    tmp = tmp_path_factory.mktemp("s3screen")
    synth.generate_batch(SYNTH, tmp / "synth", CH)
    layout = write_gallery_layout(tmp / "synth", tmp / "gallery", SYNTH, CH)
    s3 = LocalS3().start()
    try:
        upload_tree(layout.root, s3, BUCKET, PREFIX)
        yield Screen(tmp, s3, layout)
    finally:
        s3.stop()
        storage.configure(storage.StorageOptions())
        mp.undo()


def both_manifests(screen, name, **kw):
    """(s3 sites, local sites), each built from its own config; storage left on S3's options."""
    local_sites, problems = build_manifest(screen.cfg("local", f"{name}_local", **kw))
    assert problems == []
    s3_sites, problems = build_manifest(screen.cfg("s3", f"{name}_s3", **kw))
    assert problems == []
    return s3_sites, local_sites


def assert_same_images(a: dict, b: dict, where: str):
    for ch in CH:
        np.testing.assert_array_equal(a[ch], b[ch], err_msg=f"{where} channel {ch}")


# ------------------------------------------------------------------ (a) manifest and bytes
def test_manifest_from_s3_equals_local_and_every_object_is_byte_identical(screen):
    s3_sites, local_sites = both_manifests(screen, "a")
    assert len(local_sites) == screen.layout.n_sites == 8
    assert [s.key for s in s3_sites] == [s.key for s in local_sites]
    assert {s.plate for s in s3_sites} == set(screen.layout.plates)
    for s3_site, loc in zip(s3_sites, local_sites):
        for kind in ("files", "illum_files"):
            urls, paths = getattr(s3_site, kind), getattr(loc, kind)
            assert set(urls) == set(paths) == set(CH), f"{s3_site.key} {kind}"
            for ch in CH:
                # the old machine's PathName was re-rooted into the bucket ...
                assert urls[ch].startswith(f"s3://{BUCKET}/{PREFIX}/images/{BATCH}/"), urls[ch]
                assert "/home/ubuntu" not in urls[ch]
                # ... onto the very object that mirrors the local file
                assert screen.local_twin(urls[ch]) == Path(paths[ch])
                assert storage.read_bytes(urls[ch]) == Path(paths[ch]).read_bytes(), urls[ch]
        assert_same_images(load_site_images(s3_site, CH), load_site_images(loc, CH), s3_site.key)


def test_gzipped_loaddata_csv_is_found_and_read(screen):
    """Some Gallery batches ship ``load_data.csv.gz`` only: the manifest falls back to it."""
    import gzip

    client = screen.s3.client()
    client.create_bucket(Bucket="cpg-gz")
    for plate in screen.layout.plates:
        csv = screen.local_root / "workspace" / "load_data_csv" / BATCH / plate / "load_data.csv"
        key = f"{PREFIX}/workspace/load_data_csv/{BATCH}/{plate}/load_data.csv.gz"
        client.put_object(Bucket="cpg-gz", Key=key, Body=gzip.compress(csv.read_bytes()))
    cfg = gallery_config(f"s3://cpg-gz/{PREFIX}", screen.tmp / "gz", endpoint_url=screen.s3.endpoint_url)
    sites, problems = build_manifest(cfg)
    local_sites, _ = build_manifest(screen.cfg("local", "gz_local"))
    assert problems == [] and [s.key for s in sites] == [s.key for s in local_sites]
    for site, loc in zip(sites, local_sites):
        for ch in CH:
            assert site.files[ch] == f"s3://cpg-gz/{PREFIX}/" + str(Path(loc.files[ch]).relative_to(screen.local_root))
            assert site.illum_files[ch].endswith(f"illum/{site.plate}/{site.plate}_Illum{ch}.npy")


# ------------------------------------------------------------------ (b) features and illumination
def test_illumination_npy_from_s3_is_the_saved_function(screen):
    s3_sites, local_sites = both_manifests(screen, "b0")
    for s3_site in s3_sites[:: len(s3_sites) - 1]:
        illum = gallery.load_illum_npy(s3_site.illum_files, CH)
        for ch in CH:
            ref = np.load(screen.local_twin(s3_site.illum_files[ch]), allow_pickle=False)
            assert ref.dtype == np.float64 and ref.min() >= 1.0  # a CellProfiler robust-minimum function
            np.testing.assert_array_equal(illum[ch], ref.astype(np.float32))
            np.testing.assert_array_equal(illum[ch], screen.layout.illum[(s3_site.plate, ch)].astype(np.float32))


def test_site_files_from_s3_equal_those_from_the_local_folder(screen):
    """One site per plate through ``pipeline.extract_site``: S3 and local give equal feature
    matrices, and both equal the pipeline run on images divided by the ``.npy`` arrays
    with :func:`illumination.apply_illum` (CorrectIlluminationApply "Divide")."""
    cfg_local = screen.cfg("local", "b_local")
    cfg_s3 = screen.cfg("s3", "b_s3")
    local_sites, _ = build_manifest(cfg_local)
    s3_sites, _ = build_manifest(cfg_s3)  # storage now configured for the server
    picks = [0, len(s3_sites) - 1]  # first site of plate 1, last site of plate 2
    assert {s3_sites[i].plate for i in picks} == set(screen.layout.plates)
    for i in picks:
        s3_site, loc = s3_sites[i], local_sites[i]
        f_s3 = pipeline.extract_site(cfg_s3, s3_site, gallery.load_illum_npy(s3_site.illum_files, CH))
        f_loc = pipeline.extract_site(cfg_local, loc, gallery.load_illum_npy(loc.illum_files, CH))
        d_s3, d_loc = sitefile.read_site_file(f_s3), sitefile.read_site_file(f_loc)
        assert set(d_s3.objects) == set(d_loc.objects) == {"Nuclei", "Cells", "Cytoplasm"}
        for obj, t in d_s3.objects.items():
            assert t.names == d_loc.objects[obj].names
            assert t.values.shape[0] > 0, f"{s3_site.key}: no {obj}"
            np.testing.assert_array_equal(t.values, d_loc.objects[obj].values, err_msg=f"{s3_site.key} {obj}")
            np.testing.assert_array_equal(t.object_number, d_loc.objects[obj].object_number)

        # reference: divide by the .npy arrays ourselves, then run without illumination
        raw = load_site_images(loc, CH)
        divided = {
            ch: illumination.apply_illum(raw[ch], np.load(loc.illum_files[ch], allow_pickle=False).astype(np.float32))
            for ch in CH
        }
        _, feats, _ = pipeline.process_images(cfg_local, divided, None)
        for obj, t in d_s3.objects.items():
            ref = feats.objects[obj]
            assert list(ref.names) == t.names
            np.testing.assert_array_equal(np.asarray(ref.values, np.float32), t.values, err_msg=f"{s3_site.key} {obj}")


# ------------------------------------------------------------------ (c) missing and corrupt objects
def test_missing_and_corrupt_objects_fail_by_url_while_the_rest_reads(screen):
    faulty = "cpg-faulty"
    upload_tree(screen.local_root, screen.s3, faulty, PREFIX)
    root = f"s3://{faulty}/{PREFIX}"
    cfg = gallery_config(root, screen.tmp / "c", endpoint_url=screen.s3.endpoint_url, retries=2, backoff_s=0.05)
    sites, problems = build_manifest(cfg)
    local_sites, _ = build_manifest(screen.cfg("local", "c_local"))
    build_manifest(cfg)  # storage back on the server's options
    assert problems == [] and len(sites) == len(local_sites) == 8

    missing_site, corrupt_site = sites[1], sites[6]
    missing_url, corrupt_url = missing_site.files["ER"], corrupt_site.files["Mito"]
    client = screen.s3.client()
    key = lambda url: url.split(f"s3://{faulty}/", 1)[1]  # noqa: E731
    client.delete_object(Bucket=faulty, Key=key(missing_url))
    good = Path(local_sites[6].files["Mito"]).read_bytes()
    client.put_object(Bucket=faulty, Key=key(corrupt_url), Body=good[: len(good) // 3])  # a truncated upload
    missing_illum = sites[-1].illum_files["RNA"]
    client.delete_object(Bucket=faulty, Key=key(missing_illum))

    seen = {}
    for site, fut in storage.prefetched(sites, lambda s: load_site_images(s, CH), depth=2):
        try:
            seen[site.key] = fut.result()
        except SiteInputError as exc:
            seen[site.key] = exc
    errors = {k: v for k, v in seen.items() if isinstance(v, Exception)}
    assert set(errors) == {missing_site.key, corrupt_site.key}
    assert missing_url in str(errors[missing_site.key]) and "no such file or object" in str(errors[missing_site.key])
    assert corrupt_url in str(errors[corrupt_site.key]) and "not a readable TIFF" in str(errors[corrupt_site.key])
    for exc, site in ((errors[missing_site.key], missing_site), (errors[corrupt_site.key], corrupt_site)):
        assert str(exc).startswith(f"site {site.key}:")
        assert str(exc).count("s3://") == 1  # only the bad channel is named
    for site, loc in zip(sites, local_sites):
        if site.key not in errors:
            assert_same_images(seen[site.key], load_site_images(loc, CH), site.key)

    with pytest.raises(storage.MissingObjectError, match=missing_illum.replace(".", r"\.")):
        gallery.load_illum_npy(sites[-1].illum_files, CH)
    assert set(gallery.load_illum_npy(sites[0].illum_files, CH)) == set(CH)  # the other plate's are fine
    client.put_object(Bucket=faulty, Key=key(missing_illum), Body=b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=missing_illum.replace(".", r"\.")):
        gallery.load_illum_npy(sites[-1].illum_files, CH)


def test_cache_dir_serves_repeated_reads_while_the_server_is_down(screen):
    """With ``input.cache_dir`` (fsspec ``filecache``) a second read of an object is local:
    it succeeds while the server is stopped, with one attempt and no retries."""
    cache = screen.tmp / "cache"
    cfg = screen.cfg("s3", "cache_s3", retries=1)
    cfg.input.cache_dir = str(cache)
    sites, _ = build_manifest(cfg)
    site = sites[0]
    first = load_site_images(site, CH)
    illum = gallery.load_illum_npy(site.illum_files, CH)
    assert sum(1 for f in cache.rglob("*") if f.is_file()) >= 2 * len(CH)  # the objects were copied
    # down long enough that the cached reads before the uncached one cannot outlast it on a loaded machine
    # (with 1 s, a CI run read sites[1] after the restart)
    back = screen.s3.outage(8.0)
    try:
        assert_same_images(load_site_images(site, CH), first, site.key)
        again = gallery.load_illum_npy(site.illum_files, CH)
        with pytest.raises(SiteInputError, match="read failed after 1 attempts"):
            load_site_images(sites[1], CH)  # not cached: really needs the server
        assert back.is_alive()  # the failure above was the outage's, not something else's
    finally:
        back.join(30)
    for ch in CH:
        np.testing.assert_array_equal(again[ch], illum[ch])


# ------------------------------------------------------------------ (d) an outage mid-batch
def _read_all(sites, local_sites, on=lambda i: None):
    """Read every site in order (calling ``on(i)`` before site ``i``); return images or errors."""
    out = {}
    for i, site in enumerate(sites):
        on(i)
        try:
            out[site.key] = (load_site_images(site, CH), time.monotonic())
        except SiteInputError as exc:
            out[site.key] = (exc, time.monotonic())
    return out


def test_server_outage_is_ridden_out_with_retries_and_fails_by_name_without(screen):
    """The S3 server is really stopped (socket closed: connections are refused) after
    the 3rd site and started again on the same port 2 s later from a timer thread.
    moto keeps buckets in its process-global backend, so the restarted server serves
    the same objects (nothing is re-uploaded).

    With 6 attempts and 0.2 s backoff (0.2+0.4+0.8+1.6 s = 3.0 s of waiting) every
    read outlives the outage. With ``retries=1`` the reads during the outage fail
    naming their s3:// URL and site, and a second pass after the restart reads them.
    """
    down_s = 2.0
    local_sites, _ = build_manifest(screen.cfg("local", "d_local"))
    cfg = screen.cfg("s3", "d_s3", retries=6, backoff_s=0.2)
    sites, _ = build_manifest(cfg)
    restart: list[threading.Thread] = []
    stopped_at: list[float] = []

    def outage_before_site_3(i):
        if i == 3:
            stopped_at.append(time.monotonic())
            restart.append(screen.s3.outage(down_s))

    got = _read_all(sites, local_sites, outage_before_site_3)
    restart[0].join(10)
    for site, loc in zip(sites, local_sites):
        value, _ = got[site.key]
        assert not isinstance(value, Exception), f"{site.key}: {value}"
        assert_same_images(value, load_site_images(loc, CH), site.key)
    # site 3 was read while the server was down: it can only have completed after the restart
    assert got[sites[3].key][1] - stopped_at[0] >= down_s - 0.05

    # the same outage without retries
    cfg1 = screen.cfg("s3", "d1_s3", retries=1)
    sites, _ = build_manifest(cfg1)
    restart.clear()
    got = _read_all(sites, local_sites, outage_before_site_3)
    restart[0].join(10)
    failed = [s for s in sites if isinstance(got[s.key][0], Exception)]
    assert failed and failed[0].key == sites[3].key
    for site in failed:
        msg = str(got[site.key][0])
        assert msg.startswith(f"site {site.key}:") and "read failed after 1 attempts" in msg
        assert any(url in msg for url in site.files.values())
    by_key = {loc.key: loc for loc in local_sites}
    for site in sites:
        if site not in failed:
            assert_same_images(got[site.key][0], load_site_images(by_key[site.key], CH), site.key)
    for site in failed:  # second pass, server back
        assert_same_images(load_site_images(site, CH), load_site_images(by_key[site.key], CH), site.key)


# ------------------------------------------------------------------ end to end through `run`
def test_run_from_s3_equals_run_from_local_folder(screen):
    """``hpc-profiler run``'s driver on the Gallery screen, once from s3:// and once from the
    local copy: identical site files and identical well profiles. The plates' CellProfiler
    ``.npy`` functions are used, so the illum stage computes nothing."""
    from hpc_profiler.run import run_batch

    meta = str(screen.tmp / "synth" / "well_metadata.csv")
    outs = {}
    for where in ("local", "s3"):
        cfg = screen.cfg(where, f"run_{where}", executor={"kind": "debug", "mpi_ranks": 1},
                         evaluate={"null_size": 500})
        cfg.input.well_metadata_csv = meta
        res = run_batch(cfg, ranks=1, report=False, out=lambda s: None)
        assert res.failures == 0, where
        assert not (Path(cfg.out) / "illum").exists(), "illum stage computed functions despite the .npy files"
        outs[where] = cfg
    a, b = (Path(outs[w].out) for w in ("local", "s3"))
    files_a = sorted(p.relative_to(a) for p in (a / "sites").rglob("*.h5"))
    files_b = sorted(p.relative_to(b) for p in (b / "sites").rglob("*.h5"))
    assert files_a == files_b and len(files_a) == 8
    for rel in files_a:
        da, db = sitefile.read_site_file(a / rel), sitefile.read_site_file(b / rel)
        for obj, t in da.objects.items():
            np.testing.assert_array_equal(t.values, db.objects[obj].values, err_msg=f"{rel} {obj}")
    import pandas as pd

    for name in ("well_aggregated", "well_normalized", "well_feature_selected"):
        pa = pd.read_parquet(a / "profiles" / f"{name}.parquet")
        pb = pd.read_parquet(b / "profiles" / f"{name}.parquet")
        pd.testing.assert_frame_equal(pa, pb)

"""Completion ledger (issue 19): done/pending from O(tasks) ledger files, checked against the deep check.

The reference for every count is today's method: open each site file and
validate it (:func:`sitefile.validate_site_file` with the config hash).
The sites are tiny real HDF5 site files; the last test kills a real extract
task (a subprocess running ``orchestrate.run_extract_range``) between a site
file and its ledger record.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpc_profiler import ledger, manifest as manifest_mod, orchestrate as orch, reduce as R, sitefile, status
from hpc_profiler.pack import pack_plate
from hpc_profiler.config import load_config
from hpc_profiler.manifest import Site
from hpc_profiler.sitefile import ObjectTable

PLATES = ["P1", "P2"]
WELLS = ["B02", "B03", "C05", "AF12"]
SITES = [1, 2, 3]


def write_cfg(path: Path, out: Path, **features) -> Path:
    cfg = {"name": "ledgertest", "output_dir": str(out), "input": {"loaddata_csv": str(out / "none.csv")},
           "features": {"families": ["Intensity"], **features}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def manifest_sites() -> list:
    return [Site(p, w, s, {"DNA": f"/img/{p}_{w}_{s}.tif"}) for p in PLATES for w in WELLS for s in SITES]


def write_site(cfg, site, n: int = 3) -> Path:
    names = ["Cells_Intensity_MeanIntensity_DNA", "Cells_AreaShape_Area"]
    rng = np.random.default_rng(hash(site.key) % 2**32)
    return sitefile.write_site_file(
        orch.pipeline.site_path(cfg, site), plate=site.plate, well=site.well, site=site.site,
        config_hash=cfg.hash(), backend="numpy", image={"Image_Count_Cells": n},
        objects={"Cells": ObjectTable(names, rng.random((n, 2)), np.arange(1, n + 1))})


@pytest.fixture
def finished(tmp_path):
    """Every site written and recorded by three 'tasks'; the manifest saved."""
    cfg = load_config(write_cfg(tmp_path / "c.yaml", tmp_path / "out"))
    sites = manifest_sites()
    manifest_mod.save_manifest(sites, orch.manifest_path(cfg))
    writers = [ledger.LedgerWriter(cfg.out, f"job_{t}") for t in range(3)]
    for i, s in enumerate(sites):
        writers[i % 3].record(s.key, write_site(cfg, s), cfg.hash(), 1.5)
    return cfg, sites


def deep_done(cfg, sites) -> list:
    """Today's method: open every site file (the reference)."""
    return [sitefile.validate_site_file(orch.pipeline.site_path(cfg, s), cfg.hash()).ok for s in sites]


def test_sites_grouped_by_plate_and_row(tmp_path):
    assert sitefile.site_file_path(tmp_path, "P1", "B03", 2) == tmp_path / "sites" / "P1" / "B" / "P1_B03_s2.h5"
    assert sitefile.well_row("af12") == "AF" and sitefile.well_row("7") == "7"
    # a 384-well plate of 9 sites per well: 16 folders of 216 files, not one of 3,456
    dirs = {sitefile.site_file_path(tmp_path, "P", manifest_mod.well_from_row_col(r, c), f).parent
            for r in range(1, 17) for c in range(1, 25) for f in range(1, 10)}
    assert len(dirs) == 16


def test_ledger_scan_matches_the_deep_check_without_opening_files(finished):
    cfg, sites = finished
    scan = ledger.scan_sites(cfg, sites)
    assert scan.done == deep_done(cfg, sites) == [True] * len(sites)
    assert (scan.n_ledger_files, scan.n_opened, scan.problems) == (3, 0, [])
    assert scan.n_listings == len(PLATES) * 3  # rows B, C, AF of each plate
    assert orch.pending_sites(cfg, sites) == []
    st = status.collect_status(cfg)
    assert (st.totals.total, st.totals.done, st.totals.pending, st.damaged) == (len(sites), len(sites), 0, [])
    # a half-done batch: the unrecorded, unwritten sites are pending, in manifest order
    more = sites + [Site("P3", "A01", 1, {"DNA": "x"}), Site("P1", "B02", 9, {"DNA": "x"})]
    assert orch.pending_sites(cfg, more) == more[-2:]


def test_deleted_and_truncated_files_reported_and_pending(finished, capsys, monkeypatch):
    cfg, sites = finished
    monkeypatch.setattr(ledger, "SERIAL_LIMIT", 4)  # --verify through the worker processes
    gone, cut, flipped = sites[1], sites[5], sites[9]
    orch.pipeline.site_path(cfg, gone).unlink()
    p = orch.pipeline.site_path(cfg, cut)
    os.truncate(p, p.stat().st_size // 2)
    # damage that keeps size and mtime: only --verify, which opens every file, can see it
    q = orch.pipeline.site_path(cfg, flipped)
    st0 = q.stat()
    with open(q, "r+b") as fh:
        fh.write(b"\0" * 64)  # the HDF5 superblock
    os.utime(q, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    reference = deep_done(cfg, sites)
    assert reference.count(False) == 3

    scan = ledger.scan_sites(cfg, sites)
    assert [s for s, d in zip(sites, scan.done) if not d] == [gone, cut]
    assert scan.n_opened == 1  # only the changed file is opened
    reasons = {k: r for k, _, r in scan.problems}
    assert set(reasons) == {gone.key, cut.key}
    assert "missing" in reasons[gone.key] and "changed since recorded" in reasons[cut.key]

    assert status.main_status(_status_args(cfg, [])) == 0
    text = capsys.readouterr().out
    assert "2 site(s) recorded as done" in text and str(orch.pipeline.site_path(cfg, cut)) in text

    vscan = ledger.scan_sites(cfg, sites, verify=True, workers=2)
    assert vscan.done == reference
    assert {k for k, _, _ in vscan.problems} == {gone.key, cut.key, flipped.key}
    assert vscan.n_opened == len(sites) - 1  # every existing file
    st = status.collect_status(cfg, verify=True)
    assert (st.totals.done, st.totals.pending, len(st.damaged)) == (len(sites) - 3, 3, 3)
    assert orch.pending_sites(cfg, sites, verify=True) == [gone, cut, flipped]


def _status_args(cfg, extra):
    import argparse

    cfg_path = Path(cfg.source)
    p = argparse.ArgumentParser()
    status.add_status_arguments(p)
    return p.parse_args([str(cfg_path)] + extra)


def test_config_change_makes_every_site_pending_without_opening_files(finished, tmp_path):
    cfg, sites = finished
    new = load_config(write_cfg(tmp_path / "c2.yaml", cfg.out, zernike_degree=5))
    assert new.hash() != cfg.hash()
    scan = ledger.scan_sites(new, sites)
    assert scan.done == [False] * len(sites) == [
        sitefile.validate_site_file(orch.pipeline.site_path(new, s), new.hash()).ok for s in sites]
    assert scan.n_opened == 0 and scan.problems == []
    # one site redone under the new config: done for it, still pending for the old one
    w = ledger.LedgerWriter(new.out, "job_new")
    w.record(sites[0].key, write_site(new, sites[0]), new.hash())
    assert ledger.scan_sites(new, sites).done == [True] + [False] * (len(sites) - 1)
    old = ledger.scan_sites(cfg, sites)  # back to the first config: site 0's newest record is the new one's
    assert not old.done[0] and all(old.done[1:]) and old.problems == []


def test_cut_line_skipped_and_records_deduplicated(finished):
    cfg, sites = finished
    path = ledger.ledger_dir(cfg.out) / "job_0.tsv"
    line = path.read_text().splitlines()[0]
    with open(path, "a") as fh:
        fh.write(line[:-3])  # a kill in the middle of a line: all fields there, the end marker not
    w = ledger.LedgerWriter(cfg.out, "job_0")  # the requeued task: same file, ends the cut line first
    w.record(sites[0].key, orch.pipeline.site_path(cfg, sites[0]), cfg.hash())
    w.record(sites[0].key, orch.pipeline.site_path(cfg, sites[0]), cfg.hash())
    led = ledger.read_ledgers(cfg.out)
    assert led.n_bad_lines == 1 and led.n_lines == len(sites) + 3
    assert len(led.records) == len(sites)  # three records of one site count once
    scan = ledger.scan_sites(cfg, sites)
    assert scan.n_done == len(sites) and scan.n_opened == 0


def test_outputs_from_before_the_ledger_validated_once_then_recorded(finished):
    cfg, sites = finished
    for p in ledger.ledger_dir(cfg.out).iterdir():
        p.unlink()
    scan = ledger.scan_sites(cfg, sites)
    assert scan.n_done == len(sites) and scan.n_opened == len(sites) and len(scan.unrecorded) == len(sites)
    assert orch.pending_sites(cfg, sites, record_task="submit-x") == []  # what submit does: records them
    again = ledger.scan_sites(cfg, sites)
    assert again.n_done == len(sites) and again.n_opened == 0


def test_packed_plate_read_by_reduce_and_counted_done(finished):
    cfg, sites = finished
    before = R.discover_site_files(cfg.out)
    ref = {Path(p).name: R.read_site(p) for p in before}
    counts = pack_plate(cfg, "P1", sites)
    n1 = sum(s.plate == "P1" for s in sites)
    assert (counts["packed"], counts["from_loose"], counts["removed"]) == (n1, n1, n1)
    assert not list((cfg.out / "sites" / "P1").rglob("*.h5"))
    assert not [p for p in (cfg.out / "packed").iterdir() if p.name.startswith(".")]
    after = R.discover_site_files(cfg.out)
    assert len(after) == len(before) and sum(sitefile.PACK_SEP in p for p in after) == n1
    for p in after:  # the same numbers from the packed groups as from the loose files
        name = p.split(sitefile.PACK_SEP)[1] if sitefile.PACK_SEP in p else Path(p).name
        name = f"P1_{name}.h5" if sitefile.PACK_SEP in p else name
        names, values, numbers, attrs = R.read_site(p)
        rnames, rvalues, rnumbers, rattrs = ref[name]
        assert names == rnames and attrs["site"] == rattrs["site"]
        np.testing.assert_array_equal(values, rvalues)
        assert R.inspect_site_file(p, cfg.hash())["ok"]
    scan = ledger.scan_sites(cfg, sites)
    assert scan.n_done == len(sites) and scan.n_opened == 0
    assert all(orch.site_done(cfg, s) for s in sites)
    assert ledger.scan_sites(cfg, sites, verify=True, workers=1).n_done == len(sites)
    pack = sitefile.packed_path(cfg.out, "P1")
    assert "missing from the packed file" in sitefile.validate_site_file(sitefile.site_ref(pack, "Z99_s1")).reason
    # repacking carries the packed sites over; a damaged pack makes its sites pending and reported
    assert pack_plate(cfg, "P1", sites)["from_pack"] == n1
    os.truncate(pack, 100)
    scan = ledger.scan_sites(cfg, sites)
    assert scan.n_done == len(sites) - n1 and len(scan.problems) == n1


def test_site_files_digest_follows_the_ledger(finished, tmp_path):
    from hpc_profiler import run

    cfg, sites = finished
    d0 = run.site_files_digest(cfg)
    assert run.site_files_digest(cfg) == d0
    w = ledger.LedgerWriter(cfg.out, "job_0")  # a requeued task redoes a site: its file grows
    w.record(sites[2].key, orch.pipeline.site_path(cfg, sites[2]), cfg.hash())
    d1 = run.site_files_digest(cfg)
    assert d1 != d0
    other = load_config(write_cfg(tmp_path / "c3.yaml", cfg.out, zernike_degree=7))
    assert run.site_files_digest(other) != d1


def test_record_format_round_trip_and_refusals(tmp_path):
    rec = {"k": "P 1/B02/3", "f": "sites/P 1/B/P 1_B02_s3.h5", "size": 10, "mtime": 12345678901234567,
           "h": "abc", "s": 1.25, "t": 1.7e9, "i": "0123456789abcdef"}
    line = ledger.format_record(rec)
    assert line.endswith("\t.\n") and ledger.parse_record(line.rstrip("\n")) == rec
    assert ledger.parse_record(line[:-4]) is None and ledger.parse_record("x\ty") is None
    for cut in range(1, len(line) - 2):  # a kill may cut a line anywhere: no prefix parses
        assert ledger.parse_record(line[:cut]) is None, line[:cut]
    no_illum = {k: v for k, v in rec.items() if k != "i"}
    assert ledger.parse_record(ledger.format_record(no_illum).rstrip("\n"))["i"] == sitefile.ILLUM_NONE
    # a line of the format before the illumination digest (8 fields) still reads, digest unknown
    old = "\t".join(str(rec[k]) for k in ("k", "f", "size", "mtime", "h", "s", "t")) + "\t."
    assert ledger.parse_record(old) == dict(rec, i=None)
    with pytest.raises(ValueError, match="tab or a line break"):
        ledger.format_record(dict(rec, k="P\t1/B02/3"))


KILLER = r"""
import os, signal, sys
from hpc_profiler import ledger, orchestrate as orch
from hpc_profiler.config import load_config

calls = []
real = ledger.LedgerWriter.record

def record(self, *args, **kwargs):
    calls.append(args[0])
    if len(calls) == 2:  # the second site's file is in place: killed before its record
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)

ledger.LedgerWriter.record = record
cfg = load_config(sys.argv[1])
orch.run_extract_range(cfg, orch.manifest_path(cfg), 0, 4)
"""


def test_task_killed_between_file_and_record(tmp_path):
    """A real extract task killed after a site file's rename and before its ledger record."""
    from test_orchestrate import make_batch
    from test_orchestrate import write_config as write_orch_config

    batch = make_batch(tmp_path / "data")
    cfg_path = write_orch_config(tmp_path / "c.yaml", batch["csv"], tmp_path / "out", kind="debug",
                                 sections={"illumination": {"enabled": False},
                                           "features": {"families": ["Intensity"]}})
    cfg = load_config(cfg_path)
    sites = orch.load_or_build_manifest(cfg)
    env = dict(os.environ, SUBMITIT_LOCAL_JOB_ID="77")  # task id local-77, as a submitit local task
    proc = subprocess.run([sys.executable, "-c", KILLER, str(cfg_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    written = [orch.pipeline.site_path(cfg, s).exists() for s in sites]
    assert written[:2] == [True, True] and not any(written[2:])
    led = ledger.read_ledgers(cfg.out)
    assert set(led.records) == {sites[0].key}  # the second site has its file but no record

    scan = ledger.scan_sites(cfg, sites)
    assert scan.done == deep_done(cfg, sites) == [True, True] + [False] * (len(sites) - 2)
    assert scan.n_opened == 1 and scan.unrecorded == [(1, sites[1].key)]  # re-validated, not trusted blindly

    # the requeued task (same task id) skips both and records the second; nothing is done twice
    res = subprocess.run([sys.executable, "-c", "import sys; from hpc_profiler import orchestrate as o;"
                          "from hpc_profiler.config import load_config as l; c = l(sys.argv[1]);"
                          "import json; print(json.dumps(o.run_extract_range(c, o.manifest_path(c), 0, 4)))", str(cfg_path)],
                         env=env, capture_output=True, text=True, timeout=600, check=True)
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert (counts["done"], counts["skipped"], counts["failed"]) == (2, 2, 0)
    led = ledger.read_ledgers(cfg.out)
    assert set(led.records) == {s.key for s in sites[:4]}
    log = orch.read_worklog(cfg, "extract")
    done_keys = [r["key"] for r in log if r["status"] == "done"]  # the killed site was never logged done
    assert sorted(done_keys) == sorted(s.key for s in (sites[0], sites[2], sites[3]))
    assert sorted(r["key"] for r in log if r["status"] == "skipped") == sorted(s.key for s in sites[:2])
    scan = ledger.scan_sites(cfg, sites)
    assert scan.done == deep_done(cfg, sites) and scan.n_done == 4 and scan.n_opened == 0
    st = status.collect_status(cfg)
    assert (st.totals.done, st.totals.pending) == (4, len(sites) - 4)
    records = [ledger.parse_record(x) for x in (ledger.ledger_dir(cfg.out) / "local-77.tsv").read_text().splitlines()]
    assert all(r["h"] == cfg.hash() and r["f"].startswith("sites/") for r in records)


def test_manifest_rebuilt_only_when_the_loaddata_csv_changes(tmp_path):
    import csv as csv_mod

    from hpc_profiler.config import CPJUMP1_CHANNELS

    csv_path = tmp_path / "load_data.csv"

    def write_csv(n):
        with open(csv_path, "w", newline="") as fh:
            w = csv_mod.writer(fh)
            w.writerow(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
                       + [c for ch in CPJUMP1_CHANNELS for c in (f"FileName_Orig{ch}", f"PathName_Orig{ch}")])
            for i in range(n):
                w.writerow(["P1", "A01", i + 1] + [x for ch in CPJUMP1_CHANNELS for x in (f"s{i}_{ch}.tif", "img")])

    write_csv(3)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "m", "output_dir": str(tmp_path / "out"),
                                        "input": {"loaddata_csv": str(csv_path)},
                                        "illumination": {"enabled": False}}))
    cfg = load_config(cfg_path)
    assert not orch.manifest_is_current(cfg)
    assert orch.submit_stage(cfg, "extract", dry_run=True, kind="debug").n_total == 3
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    assert len(orch.manifest_columns(cfg, rebuild=True)) == 3 and orch.manifest_is_current(cfg)
    mtime = orch.manifest_path(cfg).stat().st_mtime_ns
    assert len(orch.manifest_columns(cfg, rebuild=True)) == 3
    assert orch.manifest_path(cfg).stat().st_mtime_ns == mtime  # the unchanged CSV is not parsed again
    write_csv(5)  # sites added to the input are picked up by the next submission
    assert not orch.manifest_is_current(cfg)
    assert orch.submit_stage(cfg, "extract", dry_run=True, kind="debug").n_total == 5
    cols = orch.manifest_columns(cfg, rebuild=True)
    assert len(cols) == 5 and [s.key for s in cols.select([4, 0])] == ["P1/A01/5", "P1/A01/1"]
    assert [s.key for s in orch.load_or_build_manifest(cfg)] == [f"P1/A01/{i}" for i in range(1, 6)]


def test_illum_dry_run_reads_the_saved_manifest_and_writes_nothing(tmp_path, monkeypatch):
    import csv as csv_mod

    from hpc_profiler.config import CPJUMP1_CHANNELS
    from hpc_profiler.workflow import sites as sites_mod

    csv_path = tmp_path / "load_data.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv_mod.writer(fh)
        w.writerow(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
                   + [c for ch in CPJUMP1_CHANNELS for c in (f"FileName_Orig{ch}", f"PathName_Orig{ch}")])
        for plate in ("P1", "P2"):
            w.writerow([plate, "A01", 1] + [x for ch in CPJUMP1_CHANNELS for x in (f"{plate}_{ch}.tif", "img")])
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "m", "output_dir": str(tmp_path / "out"),
                                        "input": {"loaddata_csv": str(csv_path)}}))
    cfg = load_config(cfg_path)
    assert orch.submit_stage(cfg, "illum", dry_run=True, kind="debug").n_total == 2
    assert not (tmp_path / "out").exists()  # no manifest yet: parsed, and nothing written
    orch.manifest_columns(cfg, rebuild=True)  # a real submission saves it

    def no_parse(_cfg):
        raise AssertionError("the LoadData CSV was parsed again")

    from hpc_profiler.workflow import arrays as arrays_mod

    monkeypatch.setattr(sites_mod, "build_manifest", no_parse)
    monkeypatch.setattr(arrays_mod, "build_manifest", no_parse, raising=False)
    assert orch.submit_stage(cfg, "illum", dry_run=True, kind="debug").n_scheduled == 2


def test_illum_pending_groups_sites_once(tmp_path):
    from hpc_profiler.config import CPJUMP1_CHANNELS

    cfg = load_config(write_cfg(tmp_path / "c.yaml", tmp_path / "out"))
    own = {ch: f"/illum/{ch}.npy" for ch in CPJUMP1_CHANNELS}
    files = {ch: "x.tif" for ch in CPJUMP1_CHANNELS}
    sites = ([Site("P2", "A01", i, files) for i in (1, 2)]                      # needs the illum stage
             + [Site("P1", "A01", i, files, own) for i in (1, 2)]               # CellProfiler's own functions
             + [Site("P3", "A01", 1, files, own), Site("P3", "B01", 1, files)])  # one site without
    assert orch.illum_pending(cfg, sites) == ["P2", "P3"]
    off = load_config(write_cfg(tmp_path / "c2.yaml", tmp_path / "out"))
    off.illumination.enabled = False
    assert orch.illum_pending(off, sites) == []


def test_redone_illumination_makes_exactly_that_plates_sites_pending(tmp_path):
    """A plate's illumination function redone with other inputs -> its sites pending; same function -> none.

    The real illum and extract task bodies on the tiny batch of test_orchestrate,
    illumination on: PLATE2 has two unreadable sites, so its function is made
    from 4 of 6 sites; fixing them redoes PLATE2's function (the image list is
    the same, the fixed images are read now) and every PLATE2 site extracted
    with the old function is out of date, while PLATE1's are not. The
    reference is the hand count (PLATE2's sites) and the deep check of each
    file against its plate's current function.
    """
    from test_orchestrate import fix_bad_files, make_batch
    from test_orchestrate import write_config as write_orch_config

    from hpc_profiler import illumination

    batch = make_batch(tmp_path / "data")
    cfg = load_config(write_orch_config(tmp_path / "c.yaml", batch["csv"], tmp_path / "out", kind="debug",
                                        sections={"features": {"families": ["Intensity"]}}))
    sites = orch.load_or_build_manifest(cfg)
    mpath = orch.manifest_path(cfg)
    plates = sorted({s.plate for s in sites})
    assert plates == ["PLATE1", "PLATE2"]
    for p in plates:
        assert orch.run_illum_plate(cfg, mpath, p)["done"] == 1
    digests = {p: ledger.plate_illum_digest(cfg, p) for p in plates}
    for p in plates:  # the digest the illum stage stored is that of the arrays the extract stage reads back
        assert digests[p] == ledger.function_digest(illumination.load_illum(orch.pipeline.illum_path(cfg, p)))
    first = orch.run_extract_range(cfg, mpath, 0, len(sites))
    assert (first["done"], first["failed"]) == (len(sites) - 2, 2)  # PLATE2's two bad sites
    bad = {s.key for s in sites if not orch.site_done(cfg, s)}
    assert len(bad) == 2 and all(k.startswith("PLATE2/") for k in bad)
    recs = ledger.read_ledgers(cfg.out).records
    assert {r["i"] for k, r in recs.items()} == set(digests.values())
    assert all(recs[s.key]["i"] == digests[s.plate] for s in sites if s.key not in bad)

    def pending(scan):
        return {s.key for s, d in zip(sites, scan.done) if not d}

    scan = ledger.scan_sites(cfg, sites)
    assert pending(scan) == bad and scan.n_opened == 0 and scan.n_illum_files == len(plates)

    # PLATE1's function redone from the same images: the same arrays, so nothing is out of date
    inode = orch.pipeline.illum_path(cfg, "PLATE1").stat().st_ino
    orch.pipeline.illum_plate(cfg, "PLATE1", sites, force=True)
    assert orch.pipeline.illum_path(cfg, "PLATE1").stat().st_ino != inode  # a new file renamed into place
    assert ledger.plate_illum_digest(cfg, "PLATE1") == digests["PLATE1"]
    scan = ledger.scan_sites(cfg, sites)
    assert pending(scan) == bad and scan.n_opened == 0 and scan.problems == [] and scan.illum_stale == {}

    # PLATE2's unreadable images fixed: its function is redone from 6 sites instead of 4
    fix_bad_files(batch)
    assert orch.illum_pending(cfg, sites) == ["PLATE2"]
    assert orch.run_illum_plate(cfg, mpath, "PLATE2")["done"] == 1
    new = ledger.plate_illum_digest(cfg, "PLATE2")
    assert new != digests["PLATE2"]
    plate2 = {s.key for s in sites if s.plate == "PLATE2"}
    scan = ledger.scan_sites(cfg, sites)
    assert pending(scan) == plate2  # exactly that plate's sites
    # from the ledger and one digest per plate: no site file opened, files read ~ tasks + plates
    assert (scan.n_opened, scan.n_illum_files, scan.problems) == (0, len(plates), [])
    assert scan.files_read == scan.n_ledger_files + len(plates)
    deep = {s.key for s in sites if not orch.site_done(cfg, s)}  # the deep check of every file agrees
    assert deep == plate2
    stale = sitefile.validate_site_file(orch.pipeline.site_path(cfg, sites[-1]), cfg.hash(), new)
    assert not stale.ok and "illumination function" in stale.reason and stale.illum_digest == digests["PLATE2"]
    assert pending(ledger.scan_sites(cfg, sites, verify=True, workers=1)) == plate2
    assert scan.illum_stale == {"PLATE2": len(plate2) - len(bad)}  # the 2 bad sites were never recorded
    st = status.collect_status(cfg)
    by_plate = {p.plate: p for p in st.plates}
    assert (by_plate["PLATE1"].done, by_plate["PLATE2"].done) == (6, 0)
    assert ("4 site(s) of plate(s) PLATE2 were made with an earlier illumination function"
            in status.format_status(st))
    assert orch.submit_stage(cfg, "extract", dry_run=True).n_scheduled == len(plate2)

    # the next extract redoes PLATE2's sites with the new function and skips PLATE1's
    again = orch.run_extract_range(cfg, mpath, 0, len(sites))
    assert (again["done"], again["skipped"], again["failed"]) == (len(plate2), len(sites) - len(plate2), 0)
    scan = ledger.scan_sites(cfg, sites)
    assert scan.n_done == len(sites) and scan.n_opened == 0
    assert all(sitefile.validate_site_file(orch.pipeline.site_path(cfg, s)).illum_digest == new
               for s in sites if s.plate == "PLATE2")


def test_illum_digest_of_files_without_the_attribute_and_of_own_functions(tmp_path):
    """A function file without ``function_digest`` (older, or from input.illum_dir) is digested from
    its arrays; a site made with CellProfiler's own functions is not compared with the plate's."""
    from hpc_profiler import illumination

    rng = np.random.default_rng(1)
    fns = {ch: rng.random((8, 8)).astype(np.float32) + 1 for ch in ("DNA", "ER")}
    path = illumination.save_illum(tmp_path / "P_illum.h5", fns)  # no attributes
    assert ledger.illum_file_digest(path) == ledger.function_digest(fns)
    assert ledger.function_digest(illumination.load_illum(path)) == ledger.function_digest(fns)
    # device arrays (the audit backend's, the CPU twin of CuPy's) digest as their host copies
    from hpc_profiler._audit import audit_backend

    bk = audit_backend()
    on_device = {ch: bk.asarray(a) for ch, a in fns.items()}
    assert not isinstance(on_device["DNA"], np.ndarray)
    assert ledger.function_digest(on_device) == ledger.function_digest(fns)
    assert ledger.function_digest({ch: a.astype(np.float64) for ch, a in fns.items()}) == ledger.function_digest(fns)
    fns2 = dict(fns, ER=fns["ER"] * 1.001)
    assert ledger.function_digest(fns2) != ledger.function_digest(fns)
    illumination.save_illum(path, fns2)
    assert ledger.illum_file_digest(path) == ledger.function_digest(fns2)  # a new version of the file
    assert ledger.illum_file_digest(tmp_path / "none.h5") is None
    # the matching rule: a site of the illum stage's function must match; one made with none is not compared
    assert sitefile.illum_matches("abc", "abc") and not sitefile.illum_matches("abc", "abd")
    assert sitefile.illum_matches(sitefile.ILLUM_NONE, "abd") and sitefile.illum_matches(None, "abd")
    assert sitefile.illum_matches("abc", None)
    own = Site("P", "A01", 1, {"DNA": "x"}, {"DNA": "/cp/IllumDNA.npy"})
    assert own.has_own_illum(["DNA"]) and not own.has_own_illum(["DNA", "ER"])


def _reference_loaddata(csv_path, channels) -> list:
    """The LoadData reading before the column-index reader: csv.DictReader, pathlib per file."""
    import csv as csv_mod

    base = Path(csv_path).resolve().parent

    def join(folder, name):
        p = Path(os.path.expanduser(folder)) if folder else Path()
        return str((p if p.is_absolute() else base / p) / name)

    out = []
    with open(csv_path, newline="") as fh:
        for row in csv_mod.DictReader(fh):
            files = {ch: join((row[f"PathName_Orig{ch}"] or "").strip(), (row[f"FileName_Orig{ch}"] or "").strip())
                     for ch in channels}
            out.append(Site(row["Metadata_Plate"].strip(), manifest_mod.normalize_well(row["Metadata_Well"]),
                            int(row["Metadata_Site"].strip()), files))
    return manifest_mod.sort_sites(out)


def test_loaddata_reader_equals_the_dictreader_reference(tmp_path):
    """Folders relative, absolute, with ``..``, ``.`` or a trailing slash, file names with a sub-folder,
    wells as ``b3``/``B03``, a blank line, a short row padded: the same sites as the reference reader;
    saved and loaded back (column-wise) the same again."""
    channels = ["DNA", "ER"]
    folders = ["img", "./img/", "../x/img", str(tmp_path / "abs"), str(tmp_path / "abs") + "/", "", "/"]
    lines = ["Metadata_Plate,Metadata_Well,Metadata_Site,FileName_OrigDNA,PathName_OrigDNA,FileName_OrigER,"
             "PathName_OrigER,Extra"]
    k = 0
    for p in ("P2", "P1"):
        for w in ("b3", "B04", "a12", "P24", "c1"):
            for s in (2, 1):
                k += 1
                f = folders[k % len(folders)]
                name = f"sub/{p}_{k}_DNA.tif" if k % 3 == 0 else f"{p}_{k}_DNA.tif"
                lines.append(f" {p} ,{w},{s},{name},{f},{p}_{k}_ER.tif,{folders[(k + 2) % len(folders)]},x")
    lines.insert(5, "")
    lines.append("P9,A01,1,a.tif,img,b.tif")  # short row: Extra missing
    csv_path = tmp_path / "ld" / "load_data.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("\n".join(lines) + "\n")
    got = manifest_mod.manifest_from_loaddata(csv_path, channels)
    ref = _reference_loaddata(csv_path, channels)
    assert len(got) == len(lines) - 2 and got == ref
    ld = tmp_path / "ld"
    assert {s.files["DNA"].rsplit("/", 1)[0] for s in got} >= {str(ld / "img"), str(ld / ".." / "x" / "img"),
                                                              str(tmp_path / "abs"), str(ld), ""}
    assert manifest_mod.load_manifest(manifest_mod.save_manifest(got, tmp_path / "m.parquet")) == ref


def test_run_counts_the_cells_of_the_sites_it_extracted_only(finished, monkeypatch):
    """``run``'s extract line: the cells of the sites it scheduled (opened: those), none when it scheduled none."""
    from types import SimpleNamespace

    from hpc_profiler.workflow import stages

    cfg, sites = finished
    bdir = cfg.out / "batches" / "extract-x"
    bdir.mkdir(parents=True)
    manifest_mod.save_manifest(sites[3:5], bdir / "sites.parquet")
    opened = []
    real = sitefile.read_site_file
    monkeypatch.setattr(sitefile, "read_site_file", lambda p, **k: opened.append(p) or real(p, **k))
    ctx = stages.RunContext(kind="debug", sites=sites)
    cells = stages.STAGES["extract"].cells(cfg, ctx, SimpleNamespace(n_scheduled=2, batch_dir=bdir))
    reference = sum(int(real(orch.pipeline.site_path(cfg, s)).image["Image_Count_Cells"]) for s in sites[3:5])
    assert cells == reference == 6 and len(opened) == 2
    assert stages.STAGES["extract"].cells(cfg, ctx, SimpleNamespace(n_scheduled=0, batch_dir=None)) is None
    assert len(opened) == 2

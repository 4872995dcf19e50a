"""The illum stage with unreadable images (issue 18): counted, bounded, and redone once fixed."""
from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from hpc_profiler import orchestrate, pipeline
from hpc_profiler.config import SynthConfig, from_dict
from hpc_profiler.synth import generate_batch

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("illum_bad")
    sc = SynthConfig(modalities=["compound"], replicate_plates=1, wells=8, sites_per_well=1, size=96,
                     cells_per_site=6, seed=5)
    generate_batch(sc, root / "synth", CHANNELS)
    return root / "synth"


def _cfg(tmp_path: Path, synth_dir: Path, **illum):
    return from_dict({
        "name": "illum_bad", "device": "cpu", "output_dir": str(tmp_path / "out"), "channels": CHANNELS,
        "input": {"loaddata_csv": str(synth_dir / "load_data.csv")},
        "illumination": {"downsample": 2, "median_filter_size": 5, **illum},
        "executor": {"kind": "local"},
    })


def _break(sites, k):
    """Overwrite the DNA image of the first ``k`` sites with garbage; returns {path: original bytes}."""
    saved = {}
    for s in sites[:k]:
        p = Path(s.files["DNA"])
        saved[p] = p.read_bytes()
        p.write_bytes(b"II*\x00" + b"\x07" * 40)
    return saved


def test_unreadable_images_are_failure_rows_and_a_fix_redoes_the_function(tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, max_unreadable_fraction=0.5)
    sites = orchestrate.load_or_build_manifest(cfg, rebuild=True)
    plate = sites[0].plate
    saved = _break(sites, 3)
    try:
        res = orchestrate.run_illum_plate(cfg, orchestrate.manifest_path(cfg), plate)
        assert res["done"] == 1 and res["unreadable"] == 3
        rows = [f for f in orchestrate.list_failures(cfg, "illum") if f.get("well")]
        assert len(rows) == 3
        assert sorted(str(p) for p in saved) == sorted(
            next(str(p) for p in saved if str(p) in r["message"]) for r in rows)  # each names its file
        with h5py.File(pipeline.illum_path(cfg, plate), "r") as f:
            assert f.attrs["n_skipped"] == 3 and f.attrs["n_sites"] == len(sites) - 3
        assert orchestrate.illum_done(cfg, plate, sites)
        assert orchestrate.illum_pending(cfg, sites) == []
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
    # the images are fixed: the function is stale and is made again from every site
    assert not orchestrate.illum_done(cfg, plate, sites)
    assert orchestrate.illum_pending(cfg, sites) == [plate]
    res = orchestrate.run_illum_plate(cfg, orchestrate.manifest_path(cfg), plate)
    assert res["done"] == 1 and res["unreadable"] == 0
    assert orchestrate.list_failures(cfg, "illum") == []
    with h5py.File(pipeline.illum_path(cfg, plate), "r") as f:
        assert f.attrs["n_skipped"] == 0 and f.attrs["n_sites"] == len(sites)
    assert orchestrate.illum_done(cfg, plate, sites)


def test_too_many_unreadable_images_fail_the_plate_and_write_nothing(tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir)  # default: at most 5 % of the plate
    sites = orchestrate.load_or_build_manifest(cfg, rebuild=True)
    plate = sites[0].plate
    saved = _break(sites, 3)
    try:
        res = orchestrate.run_illum_plate(cfg, orchestrate.manifest_path(cfg), plate)
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
    assert res["failed"] == 1 and res["unreadable"] == 3
    plate_row = [f for f in orchestrate.list_failures(cfg, "illum") if not f.get("well")]
    assert len(plate_row) == 1
    msg = plate_row[0]["message"]
    assert f"plate {plate}: 3 of {len(sites)} sites" in msg and "illumination.max_unreadable_fraction" in msg
    assert not pipeline.illum_path(cfg, plate).exists()

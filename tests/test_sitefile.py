"""Site files: HDF5 written atomically, validated before they are trusted."""
import multiprocessing as mp
import os

import h5py
import numpy as np
import pytest

from hpc_profiler import sitefile as S


def _write(path, n=3, value=1.0, hash_="h1", **kw):
    return S.write_site_file(
        path, plate="P1", well="B03", site=2, config_hash=hash_, backend="cpu",
        objects={
            "Cells": S.ObjectTable(["Cells_A", "Cells_B"], np.full((n, 2), value), np.arange(1, n + 1),
                                   {"Nuclei": np.arange(1, n + 1)}),
            "Nuclei": S.ObjectTable(["Nuclei_A"], np.zeros((n, 1)), np.arange(1, n + 1)),
        },
        image={"Image_Count_Cells": n}, labels={"Cells": np.eye(5, dtype=np.int32)}, timings={"features": 1.5}, **kw,
    )


def test_round_trip(tmp_path):
    p = _write(S.site_file_path(tmp_path, "P1", "B03", 2))
    assert p == tmp_path / "sites" / "P1" / "B" / "P1_B03_s2.h5"
    d = S.read_site_file(p, labels=True)
    assert d.attrs["plate"] == "P1" and d.attrs["complete"] and d.attrs["seconds_features"] == 1.5
    assert d.objects["Cells"].names == ["Cells_A", "Cells_B"]
    np.testing.assert_array_equal(d.objects["Cells"].parents["Nuclei"], [1, 2, 3])
    assert d.image == {"Image_Count_Cells": 3.0}
    np.testing.assert_array_equal(d.labels["Cells"], np.eye(5))
    t = S.read_cells_table(p)
    assert list(t.columns[:4]) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "ObjectNumber"]
    assert t.shape == (3, 4 + 3)
    assert os.listdir(p.parent) == [p.name]  # no temporary file left


def test_zero_objects_is_a_valid_file_with_zero_rows(tmp_path):
    p = _write(tmp_path / "z.h5", n=0)
    assert S.validate_site_file(p, "h1").ok
    t = S.read_cells_table(p)
    assert len(t) == 0 and "Cells_A" in t.columns


def test_validation_reasons(tmp_path):
    p = _write(tmp_path / "a.h5")
    assert S.validate_site_file(p, "h1").ok
    assert "stale" in S.validate_site_file(p, "other").reason
    assert S.validate_site_file(tmp_path / "none.h5").reason == "missing"
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    assert "unreadable" in S.validate_site_file(bad).reason
    with pytest.raises(OSError, match=str(bad)):
        S.read_site_file(bad)
    half = tmp_path / "half.h5"
    with h5py.File(half, "w") as f:  # a writer that died before setting the flag
        f.attrs["complete"] = False
        f.create_group("objects")
    assert "incomplete" in S.validate_site_file(half).reason
    with pytest.raises(OSError, match="incomplete"):
        S.read_site_file(half)


def test_failed_write_keeps_the_finished_file_and_leaves_no_temp(tmp_path):
    p = _write(tmp_path / "s.h5", value=1.0)

    class Boom(Exception):
        pass

    class BadTable(S.ObjectTable):
        @property
        def parents(self):
            raise Boom("disk full")

        @parents.setter
        def parents(self, v):
            pass

    with pytest.raises(Boom):
        S.write_site_file(p, plate="P1", well="B03", site=2, config_hash="h1", backend="cpu",
                          objects={"Cells": BadTable(["Cells_A"], np.zeros((1, 1)), [1])}, image={})
    assert S.validate_site_file(p, "h1").ok
    assert S.read_site_file(p).objects["Cells"].values[0, 0] == 1.0
    assert os.listdir(tmp_path) == ["s.h5"]


def _racer(path, value):
    _write(path, n=50, value=value)


def test_two_writers_racing_leave_one_valid_file(tmp_path):
    p = tmp_path / "race.h5"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_racer, args=(p, float(v))) for v in (1, 2, 3, 4)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(30)
        assert pr.exitcode == 0
    assert S.validate_site_file(p, "h1").ok
    vals = S.read_site_file(p).objects["Cells"].values
    assert len(np.unique(vals)) == 1 and vals[0, 0] in (1, 2, 3, 4)  # one writer's whole file
    assert os.listdir(tmp_path) == ["race.h5"]

"""scripts/bench_evaluate.py --replay-runs: a rank replayed alone does its live work and gets the live tables."""
from __future__ import annotations

import pickle

import pytest
from script_module import SCRIPTS, load_script

SCRIPT = SCRIPTS / "bench_evaluate.py"


def _bench():
    return load_script("bench_evaluate")


@pytest.mark.parametrize("n", [2, 3])
def test_replayed_ranks_give_the_one_process_tables(tmp_path, mpirun, n):
    be = _bench()
    df = be.issue_profiles(0.02, 40)  # 2 plates, 200 compounds: the issue's layout, small
    path = tmp_path / "profiles.parquet"
    df.to_parquet(path)
    rec = tmp_path / "rec"
    rec.mkdir()
    proc = mpirun([mpirun.python, SCRIPT, "--worker", path, "--case", "c", "--null-size", "2000", "--record", rec],
                  n=n, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ref = be.run_ours(df, "c", 2000)[2]
    for rank in range(n):
        with open(rec / f"rank{rank}.pkl", "rb") as fh:  # written by the run above
            records = pickle.load(fh)
        assert [name for name, _ in records] == ["allgather", "alltoall", "allgather"]
        res = be.run_ours(df, "c", 2000, be.ReplayComm(rank, n, records))
        assert res[2]["queries"].equals(ref["queries"])
        assert res[2]["classes"].equals(ref["classes"])
        assert res[2]["null_bytes_received"] > 0  # the nulls it needed came from the recording, not drawn again


def test_replay_stops_at_a_call_the_recording_does_not_have():
    be = _bench()
    comm = be.ReplayComm(0, 2, [("alltoall", pickle.dumps([{}, {}]))])
    with pytest.raises(RuntimeError, match="called allgather, the recording has alltoall"):
        comm.allgather([1])
    with pytest.raises(AttributeError):
        comm.Allgatherv

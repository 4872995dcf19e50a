"""The local test cluster works: a submitit array on the real Slurm, and mpi4py under mpirun.

These tests check the infrastructure the orchestration (test_orchestrate.py)
and the MPI stages rely on, so a failure here points at the machine, not the
pipeline.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def _square_plus_task(x: int) -> tuple[int, str]:
    import os

    return x * x + 1, os.environ.get("SLURM_ARRAY_TASK_ID", "")


@pytest.mark.slurm
def test_submitit_map_array_on_local_slurm(local_slurm, tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    # the job unpickles _square_plus_task by reference: make this module importable there
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    ex = submitit.AutoExecutor(folder=tmp_path / "logs" / "%j", cluster="slurm")
    ex.update_parameters(
        timeout_min=5,
        slurm_partition=local_slurm.partition,
        cpus_per_task=1,
        mem_gb=0.5,
        slurm_array_parallelism=4,
    )
    inputs = [3, 5, 7]
    jobs = ex.map_array(_square_plus_task, inputs)
    assert len(jobs) == 3
    results = [j.result() for j in jobs]
    assert [r[0] for r in results] == [x * x + 1 for x in inputs]
    # each ran as one task of the same Slurm array
    assert sorted(r[1] for r in results) == ["0", "1", "2"]
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1


@pytest.mark.mpi
def test_mpirun_two_ranks_allgather(mpirun):
    code = (
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        "got = c.allgather(c.Get_rank() * 10)\n"
        "seen = c.gather((c.Get_rank(), c.Get_size(), got), root=0)\n"
        "if c.Get_rank() == 0:\n"
        "    print('RESULT', repr(seen), flush=True)\n"
    )
    proc = mpirun([mpirun.python, "-c", code], n=2, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert lines == ["RESULT [(0, 2, [0, 10]), (1, 2, [0, 10])]"], proc.stdout + proc.stderr

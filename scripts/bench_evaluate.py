#!/usr/bin/env python
"""Benchmark of the evaluate stage: AP, p-values and class mAP p-values, ours vs copairs 0.5.5, on 1, 2, 4 MPI ranks.

    python scripts/bench_evaluate.py                       # (a) CPJUMP1 size and (c) at --scale 0.2
    python scripts/bench_evaluate.py --cases c --scale 1.0 --repeat 2 --phases  # the issue's set (56,400 wells)
    python scripts/bench_evaluate.py --cases c --scale 1.0 --repeat 3 --replay-runs 6 --phases  # + ranks replayed alone
    python scripts/bench_evaluate.py --cases b --scale 1.0 --repeat 1   # (b) at JUMP scale (about 53,500 wells)
    python scripts/bench_evaluate.py --null-size 20000 --skip-copairs-b

Cases, all at ``--null-size`` (default 100,000 permutations):

(a) CPJUMP1 size: one modality, 4 replicate plates of 364 wells (1,456 wells,
    300 compounds, 64 negative controls per plate); replicate retrieval
    against all negative controls of the plate type (task 1).
(b) JUMP scale: 5,000 compounds x 4-14 replicates on 384-well plates with 64
    negative controls each (about 54,000 wells at ``--scale 1``); positives on
    other plates, negatives the controls of the same plate (JUMP's layout);
    varying replicate and control counts give hundreds of null configurations.
(c) the set of issue 15 at ``--scale 1``: 100 plates of 564 wells (56,400),
    10,000 compounds with 3-8 replicates (5 on average) and 56-64 negative
    controls per plate, the task of (b); ``--scale`` scales plates and
    compounds.

For each case, in this process: copairs (``average_precision`` +
``p_values`` + ``mean_average_precision``, i.e. the class mAP permutation
p-value and BH, fresh null cache) and ours (:func:`evaluate_profiles` with the
default ``class_significance: map_permutation``, which also does the per-query
BH, the summary and the normalized AP), the ratio copairs/ours; then ours in
fresh processes under ``mpirun -n 1``, ``-n 2`` and ``-n 4`` (time after
reading, from the ranks' barrier, slowest rank; the per-phase seconds of the
slowest rank and of every rank (``comm``: seconds inside collectives, i.e.
transfers plus waiting for slower ranks, part of the other phases), the
numba start-up of a rank before the barrier (``kernel_load_s``, not in the
times: ``hpc-profiler evaluate`` pays it once per rank before reading the
profiles), and the bytes of nulls a rank received for the class p-values),
and the parallel efficiency ``t1 / (n tn)``; the runs of ``--repeat`` are
interleaved (1, 2, 4 ranks, then again), so a slow spell of other load
touches every rank count alike. ``--phases`` prints the seconds of every
phase of every rank (wall, CPU in brackets: ``ap`` AP of the rank's queries,
``nulls`` drawing the nulls it owns, ``p_values``, ``class_p`` class mAP
p-values, ``*_gather`` / ``null_exchange`` the collectives, i.e. waiting for
the slowest rank, ``write`` the rank's share of the output files). Waiting
under other load is inflated with the rest; the load-steady reading is
``path_efficiency_n``: CPU seconds of work of 1 rank over ``n`` x the
critical path of ``n`` ranks (the work, not the waiting, of the busiest rank
between each two synchronization points: the wall time on idle cores).
``machine_efficiency_2`` is ``t1`` over the time of two 1-rank runs at once
(``--solo``): the efficiency two ranks would have if sharing the machine's
cores (caches, memory bandwidth, clock) were the only loss; the code's
efficiency cannot exceed it. ``median_efficiency_2`` is the same ratio from
the medians of the interleaved runs (the typical run, where ``efficiency_2``
is the best against the best); ``page_faults`` the minor page faults of the
busiest rank's evaluation. ``--heap-ab`` also times ``mpirun -n 1`` and
``-n 2`` with glibc's default heap (``HPC_PROFILER_RETAIN_FREED_MEMORY=0``,
:mod:`hpc_profiler.heap` off), interleaved with the others:
``heap_off_*``. ``launcher_s`` is ``mpirun -n 2 true`` alone
(:func:`launcher_time`), part of every whole-command time.

``--replay-runs K`` measures the ranks without the machine in the way: an
``mpirun -n 2`` (and ``-n 4``) run records what every collective returned on
every rank (:class:`RecordingComm`), then each rank runs again alone in a
fresh process, its collectives answered from the recording
(:class:`ReplayComm`: the same splits and the same data from the other
ranks, so the same work and the same tables; the pickling of what it sends
and the unpickling of what it receives are kept, transfers and waiting are
not). The slowest replayed rank is the N-rank time on cores that do not slow
each other, the "quiet machine" a shared 2-vCPU VM is not (there two
independent copies of one 1-rank run slow each other: ``machine_efficiency_2``).
``replay_efficiency_N`` = best ``mpirun -n 1`` / (N x best slowest replayed
rank), K interleaved runs; ``replay_median_efficiency_N`` from the medians. ``efficiency_write_n`` includes writing the
tables (Parquet and CSV, split over the ranks), as ``hpc-profiler evaluate``
does. With fewer cores than ranks
(``os.cpu_count()``), the ranks share cores and the 4-rank row says
``oversubscribed``: its efficiency then measures the machine, not the code.
Every timing is
the best of ``--repeat`` runs (other load on a shared machine only adds time);
wall and CPU seconds of the process are both printed (copairs runs threads,
ours one thread per rank), since the CPU ratio is steadier under other load;
likewise ``cpu_efficiency_n`` = CPU seconds of 1 rank / (n x CPU seconds of
the busiest of n ranks), which shows how evenly the work is divided even when
other jobs take the cores (it does not see time spent waiting).
BLAS is single-threaded for ours (one rank = one core: the ranks through
OMP/OPENBLAS_NUM_THREADS unless the caller set them, the in-process run
through threadpoolctl); copairs runs with its defaults (its thread pool, BLAS
threads). Nothing is asserted; the machine's other load shows in the numbers.

The whole command (``cmd`` columns, :func:`command_time`): ``mpirun -n N
hpc-profiler evaluate CONFIG --profiles P --out D`` with plots off, timed
from outside from the start of ``mpirun`` to its exit: launching the ranks,
the interpreter and imports, the CLI's preflight, ``MPI_Init``, the numba
kernels, reading the Parquet table, the evaluation, writing Parquet and CSV
and the exit; the profiles file is written once before (not timed). This is
what a user waits for; the ``mpirun -n N`` rows above time only
:func:`evaluate_profiles` plus writing, from a barrier after reading. Every
rank also reports its wall and CPU seconds per stage (``startup``: the
process's CPU time when :func:`~hpc_profiler.evaluate.run.main_evaluate`
starts, i.e. interpreter, imports, argument parsing, preflight; then
``mpi_start``, ``config``, ``kernels``, ``read``, ``evaluate``, ``write``,
``final_barrier``); the stage table prints them for each rank and
``added_N``, the CPU seconds N ranks spend beyond 1 rank per stage (work
every rank does in full, per-rank set-up, and waiting in collectives, which
MPI spends polling). ``cmd_efficiency_N`` = ``t1 / (N tN)`` of the whole
command; ``cmd_cpu_efficiency_N`` the same from CPU seconds (busiest rank),
steadier under other load; ``cmd_serial_cpu_N`` the sum of ``added_N``;
``copairs_over_cmd1`` copairs' time (in process, reading excluded) over
the whole 1-rank command.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# one rank = one core: the mpirun ranks start with single-threaded BLAS unless the caller chose otherwise
# (NumPy is loaded already, so this process's own BLAS is limited around our runs: one_thread())
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")


def one_thread():
    """Single-threaded BLAS in this process (threadpoolctl), for our in-process run; copairs keeps its defaults."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then the in-process row uses BLAS's default threads (the mpirun rows do not)
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")

REPO = Path(__file__).resolve().parents[1]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
sys.path.insert(0, str(REPO))

from hpc_profiler.config import EvalTaskConfig, EvaluateConfig  # noqa: E402
from hpc_profiler.evaluate.synth import synthetic_profiles  # noqa: E402

TRT_OR_NEGCON = [{"Metadata_pert_type": ["trt"]}, {"Metadata_control_type": ["negcon"]}]


def jump_scale_profiles(scale: float, n_features: int, seed: int = 0) -> pd.DataFrame:
    """5,000 x scale compounds, 4-14 replicates each, 320 treated + 56-64 control wells per plate."""
    rng = np.random.default_rng(seed)
    n_cls = max(10, int(5000 * scale))
    reps = rng.integers(4, 15, n_cls)
    n_trt = np.diff(np.append(np.arange(0, reps.sum(), 320), reps.sum()))
    return _plate_profiles(rng, reps, n_trt, None, n_features)  # 56-64 controls drawn plate by plate


#: The issue's JUMP-scale set (issue 15): wells, classes, plates.
ISSUE_WELLS, ISSUE_CLASSES, ISSUE_PLATES = 56_400, 10_000, 100


def issue_profiles(scale: float, n_features: int, seed: int = 0) -> pd.DataFrame:
    """The issue's set: 100 plates x 564 wells (56,400), 10,000 compounds, at ``scale`` (plates and classes).

    Each plate has 56-64 negative-control wells (some fail QC) and 500-508
    treated wells; the 10,000 compounds have 3-8 replicates each (5 on
    average, adjusted to fill the treated wells exactly), spread at random
    over the plates, so replicate and control counts vary: hundreds of null
    configurations, as in (b).
    """
    rng = np.random.default_rng(seed)
    n_plates = max(2, round(ISSUE_PLATES * scale))
    n_cls = max(10, round(ISSUE_CLASSES * scale))
    per_plate = ISSUE_WELLS // ISSUE_PLATES
    n_ctl = rng.integers(56, 65, n_plates)
    n_trt = per_plate - n_ctl
    reps = rng.integers(3, 9, n_cls)
    diff = int(n_trt.sum() - reps.sum())  # move single replicates until the counts fill the plates exactly
    while diff:
        i = int(rng.integers(n_cls))
        step = 1 if diff > 0 else -1
        if 3 <= reps[i] + step <= 8:
            reps[i] += step
            diff -= step
    return _plate_profiles(rng, reps, n_trt, n_ctl, n_features)


def _plate_profiles(rng, reps: np.ndarray, n_trt: np.ndarray, n_ctl, n_features: int) -> pd.DataFrame:
    """Compounds with ``reps`` replicate wells shuffled over plates of ``n_trt`` treated + ``n_ctl`` control wells.

    ``n_ctl`` None: 56-64 controls drawn plate by plate (case (b)'s random stream, unchanged).
    """
    n_cls = len(reps)
    wells = np.repeat(np.arange(n_cls), reps)
    rng.shuffle(wells)
    rows_meta, blocks = [], []
    effects = rng.normal(size=(n_cls, n_features)) * rng.uniform(0, 0.6, n_cls)[:, None]
    start = np.concatenate([[0], np.cumsum(n_trt)])
    n_ctl = [None] * len(n_trt) if n_ctl is None else list(n_ctl)
    for p in range(len(n_trt)):
        cls = wells[start[p] : start[p + 1]]
        if n_ctl[p] is None:
            n_ctl[p] = int(rng.integers(56, 65))  # some control wells fail QC
        x = rng.normal(size=(len(cls) + n_ctl[p], n_features)) + 0.3 * rng.normal(size=n_features)
        x[: len(cls)] += effects[cls]
        blocks.append(x)
        rows_meta.append(pd.DataFrame({
            "Metadata_Plate": f"P{p:04d}",
            "Metadata_Well": [f"W{i:03d}" for i in range(len(cls) + n_ctl[p])],
            "Metadata_broad_sample": [f"BRD-{c:05d}" for c in cls] + ["DMSO"] * int(n_ctl[p]),
            "Metadata_pert_type": ["trt"] * len(cls) + ["control"] * int(n_ctl[p]),
            "Metadata_control_type": [""] * len(cls) + ["negcon"] * int(n_ctl[p]),
        }))
    meta = pd.concat(rows_meta, ignore_index=True)
    feats = pd.DataFrame(np.concatenate(blocks), columns=[f"F{i:03d}" for i in range(n_features)])
    return pd.concat([meta, feats], axis=1)


def task_for(case: str) -> EvalTaskConfig:
    """Task of case (a): replicate retrieval against all controls; (b) and (c): against the plate's controls."""
    if case == "a":
        return EvalTaskConfig(subset=TRT_OR_NEGCON, queries=[{"Metadata_pert_type": ["trt"]}], group_by=[])
    return EvalTaskConfig(subset=TRT_OR_NEGCON, queries=[{"Metadata_pert_type": ["trt"]}], group_by=[],
                          neg_sameby=["Metadata_Plate"])


def phase_table(best: dict) -> str:
    """Seconds per phase and rank (wall, and CPU in brackets) of the best ``mpirun -n N`` runs, one row per phase."""
    cols, rows = {}, {}
    for n, r in sorted(best.items()):
        for i, ph in enumerate(r["phases_per_rank"]):
            cols[(n, i)] = ph
    names = [k for k in next(iter(cols.values())) if not k.endswith("_cpu")]
    for k in names:
        if any(ph.get(k, 0) >= 0.005 for ph in cols.values()):
            rows[k] = [f"{ph[k]:.2f} ({ph[k + '_cpu']:.2f})" for ph in cols.values()]
    table = pd.DataFrame(rows, index=[f"n{n}r{i}" for n, i in cols]).T
    return table.to_string()


def ecfg_for(case: str, null_size: int) -> EvaluateConfig:
    return EvaluateConfig(null_size=null_size, seed=0, tasks=["bench"], definitions={"bench": task_for(case)},
                          plots=False)


def run_copairs(df: pd.DataFrame, case: str, null_size: int) -> tuple[float, float, pd.DataFrame]:
    """copairs average_precision + p_values with a fresh null cache; wall and CPU seconds, the AP table."""
    import importlib

    from copairs.map import average_precision
    from copairs.matching import assign_reference_index

    from copairs.map import mean_average_precision

    p_values = importlib.import_module("copairs.map.average_precision").p_values
    home = os.environ.get("HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HOME"] = tmp  # copairs caches nulls under ~/.copairs
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            d = df.loc[(df["Metadata_pert_type"] == "trt") | (df["Metadata_control_type"] == "negcon")]
            d = assign_reference_index(d.reset_index(drop=True), "Metadata_control_type == 'negcon'")
            meta = d.filter(like="Metadata_")
            feats = d[[c for c in d.columns if not c.startswith("Metadata_")]].to_numpy()
            ref = ["Metadata_broad_sample", "Metadata_Reference_Index"]
            res = average_precision(meta, feats, ref, ["Metadata_Plate"], ["Metadata_Plate"] if case != "a" else [],
                                    ref, progress_bar=False)
            res = res.loc[res["Metadata_pert_type"] == "trt"].reset_index(drop=True)
            res["p_value"] = p_values(res, null_size, 0, progress_bar=False)
            cls = mean_average_precision(res, ["Metadata_broad_sample"], null_size=null_size, threshold=0.05, seed=0,
                                         progress_bar=False)
            res.attrs["n_retrieved"] = int(cls["below_corrected_p"].sum())
            return time.perf_counter() - t0, time.process_time() - c0, res
        finally:
            if home is not None:
                os.environ["HOME"] = home


def run_ours(df: pd.DataFrame, case: str, null_size: int, comm=None) -> tuple[float, float, dict]:
    """Our evaluate_profiles on one task; wall and CPU seconds, the result tables."""
    from hpc_profiler.evaluate.run import evaluate_profiles

    t0, c0 = time.perf_counter(), time.process_time()
    res = evaluate_profiles(df, ecfg_for(case, null_size), comm)
    return time.perf_counter() - t0, time.process_time() - c0, res


class RecordingComm:
    """A rank's communicator that keeps what every collective returned (``--replay``'s recording run)."""

    COLLECTIVES = ("allgather", "alltoall", "bcast", "allreduce", "gather", "scatter")

    def __init__(self, comm):
        self._comm, self.records = comm, []

    def Get_rank(self) -> int:
        return self._comm.Get_rank()

    def Get_size(self) -> int:
        return self._comm.Get_size()

    def barrier(self) -> None:
        self._comm.barrier()
        self.records.append(("barrier", None))

    def __getattr__(self, name):
        fn = getattr(self._comm, name)
        if name not in self.COLLECTIVES:
            return fn

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.records.append((name, pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)))
            return out

        return call


class ReplayComm:
    """One rank of a recorded run, alone: each collective returns what it returned in that run.

    The rank's own work is the same (same splits, same data from the other
    ranks), but no other rank shares the machine: its time is what the rank
    would take on a core of its own. The send side is still serialized and
    the received objects unpickled inside the call, as mpi4py does; only the
    transfer and the waiting are left out.
    """

    def __init__(self, rank: int, size: int, records: list):
        self._rank, self._size, self._records = rank, size, list(records)

    def Get_rank(self) -> int:
        return self._rank

    def Get_size(self) -> int:
        return self._size

    def _next(self, name: str):
        got, data = self._records.pop(0)
        if got != name:
            raise RuntimeError(f"replay: the rank called {name}, the recording has {got}")
        return data

    def barrier(self) -> None:
        self._next("barrier")

    def __getattr__(self, name):
        if name not in RecordingComm.COLLECTIVES:
            raise AttributeError(name)

        def call(obj=None, *args, **kwargs):
            pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # the send side's serialization
            return pickle.loads(self._next(name))

        return call


def replay_worker(path: str, case: str, null_size: int, record_dir: str, rank: int, size: int) -> None:
    """Rank ``rank`` of a recorded ``mpirun -n size`` run, alone in this process: read, then the timed evaluation.

    Reads only the recording this benchmark wrote itself (its own temporary folder).
    """
    from hpc_profiler import heap
    from hpc_profiler.evaluate import nulls

    heap.retain_freed_memory()
    nulls.load_kernels()
    with open(Path(record_dir) / f"rank{rank}.pkl", "rb") as fh:
        records = pickle.load(fh)
    df = pd.read_parquet(path)
    t, cpu, res = run_ours(df, case, null_size, ReplayComm(rank, size, records))
    print(json.dumps({"seconds": t, "cpu_seconds": cpu, "phases": {k: round(v, 3) for k, v in res["seconds"].items()}}))


def worker(path: str, case: str, null_size: int, solo: bool = False, record_dir: str | None = None) -> None:
    """Body of one mpirun rank: read, barrier, time evaluate_profiles and writing the tables, report from rank 0.

    ``solo``: every rank runs the whole evaluation alone (one-process
    communicator) at the same time as the others: the 1-rank time when the
    machine's cores are all busy (shared caches, memory bandwidth, clock).
    """
    from hpc_profiler import heap, mpi
    from hpc_profiler.evaluate import nulls
    from hpc_profiler.evaluate.run import write_outputs

    heap.retain_freed_memory()  # as hpc-profiler evaluate does at its start (off with heap.ENV=0)
    comm = mpi.get_comm()
    load = nulls.load_kernels()  # numba start-up of the rank, as hpc-profiler evaluate does before reading
    df = pd.read_parquet(path)
    comm.barrier()
    import resource

    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    eval_comm = mpi.SerialComm() if solo else (RecordingComm(comm) if record_dir else comm)
    t, cpu, res = run_ours(df, case, null_size, eval_comm)
    if record_dir:  # what the collectives returned, for --replay (this benchmark's own folder)
        with open(Path(record_dir) / f"rank{comm.Get_rank()}.pkl", "wb") as fh:
            pickle.dump(eval_comm.records, fh, protocol=pickle.HIGHEST_PROTOCOL)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0  # page faults of the evaluation
    ecfg = ecfg_for(case, null_size)
    with tempfile.TemporaryDirectory() as tmp:  # as hpc-profiler evaluate writes them (plots off, as configured)
        out = Path(comm.bcast(tmp if comm.Get_rank() == 0 else None, root=0)) if not solo else Path(tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        write_outputs(res, out, ecfg.csv, ecfg.plots, mpi.SerialComm() if solo else comm)
        w, wc = time.perf_counter() - t0, time.process_time() - c0
        comm.barrier()  # the other ranks' files are written before rank 0 removes the folder
        tw = t + time.perf_counter() - t0
    secs = {**res["seconds"], "write": w, "write_cpu": wc}
    info = comm.gather((t, secs, res["null_bytes_received"], cpu, load, tw, res["work_segments"] + [wc], faults),
                       root=0)
    if comm.Get_rank() == 0:
        seg = np.array([i[6] for i in info])
        print(json.dumps({"seconds": max(i[0] for i in info), "seconds_with_write": max(i[5] for i in info),
                          "cpu_seconds": max(i[3] for i in info),
                          # CPU seconds of work (not waiting) between synchronization points, busiest rank each
                          "path_cpu": float(seg[:, :-1].max(axis=0).sum()), "path_cpu_with_write": float(
                              seg.max(axis=0).sum()),
                          "kernel_load_s": round(max(i[4] for i in info), 2),
                          "page_faults": max(i[7] for i in info),
                          "queries": len(res["queries"]),
                          "phases": {k: round(max(i[1][k] for i in info), 3) for k in info[0][1]},
                          "phases_per_rank": [{k: round(v, 3) for k, v in i[1].items()} for i in info],
                          "null_mb_received": round(max(i[2] for i in info) / 2**20, 1)}))


def mpi_time(path: Path, case: str, null_size: int, n: int, solo: bool = False, extra_env=None,
             record_dir: Path | None = None) -> dict | None:
    if shutil.which("mpirun") is None or importlib.util.find_spec("mpi4py") is None:
        return None
    env = {**os.environ, **MPI_ENV, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **(extra_env or {})}
    cmd = ["mpirun", "-n", str(n), "--oversubscribe", sys.executable, __file__, "--worker", str(path),
           "--case", case, "--null-size", str(null_size)] + (["--solo"] if solo else []) + (
              ["--record", str(record_dir)] if record_dir else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def replay_time(path: Path, case: str, null_size: int, n: int) -> list[dict] | None:
    """``mpirun -n n`` recording what each rank's collectives returned, then every rank replayed alone.

    Each rank runs again in a fresh process of its own, one after the
    other (:class:`ReplayComm`): the same work, but with no other rank on
    the machine. The slowest replayed rank is the 2-rank time on cores that
    do not slow each other (transfers and waiting left out; the send
    side's pickling and the receive side's unpickling kept).
    """
    with tempfile.TemporaryDirectory() as tmp:
        if mpi_time(path, case, null_size, n, record_dir=Path(tmp)) is None:
            return None
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        for key in list(env):
            if key.startswith(("OMPI_", "PMI", "PMIX")):  # a plain process: not under the launcher
                env.pop(key)
        out = []
        for r in range(n):
            cmd = [sys.executable, __file__, "--replay", tmp, "--replay-rank", str(r), "--replay-size", str(n),
                   "--worker", str(path), "--case", case, "--null-size", str(null_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr, file=sys.stderr)
                return None
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


#: Turns :func:`hpc_profiler.heap.retain_freed_memory` off in a rank (``--heap-ab``).
HEAP_ENV = "HPC_PROFILER_RETAIN_FREED_MEMORY"


def launcher_time(repeat: int) -> float | None:
    """Best wall seconds of ``mpirun -n 2 true``: the launcher's own start and exit, in every ``cmd`` time.

    Open MPI's PMIx tries munge authentication first; where munge is installed
    but ``munged`` is not running it retries for ~2.3 s on every ``mpirun``
    (and every singleton ``MPI_Init``). A run that prints over 1 s here says
    so; ``PMIX_MCA_psec=native`` or a running ``munged`` removes it.
    """
    if shutil.which("mpirun") is None:
        return None
    env = {**os.environ, **MPI_ENV}
    best = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        proc = subprocess.run(["mpirun", "-n", "2", "--oversubscribe", "true"], capture_output=True, env=env,
                              timeout=600)
        t = time.perf_counter() - t0
        if proc.returncode == 0:
            best = t if best is None else min(best, t)
    if best is not None:
        print(f"launcher: mpirun -n 2 true takes {best:.2f} s"
              + (" (over 1 s: is munged down? PMIx retries munge; PMIX_MCA_psec=native avoids it)"
                 if best > 1.0 else ""), flush=True)
    return best


#: Stages of one rank of ``hpc-profiler evaluate`` (:class:`hpc_profiler.evaluate.run.StageTimes`), in order.
STAGES = ("startup", "mpi_start", "config", "kernels", "read", "evaluate", "write", "final_barrier")


def command_config(folder: Path, case: str, null_size: int) -> Path:
    """The YAML config of case ``case`` for ``hpc-profiler evaluate`` (the task of :func:`task_for`, no plots)."""
    import dataclasses

    import yaml

    task = {k: v for k, v in dataclasses.asdict(task_for(case)).items()}
    cfg = {"output_dir": str(folder / "out"),
           "evaluate": {"null_size": null_size, "seed": 0, "tasks": ["bench"], "definitions": {"bench": task},
                        "plots": False}}
    path = folder / f"evaluate_{case}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def command_time(path: Path, case: str, null_size: int, n: int) -> dict | None:
    """``mpirun -n n hpc-profiler evaluate CONFIG --profiles PATH --out DIR``: the whole command a user waits for.

    ``seconds``: wall seconds of the ``mpirun`` process, from its start to
    its exit (launch, interpreter and imports, ``MPI_Init``, config, numba
    kernels, reading the Parquet table, the evaluation, writing Parquet and
    CSV, the final barrier, the exit). Every rank also reports its wall and
    CPU seconds per stage (:data:`STAGES`, ``HPC_PROFILER_EVALUATE_TIMES``).
    """
    exe = shutil.which("hpc-profiler") or str(Path(sys.executable).with_name("hpc-profiler"))
    if shutil.which("mpirun") is None or importlib.util.find_spec("mpi4py") is None or not Path(exe).exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        times = tmp / "times"
        times.mkdir()
        cfg = command_config(tmp, case, null_size)
        env = {**os.environ, **MPI_ENV, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "HPC_PROFILER_EVALUATE_TIMES": str(times)}
        cmd = ["mpirun", "-n", str(n), "--oversubscribe", exe, "evaluate", str(cfg), "--profiles", str(path),
               "--out", str(tmp / "evaluate")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return None
        ranks = [json.loads((times / f"rank{r}.json").read_text()) for r in range(n)]
    cpu = [{k: r["stages"][k]["cpu"] for k in STAGES} for r in ranks]
    return {"seconds": wall, "ranks": ranks, "stage_cpu": cpu, "cpu_seconds": max(sum(c.values()) for c in cpu),
            "evaluate_s": max(r["stages"]["evaluate"]["wall"] for r in ranks)}


def stage_table(cmd: dict) -> str:
    """CPU seconds per stage and rank of the ``hpc-profiler evaluate`` runs, and what ``n`` ranks add over 1.

    ``added_n`` is the sum over the ``n`` ranks minus the 1-rank seconds: the
    work that does not halve (every rank does it in full, or it is overhead:
    set-up per rank, collectives, waiting in them). Waiting in MPI polls, so it
    is CPU time here; other load on the machine inflates it.
    """
    rows = {}
    for k in STAGES:
        row = {}
        for n, r in sorted(cmd.items()):
            for i, c in enumerate(r["stage_cpu"]):
                row[f"n{n}r{i}"] = round(c[k], 3)
            if n > 1 and 1 in cmd:
                row[f"added_{n}"] = round(sum(c[k] for c in r["stage_cpu"]) - cmd[1]["stage_cpu"][0][k], 3)
        rows[k] = row
    table = pd.DataFrame(rows).T
    table.loc["total"] = table.sum()
    return table.to_string()


def comm_per_rank(queries: pd.DataFrame, class_by: list[str], null_size: int, n_ranks: int) -> dict:
    """Bytes one rank receives per phase at ``n_ranks`` (the largest over ranks), from the run's own tables.

    Replays the decisions of :mod:`hpc_profiler.evaluate.run` without MPI:
    null owners by :func:`hpc_profiler.mpi.split_balanced` over
    :func:`~hpc_profiler.evaluate.nulls.null_cost`, classes by
    :func:`~hpc_profiler.evaluate.run.class_partition` over
    :func:`~hpc_profiler.evaluate.run.class_costs`. Phases: AP table
    allgather (row, AP, n_pos, n_total: 32 B per query from the other ranks),
    p-value allgather (16 B per query), nulls for the class p-values (4 B x
    null size per configuration a rank's classes need and another rank owns),
    class p-value allgather (16 B per class). Pickle headers are left out.
    """
    from hpc_profiler import mpi
    from hpc_profiler.evaluate import nulls
    from hpc_profiler.evaluate.run import class_costs, class_partition

    v = queries.loc[queries["n_pos_pairs"] > 0]
    q = len(v)
    conf_arr, vix = np.unique(v[["n_pos_pairs", "n_total_pairs"]].to_numpy(np.int64), axis=0, return_inverse=True)
    vix = vix.ravel()
    owner = np.empty(len(conf_arr), dtype=np.int64)
    for r, idx in enumerate(mpi.split_balanced([nulls.null_cost(k, n) for k, n in conf_arr], n_ranks)):
        owner[idx] = r
    gid, uniq = pd.MultiIndex.from_frame(v[class_by].astype(str)).factorize(sort=True)
    k = len(uniq)
    first = np.full(k, len(conf_arr))
    np.minimum.at(first, gid, vix)
    order = np.argsort(gid, kind="stable")
    bounds = np.searchsorted(gid[order], np.arange(k + 1))
    parts = class_partition(first, class_costs(vix[order], bounds), n_ranks)
    rank_of_class = np.empty(k, dtype=np.int64)
    for r, part in enumerate(parts):
        rank_of_class[part] = r
    worst_nulls = 0
    for r in range(n_ranks):
        need = np.unique(vix[rank_of_class[gid] == r])
        worst_nulls = max(worst_nulls, int((owner[need] != r).sum()) * 4 * null_size)
    other = (n_ranks - 1) / n_ranks
    return {"ranks": n_ranks, "ap_MB": round(32 * q * other / 2**20, 2), "p_MB": round(16 * q * other / 2**20, 2),
            "nulls_MB": round(worst_nulls / 2**20, 1), "class_p_MB": round(16 * k * other / 2**20, 3),
            "configurations": len(conf_arr)}


def bench(case: str, df: pd.DataFrame, args) -> dict:
    n_wells = len(df)
    row = {"case": case, "wells": n_wells, "null_size": args.null_size}
    from hpc_profiler.evaluate import nulls

    nulls.load_kernels()  # numba start-up, before the timings (the mpirun ranks do the same)
    with one_thread():
        t_ours, c_ours, res = min((run_ours(df, case, args.null_size) for _ in range(args.repeat)),
                                  key=lambda r: r[0])
    q = res["queries"]
    row.update(classes=int(q["Metadata_broad_sample"].nunique()), queries=len(q),
               null_confs=int(res["nulls_drawn"]), ours_s=round(t_ours, 2), ours_cpu_s=round(c_ours, 2),
               ours_retrieved=int(res["classes"]["retrieved"].sum()))
    print("ours, 1 process, seconds per phase:", {k: round(v, 2) for k, v in res["seconds"].items()}, flush=True)
    for n in (2, 4, 64):
        print("received per rank (largest):", comm_per_rank(q, ["Metadata_broad_sample"], args.null_size, n),
              flush=True)
    if not (case in "bc" and args.skip_copairs_b):
        t_cp, c_cp, ref = min((run_copairs(df, case, args.null_size) for _ in range(args.repeat)), key=lambda r: r[0])
        m = ref.merge(q, on=["Metadata_Plate", "Metadata_Well"], suffixes=("_cp", ""))
        row.update(copairs_s=round(t_cp, 2), copairs_cpu_s=round(c_cp, 2), speedup=round(t_cp / t_ours, 1),
                   speedup_cpu=round(c_cp / c_ours, 1), copairs_retrieved=ref.attrs["n_retrieved"],
                   max_ap_diff=float(np.nanmax(np.abs(m["average_precision"] - m["average_precision_cp"]))),
                   max_p_diff=float(np.nanmax(np.abs(m["p_value"] - m["p_value_cp"]))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.parquet"
        df.to_parquet(path)
        best, solo, cmd, times, best_off, times_off = {}, {}, {}, {}, {}, {}
        launcher = launcher_time(args.repeat)
        for _ in range(args.repeat):  # interleaved: slow spells of other load touch every rank count alike
            for n in (1, 2, 4):
                r = command_time(path, case, args.null_size, n)
                if r:
                    print(f"hpc-profiler evaluate, mpirun -n {n}: {r['seconds']:.2f} s (whole command), "
                          f"busiest rank {r['cpu_seconds']:.2f} CPU s, evaluate stage {r['evaluate_s']:.2f} s",
                          flush=True)
                    if n not in cmd or r["seconds"] < cmd[n]["seconds"]:
                        cmd[n] = r
                r = mpi_time(path, case, args.null_size, n)
                note = " (oversubscribed: more ranks than cores)" if n > (os.cpu_count() or 1) else ""
                if r:
                    print(f"mpirun -n {n}{note}: {r['seconds']:.2f} s, with writing {r['seconds_with_write']:.2f} s, "
                          f"critical path {r['path_cpu']:.2f} CPU s", flush=True)
                    # best of --repeat runs: other load on a shared machine only ever adds time
                    if n not in best or r["seconds"] < best[n]["seconds"]:
                        best[n] = r
                    times.setdefault(n, []).append(r["seconds"])
                if args.heap_ab and n <= 2:  # the same ranks with glibc's default heap (hpc_profiler.heap off)
                    r = mpi_time(path, case, args.null_size, n, extra_env={HEAP_ENV: "0"})
                    if r:
                        print(f"mpirun -n {n}, glibc's default heap: {r['seconds']:.2f} s", flush=True)
                        if n not in best_off or r["seconds"] < best_off[n]["seconds"]:
                            best_off[n] = r
                        times_off.setdefault(n, []).append(r["seconds"])
            r = mpi_time(path, case, args.null_size, 2, solo=True)
            if r and (not solo or r["seconds"] < solo["seconds"]):
                solo = r
        replay = {1: [], 2: [], 4: []}  # seconds: mpirun -n 1; slowest replayed rank of 2 and of 4
        for _ in range(args.replay_runs):  # interleaved with 1-rank runs, as the main loop
            r = mpi_time(path, case, args.null_size, 1)
            if not r:
                break
            replay[1].append(r["seconds"])
            line = f"mpirun -n 1: {r['seconds']:.2f} s"
            for n in (2, 4):
                ranks = replay_time(path, case, args.null_size, n)
                if ranks:
                    replay[n].append(max(x["seconds"] for x in ranks))
                    line += f"; mpirun -n {n} replayed rank by rank: " + ", ".join(
                        f"{x['seconds']:.2f}" for x in ranks) + " s"
            print(line, flush=True)
        for n in (2, 4):
            if replay[1] and replay[n]:
                row[f"replay_mpi{n}_s"] = round(min(replay[n]), 2)
                row[f"replay_efficiency_{n}"] = round(min(replay[1]) / (n * min(replay[n])), 2)
                row[f"replay_median_efficiency_{n}"] = round(np.median(replay[1]) / (n * np.median(replay[n])), 2)
        if replay[1]:
            row["replay_mpi1_s"] = round(min(replay[1]), 2)
        for n, r in best.items():
            print(f"mpirun -n {n} best:", json.dumps({k: v for k, v in r.items() if k != "phases_per_rank"}),
                  flush=True)
        if args.phases and best:
            print("seconds per phase and rank, wall (CPU), best runs; n2r1 = rank 1 of mpirun -n 2:")
            print(phase_table(best), flush=True)
        if cmd:
            print("hpc-profiler evaluate: CPU seconds per stage and rank (best run of each n); added_n = sum over "
                  "the n ranks - 1 rank (work that does not halve, and waiting):")
            print(stage_table(cmd), flush=True)
    if 1 in best:
        t1 = best[1]["seconds"]
        row["mpi1_s"] = round(t1, 2)
        for n in (2, 4):
            if n in best:
                row[f"mpi{n}_s"] = round(best[n]["seconds"], 2)
                row[f"efficiency_{n}"] = round(t1 / (n * best[n]["seconds"]), 2)
                # CPU seconds of the busiest rank: the division of the work, steadier under other load
                row[f"cpu_efficiency_{n}"] = round(best[1]["cpu_seconds"] / (n * best[n]["cpu_seconds"]), 2)
                # critical path: work only (no waiting), busiest rank between each two synchronization points
                row[f"path_efficiency_{n}"] = round(best[1]["path_cpu"] / (n * best[n]["path_cpu"]), 2)
                row[f"efficiency_write_{n}"] = round(best[1]["seconds_with_write"]
                                                     / (n * best[n]["seconds_with_write"]), 2)
                row[f"null_mb_rank_{n}"] = best[n]["null_mb_received"]
        if len(times.get(2, [])) > 1:  # medians of the interleaved runs: the typical run, not the luckiest
            row["median_efficiency_2"] = round(np.median(times[1]) / (2 * np.median(times[2])), 2)
        if 1 in best_off and 2 in best_off:
            row["heap_off_mpi1_s"] = round(best_off[1]["seconds"], 2)
            row["heap_off_mpi2_s"] = round(best_off[2]["seconds"], 2)
            row["heap_off_efficiency_2"] = round(best_off[1]["seconds"] / (2 * best_off[2]["seconds"]), 2)
            row["heap_off_median_efficiency_2"] = round(np.median(times_off[1]) / (2 * np.median(times_off[2])), 2)
        if solo:  # 1-rank runs on every core at once: what sharing the machine alone costs 2 ranks
            row["solo2_s"] = round(solo["seconds"], 2)
            row["machine_efficiency_2"] = round(t1 / solo["seconds"], 2)
        if "copairs_s" in row:
            row["copairs_over_mpi1"] = round(row["copairs_s"] / t1, 1)
    if launcher is not None:
        row["launcher_s"] = round(launcher, 2)
    if 1 in cmd:  # the whole hpc-profiler evaluate command, as a user waits for it
        c1 = cmd[1]
        row["cmd1_s"] = round(c1["seconds"], 2)
        total1 = sum(c1["stage_cpu"][0].values())
        for n in (2, 4):
            if n in cmd:
                row[f"cmd{n}_s"] = round(cmd[n]["seconds"], 2)
                row[f"cmd_efficiency_{n}"] = round(c1["seconds"] / (n * cmd[n]["seconds"]), 2)
                row[f"cmd_cpu_efficiency_{n}"] = round(total1 / (n * cmd[n]["cpu_seconds"]), 2)
                # CPU seconds the n ranks spend beyond the 1-rank run: duplicated work, overhead, waiting
                row[f"cmd_serial_cpu_{n}"] = round(sum(sum(c.values()) for c in cmd[n]["stage_cpu"]) - total1, 2)
        if "copairs_s" in row:
            row["copairs_over_cmd1"] = round(row["copairs_s"] / c1["seconds"], 1)
    row["cores"] = os.cpu_count()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--null-size", type=int, default=100000)
    ap.add_argument("--scale", type=float, default=0.2,
                    help="fraction of cases (b) and (c); 1.0 = 5,000 classes (b), the issue's 56,400 wells (c)")
    ap.add_argument("--features", type=int, default=300)
    ap.add_argument("--cases", default="ac")
    ap.add_argument("--repeat", type=int, default=2, help="runs of every timing (the best is kept)")
    ap.add_argument("--skip-copairs-b", action="store_true", help="time only ours on (b) and (c)")
    ap.add_argument("--phases", action="store_true", help="print the seconds per phase of every rank")
    ap.add_argument("--heap-ab", action="store_true",
                    help="also time mpirun -n 1 and -n 2 with glibc's default heap (HPC_PROFILER_RETAIN_FREED_MEMORY=0)")
    ap.add_argument("--replay-runs", type=int, default=0,
                    help="also record mpirun -n 2 and replay each rank alone, this many times, "
                         "interleaved with mpirun -n 1 (the 2-rank time on cores that do not slow each other)")
    ap.add_argument("--worker")
    ap.add_argument("--record")
    ap.add_argument("--replay")
    ap.add_argument("--replay-rank", type=int, default=0)
    ap.add_argument("--replay-size", type=int, default=2)
    ap.add_argument("--solo", action="store_true")
    ap.add_argument("--case", default="a")
    args = ap.parse_args()
    if args.replay:
        replay_worker(args.worker, args.case, args.null_size, args.replay, args.replay_rank, args.replay_size)
        return 0
    if args.worker:
        worker(args.worker, args.case, args.null_size, args.solo, args.record)
        return 0
    rows = []
    if "a" in args.cases:
        df = synthetic_profiles(n_genes=150, plates=4, negcons=64, n_features=args.features, modalities=("compound",),
                                seed=0)
        rows.append(bench("a", df, args))
        print(json.dumps(rows[-1]), flush=True)
    if "b" in args.cases:
        rows.append(bench("b", jump_scale_profiles(args.scale, args.features), args))
        print(json.dumps(rows[-1]), flush=True)
    if "c" in args.cases:
        rows.append(bench("c", issue_profiles(args.scale, args.features), args))
        print(json.dumps(rows[-1]), flush=True)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

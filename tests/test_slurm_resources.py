"""One Slurm path (issue 17): per-stage executor settings reach the array jobs and the MPI jobs alike.

The unit tests resolve ``executor`` + ``executor.stages`` by hand and compare
with :func:`stage_resources`, the submitit parameters and the ``sbatch``
options. The Slurm tests submit the illum and extract arrays (through
``submit_stage``, i.e. submitit) and the reduce and evaluate MPI jobs (through
the same ``sbatch`` call ``run`` makes) to the local Slurm, held
(``--hold`` in ``extra_sbatch``, so nothing runs), read every key back from
``scontrol show job`` and cancel them.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from hpc_profiler.config import ConfigError, SynthConfig, load_config
from hpc_profiler.workflow import mpijob
from hpc_profiler.workflow.slurm import sbatch_options, stage_resources, submitit_parameters
from hpc_profiler.workflow.submit import submit_stage


def _write(path: Path, executor: dict, **extra) -> Path:
    cfg = {"name": "res", "device": "cpu", "output_dir": str(path.parent / "out"),
           "input": {"loaddata_csv": str(path.parent / "synth" / "load_data.csv")}, "executor": executor, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


EXECUTOR = {
    "kind": "slurm", "partition": "cpu", "account": "lab", "time_min": 30, "cpus_per_task": 1, "mem_gb": 4,
    "extra_sbatch": ["--comment=default-block"], "gres": "gpu:1",
    "stages": {
        "extract": {"partition": "gpu", "gres": "gpu:1", "cpus_per_task": 4, "mem_gb": 16,
                    "extra_sbatch": ["--comment=extract-gpu", "--exclusive"]},
        "reduce": {"cpus_per_task": 2, "mpi_ranks": 8, "qos": "long", "time_min": 240, "gres": ""},
    },
}


def test_stage_resources_take_the_default_block_and_the_stage_overrides(tmp_path):
    cfg = load_config(_write(tmp_path / "c.yaml", EXECUTOR))
    ex = stage_resources(cfg, "extract")
    assert (ex.partition, ex.gres, ex.cpus_per_task, ex.mem_gb, ex.account, ex.time_min) == ("gpu", "gpu:1", 4, 16.0,
                                                                                              "lab", 30)
    assert ex.extra_sbatch == ("--comment=extract-gpu", "--exclusive")  # a stage's list replaces the default one
    il = stage_resources(cfg, "illum")  # no override: exactly the default block
    assert (il.partition, il.gres, il.cpus_per_task, il.extra_sbatch) == ("cpu", "gpu:1", 1,
                                                                          ("--comment=default-block",))
    assert submitit_parameters(cfg, "illum", "slurm")["slurm_gres"] == "gpu:1"
    red = stage_resources(cfg, "reduce")
    assert (red.partition, red.cpus_per_task, red.mpi_ranks, red.qos, red.time_min) == ("cpu", 2, 8, "long", 240)
    assert stage_resources(cfg, "evaluate").mpi_ranks == cfg.executor.mpi_ranks

    p = submitit_parameters(cfg, "extract", "slurm")
    assert p["slurm_partition"] == "gpu" and p["slurm_gres"] == "gpu:1" and p["cpus_per_task"] == 4
    assert p["slurm_additional_parameters"] == {"comment": "extract-gpu", "exclusive": True}
    assert p["slurm_setup"] == ["export OMP_NUM_THREADS=4"] and p["mem_gb"] == 16.0
    assert submitit_parameters(cfg, "illum", "slurm")["slurm_additional_parameters"] == {"comment": "default-block"}

    opts = sbatch_options(cfg, "reduce", 8, log="/x/reduce_%j.out")
    for o in ["--job-name=hpcp-reduce", "--ntasks=8", "--cpus-per-task=2", "--time=240", "--partition=cpu",
              "--account=lab", "--qos=long", "--comment=default-block", "--output=/x/reduce_%j.out",
              f"--mem-per-cpu={int(4 * 1024 / 16)}M"]:
        assert o in opts, (o, opts)
    assert not any(o.startswith("--gres") for o in opts)  # gres: "" clears the block's gpu:1 for reduce
    assert "--gres=gpu:1" in sbatch_options(cfg, "evaluate", 2, log="l")
    ev = sbatch_options(cfg, "extract", 2, log="l")
    assert "--gres=gpu:1" in ev and "--exclusive" in ev and "--partition=gpu" in ev


def test_old_configs_submit_what_they_did(tmp_path):
    """Without ``stages`` every stage gets the executor block (the README's cluster example)."""
    old = {"kind": "slurm", "partition": "gpu", "account": "my_lab", "time_min": 120, "cpus_per_task": 4,
           "mem_gb": 16, "gres": "gpu:1", "array_parallelism": 64, "sites_per_task": 64,
           "extra_sbatch": ["--constraint=a100"], "max_retries": 3, "mpi_ranks": 8}
    cfg = load_config(_write(tmp_path / "c.yaml", old))
    for stage in ("illum", "extract", "reduce", "evaluate"):
        r = stage_resources(cfg, stage)
        assert (r.partition, r.account, r.time_min, r.cpus_per_task, r.mem_gb, r.gres, r.extra_sbatch, r.mpi_ranks) == (
            "gpu", "my_lab", 120, 4, 16.0, "gpu:1", ("--constraint=a100",), 8)
    assert submitit_parameters(cfg, "extract", "slurm") == {
        "name": "res-extract", "timeout_min": 120, "cpus_per_task": 4, "mem_gb": 16.0,
        "slurm_array_parallelism": 64, "slurm_partition": "gpu", "slurm_account": "my_lab", "slurm_gres": "gpu:1",
        "slurm_additional_parameters": {"constraint": "a100"}, "slurm_setup": ["export OMP_NUM_THREADS=4"]}
    for name in ("demo.yaml", "cpjump1.yaml"):
        load_config(Path(__file__).parents[1] / "configs" / name)


def test_unknown_stage_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"executor\.stages\.extrct: unknown stage"):
        load_config(_write(tmp_path / "c.yaml", {"stages": {"extrct": {"cpus_per_task": 2}}}))
    with pytest.raises(ConfigError, match=r"executor\.stages\.reduce\.gpu: unknown key"):
        load_config(_write(tmp_path / "c.yaml", {"stages": {"reduce": {"gpu": 1}}}))


# ----------------------------------------------------------------------------- local Slurm
def _job(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True, check=True)
    info = {}
    for tok in out.stdout.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            info.setdefault(k, v)
    return info


def _node_gres(node: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "node", node], capture_output=True, text=True)
    for tok in out.stdout.split():
        if tok.startswith("Gres="):
            return tok[len("Gres="):]
    return "(null)"


def _batch(tmp_path: Path, executor: dict, illum: bool) -> Path:
    from hpc_profiler.synth import generate_batch

    synth = tmp_path / "synth"
    if not (synth / "load_data.csv").exists():
        generate_batch(SynthConfig(modalities=["compound"], replicate_plates=1, wells=4, sites_per_well=1, size=64,
                                   cells_per_site=4, seed=1), synth, ["DNA", "ER", "RNA", "AGP", "Mito"])
    name = "illum" if illum else "extract"
    return _write(tmp_path / f"{name}.yaml", executor, output_dir=str(tmp_path / f"out_{name}"),
                  illumination={"enabled": illum})


def _submit_all_and_read_back(tmp_path, local_slurm, stages: dict) -> dict:
    """Submit the four stages held; ``{stage: [scontrol dict of each job]}``; every job cancelled."""
    executor = {"kind": "slurm", "partition": local_slurm.partition, "time_min": 7, "cpus_per_task": 1, "mem_gb": 1,
                "sites_per_task": 1, "extra_sbatch": ["--hold", "--comment=default-block"], "stages": stages}
    jobs: dict = {}
    try:
        for stage, illum in (("illum", True), ("extract", False)):
            cfg = load_config(_batch(tmp_path, executor, illum))
            res = submit_stage(cfg, stage, wait=False)
            assert res.n_scheduled >= 1, res.summary()
            jobs[stage] = res.job_ids
        for stage in ("reduce", "evaluate"):
            cfg = load_config(tmp_path / "extract.yaml")
            ranks = stage_resources(cfg, stage).mpi_ranks
            jobs[stage] = [mpijob.submit_mpi_job(cfg, stage, ranks, mpijob.mpi_args(cfg, stage), mpijob._mpi_env(cfg),
                                                 tmp_path / "logs")]
        return {stage: [_job(j) for j in ids] for stage, ids in jobs.items()}
    finally:
        ids = {str(j).split("_")[0] for js in jobs.values() for j in js}
        if ids:
            subprocess.run(["scancel", *sorted(ids)], capture_output=True)


@pytest.mark.slurm
def test_per_stage_keys_reach_array_and_mpi_jobs(tmp_path, local_slurm):
    part = local_slurm.partition  # the test cluster has one partition: set explicitly per stage
    stages = {
        "illum": {"cpus_per_task": 2, "time_min": 11, "extra_sbatch": ["--hold", "--comment=illum-cpu"]},
        "extract": {"partition": part, "cpus_per_task": 2, "time_min": 13, "mem_gb": 2,
                    "extra_sbatch": ["--hold", "--comment=extract-gpu"]},
        "reduce": {"partition": part, "cpus_per_task": 2, "mpi_ranks": 1, "time_min": 17,
                   "extra_sbatch": ["--hold", "--comment=reduce-cpu"]},
        "evaluate": {"mpi_ranks": 2, "time_min": 19},  # extra_sbatch from the default block
    }
    seen = _submit_all_and_read_back(tmp_path, local_slurm, stages)
    want = {"illum": ("illum-cpu", "2", "00:11:00", None), "extract": ("extract-gpu", "2", "00:13:00", None),
            "reduce": ("reduce-cpu", "2", "00:17:00", "1"), "evaluate": ("default-block", "1", "00:19:00", "2")}
    for stage, (comment, cpt, limit, ntasks) in want.items():
        assert seen[stage], stage
        for info in seen[stage]:
            where = f"{stage} job {info.get('JobId')}: {info}"
            assert info.get("Comment") == comment, where
            assert info.get("CPUs/Task") == cpt, where
            assert info.get("TimeLimit") == limit, where
            assert info.get("Partition") == part, where
            assert info.get("Reason") == "JobHeldUser", where  # --hold from extra_sbatch
            if ntasks is not None:
                assert info.get("NumTasks") == ntasks, where
    assert seen["extract"][0].get("MinMemoryNode") in ("2G", "2048M"), seen["extract"][0]


@pytest.mark.slurm
def test_per_stage_gres_reaches_array_and_mpi_jobs(tmp_path, local_slurm):
    gres = _node_gres(local_slurm.node)  # e.g. "testgpu:4" (scripts/start_local_slurm.sh)
    name = gres.split(":")[0] if gres not in ("", "(null)") else ""
    if not name:
        pytest.skip(f"the local Slurm node {local_slurm.node} defines no gres (Gres={gres}); "
                    "scripts/start_local_slurm.sh defines a count-only 'testgpu' gres when it (re)starts the cluster")
    stages = {"extract": {"gres": f"{name}:1", "extra_sbatch": ["--hold", "--comment=extract-gpu"]},
              "reduce": {"gres": f"{name}:1", "mpi_ranks": 1}}
    seen = _submit_all_and_read_back(tmp_path, local_slurm, stages)
    for stage in ("extract", "reduce"):
        for info in seen[stage]:
            assert f"gres:{name}:1" in info.get("TresPerNode", ""), (stage, info)
    for stage in ("illum", "evaluate"):
        for info in seen[stage]:
            assert name not in info.get("TresPerNode", ""), (stage, info)

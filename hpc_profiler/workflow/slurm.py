"""Executor settings -> submission parameters: the one Slurm path of arrays and MPI jobs alike.

The ``executor`` block of a config is the default of every stage; its
``stages`` mapping overrides any resource key for one stage::

    executor:
      partition: cpu
      extra_sbatch: ["--comment=screen-7"]
      stages:
        extract: {partition: gpu, gres: "gpu:1", cpus_per_task: 4}
        reduce: {cpus_per_task: 2, mpi_ranks: 16, gres: ""}

A key a stage leaves out (or sets to null) takes the block's value; an empty
string (0 for ``gpus_per_node``) clears it for that stage.
:func:`stage_resources` resolves the settings of one stage;
:func:`submitit_parameters` turns them into ``AutoExecutor.update_parameters``
arguments for the illum and extract arrays, and :func:`sbatch_options` into
``sbatch`` options for the reduce and evaluate MPI jobs, so every key
(``partition``, ``account``, ``qos``, ``gres``, ``gpus_per_node``,
``cpus_per_task``, ``mem_gb``, ``time_min``, ``extra_sbatch``) reaches the
jobs of the stages it is set for. A stage with no override gets exactly the
default block, so configs without ``stages`` submit what they always did.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

from . import OrchestrationError

#: Stages whose jobs take resources (``executor.stages`` keys).
RESOURCE_STAGES = ("illum", "extract", "reduce", "evaluate")


@dataclass(frozen=True)
class Resources:
    """The resolved Slurm resources of one stage (the default block with the stage's overrides)."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time_min: int = 60
    cpus_per_task: int = 1
    mem_gb: float = 8.0
    gres: Optional[str] = None
    gpus_per_node: Optional[int] = None
    array_parallelism: int = 64
    extra_sbatch: tuple = field(default_factory=tuple)
    mpi_ranks: int = 2


def stage_resources(cfg, stage: str) -> Resources:
    """The resources of ``stage``: ``cfg.executor``'s keys, each replaced by ``executor.stages[stage]``'s
    when that one is set (not null). ``extra_sbatch`` of a stage replaces the default list."""
    ex = cfg.executor
    values = {f.name: getattr(ex, f.name) for f in fields(Resources)}
    override = (ex.stages or {}).get(stage)
    if override is not None:
        for f in fields(override):
            v = getattr(override, f.name)
            if v is not None:
                values[f.name] = v
    values["extra_sbatch"] = tuple(values["extra_sbatch"] or ())
    return Resources(**values)


def parse_extra_sbatch(lines: Sequence[str]) -> dict:
    """``["--constraint=a100", "exclusive", "#SBATCH --reservation r"]`` -> ``{option: value}``.

    Accepts ``--key=value``, ``--key value``, ``key=value`` and bare flags
    (``--exclusive`` -> ``{"exclusive": True}``, which submitit writes as a
    flag). Short options (``-C x``) are refused: write their long names, which
    read unambiguously in a config.
    """
    out = {}
    for raw in lines:
        line = raw.strip()
        if line.startswith("#SBATCH"):
            line = line[len("#SBATCH"):].strip()
        if not line:
            continue
        if line.startswith("-") and not line.startswith("--"):
            raise OrchestrationError(f"executor.extra_sbatch: {raw!r}: use the long option (--name=value)")
        line = line[2:] if line.startswith("--") else line
        if "=" in line:
            key, value = line.split("=", 1)
        elif " " in line:
            key, value = line.split(None, 1)
        else:
            key, value = line, True
        out[key.strip().replace("-", "_")] = value.strip() if isinstance(value, str) else value
    return out


def submitit_parameters(cfg, stage: str, kind: str) -> dict:
    """``AutoExecutor.update_parameters`` arguments of ``stage``'s array job."""
    res = stage_resources(cfg, stage)
    params = {
        "name": f"{cfg.name}-{stage}",
        "timeout_min": int(res.time_min),
        "cpus_per_task": int(res.cpus_per_task),
        "mem_gb": float(res.mem_gb),
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = int(res.gpus_per_node)
    if kind == "slurm":
        params["slurm_array_parallelism"] = int(res.array_parallelism)
        for key in ("partition", "account", "qos", "gres"):
            value = getattr(res, key)
            if value:
                params[f"slurm_{key}"] = value
        extra = parse_extra_sbatch(res.extra_sbatch)
        if extra:
            params["slurm_additional_parameters"] = extra
        # keep BLAS/OpenMP threads to the CPUs the task asked for
        params["slurm_setup"] = [f"export OMP_NUM_THREADS={int(res.cpus_per_task)}"]
    return params


def sbatch_options(cfg, stage: str, ntasks: int, *, log: str) -> list[str]:
    """``sbatch`` options of ``stage``'s MPI job of ``ntasks`` ranks, from the same resources as the arrays.

    ``mem_gb`` is the job's memory, spread over its CPUs (``--mem-per-cpu``);
    ``extra_sbatch`` lines become ``--key=value`` (or ``--flag``) options.
    """
    res = stage_resources(cfg, stage)
    cpus = max(1, int(res.cpus_per_task))
    opts = [f"--job-name=hpcp-{stage}", f"--ntasks={ntasks}", f"--cpus-per-task={cpus}",
            f"--time={int(res.time_min)}",
            f"--mem-per-cpu={max(1, int(res.mem_gb * 1024 / max(ntasks * cpus, 1)))}M", f"--output={log}"]
    for key in ("partition", "account", "qos", "gres"):
        value = getattr(res, key)
        if value:
            opts.append(f"--{key}={value}")
    if res.gpus_per_node:
        opts.append(f"--gpus-per-node={int(res.gpus_per_node)}")
    for key, value in parse_extra_sbatch(res.extra_sbatch).items():
        name = key.replace("_", "-")
        opts.append(f"--{name}" if value is True else f"--{name}={value}")
    return opts

"""The config of the fault-injection runs, shared by ``tests/test_faults.py`` and ``scripts/bench_faults.py``.

A small synthetic batch (``<root>/synth``) through the local Slurm: two sites per array task, one CPU,
Intensity features only, no retries unless asked, ``poll`` seconds between the driver's queue checks.
"""
from __future__ import annotations

from pathlib import Path

import yaml


def write_fault_config(root: Path, name: str, poll: float, partition=None, **executor) -> Path:
    """``<root>/<name>.yaml`` writing to ``<root>/<name>``; ``executor`` keys override the defaults."""
    sd = root / "synth"
    ex = {"kind": "slurm", "sites_per_task": 2, "cpus_per_task": 1, "mem_gb": 1, "time_min": 10,
          "array_parallelism": 4, "max_retries": 0, "poll_interval_s": poll, "mpi_ranks": 2,
          "mpi_startup_timeout_s": 20}
    if partition:
        ex["partition"] = partition
    ex.update(executor)
    cfg = {"name": "faults", "device": "cpu", "output_dir": str(root / name),
           "input": {"loaddata_csv": str(sd / "load_data.csv"), "well_metadata_csv": str(sd / "well_metadata.csv")},
           "illumination": {"downsample": 2, "median_filter_size": 10},
           "features": {"families": ["Intensity"]},
           "executor": ex, "evaluate": {"null_size": 200}}
    p = root / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p

"""The orchestration layer: how the per-site and per-batch work is scheduled, watched and recorded.

One idea per module, each importing only those listed before it (a test,
``tests/test_imports.py``, checks that the package has no import circle):

* :mod:`.records` - the failure table, the per-task work logs, the task id;
* :mod:`.plan` - the manifest of a batch and what of it is done (ledger, illumination);
* :mod:`.slurm` - executor settings per stage -> submission parameters, for the
  arrays (submitit) and the MPI jobs (sbatch) alike;
* :mod:`.tasks` - the body of one array task (a chunk of sites, a plate);
* :mod:`.watch` - liveness of submitted jobs (``squeue``/``scontrol``, no ``sacct``);
* :mod:`.submit` - one array job per stage of what is not done, retries of lost tasks;
* :mod:`.mpijob` - reduce and evaluate on MPI ranks (``mpirun``, or a Slurm job);
* :mod:`.stages` - the stages as objects behind one protocol (what work exists,
  what is done, how to run it, what it writes): illum, extract, reduce,
  evaluate, report. ``hpc-profiler run`` walks them; ``status`` asks them.

Paths come from :class:`hpc_profiler.layout.Layout`; the pure per-site work
from :mod:`hpc_profiler.pipeline`.
"""
from __future__ import annotations

#: The stages scheduled as Slurm arrays (``hpc-profiler submit``, ``run-task``).
ARRAY_STAGES = ("illum", "extract")


class OrchestrationError(RuntimeError):
    """A submission cannot be made as asked (the message says why and what to do)."""

"""The ``hpc-profiler`` command line: one subcommand per stage.

Each subcommand is a thin wrapper over a library function; nothing here
computes anything itself.

Before ``run``, ``submit``, ``reduce`` and ``evaluate`` start, the config is
loaded and :func:`hpc_profiler.preflight.preflight` checks what can be known up
front; every problem is printed as one ``error: <config>: <key>: ...`` line and
the command exits with status 2. An unexpected exception from a stage is one
``error:`` line too (exit status 1); the global ``--debug`` flag shows its
traceback instead (``run-task``, started by Slurm, always logs the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ._version import __version__

#: (subcommand, module, add-arguments function, main function, help): each stage's
#: module owns its arguments and entry point; this file only lists them.
SUBCOMMANDS = [
    ("synth", "synth", "add_synth_arguments", "main_synth", "generate a synthetic CPJUMP1-like batch"),
    ("run", "run", "add_run_arguments", "main_run",
     "the whole pipeline: illum -> extract -> reduce -> evaluate -> QC report (resumable)"),
    ("submit", "orchestrate", "add_submit_arguments", "main_submit",
     "submit a stage (illum: one task per plate; extract: chunks of sites) as an array job"),
    ("run-task", "orchestrate", "add_run_task_arguments", "main_run_task",
     "run one array task (for plain sbatch templates: --task-id $SLURM_ARRAY_TASK_ID)"),
    ("status", "status", "add_status_arguments", "main_status",
     "done / failed / pending per plate, running jobs, throughput; non-zero exit while anything failed"),
    ("import", "cpimport", "add_import_arguments", "main_import",
     "existing CellProfiler outputs (per-object CSVs or SQLite) -> site files (mpirun -n N for MPI ranks)"),
    ("reduce", "reduce", "add_reduce_arguments", "main_reduce",
     "site files -> well profiles, normalized, feature-selected (mpirun -n N for MPI ranks)"),
    ("evaluate", "evaluate.run", "add_evaluate_arguments", "main_evaluate",
     "the CPJUMP1 benchmark: mAP, p/q-values, fraction retrieved, directionality (mpirun -n N)"),
]


def _cmd_version(args) -> int:
    from .backend import gpu_available

    print(f"hpc_profiler {__version__}")
    if args.verbose:
        print(f"gpu backend available: {gpu_available()}")
    return 0


def _cmd_config_check(args) -> int:
    from .config import dump_config, load_config_or_report
    from .preflight import preflight, report

    cfg = load_config_or_report(args.file)
    if cfg is None:
        return 2
    if report(cfg, preflight(cfg, "check")):
        return 2
    print(f"{args.file}: ok (config hash {cfg.hash()})")
    if args.show:
        print(dump_config(cfg))
    return 0


def _chosen_command(argv) -> str | None:
    """The subcommand named on a command line (its first word that is not an option), or None."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole ``hpc-profiler`` parser.

    ``only`` names the one subcommand whose module is imported to add its
    arguments; the others are listed with their help but left unconfigured.
    ``main`` passes the command being run, so an MPI rank of ``evaluate`` does
    not import segmentation, Slurm or plotting modules it never uses (each rank
    pays its imports in full). ``None`` (the docs generator) builds them all.
    """
    p = argparse.ArgumentParser(
        prog="hpc-profiler",
        description="Cell Painting images to single-cell features, well profiles and the CPJUMP1 benchmark, "
        "on CPU or GPU, on a laptop or a Slurm cluster.",
    )
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (default: one line per error)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = sub.add_parser("version", help="print the version")
    sp.add_argument("-v", "--verbose", action="store_true", help="also report the GPU backend")
    sp.set_defaults(func=_cmd_version)

    sp = sub.add_parser("config", help="configuration tools")
    csub = sp.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    cp = csub.add_parser("check", help="validate a config file")
    cp.add_argument("file")
    cp.add_argument("--show", action="store_true", help="print the config with defaults filled in")
    cp.set_defaults(func=_cmd_config_check)

    for name, module, add, main, help_ in SUBCOMMANDS:
        sp = sub.add_parser(name, help=help_, description=help_)
        if only is not None and name != only:
            continue
        mod = importlib.import_module(f"hpc_profiler.{module}")
        getattr(mod, add)(sp)
        sp.set_defaults(func=getattr(mod, main))
    return p


#: Stage commands checked by :mod:`hpc_profiler.preflight` before they start.
PREFLIGHT = {"run", "submit", "reduce", "evaluate"}
#: Commands started by a scheduler, not a person: their log is the only trace, so it keeps the traceback.
KEEP_TRACEBACK = {"run-task"}
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


def _rank() -> int:
    """This process's MPI rank from the launcher's environment (0 outside MPI)."""
    for v in _RANK_VARS:
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    return 0


def _preflight(args) -> int:
    """0 when the stage may start; 2 (after one line per problem) when not."""
    from .config import load_config_or_report
    from .preflight import preflight, report

    quiet = _rank() != 0  # under mpirun every rank checks; rank 0 speaks
    cfg = load_config_or_report(args.config, report=not quiet)
    if cfg is None:
        return 2
    ranks = None
    if args.command == "run":
        ranks = 1 if args.no_mpi else args.ranks
    problems = preflight(cfg, args.command, ranks=ranks, profiles=getattr(args, "profiles", None))
    if quiet:
        return 2 if any(p.fatal for p in problems) else 0
    return report(cfg, problems)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_chosen_command(argv))
    args = parser.parse_args(argv)
    try:
        if args.command in PREFLIGHT:
            rc = _preflight(args)
            if rc:
                return rc
        return int(args.func(args) or 0)
    except Exception as exc:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if args.debug or args.command in KEEP_TRACEBACK:
            raise
        from .config import ConfigError

        msg = str(exc).strip().splitlines() or [""]
        print(f"error: {type(exc).__name__}: {msg[0]}"
              f"{' ...' if len(msg) > 1 else ''} (run with --debug for the traceback)", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

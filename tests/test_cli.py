"""The hpc-profiler command line: help, version, config check, synth."""
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_profiler import __version__
from hpc_profiler.cli import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hpc_profiler", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_stage():
    r = run("--help")
    assert r.returncode == 0
    for name in ["version", "config", *[s[0] for s in SUBCOMMANDS]]:
        assert name in r.stdout


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"hpc_profiler {__version__}"


def test_config_check_ok_and_error_exit_codes(tmp_path):
    r = run("config", "check", str(REPO / "configs" / "demo.yaml"))  # its synth section makes the input
    assert r.returncode == 0 and "ok (config hash" in r.stdout, r.stderr
    # cpjump1.yaml names a LoadData CSV next to it that a fresh clone does not have: preflight says so
    r = run("config", "check", str(REPO / "configs" / "cpjump1.yaml"))
    assert r.returncode == 2 and "ok (config hash" not in r.stdout
    assert f"input.loaddata_csv: LoadData CSV {REPO / 'configs' / 'load_data.csv'} does not exist" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmentation:\n  nuclei:\n    smoothing_scal: 3\n")
    r = run("config", "check", str(bad))
    assert r.returncode == 2
    assert f"{bad}: segmentation.nuclei.smoothing_scal: unknown key (did you mean 'smoothing_scale'?)" in r.stderr


def test_synth_writes_a_batch_that_the_manifest_reads(tmp_path):
    r = run("synth", str(tmp_path / "b"), "--plates", "1", "--wells", "4", "--sites", "1", "--size", "128",
            "--cells", "6", "--modalities", "compound")
    assert r.returncode == 0, r.stderr
    from hpc_profiler.manifest import manifest_from_loaddata

    sites = manifest_from_loaddata(tmp_path / "b" / "load_data.csv", ["DNA", "ER", "RNA", "AGP", "Mito"])
    assert len(sites) == 4
    assert all(Path(f).exists() for s in sites for f in s.files.values())


@pytest.mark.parametrize("cmd", ["run", "submit extract", "status", "reduce", "evaluate"])
def test_stage_commands_report_config_errors(tmp_path, cmd):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: tpu\n")
    r = run(*cmd.split(), str(bad))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "device" in r.stderr and str(bad) in r.stderr


def test_a_command_imports_only_its_own_module():
    """Each MPI rank of ``evaluate`` pays its imports; the other stages' modules stay out."""
    code = (
        "import sys\n"
        "from hpc_profiler.cli import build_parser\n"
        "p = build_parser(only='evaluate')\n"
        "args = p.parse_args(['evaluate', 'c.yaml', '--profiles', 'x.parquet'])\n"
        "assert args.func.__module__ == 'hpc_profiler.evaluate.run', args.func\n"
        "loaded = [m for m in ('hpc_profiler.segmentation', 'hpc_profiler.features', 'hpc_profiler.orchestrate',"
        " 'hpc_profiler.report', 'submitit', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
    # built whole (as the docs generator does), the same modules are all loaded: the list above can fail
    r = subprocess.run([sys.executable, "-c", code.replace("only='evaluate'", "")], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "hpc_profiler.orchestrate" in r.stdout


def test_run_prints_no_raw_empty_dataframe_for_a_batch_without_benchmark():
    """A single-plate batch has no replicate on another plate: the summary says so in words."""
    import pandas as pd

    from hpc_profiler.run import format_summary

    empty = pd.DataFrame(columns=["task", "n_classes", "fraction_retrieved"])
    for summary in (None, empty):
        text = format_summary(summary)
        assert text == "(no benchmark summary)" and "Empty DataFrame" not in text
    row = pd.DataFrame({"task": ["replicate"], "n_classes": [10], "fraction_retrieved": [0.4]})
    assert format_summary(row).splitlines()[1].split() == ["replicate", "10", "0.400"]

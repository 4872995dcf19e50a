"""The stages behind one protocol (issue 17): run walks them in order, status asks them their state."""
from __future__ import annotations

import yaml

from hpc_profiler.config import SynthConfig, load_config
from hpc_profiler.layout import Layout
from hpc_profiler.status import mpi_stage_states
from hpc_profiler.workflow.arrays import ARRAY_WORK
from hpc_profiler.workflow.stages import STAGES, RunContext, StampedStage
from hpc_profiler.workflow.sites import load_or_build_manifest


def test_the_chain_in_order():
    assert list(STAGES) == ["illum", "extract", "reduce", "evaluate", "report"]
    assert list(ARRAY_WORK) == ["illum", "extract"]
    assert [n for n, s in STAGES.items() if isinstance(s, StampedStage)] == ["reduce", "evaluate"]


def test_stage_state_before_and_after_its_run(tmp_path):
    from hpc_profiler.synth import generate_batch

    synth = tmp_path / "synth"
    generate_batch(SynthConfig(modalities=["compound"], replicate_plates=1, wells=4, sites_per_well=1, size=64,
                               cells_per_site=4, seed=2), synth, ["DNA", "ER", "RNA", "AGP", "Mito"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "st", "device": "cpu", "output_dir": str(tmp_path / "out"),
        "input": {"loaddata_csv": str(synth / "load_data.csv")},
        "illumination": {"downsample": 2, "median_filter_size": 5},
        "executor": {"kind": "debug"}}))
    cfg = load_config(path)
    assert {n: s.state(cfg) for n, s in STAGES.items()} == {n: "not run" for n in STAGES}
    assert mpi_stage_states(cfg) == {"reduce": "not run", "evaluate": "not run"}

    lines = []
    ctx = RunContext(kind="debug", sites=load_or_build_manifest(cfg), out=lines.append)
    line = STAGES["illum"].run(cfg, ctx)
    assert (line.stage, line.items, line.unit, line.failures, line.skipped) == ("illum", 1, "plates", 0, False)
    assert STAGES["illum"].state(cfg) == "up to date"
    plate = ctx.sites[0].plate
    assert STAGES["illum"].outputs(Layout.of(cfg)) == [Layout.of(cfg).illum(plate)]
    assert STAGES["extract"].state(cfg) == "not run"
    again = STAGES["illum"].run(cfg, ctx)  # nothing left to do: skipped, nothing scheduled
    assert again.skipped and again.items == 0

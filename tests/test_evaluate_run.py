"""evaluate stage driver: MPI rank independence, calibration, CLI, config errors, outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from snippet import run_snippet

from hpc_profiler.config import ConfigError, EvaluateConfig, from_dict
from hpc_profiler.evaluate.run import evaluate_batch, evaluate_profiles, task_waves
from hpc_profiler.evaluate.synth import synthetic_profiles


def _write_config(tmp_path, **evaluate):
    cfg = {"output_dir": str(tmp_path / "out"), "evaluate": {"null_size": 2000, "seed": 7, **evaluate}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tables(folder):
    return {n: pd.read_parquet(folder / f"{n}.parquet") for n in ("queries", "classes", "summary", "directionality")}


@pytest.mark.mpi
def test_same_numbers_for_1_2_4_ranks(tmp_path, mpirun):
    profiles = synthetic_profiles(n_genes=10, plates=3, negcons=8, n_features=24, effect=1.5, seed=2)
    src = tmp_path / "profiles.parquet"
    profiles.to_parquet(src)
    cfg = _write_config(tmp_path, map_pvalue=True)
    results = {}
    for n in (1, 2, 4):
        out = tmp_path / f"ranks{n}"
        times = tmp_path / f"times{n}"
        times.mkdir()
        plots = [] if n == 2 else ["--no-plots"]
        proc = mpirun([mpirun.python, "-m", "hpc_profiler.evaluate", cfg, "--profiles", src, "--out", out, *plots],
                      n=n, timeout=600, env={"HPC_PROFILER_EVALUATE_TIMES": str(times)})
        assert f"evaluate: {n} rank(s)" in proc.stdout
        results[n] = _tables(out)
        # every rank wrote its stage times (scripts/bench_evaluate.py reads them), stages in order
        recs = [json.loads((times / f"rank{r}.json").read_text()) for r in range(n)]
        assert sorted(p.name for p in times.iterdir()) == [f"rank{r}.json" for r in range(n)]
        for r, rec in enumerate(recs):
            assert (rec["rank"], rec["ranks"]) == (r, n)
            assert list(rec["stages"]) == ["startup", "mpi_start", "config", "kernels", "read", "evaluate", "write",
                                           "final_barrier"]
            assert rec["stages"]["startup"]["cpu"] > 0 and all(v["cpu"] >= 0 for v in rec["stages"].values())
            assert rec["phases"]["ap_cpu"] > 0 and len(rec["work_segments"]) >= 3
    assert (tmp_path / "ranks2" / "fig4_map.png").stat().st_size > 1000
    assert (tmp_path / "ranks2" / "fig5_cosine.png").stat().st_size > 1000
    assert len(results[1]["queries"]) > 50 and results[1]["summary"]["task"].nunique() >= 3
    for n in (2, 4):
        for name, df in results[1].items():
            pd.testing.assert_frame_equal(df, results[n][name], check_exact=True, obj=f"{name} with {n} ranks")
            # CSV text formatted by row shares on every rank, joined by rank 0: the same bytes
            assert (tmp_path / f"ranks{n}" / f"{name}.csv").read_bytes() == \
                (tmp_path / "ranks1" / f"{name}.csv").read_bytes(), f"{name}.csv with {n} ranks"


def test_calibration_strong_effects_retrieved_and_null_data_not():
    ecfg = EvaluateConfig(null_size=4000, seed=1, tasks=["replicate"], plots=False)
    strong = synthetic_profiles(n_genes=12, plates=4, negcons=12, n_features=30, effect=3.0, inactive=0.0, seed=3)
    s = evaluate_profiles(strong, ecfg)["summary"]
    assert (s["fraction_retrieved"] >= 0.9).all(), s
    # treatments without any effect -> fraction retrieved <= 0.05 plus tolerance
    fracs = []
    for seed in range(3):
        null = synthetic_profiles(n_genes=12, plates=4, negcons=12, n_features=30, effect=0.0, seed=10 + seed)
        fracs.extend(evaluate_profiles(null, ecfg)["summary"]["fraction_retrieved"])
    assert np.mean(fracs) <= 0.05 + 0.05, fracs


def _control_vs_control(profiles):
    """Negative-control wells only; the first half of each plate's controls become pseudo-perturbations,
    named by well position (same well on every replicate plate = replicates), the rest stay controls."""
    ctl = profiles.loc[profiles["Metadata_control_type"] == "negcon"].copy()
    rank = ctl.groupby("Metadata_Plate").cumcount()
    half = ctl.groupby("Metadata_Plate")["Metadata_Well"].transform("size") // 2
    fake = (rank < half).to_numpy()
    ctl.loc[fake, "Metadata_broad_sample"] = "CTRL-" + ctl.loc[fake, "Metadata_Well"]
    ctl.loc[fake, "Metadata_pert_type"] = "trt"
    ctl.loc[fake, "Metadata_control_type"] = ""
    return ctl.reset_index(drop=True)


def test_calibration_control_vs_control():
    ecfg = EvaluateConfig(null_size=4000, seed=2, tasks=["replicate"], plots=False)
    fracs, n = [], 0
    for seed in range(4):
        profiles = synthetic_profiles(n_genes=2, plates=4, negcons=48, n_features=30, effect=3.0, seed=20 + seed)
        s = evaluate_profiles(_control_vs_control(profiles), ecfg)["summary"]
        fracs.extend(s["fraction_retrieved"] * s["n_classes"])
        n += int(s["n_classes"].sum())
    assert n >= 4 * 3 * 24
    assert sum(fracs) / n <= 0.05 + 0.03, sum(fracs) / n


def test_inactive_perturbations_dropped_before_sister_matching():
    profiles = synthetic_profiles(n_genes=10, plates=4, negcons=10, n_features=30, effect=2.0, inactive=0.4, seed=4)
    ecfg = EvaluateConfig(null_size=2000, seed=0, tasks=["replicate", "sister_compound"], plots=False)
    r = evaluate_profiles(profiles, ecfg)
    c = r["classes"]
    rep = c.loc[(c["task"] == "replicate") & (c["Metadata_modality"] == "compound")]
    kept = set(rep.loc[rep["retrieved"], "Metadata_broad_sample"])
    sis = r["queries"].loc[r["queries"]["task"] == "sister_compound", "Metadata_broad_sample"]
    assert len(sis) and set(sis) <= kept and len(kept) < len(rep)
    assert ecfg.definitions["sister_compound"].similarity == "abs_cosine"
    assert ecfg.definitions["sister_crispr"].similarity == "cosine"


def test_evaluate_batch_reads_reduce_output_and_writes_tables(tmp_path):
    profiles = synthetic_profiles(n_genes=6, plates=3, negcons=6, n_features=16, effect=2.0, seed=5)
    (tmp_path / "out" / "profiles").mkdir(parents=True)
    profiles.to_parquet(tmp_path / "out" / "profiles" / "well_feature_selected.parquet")
    cfg = from_dict({"output_dir": str(tmp_path / "out"),
                     "evaluate": {"null_size": 1000, "tasks": ["replicate", "direction_orf_crispr"]}})
    summary = evaluate_batch(cfg)
    assert set(summary["Metadata_modality"]) == {"compound", "crispr", "orf"}
    ev = tmp_path / "out" / "evaluate"
    for name in ("queries.parquet", "classes.csv", "summary.parquet", "directionality.parquet", "fig4_map.png"):
        assert (ev / name).exists(), name
    d = pd.read_parquet(ev / "directionality.parquet")
    # ORF (+v) and CRISPR (-v) of the same gene point in opposite directions
    assert d.loc[0, "frac_below_p5"] > d.loc[0, "frac_above_p95"]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="evaluate.tasks: task 'nope' has no definition"):
        task_waves(EvaluateConfig(tasks=["nope"]))
    e = EvaluateConfig(tasks=["sister_compound"])
    with pytest.raises(ConfigError, match="active_from: task 'replicate' is not in evaluate.tasks"):
        task_waves(e)
    assert task_waves(EvaluateConfig(tasks=["sister_crispr", "replicate"])) == [["replicate"], ["sister_crispr"]]
    with pytest.raises(ConfigError, match="evaluate.definitions.x.simlarity: unknown key"):
        from_dict({"evaluate": {"definitions": {"x": {"simlarity": "cosine"}}}})


def test_cli_reports_missing_column_and_bad_profiles(tmp_path):
    profiles = synthetic_profiles(n_genes=4, plates=2, negcons=4, n_features=8, seed=1)
    src = tmp_path / "p.parquet"
    profiles.drop(columns=["Metadata_Plate"]).to_parquet(src)
    cfg = _write_config(tmp_path, tasks=["replicate"])
    proc = subprocess.run([sys.executable, "-m", "hpc_profiler.evaluate", str(cfg), "--profiles", str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "task 'replicate'" in proc.stderr and "Metadata_Plate" in proc.stderr
    bad = profiles.copy()
    bad.loc[3, "Feature_000"] = np.nan
    bad.to_parquet(src)
    strict = _write_config(tmp_path, tasks=["replicate"], drop_nonfinite_features=False)
    proc = subprocess.run([sys.executable, "-m", "hpc_profiler.evaluate", str(strict), "--profiles", str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "non-finite" in proc.stderr and bad.loc[3, "Metadata_Well"] in proc.stderr
    # the default drops the feature, says so, and evaluates the rest
    default = _write_config(tmp_path, tasks=["replicate"])
    proc = subprocess.run([sys.executable, "-m", "hpc_profiler.evaluate", str(default), "--profiles", str(src),
                           "--out", str(tmp_path / "ev")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "dropped 1 of 8 feature(s) with non-finite values" in proc.stderr and "Feature_000" in proc.stderr
    assert (tmp_path / "ev" / "queries.parquet").exists()


def test_task_definitions_replace_defaults_from_yaml():
    cfg = from_dict({"evaluate": {"tasks": ["mine"], "definitions": {"mine": {
        "subset": [{"Metadata_modality": ["orf"]}], "pos_diffby": [], "similarity": "abs_cosine"}}}})
    spec = cfg.evaluate.definitions["mine"]
    assert spec.similarity == "abs_cosine" and spec.subset == [{"Metadata_modality": ["orf"]}]
    assert list(cfg.evaluate.definitions) == ["mine"]
    cfg.evaluate.null_size = 500
    profiles = synthetic_profiles(n_genes=5, plates=2, negcons=4, n_features=8, seed=3)
    q = evaluate_profiles(profiles, cfg.evaluate)["queries"]
    assert set(q["task"]) == {"mine"} and set(q["Metadata_modality"]) == {"orf"}
    assert (q["n_pos_pairs"] == 1).all() and (q["n_total_pairs"] == 1 + 2 * 4).all()


def test_sorted_group_ids_equal_multiindex_factorize():
    """Class / group ids without MultiIndex tuples are pandas' sorted tuple factorization, id for id."""
    from hpc_profiler.evaluate.run import group_rows, sorted_group_ids

    rng = np.random.default_rng(4)
    t = pd.DataFrame({"a": rng.choice(["x", "y", "10", "9", None], 500), "b": rng.integers(0, 12, 500),
                      "c": rng.choice(["p", "q"], 500)})
    t.index = rng.permutation(1000)[:500]
    for cols in (["a"], ["b"], ["a", "b"], ["c", "a", "b"]):
        ref, uniq = pd.MultiIndex.from_frame(t[cols].astype(str)).factorize(sort=True)
        gid, n = sorted_group_ids(t, cols)
        np.testing.assert_array_equal(gid, ref)
        assert n == len(uniq)
        rows = group_rows(t, cols)
        assert len(rows) == n
        for g, idx in enumerate(rows):
            np.testing.assert_array_equal(idx, t.index.to_numpy()[ref == g])


def test_configurations_equal_row_unique():
    """The 1-D keyed configuration index is np.unique(axis=0)'s, rows and inverse, on awkward counts."""
    from hpc_profiler.evaluate.run import configurations

    rng = np.random.default_rng(5)
    for n in (1, 7, 3000):
        k = rng.integers(0, 40, n)
        tot = k + rng.choice([0, 1, 63, 2**16, 2**20], n)
        ref, inv = np.unique(np.stack([k, tot], axis=1), axis=0, return_inverse=True)
        got, ginv = configurations(k, tot)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(ginv, inv.ravel())
    assert configurations(np.zeros(0, int), np.zeros(0, int))[0].shape == (0, 2)


def test_column_codes_cached_equal_encode_columns():
    from hpc_profiler.evaluate import ap as apk
    from hpc_profiler.evaluate.run import column_codes
    from hpc_profiler.evaluate.tasks import prepare_task

    profiles = synthetic_profiles(n_genes=6, plates=3, negcons=4, n_features=8, seed=1)
    spec = EvaluateConfig().definitions["replicate"]
    g = prepare_task("replicate", spec, profiles)[0]
    cols = ["Metadata_broad_sample", "Metadata_Plate", "Metadata_Reference_Index"]
    first = column_codes(g, cols)
    np.testing.assert_array_equal(first, apk.encode_columns(g.meta, cols))
    assert set(g.codes) == set(cols)
    np.testing.assert_array_equal(column_codes(g, cols[::-1]), apk.encode_columns(g.meta, cols[::-1]))


def test_phase_clock_nests_and_cuts_segments_at_collectives(monkeypatch):
    """Inner phases take their own time only; work between collectives becomes one segment each.

    The clock reads a scripted time (``run._now``): working advances wall and
    CPU seconds, waiting only wall seconds, so the test does not depend on how
    loaded the machine is.
    """
    from hpc_profiler.evaluate import run as ev_run
    from hpc_profiler.evaluate.run import PhaseClock

    now = [100.0, 10.0]  # wall, CPU
    monkeypatch.setattr(ev_run, "_now", lambda: (now[0], now[1]))

    def work(s):
        now[0] += s
        now[1] += s

    def wait(s):
        now[0] += s

    clock = PhaseClock()
    work(0.5)  # outside every phase: other
    with clock("ap"):
        work(0.05)
        with clock("ap_gather"):
            wait(0.05)
            work(0.01)  # MPI polls while it waits
        work(0.02)
    with clock("class_p"):
        work(0.03)
        with clock("class_gather"):
            pass
    work(0.25)
    sec = clock.seconds()
    approx = pytest.approx
    assert (sec["ap"], sec["ap_cpu"]) == (approx(0.07), approx(0.07))
    assert (sec["ap_gather"], sec["ap_gather_cpu"]) == (approx(0.06), approx(0.01))
    assert (sec["class_p"], sec["class_gather"], sec["other"]) == (approx(0.03), 0.0, approx(0.75))
    assert sec["comm"] == sec["ap_gather"] + sec["class_gather"]
    assert abs(sec["total"] - sum(sec[k] for k in PhaseClock.PHASES)) < 1e-9
    assert sec["total"] == approx(0.91) and sec["total_cpu"] == approx(0.86)
    seg = clock.work_segments()
    # work before ap_gather (other 0.5 + ap 0.05), between the collectives (ap 0.02 + class_p 0.03), after
    assert seg == [approx(0.55), approx(0.05), approx(0.25)]


def test_csv_row_shares_join_to_pandas_csv():
    from hpc_profiler.evaluate.run import _csv_rows

    rng = np.random.default_rng(6)
    df = pd.DataFrame({"a": rng.normal(size=11), "b": ["x,y"] * 11, "c": [np.nan] * 5 + [1e-300] * 6,
                       "d": [True, False] * 5 + [True]})
    for table in (df, df.iloc[:0], df.iloc[:1]):
        for n in (1, 2, 3, 16):
            assert "".join(_csv_rows(table, r, n) for r in range(n)) == table.to_csv(index=False)


def test_class_costs_count_classes_sharing_a_member_sequence():
    """Classes with equal member configuration sequences share one null mean: cost split by the sharers."""
    from hpc_profiler.evaluate import nulls
    from hpc_profiler.evaluate.run import class_costs

    seqs = [(0, 1, 1), (2,), (0, 1, 1), (1, 1, 0), (2,), (0, 1, 1), (3, 3), ()]
    bounds = np.concatenate([[0], np.cumsum([len(q) for q in seqs])])
    member = np.array([c for q in seqs for c in q], dtype=np.int64)
    share = [seqs.count(q) for q in seqs]
    np.testing.assert_allclose(class_costs(member, bounds),
                               nulls.map_class_cost([len(q) for q in seqs], share))
    assert share[:3] == [3, 2, 3] and len(class_costs(member[:0], np.zeros(1, dtype=np.int64))) == 0


def test_rank_start_up_imports_no_scipy_stats_or_ndimage():
    """Every rank pays its imports: scipy.stats (~1 CPU s) only for directionality, scipy.ndimage never on the CPU."""
    code = (
        "import sys\n"
        "from hpc_profiler.config import EvaluateConfig\n"
        "from hpc_profiler.evaluate.run import evaluate_profiles\n"
        "from hpc_profiler.evaluate.synth import synthetic_profiles\n"
        "df = synthetic_profiles(n_genes=4, plates=2, negcons=4, n_features=8, effect=2.0, seed=0)\n"
        "ecfg = EvaluateConfig(null_size=200, seed=0, tasks=['replicate'], plots=False)\n"
        "n = len(evaluate_profiles(df, ecfg, device='cpu')['queries'])\n"
        "print(n, 'scipy.stats' in sys.modules, 'scipy.ndimage' in sys.modules)\n"
    )
    out = run_snippet(code)
    n, stats_loaded, ndi_loaded = out.split()
    assert int(n) > 0 and (stats_loaded, ndi_loaded) == ("False", "False"), out


def test_evaluate_command_imports_no_site_file_or_segmentation_modules(tmp_path):
    """The whole ``hpc-profiler evaluate`` command (CLI, preflight, kernels, read, evaluate, write) on one rank
    imports neither h5py (site files, ~0.1 s) nor the segmentation kernels of hpc_profiler.morphology: every
    MPI rank pays its imports in full."""
    profiles = synthetic_profiles(n_genes=4, plates=2, negcons=4, n_features=8, effect=2.0, seed=0)
    src = tmp_path / "p.parquet"
    profiles.to_parquet(src)
    cfg = _write_config(tmp_path, tasks=["replicate"], plots=False)
    out = tmp_path / "ev"
    unwanted = ["h5py", "hpc_profiler.sitefile", "hpc_profiler.morphology", "hpc_profiler._device_kernels",
                "scipy.ndimage", "scipy.stats", "matplotlib"]
    code = (
        "import sys\n"
        "from hpc_profiler.cli import main\n"
        f"rc = main(['evaluate', {str(cfg)!r}, '--profiles', {str(src)!r}, '--out', {str(out)!r}])\n"
        f"print('LOADED', rc, [m for m in {unwanted!r} if m in sys.modules], 'numba' in sys.modules)\n"
    )
    out_text = run_snippet(code)
    line = out_text.strip().splitlines()[-1]
    assert line == "LOADED 0 [] True", out_text
    assert len(pd.read_parquet(out / "queries.parquet")) > 0

"""evaluate inputs: CSV, CSV.gz and Parquet by content; Metadata_ detection; empty tasks stop with a named error."""
from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from hpc_profiler.config import EvalTaskConfig, EvaluateConfig
from hpc_profiler.evaluate.ap import expected_ap
from hpc_profiler.evaluate.run import evaluate_profiles, profile_format, read_profile_table, read_profiles
from hpc_profiler.evaluate.synth import synthetic_profiles
from hpc_profiler.evaluate.tasks import TaskError, explode_labels, split_labels


@pytest.fixture(scope="module")
def profiles():
    return synthetic_profiles(n_genes=5, plates=3, negcons=6, n_features=12, effect=2.0, seed=4)


def _ecfg(task, **kw):
    return EvaluateConfig(null_size=500, seed=0, tasks=["t"], definitions={"t": task}, plots=False, **kw)


def test_formats_detected_by_content_not_name(tmp_path, profiles):
    # misleading names: the content decides
    pq, csv, gz = tmp_path / "a.csv", tmp_path / "b.parquet", tmp_path / "c.csv"
    profiles.to_parquet(pq)
    profiles.to_csv(csv, index=False)
    with gzip.open(gz, "wt") as fh:
        profiles.to_csv(fh, index=False)
    assert [profile_format(p) for p in (pq, csv, gz)] == ["parquet", "csv", "csv.gz"]
    ecfg = EvaluateConfig(null_size=500, seed=1, tasks=["replicate"], plots=False)
    res = [evaluate_profiles(read_profiles(p), ecfg) for p in (pq, csv, gz)]
    feats = [c for c in profiles.columns if c.startswith("Feature_")]
    for p in (csv, gz):
        t = read_profile_table(p)
        np.testing.assert_array_equal(t[feats].to_numpy(), profiles[feats].to_numpy())
        assert t["Metadata_timepoint"].tolist() == profiles["Metadata_timepoint"].astype(str).tolist()
    for r in res[1:]:
        np.testing.assert_array_equal(r["queries"]["average_precision"], res[0]["queries"]["average_precision"])
        np.testing.assert_array_equal(r["classes"]["q_value"], res[0]["classes"]["q_value"])


def test_metadata_and_features_detected_as_pycytominer(tmp_path, capsys):
    pycyto = pytest.importorskip("pycytominer.cyto_utils", reason="pycytominer (test dependency) is not installed")
    df = pd.DataFrame({
        "Metadata_Plate": ["P1", "P1"], "Metadata_Well": ["A01", "A02"], "Image_PathName_DNA": ["/x", "/y"],
        "Cells_AreaShape_Area": [1.0, 2.0], "Nuclei_Intensity_Mean": [0.1, 0.2], "Cytoplasm_X": [3.0, 4.0],
    })
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    t = read_profile_table(path)
    meta = pycyto.infer_cp_features(df, metadata=True)
    feats = pycyto.infer_cp_features(df)
    assert list(t.columns) == meta + feats
    assert "left out 1 column(s)" in capsys.readouterr().err
    df2 = pd.DataFrame({"Metadata_Plate": ["P1"], "Plate_label": ["x"], "F1": [1.0]})
    df2.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"p.csv: feature column 'Plate_label' is not numeric"):
        read_profile_table(path)


def test_unreadable_profiles_name_the_file(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(FileNotFoundError, match="broken.parquet"):
        read_profiles(bad)


def test_empty_task_no_positives_names_column_and_count(profiles):
    one_plate = profiles.loc[profiles["Metadata_Plate"] == "U2OS-compound-P1"]
    ecfg = EvaluateConfig(null_size=500, tasks=["replicate"], plots=False)
    with pytest.raises(TaskError) as e:
        evaluate_profiles(one_plate, ecfg)
    msg = str(e.value)
    assert "task 'replicate'" in msg and "no positive pairs" in msg
    assert "0 of 10 queries" in msg and "'Metadata_Plate' has 1 distinct value(s)" in msg


def test_empty_task_no_queries_names_columns_and_count(profiles):
    task = EvalTaskConfig(queries=[{"Metadata_pert_type": ["treatment"]}], group_by=[])
    with pytest.raises(TaskError, match=r"task 't': no queries: 0 of 129 rows match the queries rules on columns "
                                        r"\['Metadata_pert_type'\]"):
        evaluate_profiles(profiles, _ecfg(task))
    task = EvalTaskConfig(subset=[{"Metadata_modality": ["virus"]}], group_by=[])
    with pytest.raises(TaskError, match=r"no queries: 0 of 129 rows match the subset rules on columns "
                                        r"\['Metadata_modality'\]"):
        evaluate_profiles(profiles, _ecfg(task))


def test_empty_task_no_negatives_names_column_and_count(profiles):
    one = profiles.loc[profiles["Metadata_broad_sample"] == "COM-0000-0"]
    task = EvalTaskConfig(controls=[], group_by=[])
    with pytest.raises(TaskError) as e:
        evaluate_profiles(one, _ecfg(task))
    msg = str(e.value)
    assert "task 't': no negative pairs: 0 of 3 queries" in msg
    assert "'Metadata_broad_sample' has 1 distinct value(s)" in msg


def test_empty_task_nothing_active_and_directionality(profiles):
    null = synthetic_profiles(n_genes=4, plates=2, negcons=4, n_features=10, effect=0.0, seed=1)
    ecfg = EvaluateConfig(null_size=200, tasks=["replicate", "sister_crispr"], plots=False)
    with pytest.raises(TaskError, match=r"task 'sister_crispr': no queries: 0 class\(es\) of task 'replicate'"):
        evaluate_profiles(null.loc[null["Metadata_modality"] == "crispr"], ecfg)
    ecfg = EvaluateConfig(null_size=200, tasks=["direction_orf_crispr"], plots=False)
    ecfg.definitions["direction_orf_crispr"].active_from = None
    with pytest.raises(TaskError, match="task 'direction_orf_crispr': no group has both pair_a and pair_b"):
        evaluate_profiles(profiles.loc[profiles["Metadata_modality"] == "orf"], ecfg)


def test_empty_task_warn_mode_cli_runs_the_rest_and_exits_3(tmp_path, profiles):
    one_plate = profiles.loc[profiles["Metadata_Plate"].str.endswith("P1")]
    src = tmp_path / "one_plate.csv.gz"
    one_plate.to_csv(src, index=False)
    task = {"subset": [{"Metadata_pert_type": ["trt"]}], "controls": [], "pos_sameby": ["Metadata_gene"],
            "pos_diffby": ["Metadata_broad_sample"], "neg_diffby": ["Metadata_gene"], "group_by": []}
    for mode, code in (("error", 2), ("warn", 3)):
        cfg = {"output_dir": str(tmp_path / mode), "evaluate": {
            "null_size": 300, "tasks": ["replicate", "same_gene"], "empty_task": mode, "plots": False,
            "definitions": {"replicate": {}, "same_gene": task}}}
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([sys.executable, "-m", "hpc_profiler.evaluate", str(path), "--profiles", str(src)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stderr
        assert "task 'replicate': no positive pairs" in proc.stderr and "'Metadata_Plate'" in proc.stderr
        out = tmp_path / mode / "evaluate" / "queries.parquet"
        if mode == "error":
            assert not out.exists()
        else:
            assert "WARNING" in proc.stderr
            q = pd.read_parquet(out)
            assert set(q["task"]) == {"same_gene"} and len(q) > 0


def test_expected_ap_matches_exhaustive_average():
    from itertools import combinations

    from hpc_profiler.evaluate.ap import ap_from_ranks

    for m, n in ((1, 1), (1, 4), (2, 5), (3, 6), (4, 4), (2, 7)):
        exact = np.mean([ap_from_ranks(np.array(c) + 1) for c in combinations(range(n), m)])
        assert expected_ap(np.array([m]), np.array([n]))[0] == pytest.approx(exact, abs=1e-12)
    assert expected_ap(np.array([0]), np.array([5]))[0] == 0.0


def test_multilabel_explode_and_config_errors():
    meta = pd.DataFrame({"Metadata_t": ["A|B", "A", None, "B | C|B"], "Metadata_x": [1, 2, 3, 4]})
    assert split_labels(meta["Metadata_t"], "|") == [{"A", "B"}, {"A"}, frozenset(), {"B", "C"}]
    ex, orig, _ = explode_labels(meta, "Metadata_t", "|")
    assert orig.tolist() == [0, 0, 1, 2, 3, 3]
    assert ex["Metadata_t"].tolist()[:2] == ["A", "B"] and ex["Metadata_t"].isna().tolist()[3]
    profiles = synthetic_profiles(n_genes=3, plates=2, negcons=2, n_features=6, seed=0)
    task = EvalTaskConfig(multilabel_col="Metadata_gene", group_by=[])
    with pytest.raises(TaskError, match="multilabel_col 'Metadata_gene' must be in pos_sameby"):
        evaluate_profiles(profiles, _ecfg(task))


def test_default_task_list_skips_tasks_the_batch_cannot_run_loudly(tmp_path, capsys):
    """auto: the CPJUMP1 list on a batch without ORF plates warns about the ORF tasks; --strict stops."""
    two = synthetic_profiles(n_genes=6, plates=3, negcons=6, n_features=12, effect=2.5, inactive=0.0, seed=6,
                             modalities=("compound", "crispr"))
    ecfg = EvaluateConfig(null_size=300, plots=False)
    res = evaluate_profiles(two, ecfg)
    err = capsys.readouterr().err
    assert "WARNING: evaluate task 'compound_orf': no positive pairs" in err
    assert "'Metadata_modality' has 1 distinct value(s)" in err
    assert any("direction_orf_crispr" in m for m in res["empty_tasks"])
    assert {"replicate", "sister_compound", "compound_crispr"} <= set(res["summary"]["task"])
    src = tmp_path / "two.parquet"
    two.to_parquet(src)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "o"), "evaluate": {"null_size": 300, "plots": False}}))
    base = [sys.executable, "-m", "hpc_profiler.evaluate", str(cfg), "--profiles", str(src)]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "WARNING: evaluate task 'compound_orf'" in proc.stderr
    assert (tmp_path / "o" / "evaluate" / "classes.parquet").exists()
    proc = subprocess.run(base + ["--strict", "--out", str(tmp_path / "strict")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "error: evaluate task 'compound_orf': no positive pairs" in proc.stderr
    assert not (tmp_path / "strict").exists()
    # every task empty: an error even in warn mode
    with pytest.raises(TaskError, match="every task was empty"):
        evaluate_profiles(two.loc[two["Metadata_Plate"].str.endswith("P1")],
                          EvaluateConfig(null_size=300, plots=False, tasks=["replicate"], empty_task="warn"))


_SHARED_READ = """
import sys
import pandas as pd
from hpc_profiler import mpi
from hpc_profiler.evaluate.run import read_parquet_shared, read_profile_table

comm = mpi.get_comm()
for path in sys.argv[1:]:
    took = read_parquet_shared(path, comm) is not None
    mine = read_profile_table(path, comm)  # features decoded in shares over the ranks where it can
    whole = read_profile_table(path)  # this rank alone, the whole file (pd.read_parquet)
    pd.testing.assert_frame_equal(mine, whole, check_exact=True)
    assert mine.columns.tolist() == whole.columns.tolist() and (mine.index == whole.index).all()
    blocks = [b.values.shape for b in mine._mgr.blocks if b.dtype == "float64"]
    print(f"rank {comm.Get_rank()} {path.rsplit('/', 1)[-1]} shared={took} equal blocks={blocks}", flush=True)
"""


@pytest.mark.mpi
def test_parquet_read_in_shares_equals_the_whole_file(tmp_path, mpirun):
    """Ranks decode shares of the feature columns and exchange them: the same table as pd.read_parquet, bit for bit."""
    rng = np.random.default_rng(0)
    n = 37
    x = rng.normal(size=(n, 7))
    x[3, 2], x[5, 6] = np.nan, np.inf  # missing and non-finite values travel as they are
    df = pd.DataFrame(x, columns=[f"Cells_F{i}" for i in range(7)], index=np.arange(100, 100 + n))
    df.insert(0, "Metadata_Plate", [f"P{i % 3}" for i in range(n)])
    df.insert(1, "Metadata_Well", [f"W{i:03d}" for i in range(n)])
    df["Image_PathName_DNA"] = "/x"  # left out (not a compartment feature), never decoded by the shared read
    shared = tmp_path / "shared.parquet"
    df.to_parquet(shared)  # a stored (non-range) index
    ints = tmp_path / "ints.parquet"
    df.assign(Cells_F0=np.arange(n)).reset_index(drop=True).to_parquet(ints)  # an int feature: whole-file read
    for ranks in (2, 3):  # 3 ranks: 7 columns in shares of 2, 2, 3
        proc = mpirun([mpirun.python, "-c", _SHARED_READ, shared, ints], n=ranks, timeout=600)
        out = proc.stdout.splitlines()
        for r in range(ranks):
            assert f"rank {r} shared.parquet shared=True equal blocks=[(7, {n})]" in out, proc.stdout
            assert f"rank {r} ints.parquet shared=False equal blocks=[(6, {n})]" in out, proc.stdout

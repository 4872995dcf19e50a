"""evaluate stage kernels: AP on hand-checked lists, pairs vs copairs, nulls vs exact laws, BH vs SciPy."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from hpc_profiler.evaluate import ap as apk
from hpc_profiler.evaluate import nulls, stats


def _ap_of_list(labels_in_rank_order):
    """AP = sum_k (R_k - R_{k-1}) P_k, written out for one ranked list (reference)."""
    labels = np.asarray(labels_in_rank_order, dtype=float)
    n_pos = labels.sum()
    tp, ap = 0.0, 0.0
    for k, rel in enumerate(labels, start=1):
        tp += rel
        if rel:
            ap += (1.0 / n_pos) * (tp / k)  # recall step 1/n_pos times precision at k
    return ap


def _kernel(pos_sims, neg_sims):
    sims = np.array(list(pos_sims) + list(neg_sims), dtype=np.float32)
    lab = np.array([True] * len(pos_sims) + [False] * len(neg_sims))
    ap, n_pos, n_tot = apk.average_precision(np.zeros(len(sims), dtype=np.int64), lab, sims, 1)
    return ap[0], n_pos[0], n_tot[0]


def test_ap_perfect_worst_and_ties_by_hand():
    assert _kernel([0.9, 0.8], [0.1, 0.0, -0.5])[0] == pytest.approx(1.0, abs=1e-15)
    # worst: 2 positives at ranks 4 and 5 of 5 -> (1/4 + 2/5) / 2
    assert _kernel([-0.9, -0.8], [0.1, 0.0, -0.5])[0] == pytest.approx((1 / 4 + 2 / 5) / 2, abs=1e-15)
    # ties favour positives (copairs): all equal -> positives first -> AP 1
    assert _kernel([0.3, 0.3], [0.3, 0.3])[0] == pytest.approx(1.0, abs=1e-15)
    # pos .9 rank 1, neg .5 rank 2, pos .1 tied with neg .1 -> rank 3: (1 + 2/3) / 2
    ap, n_pos, n_tot = _kernel([0.9, 0.1], [0.5, 0.1])
    assert ap == pytest.approx((1 + 2 / 3) / 2, abs=1e-15) and (n_pos, n_tot) == (2, 4)
    # no positive -> NaN, counts kept
    ap, n_pos, n_tot = _kernel([], [0.5, 0.1])
    assert np.isnan(ap) and (n_pos, n_tot) == (0, 2)


def test_ap_kernel_vs_written_out_definition_on_random_lists():
    rng = np.random.default_rng(5)
    q, lab, sim, ref = [], [], [], []
    for i in range(200):
        n = int(rng.integers(2, 30))
        s = np.round(rng.uniform(-1, 1, n), 1).astype(np.float32)  # rounding creates ties
        lb = rng.random(n) < 0.3
        lb[0] = True
        order = np.lexsort([~lb, np.float32(1) - s])  # by 1 - sim, ties: positives first
        ref.append(_ap_of_list(lb[order]))
        q += [i] * n
        lab += list(lb)
        sim += list(s)
    ap, _, _ = apk.average_precision(np.array(q), np.array(lab), np.array(sim, dtype=np.float32), 200)
    np.testing.assert_allclose(ap, ref, rtol=0, atol=1e-12)


def test_ap_from_ranks_hand():
    np.testing.assert_allclose(apk.ap_from_ranks(np.array([[1, 2], [3, 4], [1, 3]])), [1, (1 / 3 + 2 / 4) / 2,
                                                                                      (1 + 2 / 3) / 2])


def test_find_pairs_matches_copairs():
    matching = pytest.importorskip("copairs.matching", reason="copairs (test dependency) is not installed")
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"a": rng.integers(0, 4, 60).astype(str), "b": rng.integers(0, 3, 60).astype(str),
                         "c": rng.integers(0, 5, 60).astype(str)})
    for same, diff in ((["a"], ["b"]), (["a", "c"], []), ([], ["a", "b"])):
        ref = matching.find_pairs(meta, same, diff)
        ref = {tuple(sorted(p)) for p in ref.tolist()}
        got = set()
        for i, j in apk.find_pairs(apk.encode_columns(meta, same), apk.encode_columns(meta, diff), max_pairs=97):
            got |= {(min(x, y), max(x, y)) for x, y in zip(i.tolist(), j.tolist())}
        assert got == ref, (same, diff)


def test_pair_similarity_blocks_equal_rowwise_cosine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 7))
    q, c = rng.integers(0, 50, 400), rng.integers(0, 50, 400)
    got = apk.pair_similarity(apk.unit_rows(x), q, c, block_size=3)
    ref = np.array([x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for i, j in zip(q, c)])
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=0, atol=1e-6)
    assert got.dtype == np.float32
    np.testing.assert_allclose(apk.pair_similarity(apk.unit_rows(x), q, c, absolute=True), np.abs(got), atol=1e-7)


@pytest.mark.parametrize("order", ["C", "F"])
def test_unit_rows_of_is_the_full_gather_bit_for_bit(order):
    """Chunked gather-and-scale equals ``unit_rows(feats[rows])`` exactly, for pandas' F-ordered blocks too."""
    rng = np.random.default_rng(3)
    feats = np.asarray(rng.normal(size=(2500, 300)) * rng.lognormal(size=300), order=order)
    rows = np.sort(rng.choice(2500, 1700, replace=False))
    full = apk.unit_rows(feats[rows])
    for chunk in (1, 7, 1024, 5000):
        got = apk.unit_rows_of(feats, rows, chunk=chunk)
        assert got.flags.c_contiguous and got.dtype == np.float64
        np.testing.assert_array_equal(got, full)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, rtol=0, atol=1e-15)
    assert apk.unit_rows_of(feats, rows[:0]).shape == (0, 300)


@pytest.mark.parametrize("total", [7, 40])
def test_null_one_positive_is_one_over_uniform_rank(total):
    m = 10000
    null = nulls.null_distribution(1, total, m, seed=2)
    ranks = np.rint(1 / null.astype(np.float64)).astype(int)
    np.testing.assert_allclose(null, (1 / ranks).astype(np.float32), rtol=0, atol=0)
    counts = np.bincount(ranks, minlength=total + 1)[1:]
    assert counts.sum() == m
    assert sps.chisquare(counts).pvalue > 1e-3  # uniform on 1..total
    # p-value of AP = 1/r is P(rank <= r) = r / total (exact law), within Monte Carlo error
    srt = np.sort(null)
    r = np.arange(1, total + 1)
    p = nulls.p_values(1 / r, srt)
    exact = r / total
    tol = 5 * np.sqrt(exact * (1 - exact) / m) + 2 / m
    # copairs' float32 convention: 1/r ties count only when float32(1/r) >= 1/r
    tie_counts = np.float32(1 / r).astype(np.float64) >= 1 / r
    exact_cp = np.where(tie_counts, exact, exact - 1 / total)
    assert np.all(np.abs(p - exact_cp) <= tol)


@pytest.mark.parametrize("k,total", [(2, 5), (4, 5), (3, 6)])
def test_null_positions_uniform_over_subsets(k, total):
    """Both samplers (Floyd for small k, random order for large k) are uniform over k-subsets."""
    m = 12000
    null = nulls.null_distribution(k, total, m, seed=9)
    subsets = list(itertools.combinations(range(1, total + 1), k))
    aps = nulls.null_ap(np.array(subsets))
    # map each null AP to its subset's AP value; count per distinct AP and compare with the exact law
    values, expected = np.unique(aps, return_counts=True)
    observed = np.array([(null == v).sum() for v in values])
    assert observed.sum() == m
    assert sps.chisquare(observed, expected / expected.sum() * m).pvalue > 1e-3


def test_null_depends_only_on_seed_and_configuration():
    a = nulls.null_distribution(3, 30, 500, seed=4)
    nulls.null_distribution(5, 30, 500, seed=4)
    b = nulls.null_distribution(3, 30, 500, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, nulls.null_distribution(3, 30, 500, seed=5))
    assert not np.array_equal(a, nulls.null_distribution(3, 31, 500, seed=4))


def test_null_matches_copairs_random_ap_in_distribution():
    compute = pytest.importorskip("copairs.compute", reason="copairs (test dependency) is not installed")
    ours = nulls.null_distribution(4, 50, 20000, seed=1)
    ref = compute.random_ap(20000, 4, 50, seed=1)
    assert sps.ks_2samp(ours, ref).pvalue > 1e-3
    assert abs(ours.mean() - ref.mean()) < 5 * ref.std() / np.sqrt(20000) * np.sqrt(2)


def test_map_p_value_hand():
    member = np.array([[0.1, 0.5, 0.9, 0.2], [0.3, 0.5, 0.7, 0.2]], dtype=np.float32)  # means .2 .5 .8 .2
    assert nulls.map_p_value(0.45, member) == pytest.approx((2 + 1) / 5)
    assert nulls.map_p_value(0.9, member) == pytest.approx(1 / 5)


def test_bh_qvalues_match_scipy_and_statsmodels():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 0.01, 30)])
    np.testing.assert_allclose(stats.bh_qvalues(p), sps.false_discovery_control(p), rtol=1e-12)
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    np.testing.assert_allclose(stats.bh_qvalues(p), multitest.multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    withnan = np.array([0.01, np.nan, 0.04, 0.03])
    q = stats.bh_qvalues(withnan)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], sps.false_discovery_control([0.01, 0.04, 0.03]))


def test_geometric_mean_matches_scipy():
    v = np.array([0.1, 0.2, 0.4, 0.05, 1.0])
    g = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(stats.geometric_mean(v, g, 2), [sps.gmean(v[:3]), sps.gmean(v[3:])])


def test_directionality_hand_case():
    null = np.linspace(-1, 1, 201)  # 5th/95th percentiles -0.9 / 0.9
    true = np.array([0.95, 0.99, -0.95, 0.0])
    r = stats.directionality(true, null)
    assert r["null_p5"] == pytest.approx(-0.9) and r["null_p95"] == pytest.approx(0.9)
    assert r["frac_above_p95"] == 0.5 and r["frac_below_p5"] == 0.25
    # table [[2, 1], [10, 10]]: two-sided Fisher p from the hypergeometric law
    hg = sps.hypergeom(23, 12, 3)  # population, "above" total, true-pair draws
    probs = hg.pmf(np.arange(0, 4))
    assert r["fisher_p"] == pytest.approx(probs[probs <= probs[2] * (1 + 1e-7)].sum())
    with pytest.raises(ValueError, match="needs true and null"):
        stats.directionality([], null)


def test_map_p_value_accumulates_exactly_as_copairs_mean():
    """Members' nulls summed row by row equal copairs' ``null_dists[ix].mean(axis=0)`` bit for bit."""
    rng = np.random.default_rng(8)
    dists = rng.random((6, 3001)).astype(np.float32) / 3
    for ix in ([0], [1, 1, 1], [0, 2, 5, 5, 3], list(range(6)) * 3):
        ref = dists[ix].mean(axis=0)  # copairs get_map_pvalue
        for score in (float(np.median(ref)), float(ref[17]), 0.2):
            expect = ((ref > score).sum() + 1) / (3001 + 1)
            assert nulls.map_p_value(score, [dists[i] for i in ix]) == expect
            assert nulls.map_p_value(np.float64(score), dists[ix]) == expect


def _numpy_floyd_null(n_pos, total, size, seed):
    """The null as the vectorized NumPy code computed it before the compiled kernels (reference of the stream).

    Same generator, same draws (one ``integers`` call per Floyd step), Floyd's
    set logic and sorted insertion written as array operations, AP by
    :func:`nulls.null_ap`.
    """
    rng = nulls.null_rng(seed, n_pos, total)
    dt = np.int16 if total < 2**15 else np.int32
    srt = np.empty((n_pos, size), dtype=dt)
    for col, jj in enumerate(range(total - n_pos, total)):
        t = rng.integers(0, jj + 1, size=size, dtype=dt)
        if col == 0:
            srt[0] = t
            continue
        v = np.where((srt[:col] == t).any(axis=0), dt(jj), t)
        srt[col] = np.maximum(v, srt[col - 1])
        for p in range(col - 1, 0, -1):
            srt[p] = np.maximum(np.minimum(srt[p], v), srt[p - 1])
        srt[0] = np.minimum(srt[0], v)
    return nulls.null_ap(np.ascontiguousarray(srt.T) + 1, total)  # C order, as before: the row sums


@pytest.mark.parametrize("k,total", [(1, 60), (2, 9), (3, 63), (7, 70), (8, 70), (13, 75), (16, 64), (17, 300),
                                     (40, 500), (127, 5000), (128, 5000), (131, 5000), (3, 70000)])
def test_compiled_null_is_the_numpy_stream_bit_for_bit(k, total):
    """The compiled Floyd + AP kernels change no bit of the nulls (same draws, same float32 sums as NumPy).

    Covers k < 8 (one-by-one sum), 8..128 (NumPy's 8 partial sums and the
    remainder), above 128 and 2**16 candidates (the per-permutation path and
    :func:`nulls.null_ap`), and a size that is not a multiple of the block.
    """
    size = 2 * nulls.FLOYD_BLOCK + 37
    got = nulls.null_distribution(k, total, size, seed=6)
    np.testing.assert_array_equal(got, _numpy_floyd_null(k, total, size, seed=6))


def test_map_p_values_equal_map_p_value_and_copairs_mean():
    """Batched class p-values (shared member sequences, blocks, 4-row passes) equal the one-class reference."""
    rng = np.random.default_rng(12)
    size = nulls.MAP_BLOCK + 501
    confs = [(k, n) for k in (1, 2, 3, 5) for n in (20, 21)]
    dists = {c: nulls.null_distribution(c[0], c[1], size, seed=2) for c in confs}
    seqs, scores = [], []
    for c in range(60):
        m = int(rng.integers(1, 12))
        seq = [confs[i] for i in rng.integers(0, len(confs), m)]
        if c % 7 == 0 and seqs:
            seq = list(seqs[-1])  # classes sharing a member sequence share one null mean
        ref_mean = np.stack([dists[k] for k in seq]).mean(axis=0)  # copairs get_map_pvalue
        seqs.append(seq)
        scores.append(float(np.quantile(ref_mean, rng.uniform(0.5, 1.0))) if c % 3 else float(ref_mean[5]))
    got = nulls.map_p_values(np.array(scores), seqs, dists)
    ref = [nulls.map_p_value(s, [dists[k] for k in seq]) for s, seq in zip(scores, seqs)]
    np.testing.assert_array_equal(got, ref)
    cp = [((np.stack([dists[k] for k in seq]).mean(axis=0) > s).sum() + 1) / (size + 1) for s, seq in zip(scores, seqs)]
    np.testing.assert_array_equal(got, cp)
    assert len(set(got)) > 10


def test_load_kernels_loads_only_the_kernels_every_run_calls():
    """Every rank pays for the kernels it loads: the rarely used per-permutation Floyd kernel waits for its
    first call (a null with over 128 positives), and then gives the NumPy stream bit for bit."""
    from snippet import run_snippet

    code = (
        "from hpc_profiler.evaluate import nulls\n"
        "nulls.load_kernels()\n"
        "print(len(nulls._floyd_null_ap.signatures), len(nulls._map_null_counts.signatures),"
        " len(nulls._floyd_positions.signatures))\n"
        "nulls.null_distribution(131, 5000, 10, seed=6)\n"
        "print(len(nulls._floyd_positions.signatures))\n"
    )
    out = run_snippet(code)
    assert out.split() == ["1", "1", "0", "1"], out
